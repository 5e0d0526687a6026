"""The anyio driver on asyncio and trio, against a scripted gateway on loopback.

The scripted gateway (natpmp_testkit.ScriptedGateway) is used only for what miniupnpd in the
lab cannot be made to do on demand: answer with malformed or foreign packets, a wrong nonce, an
epoch that jumps back at a chosen moment, silence, a NAT-PMP-only server, error results with
error lifetimes, absurd lifetimes. The real-server behaviour is in test_lab.py.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from natpmp_testkit import (
    Request,
    ScriptedGateway,
    correct,
    natpmp_only,
    pcp_map,
    silent,
)
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.gateways import Gateway, GatewaySource
from nattrav.models import LeaseEventKind, Transport
from nattrav_natpmp.config import NatPmpSettings
from nattrav_natpmp.driver import GatewayClient, PortMapping
from nattrav_natpmp.errors import PcpError, PcpResult
from nattrav_natpmp.lease import Change, ErrorMemory

pytestmark = pytest.mark.anyio

LOOPBACK = Gateway("127.0.0.1", None, 4, GatewaySource.CONFIG)

FAST = NatPmpSettings(
    probe_window=0.3,
    min_lifetime=1,
    renewal_min_interval=0.05,
    recovery_delay=0.2,
    recovery_window=2.0,
    release_timeout=1.0,
    pcp_irt=0.2,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def scripted(responder: Any = None) -> AsyncIterator[ScriptedGateway]:
    gw = ScriptedGateway(responder)
    async with anyio.create_task_group() as tg:
        await tg.start(gw.serve)
        yield gw
        tg.cancel_scope.cancel()


@asynccontextmanager
async def client_for(
    gw: ScriptedGateway, settings: NatPmpSettings = FAST, **kw: Any
) -> AsyncIterator[GatewayClient]:
    kw.setdefault("listen", False)
    async with GatewayClient.open(LOOPBACK, settings=settings, server_port=gw.port, **kw) as client:
        yield client


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[int, LeaseEventKind, str]] = []
        self.event = anyio.Event()

    def __call__(self, mapping: PortMapping, change: Change) -> None:
        self.changes.append((mapping.internal_port, change.kind, change.detail))
        self.event.set()
        self.event = anyio.Event()

    def kinds(self, port: int | None = None) -> list[LeaseEventKind]:
        return [k for p, k, _ in self.changes if port is None or p == port]

    async def wait_for(self, count: int, kind: LeaseEventKind, port: int | None = None) -> None:
        with anyio.fail_after(10):
            while self.kinds(port).count(kind) < count:
                await self.event.wait()


async def test_pcp_create_renew_delete_keeps_the_nonce() -> None:
    record = Recorder()
    async with scripted() as gw, client_for(gw) as client:
        async with client.mapping(Transport.UDP, 40000, lifetime=1, on_change=record) as m:
            assert m.protocol == "pcp" and m.version == 2 and m.lifetime == 1
            assert str(m.external) == "198.51.100.2:40000"
            assert m.epoch == 10 and m.nonce is not None and len(m.nonce) == 12
            await record.wait_for(2, LeaseEventKind.RENEWED)
        maps = [r for r in gw.maps() if r.version == 2]
        assert len(maps) >= 3 and {r.nonce for r in maps} == {m.nonce}
        assert all(r.suggested_port == 40000 for r in maps[1:])  # renewals suggest the mapped port
        [delete] = gw.deletions()
        assert delete.version == 2 and delete.nonce == m.nonce and delete.internal_port == 40000
        assert record.kinds() == [LeaseEventKind.RENEWED] * len(record.kinds())


async def test_natpmp_only_gateway_falls_back() -> None:
    def moved(request: Request, gw: ScriptedGateway) -> list[bytes]:
        # This NAT-PMP server maps 40000 to external 50000.
        if request.version == 0 and request.opcode == 1 and request.lifetime:
            from natpmp_testkit import natpmp_map

            return [natpmp_map(gw.epoch, request.internal_port, 50000, request.lifetime)]
        return natpmp_only(request, gw)

    record = Recorder()
    async with scripted(moved) as gw, client_for(gw) as client:
        async with client.mapping(Transport.UDP, 40000, lifetime=1, on_change=record) as m:
            assert (m.protocol, m.version, m.nonce) == ("natpmp", 0, None)
            assert str(m.external) == "198.51.100.2:50000"
            assert client.pcp_version_seen == 0
            await record.wait_for(1, LeaseEventKind.RENEWED)
        renewals = [r for r in gw.maps() if r.version == 0]
        assert renewals[0].suggested_port == 0
        assert all(r.suggested_port == 50000 for r in renewals[1:])  # RFC 6886 §3.3
        [delete] = gw.deletions()
        assert (delete.version, delete.internal_port, delete.suggested_port) == (0, 40000, 0)


async def test_epoch_regression_recreates_every_mapping() -> None:
    record = Recorder()
    settings = NatPmpSettings(
        probe_window=0.3, min_lifetime=1, renewal_min_interval=0.05, recovery_delay=0.3
    )
    async with scripted() as gw, client_for(gw, settings) as client:
        gw.epoch = 100000
        async with client.mapping(Transport.UDP, 40001, lifetime=1, on_change=record):
            async with client.mapping(Transport.UDP, 40002, lifetime=600, on_change=record):
                gw.epoch = 3  # the gateway "rebooted": its next answer reveals it
                await record.wait_for(1, LeaseEventKind.RECOVERED, 40001)
                await record.wait_for(1, LeaseEventKind.RECOVERED, 40002)
        assert record.kinds(40001)[:2] == [LeaseEventKind.LOST, LeaseEventKind.RECOVERED]
        assert record.kinds(40002)[:2] == [LeaseEventKind.LOST, LeaseEventKind.RECOVERED]
        lost = [d for p, k, d in record.changes if k is LeaseEventKind.LOST]
        assert all("epoch 3 after 100000" in d for d in lost)
        # 40002 (a 600 s lease) was re-created long before its renewal was due.
        assert len([r for r in gw.maps() if r.internal_port == 40002]) == 2


async def test_announcement_from_the_gateway_triggers_recreation() -> None:
    record = Recorder()
    port = free_port()
    async with scripted() as gw:
        gw.epoch = 5000
        async with client_for(gw, listen=True, announce_port=port, announce_group=None) as client:
            async with client.mapping(Transport.UDP, 40003, lifetime=600, on_change=record):
                with anyio.fail_after(5):
                    while not client.listening:
                        await anyio.sleep(0.01)
                from natpmp_testkit import pcp_announce

                # P9: the same announcement from another address is ignored.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    stranger.bind(("127.0.0.2", 0))
                    stranger.sendto(pcp_announce(1), ("127.0.0.1", port))
                    with anyio.fail_after(5):
                        while not client.discards.get("announcement: wrong source"):
                            await anyio.sleep(0.01)
                assert client.announcements == 0 and record.changes == []
                gw.epoch = 1
                gw.send(pcp_announce(1), ("127.0.0.1", port))
                await record.wait_for(1, LeaseEventKind.RECOVERED)
                assert client.announcements == 1
        assert record.kinds()[:2] == [LeaseEventKind.LOST, LeaseEventKind.RECOVERED]


async def test_nothing_answering_costs_one_probe_window() -> None:
    async with scripted(silent) as gw, client_for(gw) as client:
        start = anyio.current_time()
        with pytest.raises(MethodUnavailable, match=r"no answer within 0\.3 s"):
            await client.create(Transport.UDP, 40000, lifetime=60)
        elapsed = anyio.current_time() - start
        assert 0.29 <= elapsed < 2.0
        # PCP and NAT-PMP at 0 s and once more at 0.25 s; on a loaded machine the 0.3 s
        # window may close before the resend goes out, and the gateway task may still be
        # reading the last datagram: give it a moment, then bound what was sent.
        with anyio.move_on_after(0.5):
            while len(gw.requests) < 4:
                await anyio.sleep(0.01)
        assert {r.version for r in gw.requests} == {0, 2}, gw.requests
        assert 2 <= len(gw.requests) <= 4, gw.requests


async def test_closed_port_fails_fast_on_icmp() -> None:
    gateway = LOOPBACK
    async with GatewayClient.open(
        gateway, settings=NatPmpSettings(probe_window=5.0), server_port=free_port(), listen=False
    ) as client:
        start = anyio.current_time()
        with pytest.raises(MethodUnavailable, match="ICMP"):
            await client.create(Transport.UDP, 40000, lifetime=60)
        assert anyio.current_time() - start < 2.0


async def test_garbage_and_foreign_answers_are_discarded() -> None:
    def noisy(request: Request, gw: ScriptedGateway) -> list[bytes]:
        if request.version == 2 and request.opcode == 1 and request.lifetime:
            return [
                b"\x02garbage",
                pcp_map(bytes(12), internal=request.internal_port),  # C3: another nonce
                pcp_map(request.nonce, internal=request.internal_port + 1),  # C3: another port
                *correct(request, gw),
            ]
        return correct(request, gw)

    async with scripted(noisy) as gw, client_for(gw) as client:
        m = await client.create(Transport.UDP, 40000, lifetime=60)
        assert m.protocol == "pcp" and str(m.external) == "198.51.100.2:40000"
        assert client.discards["nonce mismatch"] == 1
        assert client.discards["internal port mismatch"] == 1
        assert any(r.startswith("malformed") for r in client.discards)


async def test_responses_from_another_port_never_reach_the_client() -> None:
    """P1 at the socket: the client's socket is connected to the gateway's port."""

    async with scripted(silent) as gw, client_for(gw) as client:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as impostor:
            impostor.bind(("127.0.0.1", 0))

            async def answer() -> None:
                while not gw.requests:
                    await anyio.sleep(0.005)
                request = gw.requests[0]
                impostor.sendto(pcp_map(request.nonce, internal=40000), request.source)

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer)
                with pytest.raises(MethodUnavailable):
                    await client.create(Transport.UDP, 40000, lifetime=60)


async def test_c7_error_lifetime_is_honoured_without_sending() -> None:
    def full(request: Request, gw: ScriptedGateway) -> list[bytes]:
        if request.version == 2 and request.opcode == 1:
            return [pcp_map(request.nonce, result=8, lifetime=30, internal=request.internal_port)]
        return correct(request, gw)

    errors = ErrorMemory()
    async with scripted(full) as gw:
        async with client_for(gw, errors=errors) as client:
            with pytest.raises(PcpError) as info:
                await client.create(Transport.UDP, 40000, lifetime=60)
            assert info.value.result is PcpResult.NO_RESOURCES and info.value.lifetime == 30
            await anyio.sleep(0.2)  # let the scripted gateway read the probe's NAT-PMP request
            sent = len(gw.requests)
            with pytest.raises(PcpError):
                await client.create(Transport.UDP, 40000, lifetime=60)
            assert len(gw.requests) == sent  # remembered, not asked again
        async with client_for(gw, errors=errors) as again:  # a new attempt of the same runtime
            with pytest.raises(PcpError):
                await again.create(Transport.UDP, 40000, lifetime=60)
            assert len(gw.requests) == sent


async def test_deletion_survives_cancellation() -> None:
    async with scripted() as gw, client_for(gw) as client:
        with anyio.CancelScope() as scope:
            async with client.mapping(Transport.UDP, 40000, lifetime=60):
                scope.cancel()
                await anyio.sleep(10)
        assert scope.cancelled_caught
        assert len(gw.deletions()) == 1


async def test_p7_absurd_lifetimes() -> None:
    async with scripted() as gw:
        gw.granted = 2
        settings = NatPmpSettings(probe_window=0.3, min_lifetime=10, release_timeout=1.0)
        async with client_for(gw, settings) as client:
            with pytest.raises(MethodError, match="granted only 2 s"):
                await client.create(Transport.UDP, 40000, lifetime=3600)
            assert len(gw.deletions()) == 1  # not left behind
        gw.granted = 0
        async with client_for(gw, settings) as client:
            with pytest.raises(MethodError, match="granted lifetime 0"):
                await client.create(Transport.UDP, 40000, lifetime=3600)


async def test_p6_unknown_external_address() -> None:
    async with scripted(natpmp_only) as gw:
        gw.external = "0.0.0.0"
        async with client_for(gw) as client:
            m = await client.create(Transport.UDP, 40000, lifetime=60)
            assert m.protocol == "natpmp" and m.external is None


async def test_natpmp_delete_all_and_external_address() -> None:
    async with scripted(natpmp_only) as gw, client_for(gw) as client:
        found = await client.external_address_natpmp()
        assert (found.address, found.epoch, found.protocol) == ("198.51.100.2", 10, "natpmp")
        assert await client.delete_port(Transport.TCP, 0, protocol="natpmp")
        [delete] = gw.deletions()
        assert (delete.opcode, delete.internal_port, delete.lifetime) == (2, 0, 0)


async def test_pcp_announce_and_refusals() -> None:
    def refuse(request: Request, gw: ScriptedGateway) -> list[bytes]:
        if request.version == 2 and request.opcode == 1:
            return [
                pcp_map(
                    request.nonce,
                    result=2,
                    lifetime=0,
                    protocol=request.data[36],
                    internal=request.internal_port,
                )
            ]
        return correct(request, gw)

    async with scripted(refuse) as gw, client_for(gw) as client:
        found = await client.announce()
        assert (found.protocol, found.version, found.epoch) == ("pcp", 2, 10)
        with pytest.raises(PcpError, match="not authorized"):
            await client.create(Transport.TCP, 443, lifetime=60)
