"""The ``stun`` method through ``acquire``: candidate, comparison, reachability, keepalive."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest
from nattrav.datagram import DatagramMux
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.method import AttemptContext
from nattrav.models import (
    CandidateKind,
    Inbound,
    LeaseEvent,
    LeaseEventKind,
    Transport,
    TraversalRequest,
)
from nattrav_stun import codec as c
from nattrav_stun.config import load_config
from nattrav_stun.method import StunMethod
from nattrav_stun.testing import Coturn

pytestmark = pytest.mark.anyio


def method(**table: object) -> StunMethod:
    table.setdefault("rto", 0.1)
    table.setdefault("probe_window", 0.3)
    table.setdefault("compare_wait", 0.3)
    return StunMethod(load_config(table))


async def test_srflx_candidate_of_the_shared_port_proven_by_rfc5780(coturn: Coturn) -> None:
    events: list[LeaseEvent] = []
    async with DatagramMux.open(0, families={4}) as mux:
        ctx = AttemptContext(
            TraversalRequest(port=mux.port), "stun", sockets=mux, emit=events.append
        )
        async with method(servers=[coturn.uri, f"127.0.0.1:{coturn.port + 1}"]).acquire(
            ctx
        ) as acquisition:
            candidate = acquisition.candidate
    assert candidate.kind is CandidateKind.SERVER_REFLEXIVE and candidate.method == "stun"
    assert candidate.address.host == "127.0.0.1" and candidate.address.port == mux.port
    assert candidate.address.transport is Transport.UDP
    assert candidate.reachability.inbound is Inbound.YES and candidate.reachability.verified
    assert "endpoint-independent" in candidate.reachability.how
    details = candidate.details
    assert details["filtering_probe"] == "endpoint-independent"
    assert details["mapping_varies_by_destination"] is False  # two servers, one mapping
    assert len(details["servers"]) == 2 and details["nat"] is False
    assert candidate.base is not None and candidate.base.port == mux.port


async def test_answers_another_method_may_have_let_in_prove_nothing(coturn: Coturn) -> None:
    """Found in the lab: UPnP mapped the same port while the filtering probe ran, so the
    CHANGE-REQUEST answer came in through the gateway's mapping and "proved" filtering that
    the NAT does not do. Likewise an answer from an address the port already talked to."""
    async with DatagramMux.open(0, families={4}) as mux:
        ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
        mux.note_mapping("upnp")  # a gateway may forward this port now
        async with method(servers=[coturn.uri]).acquire(ctx) as acquisition:
            forwarded = acquisition.candidate
        mux.forget_mapping("upnp")
        assert not mux.forwarded
        other = f"127.0.0.2:{coturn.port + 1}"  # coturn's alternate address, asked directly
        async with method(servers=[coturn.uri, other]).acquire(ctx) as acquisition:
            talked = acquisition.candidate
    for candidate in (forwarded, talked):
        assert candidate.reachability.inbound is Inbound.UNKNOWN
        assert candidate.details["filtering_probe"] == "inconclusive"
    assert "port mapping" in forwarded.reachability.how
    assert "already sent to 127.0.0.2" in talked.reachability.how


async def test_without_rfc5780_reachability_stays_unknown(tmp_path: object) -> None:
    from pathlib import Path

    from nattrav_stun.testing import run_coturn

    with run_coturn(Path(str(tmp_path))) as server:
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            async with method(servers=[server.uri]).acquire(ctx) as acquisition:
                candidate = acquisition.candidate
    assert candidate.reachability.inbound is Inbound.UNKNOWN
    assert "RFC 5780" in candidate.reachability.how
    assert candidate.details["filtering_probe"] == "unsupported"
    assert candidate.details["mapping_varies_by_destination"] is None  # one server only


async def test_own_socket_on_the_requested_port_without_ctx_sockets(coturn: Coturn) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    ctx = AttemptContext(TraversalRequest(port=port, families=frozenset({4})), "stun")
    async with method(servers=[coturn.uri]).acquire(ctx) as acquisition:
        assert acquisition.candidate.address.port == port


async def test_unavailable_without_servers_or_for_tcp() -> None:
    ctx = AttemptContext(TraversalRequest(port=0), "stun")
    with pytest.raises(MethodUnavailable, match="--stun"):
        async with method().acquire(ctx):
            pass
    tcp = AttemptContext(TraversalRequest(port=0, transport=Transport.TCP), "stun")
    with pytest.raises(MethodUnavailable, match="UDP"):
        async with method(servers=["192.0.2.1:3478"]).acquire(tcp):
            pass


async def test_no_answer_is_a_retryable_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            stun = method(servers=[f"127.0.0.1:{port}"], rc=2, rm=2)
            with pytest.raises(MethodError) as info:
                async with stun.acquire(ctx):
                    pass
    assert info.value.retryable and "no STUN server answered" in str(info.value)


async def test_silence_past_answer_timeout_gives_up_without_retry() -> None:
    """With the RFC schedule (39.5 s) a blocked network would hold the method for the chain's
    whole deadline; ``answer_timeout`` ends it, and retrying in the same run is pointless."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            stun = method(servers=[f"127.0.0.1:{port}"], rto=0.5, answer_timeout=0.6)
            started = anyio.current_time()
            with pytest.raises(MethodError) as info:
                async with stun.acquire(ctx):
                    pass
            assert anyio.current_time() - started < 3.0
    assert not info.value.retryable
    assert "no answer within 0.6 s" in str(info.value)


