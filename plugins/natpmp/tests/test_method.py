"""The ``natpmp`` method as the chain uses it, against scripted gateways on loopback (see
test_driver.py for why scripted): the candidate, double NAT, lease events, the journal, crash
cleanup, both families at once, and a chain run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from natpmp_testkit import ScriptedGateway, natpmp_only
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.gateways import Gateway, GatewaySource
from nattrav.journal import Journal
from nattrav.method import AttemptContext
from nattrav.models import (
    CandidateKind,
    Inbound,
    LeaseEvent,
    LeaseEventKind,
    Transport,
    TraversalRequest,
)
from nattrav_natpmp.config import NatPmpSettings
from nattrav_natpmp.method import NatPmpMethod, double_nat_reason

pytestmark = pytest.mark.anyio

SETTINGS = NatPmpSettings(
    probe_window=0.3, min_lifetime=1, renewal_min_interval=0.05, release_timeout=1.0
)


@asynccontextmanager
async def gateways(*hosts: str, responder: Any = None) -> AsyncIterator[list[ScriptedGateway]]:
    found = [ScriptedGateway(responder, host=h) for h in hosts]
    async with anyio.create_task_group() as tg:
        for gw in found:
            await tg.start(gw.serve)
        yield found
        tg.cancel_scope.cancel()


def method_for(*gws: ScriptedGateway, settings: NatPmpSettings = SETTINGS) -> NatPmpMethod:
    by_family = {
        (6 if ":" in gw.host else 4): Gateway(
            gw.host, None, 6 if ":" in gw.host else 4, GatewaySource.CONFIG
        )
        for gw in gws
    }
    ports = {gw.host: gw.port for gw in gws}
    assert len(set(ports.values())) == len(ports) or len(gws) == 1

    def find(family: int) -> list[Gateway]:
        return [by_family[family]] if family in by_family else []

    method = NatPmpMethod(settings, gateways=find, client_options={"listen": False})
    # Each family's scripted gateway listens on its own port.
    method._client_options["server_port"] = gws[0].port
    return method


def context(
    port: int = 40000,
    *,
    lifetime: float = 60.0,
    families: frozenset[int] = frozenset({4}),
    transport: Transport = Transport.UDP,
    journal: Journal | None = None,
) -> tuple[AttemptContext, list[LeaseEvent]]:
    events: list[LeaseEvent] = []
    ctx = AttemptContext(
        request=TraversalRequest(
            port=port, lifetime=lifetime, families=families, transport=transport
        ),
        method="natpmp",
        emit=events.append,
        journal=journal,
    )
    return ctx, events


async def test_candidate_claims_reachability_and_is_released(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    async with gateways("127.0.0.1") as [gw]:
        ctx, _ = context(journal=journal)
        async with method_for(gw).acquire(ctx) as acquisition:
            c = acquisition.candidate
            assert c.kind is CandidateKind.PORT_MAPPED and c.method == "natpmp"
            assert str(c.address) == "198.51.100.2:40000" and str(c.base) == "127.0.0.1:40000"
            assert c.reachability.inbound is Inbound.YES and not c.reachability.verified
            assert c.reachability.how == "gateway created a PCP mapping"
            assert c.lifetime == 60.0
            assert c.details["protocol"] == "PCP" and c.details["version"] == 2
            assert c.details["epoch"] == 10 and c.details["gateway"] == "127.0.0.1"
            [entry] = journal.entries()
            assert entry.method == "natpmp" and entry.data["nonce"] == c.details["nonce"]
            assert entry.data["external_port"] == 40000 and entry.expires is not None
        assert len(gw.deletions()) == 1
        assert journal.entries() == []


@pytest.mark.parametrize(
    ("external", "fragment"),
    [("10.0.0.5", "is private"), ("100.64.3.4", "carrier-grade NAT space")],
)
async def test_double_nat_is_unavailable_and_deleted(external: str, fragment: str) -> None:
    async with gateways("127.0.0.1") as [gw]:
        gw.external = external
        ctx, _ = context()
        with pytest.raises(MethodUnavailable, match="double NAT") as info:
            async with method_for(gw).acquire(ctx):
                pytest.fail("a double-NAT mapping must not be handed out")
        assert fragment in str(info.value) and external in str(info.value)
        assert len(gw.deletions()) == 1


def test_documentation_ranges_count_as_public() -> None:
    assert double_nat_reason("203.0.113.9") is None
    assert double_nat_reason("2001:db8::1") is None
    assert "private" in (double_nat_reason("fd00::1") or "")
    assert "loopback" in (double_nat_reason("127.0.0.1") or "")


async def test_unknown_external_address_is_not_published() -> None:
    async with gateways("127.0.0.1", responder=natpmp_only) as [gw]:
        gw.external = "0.0.0.0"
        ctx, _ = context()
        with pytest.raises(MethodError, match="does not know its external address") as info:
            async with method_for(gw).acquire(ctx):
                pytest.fail("unreachable")
        assert info.value.retryable and not isinstance(info.value, MethodUnavailable)


async def test_lease_events_go_through_ctx_emit() -> None:
    async with gateways("127.0.0.1") as [gw]:
        ctx, events = context(lifetime=1)
        async with method_for(gw).acquire(ctx) as acquisition:
            with anyio.fail_after(5):
                while not events:
                    await anyio.sleep(0.05)
        event = events[0]
        assert event.kind is LeaseEventKind.RENEWED and event.method == "natpmp"
        assert event.endpoint == acquisition.candidate.address
        assert event.details["protocol"] == "PCP"


async def test_no_gateway_and_no_port() -> None:
    method = NatPmpMethod(SETTINGS, gateways=lambda _f: [])
    ctx, _ = context()
    with pytest.raises(MethodUnavailable, match="no default gateway"):
        async with method.acquire(ctx):
            pass
    ctx, _ = context(port=0, transport=Transport.TCP)
    with pytest.raises(MethodUnavailable, match="needs a port"):
        async with method.acquire(ctx):
            pass


async def test_silent_gateway_is_unavailable_quickly() -> None:
    from natpmp_testkit import silent

    async with gateways("127.0.0.1", responder=silent) as [gw]:
        ctx, _ = context()
        start = anyio.current_time()
        with pytest.raises(MethodUnavailable, match=r"no answer within 0\.3 s"):
            async with method_for(gw).acquire(ctx):
                pass
        assert anyio.current_time() - start < 2.0


async def test_ipv6_uses_pcp_only() -> None:
    async with gateways("::1") as [gw]:
        gw.external = "2001:db8::10"
        ctx, _ = context(families=frozenset({6}))
        async with method_for(gw).acquire(ctx) as acquisition:
            assert str(acquisition.candidate.address) == "[2001:db8::10]:40000"
            assert acquisition.candidate.details["protocol"] == "PCP"
        assert all(r.version == 2 for r in gw.requests)  # NAT-PMP is IPv4-only


async def test_both_families_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateways("127.0.0.1", "::1") as [gw4, gw6]:
        gw6.external = "2001:db8::10"
        ports: dict[str, int] = {gw4.host: gw4.port, gw6.host: gw6.port}

        def find(family: int) -> list[Gateway]:
            host = "127.0.0.1" if family == 4 else "::1"
            return [Gateway(host, None, family, GatewaySource.CONFIG)]

        # One scripted gateway per family on its own port: route by family in the client.
        from nattrav_natpmp import driver

        opened = driver.GatewayClient.open

        def open_with_port(gateway: Gateway, **kw: Any) -> Any:
            return opened(gateway, server_port=ports[gateway.ip], **kw)

        method = NatPmpMethod(SETTINGS, gateways=find, client_options={"listen": False})
        ctx, _ = context(families=frozenset({4, 6}))
        monkeypatch.setattr(driver.GatewayClient, "open", open_with_port)
        async with method.acquire(ctx) as acquisition:
            assert str(acquisition.candidate.address) == "198.51.100.2:40000"
            assert [str(c.address) for c in acquisition.also] == ["[2001:db8::10]:40000"]
        assert len(gw4.deletions()) == 1 and len(gw6.deletions()) == 1


async def test_cleanup_releases_a_crashed_runs_mapping(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    async with gateways("127.0.0.1") as [gw]:
        method = method_for(gw)
        ctx, _ = context(journal=journal)
        async with method.acquire(ctx) as acquisition:
            [entry] = journal.entries()
            nonce = acquisition.candidate.details["nonce"]
            # Pretend the process died here: cleanup runs from another "process".
            await method.cleanup(entry, ctx)
            deletion = gw.deletions()[0]
            assert deletion.nonce.hex() == nonce and deletion.internal_port == 40000


async def test_chain_picks_natpmp(nattrav_host: Any) -> None:
    from nattrav.plugins import module_plugin
    from nattrav.runtime import Runtime

    async with gateways("127.0.0.1") as [gw]:
        method = method_for(gw)

        def nattrav_register_methods(registry: Any) -> None:
            registry.add(lambda: method, name="natpmp", priority=45, kind=CandidateKind.PORT_MAPPED)

        host = nattrav_host(
            ("natpmp", module_plugin("natpmp", nattrav_register_methods=(nattrav_register_methods)))
        )
        chain = Runtime(host).chain()
        async with chain.run(TraversalRequest(port=40000, families=frozenset({4}))) as held:
            assert held.result.method == "natpmp"
            assert str(held.result.endpoint) == "198.51.100.2:40000"
        assert len(gw.deletions()) == 1
