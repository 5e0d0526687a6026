"""The error-queue parser on sock_extended_err bytes recorded from Linux 6 (x86-64, little
endian) in the lab: a router's ICMP Fragmentation Needed and ICMPv6 Packet Too Big, local
EMSGSIZE, and ICMP port unreachable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import ParseError
from nattrav_pmtud.errqueue import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    parse_extended_error,
    queued_error,
)

# (level, type, cmsg data) exactly as recvmsg(..., MSG_ERRQUEUE) returned them.
FRAG_NEEDED_V4 = (
    0,
    11,
    bytes.fromhex("5a00000002030400780500000000000002000000c0a801010000000000000000"),
)
PTB_V6 = (
    41,
    25,
    bytes.fromhex(
        "5a0000000302000078050000000000000a0000000000000020010db800010001000000000000000100000000"
    ),
)
LOCAL_V4 = (
    0,
    11,
    bytes.fromhex("5a00000001000000dc0500000000000000000000000000000000000000000000"),
)
LOCAL_V6 = (41, 25, bytes.fromhex("5a00000001000000dc050000000000000000000000000000" + "00" * 20))
PORT_UNREACH_V4 = (
    0,
    11,
    bytes.fromhex("6f00000002030300000000000000000002000000cb0071010000000000000000"),
)
PORT_UNREACH_V6 = (
    41,
    25,
    bytes.fromhex(
        "6f0000000301040000000000000000000a0000000000000020010db800000000000000000000000100000000"
    ),
)


def test_icmp_fragmentation_needed() -> None:
    err = parse_extended_error(*FRAG_NEEDED_V4, byteorder="little")
    assert (err.errno, err.origin, err.type, err.code, err.info) == (
        90,
        SO_EE_ORIGIN_ICMP,
        3,
        4,
        1400,
    )
    assert err.offender == ("192.168.1.1", 0)  # the router's LAN address sent it
    entry = queued_error(
        b"\x00\x01" + bytes(518), [FRAG_NEEDED_V4], ("203.0.113.1", 3478), byteorder="little"
    )
    assert entry.is_packet_too_big and entry.mtu == 1400 and entry.family == 4
    assert entry.destination == ("203.0.113.1", 3478) and len(entry.quoted) == 520
    assert not entry.is_local_mtu and not entry.is_port_unreachable


def test_icmpv6_packet_too_big() -> None:
    entry = queued_error(bytes(1184), [PTB_V6], ("2001:db8::1", 3478, 0, 0), byteorder="little")
    e = entry.error
    assert (e.origin, e.type, e.code, e.info) == (SO_EE_ORIGIN_ICMP6, 2, 0, 1400)
    assert e.offender == ("2001:db8:1:1::1", 0)
    assert entry.is_packet_too_big and entry.family == 6
    assert entry.destination == ("2001:db8::1", 3478)


@pytest.mark.parametrize("cmsg", [LOCAL_V4, LOCAL_V6])
def test_local_emsgsize_gives_the_interface_mtu(cmsg: tuple[int, int, bytes]) -> None:
    entry = queued_error(b"", [cmsg], ("203.0.113.1", 0), byteorder="little")
    assert entry.error.origin == SO_EE_ORIGIN_LOCAL and entry.error.offender is None
    assert entry.is_local_mtu and entry.mtu == 1500 and not entry.is_packet_too_big


@pytest.mark.parametrize("cmsg", [PORT_UNREACH_V4, PORT_UNREACH_V6])
def test_port_unreachable(cmsg: tuple[int, int, bytes]) -> None:
    entry = queued_error(bytes(100), [cmsg], ("203.0.113.1", 3999), byteorder="little")
    assert entry.is_port_unreachable and not entry.is_packet_too_big
    assert entry.error.errno == 111  # ECONNREFUSED
    assert entry.error.offender in (("203.0.113.1", 0), ("2001:db8::1", 0))


def test_big_endian_hosts_parse_the_same_fields() -> None:
    be = bytes.fromhex("0000005a02030400000005780000000000020000c0a80101" + "00" * 8)
    err = parse_extended_error(0, 11, be, byteorder="big")
    assert (err.errno, err.type, err.code, err.info) == (90, 3, 4, 1400)
    assert err.offender == ("192.168.1.1", 0)


def test_short_or_foreign_control_messages_are_parse_errors() -> None:
    with pytest.raises(ParseError):
        parse_extended_error(0, 11, bytes(15))
    with pytest.raises(ParseError):
        parse_extended_error(1, 29, bytes(32))  # SO_TIMESTAMPNS, not an error
    with pytest.raises(ParseError):
        queued_error(b"", [(1, 29, bytes(16))], None)
    with pytest.raises(ParseError):
        parse_extended_error(0, 11, bytes([0, 0, 0, 0, 99]) + bytes(27))  # unknown origin


def test_a_missing_destination_is_kept_as_none() -> None:
    entry = queued_error(b"", [LOCAL_V4], None, byteorder="little")
    assert entry.destination is None


@given(level=st.sampled_from([0, 41]), data=st.binary(max_size=64), quoted=st.binary(max_size=64))
def test_parser_raises_only_parse_error(level: int, data: bytes, quoted: bytes) -> None:
    ctype = 11 if level == 0 else 25
    try:
        entry = queued_error(quoted, [(level, ctype, data)], ("192.0.2.1", 1))
    except ParseError:
        return
    assert entry.quoted == quoted
    _ = (entry.is_packet_too_big, entry.is_local_mtu, entry.is_port_unreachable, entry.family)
