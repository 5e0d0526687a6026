"""Path change for real: a punched path breaks in the lab, the connection moves to the relay on
its own, and moves back to the punched path once it works again.

Two eim sites, each peer in its own thread inside its LAN host (as in ``test_lab.py``), with
the lab's coturn configured so each side also holds a TURN allocation. The connection comes
up on the hole-punched server-reflexive pair and data flows both ways; the relayed pairs are
checked too and kept alive as backups. Then a table of our own in site 1's router drops all
UDP between the two sites' public addresses (not to coturn): the punched pair stops
answering consent checks, and after ``consent_timeout`` the agents must move to the relay on
the same connection object, with the application's datagrams flowing both ways again. The
block is then removed: the agents' re-checks of the failed punched pair get answers again and
the connection must move back to the punched path (a second ``PathChanged``, relay ->
punched), with data both ways over it.

Consent and re-check timing are shortened through ``[plugins.p2p]`` so the whole test stays a
few seconds: the time to the move is bounded by ``consent_timeout`` after the last answer, and
the last answer came at most one consent interval (+20 %) before the block; the time back is
bounded by the longest wait between two re-check datagrams (see ``RETURN_BOUND``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest
from nattrav_p2p.benchmark import lab_config

pytestmark = pytest.mark.lab

#: The nftables table this test adds to site 1's router and removes again.
BLOCK_TABLE = "nattrav_p2p_path_change"

CONSENT_INTERVAL = 0.5
CONSENT_TIMEOUT = 2.0
BACKUP_INTERVAL = 0.5
RECHECK_INTERVAL = 0.5
RECHECK_MAX_INTERVAL = 1.0
#: The defaults: a check retransmits after 0.2, 0.4, 0.8, 1.6 s and fails after 3 s.
CHECK_TIMEOUT = 3.0
P2P = {
    "consent_interval": CONSENT_INTERVAL,
    "consent_timeout": CONSENT_TIMEOUT,
    "backup_interval": BACKUP_INTERVAL,
    "recheck_interval": RECHECK_INTERVAL,
    "recheck_max_interval": RECHECK_MAX_INTERVAL,
    "check_timeout": CHECK_TIMEOUT,
}
#: Consent is lost ``consent_timeout`` after the last answer, which came at most one
#: randomised consent interval (+20 %) before the block; the new pair is then nominated with
#: one check (a few ms here). The slack is for a loaded machine (timers, threads, GIL).
SLACK = 2.0
MOVE_BOUND = CONSENT_TIMEOUT + 1.2 * CONSENT_INTERVAL + SLACK
#: Nothing can move before the punched pair's consent runs out.
MOVE_EARLIEST = CONSENT_TIMEOUT - 1.2 * CONSENT_INTERVAL - 0.5
#: Back to the punched pair after the unblock: while the path is dead a re-check datagram
#: leaves at least every ``check_timeout`` (a re-check's retransmissions, then its failure)
#: + ``recheck_max_interval`` (the wait before the next one); the first that gets through is
#: answered and the controlling side nominates the pair with one more check.
RETURN_BOUND = (
    CHECK_TIMEOUT + RECHECK_MAX_INTERVAL + SLACK
)  #: How often each peer sends a datagram (the application keeps talking through the outage).
SEND_EVERY = 0.05
PHASE_TIMEOUT = 12.0


@attrs.define
class Shared:
    """Thread-safe steps between the test (main thread) and the two peers."""

    ready: dict[str, threading.Event] = attrs.field(
        factory=lambda: {"offer": threading.Event(), "answer": threading.Event()}
    )
    moved: dict[str, threading.Event] = attrs.field(
        factory=lambda: {"offer": threading.Event(), "answer": threading.Event()}
    )
    healed: dict[str, threading.Event] = attrs.field(
        factory=lambda: {"offer": threading.Event(), "answer": threading.Event()}
    )
    back: dict[str, threading.Event] = attrs.field(
        factory=lambda: {"offer": threading.Event(), "answer": threading.Event()}
    )
    blocked: threading.Event = attrs.field(factory=threading.Event)
    unblocked: threading.Event = attrs.field(factory=threading.Event)
    abort: threading.Event = attrs.field(factory=threading.Event)
    blocked_at: float = 0.0
    unblocked_at: float = 0.0


@attrs.define
class PeerLog:
    """What one peer saw, with ``time.monotonic()`` stamps (comparable across threads)."""

    role: str
    first_path: dict[str, Any] | None = None
    last_path: dict[str, Any] | None = None
    relay_backup_ready: bool = False
    events: list[tuple[float, Any]] = attrs.field(factory=list)
    sent: list[tuple[float, int, str]] = attrs.field(factory=list)  # (at, seq, path kind)
    received: list[tuple[float, int]] = attrs.field(factory=list)  # the peer's seq
    acked: list[tuple[float, int]] = attrs.field(factory=list)  # our seq the peer echoed
    stats: dict[str, Any] | None = None
    error: str | None = None

    def received_after(self, t: float) -> bool:
        return any(at > t for at, _ in self.received)

    def acked_sent_after(self, t: float) -> bool:
        after = {seq for at, seq, _ in self.sent if at > t}
        return any(seq in after for _, seq in self.acked)

    def first_change(self) -> tuple[float, Any] | None:
        from nattrav_p2p.events import PathChanged

        return next(((t, e) for t, e in self.events if isinstance(e, PathChanged)), None)

    def change_back(self, after: float) -> tuple[float, Any] | None:
        """The first move to the punched path after ``after``."""
        from nattrav_p2p.events import PathChanged

        return next(
            (
                (t, e)
                for t, e in self.events
                if t > after and isinstance(e, PathChanged) and e.new.kind == "punched"
            ),
            None,
        )


def _consent_rounds(stats: dict[str, Any]) -> int:
    """Checks on the selected pair beyond the first check and the nomination: consent."""
    selected = [p for p in stats["pairs"] if p["nominated"]]
    return max(0, selected[0]["checks"] - 2) if len(selected) == 1 else 0


def _relay_pair_succeeded(stats: dict[str, Any]) -> bool:
    return any(
        p["state"] == "succeeded"
        and (p["route"].startswith("relay:") or p["remote"].startswith("relay "))
        for p in stats["pairs"]
    )


async def _wait_for(condition: Callable[[], bool], shared: Shared, what: str) -> None:
    with anyio.move_on_after(PHASE_TIMEOUT):
        while not condition():
            if shared.abort.is_set():
                raise RuntimeError(f"aborted while waiting for {what}")
            await anyio.sleep(0.02)
        return
    raise TimeoutError(f"timed out ({PHASE_TIMEOUT} s) waiting for {what}")


async def _peer(signal: Any, role: str, config: Any, shared: Shared, log: PeerLog) -> None:
    from nattrav.connect import connect
    from nattrav.runtime import Runtime

    runtime = Runtime.load(config)
    async with connect(signal, role=role, runtime=runtime, gather_timeout=4.0) as raw:  # type: ignore[arg-type]
        conn: Any = raw
        log.first_path = conn.path.to_json()

        async def watch() -> None:
            async for event in conn.path_changes():
                log.events.append((time.monotonic(), event))

        async def reader() -> None:
            while True:
                data = await conn.receive()
                now = time.monotonic()
                if data[:1] == b"D":
                    log.received.append((now, int(data[1:])))
                    await conn.send(b"A" + data[1:])
                elif data[:1] == b"A":
                    log.acked.append((now, int(data[1:])))

        async def sender() -> None:
            seq = 0
            while True:
                seq += 1
                log.sent.append((time.monotonic(), seq, conn.path.kind))
                await conn.send(b"D%d" % seq)
                await anyio.sleep(SEND_EVERY)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            tg.start_soon(reader)
            tg.start_soon(sender)
            # 1. Data both ways on the first path, and a relayed pair validated as backup.
            await _wait_for(
                lambda: log.received_after(0) and log.acked_sent_after(0),
                shared,
                "data both ways on the first path",
            )
            await _wait_for(
                lambda: _relay_pair_succeeded(conn.stats()), shared, "a working relayed pair"
            )
            log.relay_backup_ready = True
            # A steady state, not the first moments: consent has run on the punched pair.
            await _wait_for(
                lambda: _consent_rounds(conn.stats()) >= 2, shared, "two consent checks"
            )
            shared.ready[role].set()
            await _wait_for(shared.blocked.is_set, shared, "the block")
            # 2. The move, then data both ways sent after it (so over the new path).
            await _wait_for(lambda: log.first_change() is not None, shared, "a path change")
            change = log.first_change()
            assert change is not None
            await _wait_for(
                lambda: log.received_after(change[0]) and log.acked_sent_after(change[0]),
                shared,
                "data both ways after the path change",
            )
            shared.moved[role].set()
            # 3. The block is gone: re-checks find the punched pair again and the connection
            # moves back to it, with data both ways sent after the move.
            await _wait_for(shared.unblocked.is_set, shared, "the unblock")
            await _wait_for(
                lambda: log.change_back(shared.unblocked_at) is not None,
                shared,
                "the move back to the punched path",
            )
            back = log.change_back(shared.unblocked_at)
            assert back is not None
            shared.back[role].set()
            await _wait_for(
                lambda: (
                    log.received_after(back[0])
                    and log.acked_sent_after(back[0])
                    and conn.path.kind == "punched"
                ),
                shared,
                "data both ways after the move back",
            )
            shared.healed[role].set()
            # Keep answering until the peer is done too.
            await _wait_for(
                lambda: all(e.is_set() for e in shared.healed.values()), shared, "the peer"
            )
            await anyio.sleep(0.2)
            log.last_path = conn.path.to_json()
            log.stats = conn.stats()
            tg.cancel_scope.cancel()


def _block(lab: Any, on: bool) -> int:
    """Drop every UDP datagram between site 1's and site 2's public addresses in site 1's
    router, both directions, nothing else (coturn stays reachable). Returns the number of
    datagrams the block dropped (read before it is removed)."""
    peer = lab.site2.public_ip4
    if not on:
        listed = lab.exec(
            "router", ["nft", "list", "table", "inet", BLOCK_TABLE], check=True
        ).stdout
        lab.exec("router", ["nft", "delete", "table", "inet", BLOCK_TABLE], check=True)
        return sum(
            int(line.split("packets", 1)[1].split()[0])
            for line in listed.splitlines()
            if "packets" in line
        )
    # In the forward hook an inbound datagram is already de-NATed (daddr is the LAN host)
    # and an outbound one not yet masqueraded (saddr is the LAN host): match the peer's side.
    script = (
        f"table inet {BLOCK_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f"    ip saddr {peer} meta l4proto udp counter drop\n"
        f"    ip daddr {peer} meta l4proto udp counter drop\n"
        "  }\n"
        "}\n"
    )
    lab.exec("router", ["nft", "-f", "-"], input=script, check=True)
    return 0


def _wait_all(events: dict[str, threading.Event], logs: dict[str, PeerLog], what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT + 5
    for role, event in events.items():
        if not event.wait(max(0.0, deadline - time.monotonic())):
            errors = {r: log.error for r, log in logs.items()}
            raise AssertionError(f"{role}: no {what}; peer errors: {errors}")


def _timings(logs: dict[str, PeerLog], shared: Shared) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, log in logs.items():
        change = log.first_change()
        back = log.change_back(shared.unblocked_at)
        out[role] = {
            "move_s": None if change is None else round(change[0] - shared.blocked_at, 3),
            "how": None if change is None else change[1].reason,
            "back_s": None if back is None else round(back[0] - shared.unblocked_at, 3),
            "how_back": None if back is None else back[1].reason,
            "final_kind": None if log.last_path is None else log.last_path["kind"],
            "path_changes": None if log.stats is None else log.stats["path_changes"],
            "rechecks": None if log.stats is None else log.stats["agent"]["rechecks_sent"],
        }
    return out


def test_a_broken_punched_path_moves_to_the_relay_and_back_without_reconnecting(
    lab_factory: Any,
) -> None:
    from nattrav_p2p.events import ConsentLost, Failed, PathChanged
    from nattrav_p2p.signals import thread_signal_pair

    lab = lab_factory("eim", second_site="eim")
    sig_offer, sig_answer = thread_signal_pair()
    shared = Shared()
    logs = {"offer": PeerLog("offer"), "answer": PeerLog("answer")}

    def run(site_role: str, role: str, signal: Any, backend: str) -> None:
        config = lab_config(lab, relay=True, p2p=P2P)
        try:
            with lab.inside(site_role):
                anyio.run(_peer, signal, role, config, shared, logs[role], backend=backend)
        except BaseException as exc:  # reported, never lost in the thread
            logs[role].error = f"{type(exc).__name__}: {exc!r}"
            shared.abort.set()

    # One peer per anyio backend: the move is the driver's job on both.
    threads = [
        threading.Thread(target=run, args=("lan", "offer", sig_offer, "asyncio"), daemon=True),
        threading.Thread(target=run, args=("site2.lan", "answer", sig_answer, "trio"), daemon=True),
    ]
    for t in threads:
        t.start()
    dropped = 0
    blocked = False
    try:
        _wait_all(shared.ready, logs, "data both ways on the punched path")
        _block(lab, True)
        blocked = True
        shared.blocked_at = time.monotonic()
        shared.blocked.set()
        _wait_all(shared.moved, logs, "path change with data both ways")
        dropped = _block(lab, False)
        blocked = False
        shared.unblocked_at = time.monotonic()
        shared.unblocked.set()
        _wait_all(shared.back, logs, "move back to the punched path")
        _wait_all(shared.healed, logs, "data both ways after the move back")
    except BaseException:
        shared.abort.set()  # let the peers end instead of waiting for steps that never come
        raise
    finally:
        if blocked:
            _block(lab, False)
        for t in threads:
            t.join(20)
    for log in logs.values():
        assert log.error is None, (log.role, log.error)
    print(f"path change: {_timings(logs, shared)}")  # shown with -s / -rP

    offer, answer = logs["offer"], logs["answer"]
    assert offer.first_path is not None and answer.first_path is not None
    assert offer.first_path["kind"] == answer.first_path["kind"] == "punched", offer.first_path
    assert offer.relay_backup_ready and answer.relay_backup_ready
    # The block was on the path: the punched pair's consent checks and the data died in it.
    assert dropped > 0

    moves = {}
    for log in (offer, answer):
        change = log.first_change()
        assert change is not None, (log.role, log.events)
        at, event = change
        assert isinstance(event, PathChanged)
        assert event.old.kind == "punched", event
        # Site-local host addresses do not route between the sites and every reflexive
        # pair crosses the block: the relay is the only other working pair.
        assert event.new.kind != event.old.kind
        assert event.new.kind == "relay", event
        moves[log.role] = at - shared.blocked_at
        assert MOVE_EARLIEST <= moves[log.role] <= MOVE_BOUND, (log.role, moves, event)
        # The connection the application opened once carried data both ways over the new
        # path (``receive`` never raised ``ConnectionLost``: no reconnect was needed).
        assert log.received_after(at) and log.acked_sent_after(at)
        assert any(kind == "relay" for sent_at, _, kind in log.sent if sent_at > at)
        assert log.stats is not None and log.stats["path_changes"] >= 1
    # The controlling side saw its consent run out and nominated the relay itself.
    consent = [e for _, e in offer.events if isinstance(e, ConsentLost)]
    assert consent and consent[0].path.kind == "punched"
    offer_change = offer.first_change()
    assert offer_change is not None and "consent lost" in offer_change[1].reason
    # 3. Back on the punched path once it works again, on both sides, within the bound the
    # re-check schedule gives; the data sent after the move went over it and was answered.
    for log in (offer, answer):
        back = log.change_back(shared.unblocked_at)
        assert back is not None, (log.role, log.events)
        at, event = back
        assert event.old.kind == "relay" and event.new.kind == "punched", event
        assert at - shared.unblocked_at <= RETURN_BOUND, (log.role, at - shared.unblocked_at)
        assert log.received_after(at) and log.acked_sent_after(at)
        assert any(kind == "punched" for sent_at, _, kind in log.sent if sent_at > at)
    # The controlling side's re-check found the pair (the controlled side may have been
    # nominated before its own re-check: it then checks the pair and follows).
    assert offer.stats is not None and offer.stats["agent"]["rechecks_sent"] >= 1
    offer_back = offer.change_back(shared.unblocked_at)
    assert offer_back is not None and "re-check" in offer_back[1].reason
    # Nothing failed, before or after the block was removed, and both ends agree on the path.
    assert not any(isinstance(e, Failed) for log in logs.values() for _, e in log.events)
    assert offer.last_path is not None and answer.last_path is not None
    assert offer.last_path["kind"] == answer.last_path["kind"] == "punched"
