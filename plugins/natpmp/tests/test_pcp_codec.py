"""PCP codec, byte-exact against packets built by hand from the RFC 6887 §7, §11, §13 layouts,
and every PCP row of the hostile-input table that concerns parsing (C1, C2, C5, C6)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_natpmp.pcp_codec import (
    AnnounceRequest,
    Filter,
    MapRequest,
    MapResult,
    Opcode,
    PreferFailure,
    Response,
    ThirdParty,
    UnknownOption,
    UnsupportedVersion,
    decode_address,
    decode_response,
    encode_address,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


NONCE = h("0102030405060708090a0b0c")
V4_MAPPED = "00000000 00000000 0000ffff"


def test_ipv4_map_request() -> None:
    request = MapRequest(NONCE, 17, 5000, "192.168.1.100", 7200, 5001)
    assert request.encode() == h(
        # version 2, R=0 opcode MAP, reserved, lifetime 7200, client ::ffff:192.168.1.100
        f"02 01 0000 00001c20 {V4_MAPPED} c0a80164"
        # nonce, protocol 17, reserved(24), internal 5000, suggested 5001, suggested ::ffff:0.0.0.0
        f"0102030405060708090a0b0c 11 000000 1388 1389 {V4_MAPPED} 00000000"
    )
    assert len(request.encode()) == 60


def test_ipv6_map_request_with_suggested_address() -> None:
    request = MapRequest(NONCE, 6, 443, "2001:db8::10", 3600, 443, "2001:db8::10")
    client = "20010db8 00000000 00000000 00000010"
    assert request.encode() == h(
        f"02 01 0000 00000e10 {client} 0102030405060708090a0b0c 06 000000 01bb 01bb {client}"
    )


def test_ipv6_no_preference_is_all_zero() -> None:
    request = MapRequest(NONCE, 17, 5000, "2001:db8::10", 60)
    assert request.encode()[-16:] == bytes(16)


def test_options_third_party_prefer_failure_filter() -> None:
    request = MapRequest(
        NONCE,
        17,
        5000,
        "192.168.1.100",
        60,
        options=(ThirdParty("192.168.1.55"), PreferFailure(), Filter(24, 0, "198.51.100.0")),
    )
    tail = request.encode()[60:]
    assert tail == h(
        f"01 00 0010 {V4_MAPPED} c0a80137"  # THIRD_PARTY, length 16
        "02 00 0000"  # PREFER_FAILURE, length 0
        f"03 00 0014 00 18 0000 {V4_MAPPED} c6336400"  # FILTER, length 20
    )


def test_announce_request() -> None:
    assert AnnounceRequest("192.168.1.100").encode() == h(
        f"02 00 0000 00000000 {V4_MAPPED} c0a80164"
    )


def test_deletion_request_keeps_the_nonce() -> None:
    request = MapRequest(NONCE, 17, 5000, "192.168.1.100", 0)
    assert request.is_deletion
    assert request.encode()[4:8] == bytes(4) and request.encode()[24:36] == NONCE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nonce": b"short"}, "nonce"),
        ({"protocol": 0}, "requires internal port 0"),
        ({"protocol": 300}, "out of range"),
        ({"client_address": "host.example"}, "IP literal"),
        ({"lifetime": -1}, "out of range"),
    ],
)
def test_invalid_requests(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "nonce": NONCE,
        "protocol": 17,
        "internal_port": 5000,
        "client_address": "192.168.1.100",
        "lifetime": 60,
    }
    with pytest.raises(LocalProtocolError, match=message):
        MapRequest(**(base | kwargs))


def test_request_longer_than_1100_bytes_is_refused() -> None:
    many = tuple(UnknownOption(200, bytes(100)) for _ in range(11))
    with pytest.raises(LocalProtocolError, match="1100"):
        MapRequest(NONCE, 17, 5000, "192.168.1.100", 60, options=many)


def _map_response(
    result: int = 0,
    lifetime: int = 7200,
    epoch: int = 10,
    *,
    nonce: bytes = NONCE,
    protocol: int = 17,
    internal: int = 5000,
    external: int = 5001,
    address: str = "198.51.100.7",
    options: bytes = b"",
    version: int = 2,
) -> bytes:
    return (
        struct.pack("!BBBBII", version, 0x81, 0, result, lifetime, epoch)
        + bytes(12)
        + nonce
        + struct.pack("!B3xHH", protocol, internal, external)
        + encode_address(address)
        + options
    )


def test_map_response_success() -> None:
    data = _map_response()
    assert data == h(
        "02 81 00 00 00001c20 0000000a 000000000000000000000000"
        f"0102030405060708090a0b0c 11 000000 1388 1389 {V4_MAPPED} c6336407"
    )
    assert decode_response(data) == Response(
        Opcode.MAP, 0, 7200, 10, MapResult(NONCE, 17, 5000, 5001, "198.51.100.7")
    )


def test_error_response_carries_the_error_lifetime() -> None:
    response = decode_response(_map_response(result=8, lifetime=30))
    assert isinstance(response, Response) and (response.result, response.lifetime) == (8, 30)


def test_announce_response_and_unspecified_external_address() -> None:
    data = struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 1234) + bytes(12)
    assert decode_response(data) == Response(Opcode.ANNOUNCE, 0, 0, 1234)
    assert decode_response(_map_response(address="0.0.0.0")).map.external_address is None  # type: ignore[union-attr]
    assert decode_response(_map_response(address="::")).map.external_address is None  # type: ignore[union-attr]


def test_c1_natpmp_server_answers_unsupported_version() -> None:
    # RFC 6886 §3.5: vers 0, op 128+1, result 1 (16 bit), epoch: 8 bytes.
    assert decode_response(h("00 81 0001 0000002a")) == UnsupportedVersion(0, 42)
    # A NAT-PMP packet with another result is not an answer on the PCP path.
    with pytest.raises(ParseError):
        decode_response(h("00 81 0002 0000002a"))


def test_version_negotiation_answers() -> None:
    v1 = struct.pack("!BBBBII", 1, 0x81, 0, 1, 1800, 77) + bytes(12)
    assert decode_response(v1) == UnsupportedVersion(1, 77, 1800)
    v3_success = struct.pack("!BBBBII", 3, 0x81, 0, 0, 60, 77) + bytes(12)
    with pytest.raises(ParseError, match="version 3"):
        decode_response(v3_success)


@pytest.mark.parametrize(
    "data",
    [
        _map_response()[:20],  # C2: < 24 bytes
        _map_response() + bytes(2),  # C2: not a multiple of 4
        _map_response()
        + UnknownOption(200, bytes(1040)).code.to_bytes(1, "big")
        + bytes(1043),  # C2: > 1100 bytes
        _map_response()[:24],  # a MAP response without its payload
        struct.pack("!BBBBII", 2, 0x01, 0, 0, 0, 0) + bytes(12),  # R bit clear: a request
        struct.pack("!BBBBII", 2, 0x82, 0, 0, 0, 0) + bytes(12 + 56),  # PEER: not ours
        struct.pack("!BBBBII", 2, 0x85, 0, 0, 0, 0) + bytes(12),  # unknown opcode
        b"\x02\x81",
    ],
)
def test_c2_and_shape_violations_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        decode_response(data)


def test_c5_ipv4_mapped_check_uses_all_96_bits() -> None:
    assert decode_address(h(f"{V4_MAPPED} c0a80101")) == ipaddress.IPv4Address("192.168.1.1")
    # ffff in bits 81-96 but a 1 further up: an IPv6 address, not IPv4.
    odd = h("00000000 00000001 0000ffff c0a80101")
    assert isinstance(decode_address(odd), ipaddress.IPv6Address)
    response = decode_response(_map_response()[:44] + odd)
    assert response.map.external_address == "::1:0:ffff:c0a8:101"  # type: ignore[union-attr]
    with pytest.raises(ParseError):
        decode_address(bytes(15))


@pytest.mark.parametrize(
    "options",
    [
        h("01 00 0010") + bytes(12),  # C6: runs past the end
        h("01 00 0004 c0a80101"),  # THIRD_PARTY must be 16 bytes
        h("02 00 0004 00000000"),  # PREFER_FAILURE must be empty
        h("03 00 0010") + bytes(16),  # FILTER must be 20 bytes
        h("32 00 0000"),  # unknown mandatory-to-process option 50
        h("02 00 0000 02 00 0000"),  # repeated PREFER_FAILURE
        h(f"01 00 0010 {V4_MAPPED} c0a80101 01 00 0010 {V4_MAPPED} c0a80101"),  # repeated
        h("ff 00 0008 00000000"),  # optional option whose length runs past the end
    ],
)
def test_c6_malformed_options_reject_the_message(options: bytes) -> None:
    with pytest.raises(ParseError):
        decode_response(_map_response(options=options))


def test_known_and_optional_options_decode() -> None:
    options = (
        h(f"01 00 0010 {V4_MAPPED} c0a80137")
        + h("02 00 0000")
        + h(f"03 00 0014 00 18 1388 {V4_MAPPED} c6336400")
        + h("c8 00 0003 aabbcc 00")  # optional option 200, 3 bytes + 1 padding byte
    )
    response = decode_response(_map_response(options=options))
    assert isinstance(response, Response)
    assert response.options == (
        ThirdParty("192.168.1.55"),
        PreferFailure(),
        Filter(24, 5000, "198.51.100.0"),
        UnknownOption(200, h("aabbcc")),
    )


@given(st.binary(max_size=200))
def test_decoder_raises_only_parse_error(data: bytes) -> None:
    try:
        decode_response(data)
    except ParseError:
        pass


@given(
    st.binary(min_size=12, max_size=12),
    st.sampled_from([6, 17]),
    st.integers(1, 65535),
    st.integers(0, 65535),
    st.ip_addresses(),
    st.integers(0, 2**32 - 1),
)
def test_a_servers_echo_of_our_request_decodes_to_our_fields(
    nonce: bytes,
    protocol: int,
    internal: int,
    external: int,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    lifetime: int,
) -> None:
    request = MapRequest(
        nonce, protocol, internal, "192.168.1.100", lifetime, external, str(address)
    )
    # A server answers by rewriting the header in place (miniupnpd does exactly this).
    raw = bytearray(request.encode())
    raw[1] |= 0x80
    raw[2:4] = b"\x00\x00"
    raw[8:24] = struct.pack("!I", 5) + bytes(12)
    response = decode_response(bytes(raw))
    assert isinstance(response, Response)
    mapped = getattr(address, "ipv4_mapped", None)
    expected = mapped if mapped is not None else address  # ::ffff:a.b.c.d is IPv4 on the wire
    assert response.map == MapResult(
        nonce,
        protocol,
        internal,
        external,
        None if expected.is_unspecified else str(expected),
    )
