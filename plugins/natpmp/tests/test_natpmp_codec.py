"""NAT-PMP codec, byte-exact against packets built by hand from the RFC 6886 §3 layouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError, ParseError
from nattrav.models import Transport
from nattrav_natpmp.natpmp_codec import (
    ExternalAddressRequest,
    ExternalAddressResponse,
    MapRequest,
    MapResponse,
    Opcode,
    decode_response,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_external_address_request_is_two_bytes() -> None:
    assert ExternalAddressRequest().encode() == h("00 00")


def test_udp_and_tcp_map_requests() -> None:
    # vers 0, op 1/2, reserved 0, internal 5000, suggested 5001, lifetime 7200
    assert MapRequest(Transport.UDP, 5000, 5001, 7200).encode() == h(
        "00 01 0000 1388 1389 00001c20"
    )
    assert MapRequest(Transport.TCP, 443, 0, 3600).encode() == h("00 02 0000 01bb 0000 00000e10")


def test_deletion_has_lifetime_zero_and_suggested_port_zero() -> None:
    assert MapRequest.delete(Transport.UDP, 5000).encode() == h("00 01 0000 1388 0000 00000000")
    assert MapRequest.delete(Transport.UDP, 5000).is_deletion


def test_delete_all_is_internal_port_zero_lifetime_zero() -> None:
    assert MapRequest.delete_all(Transport.TCP).encode() == h("00 02 0000 0000 0000 00000000")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((Transport.UDP, 0, 0, 60), "internal port 0"),
        ((Transport.UDP, 5000, 5001, 0), "suggest external port 0"),
        ((Transport.UDP, 70000, 0, 60), "out of range"),
        ((Transport.UDP, 5000, 0, 2**32), "out of range"),
    ],
)
def test_invalid_requests_are_local_errors(
    args: tuple[Transport, int, int, int], message: str
) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        MapRequest(*args)


def test_external_address_response() -> None:
    # vers 0, op 128, result 0, epoch 3600, 192.0.2.1
    assert decode_response(h("00 80 0000 00000e10 c0000201")) == ExternalAddressResponse(
        0, 3600, "192.0.2.1"
    )


def test_p6_unknown_external_address_is_none() -> None:
    response = decode_response(h("00 80 0000 00000e10 00000000"))
    assert isinstance(response, ExternalAddressResponse) and response.external_address is None


def test_map_response() -> None:
    response = decode_response(h("00 81 0000 0000000a 1388 1389 00001c20"))
    assert response == MapResponse(Opcode.MAP_UDP, 0, 10, 5000, 5001, 7200)
    assert isinstance(response, MapResponse) and response.transport is Transport.UDP
    tcp = decode_response(h("00 82 0000 0000000a 01bb 01bb 00000e10"))
    assert isinstance(tcp, MapResponse) and tcp.transport is Transport.TCP


def test_p5_error_results_ignore_the_other_fields() -> None:
    # A full-length error: the external port and lifetime are undefined and not read; the
    # internal port still says whose request it answers.
    assert decode_response(h("00 81 0002 0000000a 1388 abcd 0000ffff")) == MapResponse(
        Opcode.MAP_UDP, 2, 10, 5000
    )
    # The address of an error answer is never read.
    assert decode_response(h("00 80 0003 0000000a c0000201")) == ExternalAddressResponse(3, 10)
    # The 8-byte "unsupported version/opcode" form (RFC 6886 §3.5).
    assert decode_response(h("00 81 0001 0000000a")) == MapResponse(Opcode.MAP_UDP, 1, 10)
    assert decode_response(h("00 80 0005 0000000a")) == ExternalAddressResponse(5, 10)
    # Undefined result codes decode (the transaction makes them fatal).
    assert decode_response(h("00 80 0063 0000000a c0000201")).result == 99


@pytest.mark.parametrize(
    "packet",
    [
        "00 80 0000 00000e10 c00002",  # P3: address reply must be 12 bytes
        "00 80 0000 00000e10 c0000201 00",
        "00 81 0000 0000000a 1388 1389 00001c",  # P3: mapping reply must be 16 bytes
        "00 81 0000 0000000a 1388 1389 00001c20 00",
        "00 81 0000 0000000a",  # 8 bytes are only an error's short form
        "00 80 0000",  # shorter than any response
        "",
        "01 80 0000 00000e10 c0000201",  # P2: version 1
        "02 81 0000 0000000a 1388 1389 00001c20",  # a PCP packet
        "00 00 0000 00000e10 c0000201",  # P2: a request, not a response
        "00 83 0000 0000000a 1388 1389 00001c20",  # P2: unknown opcode 131
        "00 01 0000 1388 1389 00001c20",  # our own request looped back
    ],
)
def test_malformed_responses_raise_parse_error(packet: str) -> None:
    with pytest.raises(ParseError):
        decode_response(h(packet))


@given(st.binary(max_size=64))
def test_decoder_raises_only_parse_error(data: bytes) -> None:
    try:
        decode_response(data)
    except ParseError:
        pass


@given(
    st.sampled_from([1, 2]),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_map_response_fields_round_trip(
    op: int, internal: int, external: int, lifetime: int, epoch: int
) -> None:
    import struct

    data = struct.pack("!BBHIHHI", 0, 128 + op, 0, epoch, internal, external, lifetime)
    assert decode_response(data) == MapResponse(Opcode(op), 0, epoch, internal, external, lifetime)
