"""Typed IGD actions against a scripted IGD on loopback.

The scripted IGD is used here to check the wire format (argument names and order, upper-case
protocol, numeric pinhole protocol) independently of the lab; the same actions run against
the real miniupnpd in test_lab.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from nattrav.errors import ParseError
from nattrav_upnp import errors as e
from nattrav_upnp.control import ConnectionClient, FirewallClient, protocol_number

pytestmark = pytest.mark.anyio


async def test_connection_actions_round_trip(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, conn, _fw):
        client = ConnectionClient(transport, conn)
        assert client.version == 2
        assert await client.get_external_ip_address() == "203.0.113.5"
        status = await client.get_status_info()
        assert status.connected and status.uptime == 42
        await client.add_port_mapping(
            external_port=40000,
            protocol="udp",
            internal_port=4000,
            internal_client="192.168.1.20",
            description="nattrav t",
            lease=600,
        )
        (args,) = fake.actions("AddPortMapping")
        assert list(args) == [
            "NewRemoteHost",
            "NewExternalPort",
            "NewProtocol",
            "NewInternalPort",
            "NewInternalClient",
            "NewEnabled",
            "NewPortMappingDescription",
            "NewLeaseDuration",
        ]
        assert args["NewProtocol"] == "UDP"  # upper case: tailscale#7377
        entry = await client.get_specific_port_mapping_entry(external_port=40000, protocol="UDP")
        assert (entry.internal_client, entry.internal_port, entry.lease) == (
            "192.168.1.20",
            4000,
            600,
        )
        assert entry.description == "nattrav t"
        row = await client.get_generic_port_mapping_entry(0)
        assert row.external_port == 40000 and row.protocol == "UDP"
        port = await client.add_any_port_mapping(
            external_port=40000,
            protocol="UDP",
            internal_port=4001,
            internal_client="192.168.1.20",
            description="nattrav u",
            lease=600,
        )
        assert port == 40001
        await client.delete_port_mapping(external_port=40000, protocol="UDP")
        with pytest.raises(e.NoSuchEntryError) as info:
            await client.get_specific_port_mapping_entry(external_port=40000, protocol="UDP")
        assert info.value.code == 714


async def test_firewall_actions_round_trip(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, _conn, fw):
        client = FirewallClient(transport, fw)
        status = await client.get_firewall_status()
        assert status.enabled and status.inbound_pinhole_allowed
        uid = await client.add_pinhole(
            internal_client="2001:db8::20", internal_port=4000, protocol="UDP", lease=300
        )
        (args,) = fake.actions("AddPinhole")
        assert args["Protocol"] == "17" and args["LeaseTime"] == "300"
        assert list(args) == [
            "RemoteHost",
            "RemotePort",
            "InternalClient",
            "InternalPort",
            "Protocol",
            "LeaseTime",
        ]
        assert await client.check_pinhole_working(uid)
        await client.update_pinhole(uid, 600)
        assert fake.pinholes[uid]["LeaseTime"] == "600"
        await client.delete_pinhole(uid)
        with pytest.raises(e.NoSuchEntryError):
            await client.update_pinhole(uid, 600)


async def test_firewall_error_codes_use_firewall_meanings(igd_session: Any) -> None:
    async with igd_session(pinholes_allowed=False) as (_fake, transport, _conn, fw):
        with pytest.raises(e.InboundPinholeNotAllowedError):
            await FirewallClient(transport, fw).add_pinhole(
                internal_client="2001:db8::20", internal_port=4000, protocol="TCP", lease=300
            )


async def test_garbage_out_arguments_are_parse_errors(igd_session: Any) -> None:
    async with igd_session() as (fake, transport, conn, _fw):
        fake.mappings.clear()
        client = ConnectionClient(transport, conn)
        fake.external_ip = "(null)"
        assert await client.get_external_ip_address() == "(null)"  # classified later (H5)

        def bad_port(_a: dict[str, str]) -> dict[str, Any]:
            return {"NewReservedPort": "seventy"}

        fake.overrides["AddAnyPortMapping"] = bad_port
        with pytest.raises(ParseError, match="NewReservedPort"):
            await client.add_any_port_mapping(
                external_port=1,
                protocol="UDP",
                internal_port=1,
                internal_client="192.168.1.2",
                description="d",
                lease=1,
            )


async def test_unknown_action_is_invalid_action(igd_session: Any) -> None:
    async with igd_session(version=1) as (_fake, transport, conn, _fw):
        client = ConnectionClient(transport, conn)
        assert client.version == 1
        with pytest.raises(e.InvalidActionError):
            await client.add_any_port_mapping(
                external_port=1,
                protocol="UDP",
                internal_port=1,
                internal_client="192.168.1.2",
                description="d",
                lease=1,
            )


def test_protocol_numbers() -> None:
    assert protocol_number("udp") == 17
    assert protocol_number("TCP") == 6
