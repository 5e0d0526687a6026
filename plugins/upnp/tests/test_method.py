"""The ``upnp`` method end to end over loopback: SSDP, description, probes, mapping, events.

Uses the scripted IGD and SSDP responder on 127.0.0.1 (the lab's miniupnpd is exercised in
test_lab.py) to cover what miniupnpd cannot show here: a double-NAT external address, a
disconnected WAN, a gateway without WAN services, and pinholes over loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from nattrav.errors import MethodUnavailable
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
from nattrav_upnp.config import UpnpConfig
from nattrav_upnp.method import UpnpMethod
from nattrav_upnp.planner import QuirkBook
from nattrav_upnp.testing import FakeIgd, SsdpResponder, igd_answer
from nattrav_upnp.urls import UrlPolicy

pytestmark = pytest.mark.anyio
FAST = UpnpConfig(discovery_window=0.5, settle=0.02, settle_other=0.05, http_timeout=1.0)


@asynccontextmanager
async def _gateway(
    plan_for: Callable[[int], Any], **quirks: Any
) -> AsyncIterator[tuple[FakeIgd, UpnpMethod]]:
    fake = FakeIgd(**quirks)
    async with fake.running():
        async with SsdpResponder(igd_answer(fake.location)).running() as responder:
            method = UpnpMethod(
                FAST,
                QuirkBook(),
                plan=plan_for(responder.port),
                gateways=("127.0.0.1",),
                policy=UrlPolicy(allow_loopback=True),
            )
            yield fake, method


def _ctx(
    events: list[LeaseEvent], journal: Journal | None = None, **request: Any
) -> AttemptContext:
    req = TraversalRequest(port=40000, families=frozenset({4}), **request)
    return AttemptContext(request=req, method="upnp", emit=events.append, journal=journal)


async def test_acquire_maps_the_port_and_releases_it(loopback_plan: Any, tmp_path: Any) -> None:
    events: list[LeaseEvent] = []
    journal = Journal(tmp_path)
    async with _gateway(loopback_plan) as (fake, method):
        async with method.acquire(_ctx(events, journal)) as acq:
            c = acq.candidate
            assert c.kind is CandidateKind.PORT_MAPPED
            assert c.method == "upnp"
            assert str(c.address) == "203.0.113.5:40000"
            assert c.address.transport is Transport.UDP
            assert c.base is not None and str(c.base) == "127.0.0.1:40000"
            assert c.reachability.inbound is Inbound.YES and not c.reachability.verified
            assert c.reachability.how == "gateway created a port mapping"
            assert c.lifetime == 3600
            assert c.details["igd_version"] == 2
            assert fake.mappings[(40000, "UDP")].internal_client == "127.0.0.1"
            assert len(journal.entries()) == 1
        assert fake.mappings == {}
        assert journal.entries() == []


async def test_tcp_request(loopback_plan: Any) -> None:
    async with _gateway(loopback_plan) as (fake, method):
        async with method.acquire(_ctx([], transport=Transport.TCP)) as acq:
            assert acq.candidate.address.transport is Transport.TCP
            assert (40000, "TCP") in fake.mappings


async def test_request_lifetime_caps_the_lease(loopback_plan: Any) -> None:
    async with _gateway(loopback_plan) as (fake, method):
        async with method.acquire(_ctx([], lifetime=120.0)) as acq:
            assert acq.candidate.lifetime == 120
            assert fake.mappings[(40000, "UDP")].lease == 120


@pytest.mark.parametrize(
    ("ip", "match"),
    [
        ("192.168.0.2", "double NAT"),
        ("100.64.0.9", "double NAT"),
        ("0.0.0.0", "WAN link is down"),
        ("127.0.0.1", "WAN link is down"),
    ],
)
async def test_non_public_external_address_is_never_advertised(
    loopback_plan: Any, ip: str, match: str
) -> None:
    """H5: a private/CGNAT/0.0.0.0/loopback external address: no candidate, no mapping."""
    async with _gateway(loopback_plan, external_ip=ip) as (fake, method):
        with pytest.raises(MethodUnavailable, match=match):
            async with method.acquire(_ctx([])):
                pytest.fail("must not be reached")
        assert fake.mappings == {}
        assert not fake.actions("AddPortMapping")


async def test_disconnected_wan_is_unavailable(loopback_plan: Any) -> None:
    """H6: GetStatusInfo says Disconnected."""
    async with _gateway(loopback_plan, status="Disconnected") as (_fake, method):
        with pytest.raises(MethodUnavailable, match="Disconnected"):
            async with method.acquire(_ctx([])):
                pass


async def test_no_igd_answering_gives_the_helpful_message(loopback_plan: Any) -> None:
    async with SsdpResponder(lambda _d: []).running() as silent:
        method = UpnpMethod(
            UpnpConfig(discovery_window=0.2),
            plan=loopback_plan(silent.port),
            policy=UrlPolicy(allow_loopback=True),
        )
        with pytest.raises(MethodUnavailable) as info:
            async with method.acquire(_ctx([])):
                pass
    assert info.value.reason == (
        "no UPnP IGD answered on lo within 0.2 s; is UPnP enabled on the router?"
    )
    assert not info.value.retryable


async def test_device_with_unfetchable_description_is_explained(loopback_plan: Any) -> None:
    async with SsdpResponder(igd_answer("http://127.0.0.1:1/rootDesc.xml")).running() as r:
        method = UpnpMethod(FAST, plan=loopback_plan(r.port), policy=UrlPolicy(allow_loopback=True))
        with pytest.raises(MethodUnavailable, match="none offers a WANIPConnection"):
            async with method.acquire(_ctx([])):
                pass


async def test_tcp_without_port_is_unavailable() -> None:
    method = UpnpMethod(FAST)
    ctx = AttemptContext(request=TraversalRequest(port=0, transport=Transport.TCP), method="upnp")
    with pytest.raises(MethodUnavailable, match="port"):
        async with method.acquire(ctx):
            pass


async def test_quirks_are_shared_between_method_objects(loopback_plan: Any) -> None:
    """725 learnt by one attempt: the next attempt asks for lease 0 straight away."""
    async with _gateway(loopback_plan, permanent_only=True) as (fake, method):
        async with method.acquire(_ctx([])) as acq:
            assert acq.candidate.lifetime is None  # permanent
            assert acq.candidate.details["permanent"]
        second = UpnpMethod(
            method.config,
            method.quirks,
            plan=method.plan,
            gateways=method.gateways,
            policy=method.policy,
        )
        async with second.acquire(_ctx([])):
            pass
        leases = [a["NewLeaseDuration"] for a in fake.actions("AddPortMapping")]
        assert leases == ["3600", "0", "0"]
        assert fake.mappings == {}


async def test_events_reach_the_context(loopback_plan: Any) -> None:
    events: list[LeaseEvent] = []
    cfg = UpnpConfig(discovery_window=0.5, settle=0.02, verify_interval=0.1)
    async with _gateway(loopback_plan) as (fake, method):
        method.config = cfg
        async with method.acquire(_ctx(events)):
            fake.mappings.clear()
            with anyio.fail_after(5):
                while LeaseEventKind.RECOVERED not in [e.kind for e in events]:
                    await anyio.sleep(0.02)
    assert all(e.method == "upnp" for e in events)
    assert events[0].kind is LeaseEventKind.LOST
