"""Owning mappings and pinholes: the recovery ladder on the wire, renewal, loss, release.

These run against the scripted IGD on loopback because they need gateway behaviours the lab's
miniupnpd cannot produce: 725 OnlyPermanentLeasesSupported, 402 on a finite lease, 727
ExternalPortOnlySupportsWildcard, 606 for everything, silently shortened leases (H7), a
mapping purged behind our back at a chosen moment, HTTP 503 outages, and pinholes controlled
over loopback. The same lifecycle runs against real miniupnpd in test_lab.py.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.journal import Journal
from nattrav.models import LeaseEvent, LeaseEventKind
from nattrav_upnp.control import ConnectionClient, FirewallClient, PortMappingEntry
from nattrav_upnp.lease import MappedPort, PinholeLease, PortMappingLease, hold, owns
from nattrav_upnp.planner import GatewayQuirks
from nattrav_upnp.testing import Mapping

pytestmark = pytest.mark.anyio
CLIENT = "192.168.1.20"


def _lease(
    client: ConnectionClient, events: list[LeaseEvent] | None = None, **kw: Any
) -> PortMappingLease:
    options: dict[str, Any] = {
        "quirks": GatewayQuirks(),
        "protocol": "udp",
        "internal_client": CLIENT,
        "internal_port": 40000,
        "external_ip": "203.0.113.5",
        "lease": 3600,
        "description": "nattrav",
        "verify_interval": 60.0,
        "release_timeout": 2.0,
        "rng": random.Random(3),
        "emit": (events.append if events is not None else None),
    }
    options.update(kw)
    return PortMappingLease(client, **options)


def _kinds(events: list[LeaseEvent]) -> list[LeaseEventKind]:
    return [ev.kind for ev in events]


async def test_create_hold_release(igd_session: Any, tmp_path: Any) -> None:
    journal = Journal(tmp_path)
    async with igd_session() as (fake, transport, conn, _fw):
        lease = _lease(ConnectionClient(transport, conn), journal=journal)
        async with hold(lease):
            m = lease.mapping
            assert m is not None
            assert (m.external_port, m.protocol, m.requested_lease, m.granted_lease) == (
                40000,
                "UDP",
                3600,
                3600,
            )
            assert str(m.endpoint()) == "203.0.113.5:40000"
            row = fake.mappings[(40000, "UDP")]
            assert row.internal_client == CLIENT and row.description == m.description
            assert m.description.startswith("nattrav ") and len(m.description) == 14
            (entry,) = journal.entries()
            assert entry.kind == "port-mapping" and entry.data["external_port"] == 40000
            assert entry.expires is not None
        assert fake.mappings == {}
        assert journal.entries() == []
        assert lease.released


async def test_725_falls_back_to_permanent_and_deletes_on_release(igd_session: Any) -> None:
    """725 OnlyPermanentLeasesSupported (scripted: miniupnpd accepts finite leases)."""
    async with igd_session(permanent_only=True) as (fake, transport, conn, _fw):
        quirks = GatewayQuirks()
        lease = _lease(ConnectionClient(transport, conn), quirks=quirks)
        async with hold(lease):
            assert lease.mapping is not None and lease.mapping.permanent
            assert fake.mappings[(40000, "UDP")].lease == 0
        assert quirks.permanent_only
        assert fake.mappings == {}  # the permanent mapping was deleted
        leases = [a["NewLeaseDuration"] for a in fake.actions("AddPortMapping")]
        assert leases == ["3600", "0"]
        # The next lease on this gateway starts on the right rung.
        async with hold(_lease(ConnectionClient(transport, conn), quirks=quirks)):
            pass
        assert [a["NewLeaseDuration"] for a in fake.actions("AddPortMapping")][2:] == ["0"]


async def test_402_on_a_lease_falls_back_to_permanent(igd_session: Any) -> None:
    """402 Invalid Args for any finite lease (scripted: ARRIS NVG578LX behaviour)."""
    async with igd_session(lease_402=True) as (fake, transport, conn, _fw):
        quirks = GatewayQuirks()
        async with hold(_lease(ConnectionClient(transport, conn), quirks=quirks)) as lease:
            assert lease.mapping is not None and lease.mapping.requested_lease == 0
        assert quirks.permanent_only
        assert fake.mappings == {}


async def test_727_uses_add_any_port_mapping(igd_session: Any) -> None:
    """727 ExternalPortOnlySupportsWildcard (scripted)."""
    async with igd_session(wildcard_external_only=True) as (fake, transport, conn, _fw):
        async with hold(_lease(ConnectionClient(transport, conn))) as lease:
            assert lease.mapping is not None
            assert lease.mapping.action == "AddAnyPortMapping"
            assert fake.actions("AddAnyPortMapping")


async def test_occupied_port_is_avoided_without_touching_it(igd_session: Any) -> None:
    """A port held by another client (or another app on this host) is never overwritten."""
    async with igd_session() as (fake, transport, conn, _fw):
        fake.mappings[(40000, "UDP")] = Mapping(40000, "UDP", 40000, CLIENT, "other app", 0)
        async with hold(_lease(ConnectionClient(transport, conn))) as lease:
            assert lease.mapping is not None and lease.mapping.external_port != 40000
        assert fake.mappings[(40000, "UDP")].description == "other app"
        assert all(a["NewExternalPort"] != "40000" for a in fake.actions("AddPortMapping"))


async def test_718_race_on_igd2_uses_add_any_port_mapping(igd_session: Any) -> None:
    """718 after the port looked free (another client won the race; scripted)."""
    async with igd_session(faults={"AddPortMapping": [718]}) as (_fake, transport, conn, _fw):
        quirks = GatewayQuirks()
        async with hold(_lease(ConnectionClient(transport, conn), quirks=quirks)) as lease:
            assert lease.mapping is not None
            assert lease.mapping.action == "AddAnyPortMapping"
            assert lease.mapping.external_port == 40000
        assert quirks.use_add_any


async def test_718_race_on_igd1_tries_random_ports(igd_session: Any) -> None:
    async with igd_session(version=1, faults={"AddPortMapping": [718, 718]}) as (
        fake,
        transport,
        conn,
        _fw,
    ):
        lease = _lease(ConnectionClient(transport, conn))
        async with hold(lease):
            assert lease.mapping is not None
            assert lease.mapping.external_port != 40000
            assert lease.mapping.action == "AddPortMapping"
        ports = [a["NewExternalPort"] for a in fake.actions("AddPortMapping")]
        assert len(ports) == 3 and len(set(ports)) == 3


async def test_606_makes_the_method_unavailable_and_leaves_nothing(
    igd_session: Any, tmp_path: Any
) -> None:
    """606 Action not authorized (scripted for every request)."""
    journal = Journal(tmp_path)
    async with igd_session(deny=True) as (fake, transport, conn, _fw):
        with pytest.raises(MethodUnavailable, match="606"):
            async with hold(_lease(ConnectionClient(transport, conn), journal=journal)):
                pytest.fail("must not be reached")
        assert journal.entries() == []
        assert fake.mappings == {}


async def test_401_on_add_any_falls_back_to_add_port_mapping(igd_session: Any) -> None:
    """An IGD:1 router without AddAnyPortMapping, though the quirks said to use it."""
    async with igd_session(version=1) as (fake, transport, conn, _fw):
        quirks = GatewayQuirks(use_add_any=True)
        async with hold(_lease(ConnectionClient(transport, conn), quirks=quirks)) as lease:
            assert lease.mapping is not None and lease.mapping.action == "AddPortMapping"
        # IGD:1: never tried AddAny at all (version gate), nothing left behind
        assert fake.mappings == {}


async def test_501_is_a_retryable_method_error(igd_session: Any) -> None:
    async with igd_session(faults={"AddPortMapping": [501]}) as (_fake, transport, conn, _fw):
        with pytest.raises(MethodError) as info:
            async with hold(_lease(ConnectionClient(transport, conn))):
                pass
        assert info.value.retryable


async def test_shortened_lease_is_renewed_at_half_of_what_was_granted(igd_session: Any) -> None:
    """H7: we ask for 3600 s, the router grants 2 s: renew within 1 s, twice."""
    async with igd_session(max_lease=2) as (fake, transport, conn, _fw):
        events: list[LeaseEvent] = []
        async with hold(_lease(ConnectionClient(transport, conn), events)) as lease:
            assert lease.mapping is not None and lease.mapping.granted_lease == 2
            with anyio.fail_after(5):
                while _kinds(events).count(LeaseEventKind.RENEWED) < 2:
                    await anyio.sleep(0.05)
        adds = fake.actions("AddPortMapping")
        assert len(adds) >= 3
        assert all(a["NewLeaseDuration"] == "3600" for a in adds)


async def test_vanished_mapping_is_re_added(igd_session: Any) -> None:
    """Pain point 5: the router purges the mapping; the keeper notices and re-adds it."""
    async with igd_session() as (fake, transport, conn, _fw):
        events: list[LeaseEvent] = []
        async with hold(
            _lease(ConnectionClient(transport, conn), events, verify_interval=0.1)
        ) as lease:
            del fake.mappings[(40000, "UDP")]
            with anyio.fail_after(5):
                while LeaseEventKind.RECOVERED not in _kinds(events):
                    await anyio.sleep(0.02)
            assert (40000, "UDP") in fake.mappings
            assert _kinds(events)[:2] == [LeaseEventKind.LOST, LeaseEventKind.RECOVERED]
            assert lease.mapping is not None and lease.mapping.external_port == 40000
        assert fake.mappings == {}


async def test_mapping_taken_over_is_replaced_and_change_reported(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, conn, _fw):
        events: list[LeaseEvent] = []
        async with hold(
            _lease(ConnectionClient(transport, conn), events, verify_interval=0.1)
        ) as lease:
            fake.mappings[(40000, "UDP")] = Mapping(40000, "UDP", 9, "192.168.1.99", "thief", 0)
            with anyio.fail_after(5):
                while LeaseEventKind.CHANGED not in _kinds(events):
                    await anyio.sleep(0.02)
            assert lease.mapping is not None and lease.mapping.external_port != 40000
        # Release deleted ours, never the other client's.
        assert list(fake.mappings) == [(40000, "UDP")]
        assert fake.mappings[(40000, "UDP")].description == "thief"


async def test_outage_then_recovery(igd_session: Any) -> None:
    """The gateway answers 503 for a while (scripted); LOST once, then RECOVERED."""
    async with igd_session() as (fake, transport, conn, _fw):
        events: list[LeaseEvent] = []
        client = ConnectionClient(transport, conn)
        reconnects = 0

        async def reconnect() -> ConnectionClient:
            nonlocal reconnects
            reconnects += 1
            return client

        lease = _lease(client, events, verify_interval=0.1, reconnect=reconnect)
        async with hold(lease):
            fake.broken = True
            with anyio.fail_after(5):
                while LeaseEventKind.LOST not in _kinds(events):
                    await anyio.sleep(0.02)
            fake.mappings.clear()  # the "reboot" lost the table too
            fake.broken = False
            with anyio.fail_after(5):
                while LeaseEventKind.RECOVERED not in _kinds(events):
                    await anyio.sleep(0.02)
            assert (40000, "UDP") in fake.mappings
        assert reconnects >= 1
        assert _kinds(events).count(LeaseEventKind.LOST) == 1


async def test_early_losses_switch_the_gateway_to_permanent_leases(igd_session: Any) -> None:
    """DD-WRT style: mappings vanish long before half their lease; after two, lease 0."""
    async with igd_session() as (fake, transport, conn, _fw):
        quirks = GatewayQuirks()
        events: list[LeaseEvent] = []
        lease = _lease(
            ConnectionClient(transport, conn), events, quirks=quirks, verify_interval=0.1
        )
        async with hold(lease):
            for expected in (1, 2):
                fake.mappings.clear()
                with anyio.fail_after(5):
                    while _kinds(events).count(LeaseEventKind.RECOVERED) < expected:
                        await anyio.sleep(0.02)
            assert quirks.permanent_only
            assert lease.mapping is not None and lease.mapping.permanent


async def test_cancellation_releases_the_mapping(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, conn, _fw):
        with anyio.move_on_after(0.3):
            async with hold(_lease(ConnectionClient(transport, conn))):
                assert fake.mappings
                await anyio.sleep_forever()
        assert fake.mappings == {}


async def test_release_never_deletes_someone_elses_mapping(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, conn, _fw):
        lease = _lease(ConnectionClient(transport, conn))
        async with hold(lease):
            fake.mappings[(40000, "UDP")] = Mapping(40000, "UDP", 40000, CLIENT, "another app", 0)
        assert fake.mappings[(40000, "UDP")].description == "another app"
        assert not fake.actions("DeletePortMapping")


async def test_release_failure_keeps_the_journal_entry(igd_session: Any, tmp_path: Any) -> None:
    journal = Journal(tmp_path)
    async with igd_session() as (fake, transport, conn, _fw):
        lease = _lease(ConnectionClient(transport, conn), journal=journal, release_timeout=0.5)
        async with hold(lease):
            fake.broken = True
        assert not lease.released
        (entry,) = journal.entries()
        assert entry.data["external_port"] == 40000


def test_ownership_rules() -> None:
    m = MappedPort(
        "203.0.113.5",
        40000,
        "UDP",
        CLIENT,
        40000,
        "nattrav 0a1b2c",
        3600,
        None,
        "AddPortMapping",
        0.0,
    )
    row = PortMappingEntry(40000, "UDP", 40000, CLIENT, True, "nattrav 0a1b2c", 3000)
    assert owns(row, m)
    assert owns(
        PortMappingEntry(40000, "UDP", 40000, CLIENT, True, "nattrav 0a1b", 3000), m
    )  # truncated
    assert not owns(PortMappingEntry(40000, "UDP", 40000, CLIENT, True, "nattrav", 3000), m)
    assert not owns(PortMappingEntry(40000, "UDP", 40001, CLIENT, True, "nattrav 0a1b2c", 3000), m)
    assert not owns(
        PortMappingEntry(40000, "UDP", 40000, "192.168.1.21", True, "nattrav 0a1b2c", 3000), m
    )


# ------------------------------------------------------------------- pinholes (scripted)


def _pinhole(
    client: FirewallClient, events: list[LeaseEvent] | None = None, **kw: Any
) -> PinholeLease:
    options: dict[str, Any] = {
        "protocol": "udp",
        "internal_client": "2001:db8::20",
        "internal_port": 40000,
        "lease": 3600,
        "verify_interval": 60.0,
        "release_timeout": 1.0,
        "emit": events.append if events is not None else None,
        "rng": random.Random(1),
    }
    options.update(kw)
    return PinholeLease(client, **options)


async def test_pinhole_lifecycle(igd_session: Any, tmp_path: Any) -> None:
    journal = Journal(tmp_path)
    async with igd_session() as (fake, transport, _conn, fw):
        events: list[LeaseEvent] = []
        lease = _pinhole(FirewallClient(transport, fw), events, lease=2, journal=journal)
        async with hold(lease):
            assert lease.pinhole is not None
            uid = lease.pinhole.unique_id
            assert fake.pinholes[uid]["InternalClient"] == "2001:db8::20"
            assert journal.entries()[0].data["unique_id"] == uid
            with anyio.fail_after(5):
                while LeaseEventKind.RENEWED not in _kinds(events):
                    await anyio.sleep(0.02)
            fake.pinholes.clear()
            with anyio.fail_after(5):
                while LeaseEventKind.RECOVERED not in _kinds(events):
                    await anyio.sleep(0.02)
            assert lease.pinhole.unique_id != uid
        assert fake.pinholes == {}
        assert journal.entries() == []


@pytest.mark.parametrize(
    ("quirk", "match"),
    [({"firewall_enabled": False}, "disabled"), ({"pinholes_allowed": False}, "does not allow")],
)
async def test_pinhole_unavailable(igd_session: Any, quirk: dict[str, bool], match: str) -> None:
    async with igd_session(**quirk) as (_fake, transport, _conn, fw):
        with pytest.raises(MethodUnavailable, match=match):
            async with hold(_pinhole(FirewallClient(transport, fw))):
                pass