class ScriptedServer:
    """A scripted Binding responder: coturn cannot be told to report a different mapping
    (a NAT rebinding) or to go silent on demand, and does not say which indications it got."""

    def __init__(self, sock: anyio.abc.UDPSocket) -> None:
        self.sock = sock
        self.indications = 0
        self.requests = 0
        self.mapped_port_offset = 0
        self.silent = False

    async def serve(self) -> None:
        async for data, (host, port) in self.sock:
            msg = c.decode(data)
            if msg.cls == c.INDICATION:
                self.indications += 1
                continue
            self.requests += 1
            if self.silent:
                continue
            reply = c.Message(
                c.BINDING,
                c.SUCCESS,
                msg.transaction_id,
                {c.XOR_MAPPED_ADDRESS: c.Address(host, port + self.mapped_port_offset)},
            )
            await self.sock.sendto(c.encode(reply), host, port)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedServer, int]]:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
        server = ScriptedServer(sock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            yield server, sock.extra(anyio.abc.SocketAttribute.local_port)
            tg.cancel_scope.cancel()


async def test_keepalive_indications_and_mapping_change_events(
    scripted: tuple[ScriptedServer, int],
) -> None:
    server, port = scripted
    events: list[LeaseEvent] = []
    async with DatagramMux.open(0, families={4}) as mux:
        ctx = AttemptContext(
            TraversalRequest(port=mux.port), "stun", sockets=mux, emit=events.append
        )
        stun = method(servers=[f"127.0.0.1:{port}"], keepalive=0.05, recheck=0.3, rc=2, rm=2)
        async with stun.acquire(ctx) as acquisition:
            assert acquisition.candidate.address.port == mux.port
            await anyio.sleep(0.25)
            assert server.indications >= 3  # every 50 ms
            server.mapped_port_offset = 7  # the NAT rebinds
            await anyio.sleep(0.3)
            assert [e.kind for e in events] == [LeaseEventKind.CHANGED]
            assert events[0].endpoint is not None and events[0].endpoint.port == mux.port + 7
            server.silent = True
            await anyio.sleep(0.6)
            assert events[-1].kind is LeaseEventKind.LOST
            server.silent = False
            await anyio.sleep(0.45)
            assert events[-1].kind is LeaseEventKind.RECOVERED


async def test_dual_stack_server_name_reports_both_families(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with A and AAAA records is asked over both families; IPv6 leads (RFC 8305
    order) and the IPv4 mapping comes in ``also``. No name here has both records (no DNS,
    ``localhost`` is IPv4 only), so resolution is replaced for one made-up name."""
    from pathlib import Path

    from nattrav_stun import method as method_module
    from nattrav_stun.testing import run_coturn

    with run_coturn(Path(str(tmp_path)), extra=["-L", "::1"]) as server:

        async def fake_resolve(host: str, port: int, families: frozenset[int]) -> list[c.Address]:
            assert host == "dual.test"
            return [c.Address("::1", port), c.Address("127.0.0.1", port)]

        monkeypatch.setattr(method_module, "resolve", fake_resolve)
        async with DatagramMux.open(0) as mux:
            if mux.families != {4, 6}:
                pytest.fail(f"this host cannot bind IPv4 and IPv6 on one port: {mux.families}")
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            async with method(servers=[f"dual.test:{server.port}"]).acquire(ctx) as acquisition:
                candidate, also = acquisition.candidate, acquisition.also
    assert candidate.address.host == "::1" and candidate.address.port == mux.port
    assert [(a.address.host, a.address.port) for a in also] == [("127.0.0.1", mux.port)]
    assert sorted(s["address"] for s in candidate.details["servers"]) == sorted(
        [f"[::1]:{server.port}", f"127.0.0.1:{server.port}"]
    )
