"""Unsolicited announcements: only the gateway is believed (P9)."""

from __future__ import annotations

from natpmp_testkit import natpmp_external, natpmp_map, pcp_announce, pcp_map
from nattrav_natpmp.announce import Announcement, parse_announcement

GW = "192.168.1.1"


def test_natpmp_address_announcement_from_the_gateway() -> None:
    assert parse_announcement(natpmp_external(3, "198.51.100.9"), GW, GW) == (
        Announcement("natpmp", 3, "198.51.100.9"),
        "",
    )


def test_pcp_announce_from_the_gateway() -> None:
    assert parse_announcement(pcp_announce(0), GW, GW) == (Announcement("pcp", 0), "")
    # A scoped source (link-local IPv6 with a zone) still matches the gateway.
    assert parse_announcement(pcp_announce(7), "fe80::1%eth0", "fe80::1")[0] == Announcement(
        "pcp", 7
    )


def test_p9_announcements_from_anyone_else_are_discarded() -> None:
    for packet in (natpmp_external(3), pcp_announce(0)):
        assert parse_announcement(packet, "192.168.1.66", GW) == (None, "wrong source")


def test_other_packets_are_not_announcements() -> None:
    assert parse_announcement(natpmp_map(1, 5000, 5000, 60), GW, GW)[1] == (
        "not an address announcement"
    )
    assert parse_announcement(natpmp_external(3, result=3), GW, GW)[1] == "error result"
    assert parse_announcement(pcp_map(bytes(12)), GW, GW)[1] == "not an ANNOUNCE"
    assert parse_announcement(pcp_announce(0, result=7), GW, GW)[1] == "error result"
    assert parse_announcement(b"", GW, GW)[1] == "empty"
    assert parse_announcement(b"\x01" * 24, GW, GW)[1] == "unknown version 1"
    assert parse_announcement(b"\x02\x80\x00", GW, GW)[1].startswith("malformed")
    assert parse_announcement(pcp_announce(0), "not an ip", GW) == (None, "wrong source")
