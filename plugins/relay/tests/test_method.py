"""The ``relay`` method in a real chain (core ``Runtime``) against a loopback coturn: the
candidate, its reachability (self-test), the channel the application uses, lease events,
unavailability, the server book, and ``cleanup`` of a crashed run's allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import nattrav_relay.plugin
import pytest
from nattrav.config import structure_config
from nattrav.errors import ChainExhausted, MethodError
from nattrav.journal import Journal, JournalEntry
from nattrav.method import AttemptContext
from nattrav.models import (
    AttemptOutcome,
    CandidateKind,
    Goal,
    Inbound,
    LeaseEvent,
    LeaseEventKind,
    Transport,
    TransportAddress,
    TraversalRequest,
)
from nattrav.plugins import PluginHost
from nattrav.runtime import Runtime
from nattrav_relay.config import load_config
from nattrav_relay.method import RelayMethod, ServerBook
from nattrav_relay.testing import Coturn, assert_cleanup_frees_the_5_tuple

pytestmark = pytest.mark.anyio


def runtime(tmp_path: Path, relay: dict[str, Any]) -> Runtime:
    config = structure_config(
        {
            "plugins": {"relay": relay},
            "state_dir": str(tmp_path / "state"),
            "chain": {"strategy": "sequential"},
        }
    )
    host = PluginHost.load(
        config, entry_points=[], builtins=False, extra=[("relay", nattrav_relay.plugin)]
    )
    return Runtime(host)


def table(server: Coturn, **extra: Any) -> dict[str, Any]:
    return {
        "servers": [server.uri("udp")],
        "username": server.username,
        "password": server.password,
        **extra,
    }


async def test_the_chain_gets_a_proven_relayed_endpoint_and_uses_its_channel(
    coturn: Coturn, tmp_path: Path
) -> None:
    rt = runtime(tmp_path, table(coturn))
    events: list[LeaseEvent] = []
    async with rt.traverse(TraversalRequest(port=0), on_event=events.append) as (held, _mux):
        result = held.result
        candidate = result.candidate
        assert result.method == "relay" and candidate.kind is CandidateKind.RELAYED
        assert candidate.reachability.inbound is Inbound.YES
        assert candidate.reachability.verified  # the self-test relayed a datagram to us
        assert "self-test" in candidate.reachability.how
        assert candidate.lifetime == 600.0 and candidate.base is not None
        assert candidate.details["inbound"].startswith("peers with a permission")
        channel = held.channel
        assert channel is not None
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as peer:
            host, port = peer.extra(anyio.abc.SocketAttribute.local_address)[:2]
            await channel.send_to(b"via relay", TransportAddress(host, port))
            with anyio.fail_after(3):
                data, source = await peer.receive()
            assert data == b"via relay"
            assert (source[0], source[1]) == (candidate.address.host, candidate.address.port)
            await peer.sendto(b"answer", source[0], source[1])
            with anyio.fail_after(3):
                assert (await channel.receive())[0] == b"answer"
        journal = rt.journal.entries()
        assert [e.method for e in journal] == ["relay"]
    kinds = [e.kind for e in events]
    assert kinds == [LeaseEventKind.ACQUIRED, LeaseEventKind.RELEASED]  # no duplicates
    assert rt.journal.entries() == []  # deleted and forgotten


async def test_without_self_test_the_candidate_is_claimed(coturn: Coturn, tmp_path: Path) -> None:
    rt = runtime(tmp_path, table(coturn, self_test=False, permit=["127.0.0.5"]))
    async with rt.traverse(TraversalRequest(port=0)) as (held, _mux):
        reach = held.result.candidate.reachability
        assert reach.inbound is Inbound.YES and not reach.verified
        assert "127.0.0.5" in reach.how
        assert held.result.candidate.details["permitted"] == ["127.0.0.5"]


async def test_dual_allocation_gives_a_second_candidate(coturn: Coturn, tmp_path: Path) -> None:
    rt = runtime(tmp_path, table(coturn, families="dual", self_test=False))
    chain = rt.chain()
    async with chain.gather(TraversalRequest(port=0, goal=Goal.ANY)) as gathered:
        families = sorted(c.address.family for c in gathered.candidates)
        assert families == [4, 6]


async def test_no_server_means_unavailable(tmp_path: Path) -> None:
    rt = runtime(tmp_path, {})
    with pytest.raises(ChainExhausted) as caught:
        async with rt.traverse(TraversalRequest(port=0)):
            pytest.fail("no relay without a server")
    [record] = caught.value.failures
    assert record.outcome is AttemptOutcome.UNAVAILABLE and "no TURN server" in record.reason


async def test_tcp_requests_are_unavailable(coturn: Coturn, tmp_path: Path) -> None:
    method = RelayMethod(load_config(table(coturn)))
    ctx = AttemptContext(TraversalRequest(port=5000, transport=Transport.TCP), "relay")
    with pytest.raises(MethodError, match="RFC 6062"):
        async with method.acquire(ctx):
            pytest.fail("TCP relaying is not supported")


async def test_failures_of_every_server_are_reported(coturn: Coturn) -> None:
    cfg = load_config(
        {
            "servers": ["turn:127.0.0.1:9?transport=udp", coturn.uri("udp")],
            "username": coturn.username,
            "password": "wrong",
            "timeout": 0.6,
        }
    )
    ctx = AttemptContext(TraversalRequest(port=0), "relay")
    with pytest.raises(MethodError) as caught:
        async with RelayMethod(cfg).acquire(ctx):
            pytest.fail("allocated with a wrong password")
    assert "no allocation within" in caught.value.reason and "401" in caught.value.reason


async def test_a_server_that_failed_t1_is_skipped(coturn: Coturn) -> None:
    book = ServerBook()
    book.block(coturn.uri("udp"), "relayed address of unknown family 0x03")
    ctx = AttemptContext(TraversalRequest(port=0), "relay")
    with pytest.raises(MethodError, match="not used again"):
        async with RelayMethod(load_config(table(coturn)), book).acquire(ctx):
            pytest.fail("used a blocked server")


async def test_lease_events_of_a_recovery_reach_the_chain(tmp_path: Path) -> None:
    from nattrav_relay.testing import run_coturn

    with run_coturn(tmp_path / "coturn", extra=["--max-allocate-lifetime=4"]) as server:
        events: list[LeaseEvent] = []
        ctx = AttemptContext(TraversalRequest(port=0), "relay", emit=events.append)
        method = RelayMethod(load_config(table(server, self_test=False)))
        async with method.acquire(ctx) as acquisition:
            first = acquisition.candidate.address
            await anyio.to_thread.run_sync(server.restart)
            with anyio.fail_after(15):
                while not any(e.kind is LeaseEventKind.CHANGED for e in events):
                    await anyio.sleep(0.05)
        kinds = [e.kind for e in events]
        assert LeaseEventKind.ACQUIRED not in kinds  # the chain reports those itself
        changed = next(e for e in events if e.kind is LeaseEventKind.CHANGED)
        assert changed.endpoint != first and changed.method == "relay"


# ----------------------------------------------------------------------------- cleanup


async def crashed_entry(server: Coturn, tmp_path: Path) -> JournalEntry:
    """A real crash: ``nattrav relay allocate`` (which journals its allocation) is killed
    with SIGKILL once it printed the relayed address; nothing is deleted."""
    import json
    import os
    import signal
    import subprocess
    import sys

    state = tmp_path / "state"
    env = {**os.environ, "NATTRAV_STATE_DIR": str(state)}
    argv = [
        sys.executable,
        "-m",
        "nattrav.cli",
        "relay",
        "allocate",
        server.uri("udp"),
        "--user",
        server.username,
        "--password",
        server.password,
        "--json",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        assert json.loads(line)["event"] == "allocated"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
        proc.stdout.close()  # type: ignore[union-attr]
    [entry] = Journal(state).leftovers()
    return entry


async def test_cleanup_deletes_a_crashed_udp_allocation_from_its_old_port(
    coturn: Coturn, tmp_path: Path
) -> None:
    """Proof by the server's own rule: while the crashed run's allocation lives, a new
    Allocate from its 5-tuple draws 437; after cleanup the same 5-tuple can allocate again
    (coturn tears the session down within about a second of the LIFETIME 0)."""
    entry = await crashed_entry(coturn, tmp_path)
    assert entry.data["transport"] == "udp" and entry.data["relayed"]
    await assert_cleanup_frees_the_5_tuple(coturn, entry, table(coturn))


async def test_cleanup_refuses_when_the_nat_mapping_changed(coturn: Coturn, tmp_path: Path) -> None:
    entry = await crashed_entry(coturn, tmp_path)
    data = dict(entry.data)
    data["mapped"] = "198.51.100.7:40000"  # what a NAT had mapped; now it maps differently
    moved = JournalEntry(entry.id, entry.method, entry.kind, data, expires=entry.expires)
    method = RelayMethod(load_config(table(coturn)))
    with pytest.raises(MethodError, match=r"mapping changed.*expires at"):
        await method.cleanup(moved, AttemptContext(TraversalRequest(), "relay"))
    await method.cleanup(entry, AttemptContext(TraversalRequest(), "relay"))  # tidy up


async def test_cleanup_of_tcp_and_expired_entries_is_immediate(coturn: Coturn) -> None:
    method = RelayMethod(load_config(table(coturn)))
    ctx = AttemptContext(TraversalRequest(), "relay")
    tcp = JournalEntry(
        "relay-x",
        "relay",
        "allocation",
        {"transport": "tcp", "local": "127.0.0.1:1", "server_address": "x"},
    )
    await method.cleanup(tcp, ctx)  # died with its connection
    old = JournalEntry("relay-y", "relay", "allocation", {"transport": "udp"}, expires=1.0)
    await method.cleanup(old, ctx)  # expired with its lifetime


async def test_cleanup_through_the_runtime_reports_the_outcome(
    coturn: Coturn, tmp_path: Path
) -> None:
    entry = await crashed_entry(coturn, tmp_path)  # in tmp_path/state, like the runtime's
    rt = runtime(tmp_path, table(coturn))
    outcomes = await rt.cleanup()
    assert [(o.entry.id, o.released, o.detail) for o in outcomes] == [(entry.id, True, "released")]
    assert rt.journal.entries() == []


@pytest.mark.anyio
async def test_chain_method_asks_the_credentials_hook_of_other_plugins(tmp_path: Path) -> None:
    """A plugin implementing ``nattrav_relay_credentials`` supplies the password to the chain
    method (core's ``nattrav_add_hookspecs`` + ``ctx.pluginmanager``)."""
    import nattrav_relay.plugin as relay_plugin
    from nattrav.hookspecs import hookimpl
    from nattrav.method import AttemptContext
    from nattrav.models import TraversalRequest
    from nattrav.plugins import PluginHost
    from nattrav.runtime import Runtime
    from nattrav_relay.config import load_config
    from nattrav_relay.credentials import RelayCredentials

    asked: list[tuple[str, str | None]] = []

    class Vault:
        @hookimpl
        def nattrav_relay_credentials(
            self, server: str, username: str | None, realm: str | None
        ) -> object:
            asked.append((server, username))
            return ("vault-user", "vault-pass")

    host = PluginHost.load(
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("relay", relay_plugin), ("vault", Vault())],
    )
    ctx = Runtime(host).context("relay", TraversalRequest())
    assert isinstance(ctx, AttemptContext)
    method = host.methods["relay"].factory()
    method.config = load_config({"servers": ["turn:192.0.2.1:3478"]})
    method.credentials.config = method.config
    method._use_hooks(ctx)
    creds = await method.credentials.get(method.config.servers[0])
    assert creds == RelayCredentials("vault-user", "vault-pass")
    assert asked == [("turn:192.0.2.1:3478", None)]
