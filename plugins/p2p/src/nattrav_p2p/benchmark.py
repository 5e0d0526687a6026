"""Two real peers in the lab: one connection between two sites, timed (tests and benchmarks).

``connect_in_lab(lab, ...)`` runs one peer per site, each in its own thread switched into its
LAN host's network namespace (``lab.inside``) with its own anyio event loop, signaling
through a ``thread_signal_pair``. Each peer calls ``nattrav.connect`` with a runtime whose
config points the ``stun`` and ``relay`` methods at the lab's coturn, exchanges data both
ways over the connection and reports the path and the times.

``time_to_connect(first, second, ...)`` is the benchmark hook: it brings a two-site lab up
(``Lab.up(first, second_site=second)``), connects ``repeat`` times and returns the times to
a working connection (signal exchange and checks, and the total including gathering).
Needs root and ``nattrav-lab``; imported only by tests and ``benchmarks/``.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

import anyio
import attrs

__all__ = ["PeerResult", "connect_in_lab", "lab_config", "time_to_connect"]


@attrs.frozen
class PeerResult:
    """What one peer saw: the path, the times, the data, or the error."""

    role: str
    site_role: str
    path: dict[str, Any] | None = None
    checks_seconds: float | None = None
    total_seconds: float | None = None
    received: bytes | None = None
    acked: bool = False
    stats: dict[str, Any] | None = None
    error: str | None = None

    @property
    def kind(self) -> str | None:
        return None if self.path is None else str(self.path["kind"])


def lab_config(
    lab: Any,
    *,
    gateways: bool = False,
    relay: bool = True,
    families: tuple[int, ...] = (4,),
    state_dir: str | None = None,
    p2p: Mapping[str, Any] | None = None,
) -> Any:
    """A nattrav ``Config`` for a peer in ``lab``: the lab's STUN/TURN server, IPv4 only by
    default, UPnP/NAT-PMP/PCP only when ``gateways``."""
    from nattrav.config import structure_config

    host4, port = lab.stun_primary4
    turn = lab.turn
    disabled = [] if gateways else ["upnp", "natpmp"]
    if not relay:
        disabled.append("relay")
    raw: dict[str, Any] = {
        "chain": {"disabled": disabled},
        "state_dir": state_dir or tempfile.mkdtemp(prefix="nattrav-p2p-"),
        "cleanup_on_start": False,
        "plugins": {
            "stun": {"servers": [f"{host4}:{port}"], "compare": 1, "filtering_probe": False},
            "relay": {
                "servers": [f"turn:{turn.host4}:{turn.port}?transport=udp"],
                "username": turn.user,
                "password": turn.password,
                "families": "ipv4" if families == (4,) else "auto",
                "self_test": False,
            },
            "p2p": {"families": list(families), **dict(p2p or {})},
        },
    }
    return structure_config(raw)


async def _peer(signal: Any, role: str, config: Any, timeout: float) -> PeerResult:
    from nattrav.connect import connect
    from nattrav.runtime import Runtime

    runtime = Runtime.load(config)
    start = anyio.current_time()
    mine = f"hello from the {role}".encode()
    received: bytes | None = None
    acked = False
    with anyio.fail_after(timeout):
        async with connect(signal, role=role, runtime=runtime, gather_timeout=4.0) as raw:  # type: ignore[arg-type]
            conn: Any = raw
            total = anyio.current_time() - start
            done = anyio.Event()

            async def reader() -> None:
                nonlocal received, acked
                while True:
                    data = await conn.receive()
                    if data.startswith(b"D"):
                        received = data[1:]
                        await conn.send(b"A")
                    elif data == b"A":
                        acked = True
                    if received is not None and acked:
                        done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                with anyio.move_on_after(10):
                    while not done.is_set():
                        await conn.send(b"D" + mine)
                        with anyio.move_on_after(0.05):
                            await done.wait()
                # Linger so the peer gets its acknowledgement too.
                await anyio.sleep(0.3)
                tg.cancel_scope.cancel()
            stats = conn.stats()
            return PeerResult(
                role=role,
                site_role="",
                path=conn.path.to_json(),
                checks_seconds=stats.get("connect_seconds"),
                total_seconds=total,
                received=received,
                acked=acked,
                stats=stats,
            )


def connect_in_lab(
    lab: Any,
    *,
    roles: tuple[str, str] = ("lan", "site2.lan"),
    gateways: bool = False,
    relay: bool = True,
    families: tuple[int, ...] = (4,),
    p2p: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    backend: str = "asyncio",
) -> tuple[PeerResult, PeerResult]:
    """One connection between ``roles[0]`` (offer) and ``roles[1]`` (answer); see above."""
    from nattrav_p2p.signals import thread_signal_pair

    sig_a, sig_b = thread_signal_pair()
    results: dict[str, PeerResult] = {}

    def run(site_role: str, role: str, signal: Any) -> None:
        config = lab_config(lab, gateways=gateways, relay=relay, families=families, p2p=p2p)
        try:
            with lab.inside(site_role):
                result = anyio.run(_peer, signal, role, config, timeout, backend=backend)
            results[role] = attrs.evolve(result, site_role=site_role)
        except BaseException as exc:  # reported, never lost in the thread
            results[role] = PeerResult(role, site_role, error=f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=run, args=(roles[0], "offer", sig_a), daemon=True),
        threading.Thread(target=run, args=(roles[1], "answer", sig_b), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    for role, site_role in (("offer", roles[0]), ("answer", roles[1])):
        results.setdefault(role, PeerResult(role, site_role, error="thread did not finish"))
    return results["offer"], results["answer"]


def time_to_connect(
    first: str,
    second: str,
    *,
    gateways: bool = False,
    repeat: int = 3,
    families: tuple[int, ...] = (4,),
) -> dict[str, Any]:
    """Benchmark hook: time to a working connection between a ``first`` and a ``second``
    site (lab topologies), ``repeat`` times. Returns a JSON-able summary."""
    from nattrav_lab import Lab

    runs: list[dict[str, Any]] = []
    with Lab.up(first, second_site=second) as lab:
        for _ in range(repeat):
            started = time.perf_counter()
            offer, answer = connect_in_lab(lab, gateways=gateways, families=families)
            runs.append(
                {
                    "wall_seconds": time.perf_counter() - started,
                    "kind": offer.kind,
                    "offer": {
                        "checks_seconds": offer.checks_seconds,
                        "total_seconds": offer.total_seconds,
                        "error": offer.error,
                    },
                    "answer": {
                        "checks_seconds": answer.checks_seconds,
                        "total_seconds": answer.total_seconds,
                        "error": answer.error,
                    },
                }
            )
    ok = [r for r in runs if r["offer"]["error"] is None and r["answer"]["error"] is None]
    checks = [r["offer"]["checks_seconds"] for r in ok if r["offer"]["checks_seconds"] is not None]
    totals = [r["offer"]["total_seconds"] for r in ok if r["offer"]["total_seconds"] is not None]
    return {
        "topologies": [first, second],
        "gateways": gateways,
        "families": list(families),
        "runs": runs,
        "succeeded": len(ok),
        "kinds": sorted({str(r["kind"]) for r in ok}),
        "median_checks_seconds": statistics.median(checks) if checks else None,
        "median_total_seconds": statistics.median(totals) if totals else None,
    }
