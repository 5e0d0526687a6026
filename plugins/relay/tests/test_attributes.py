"""TURN attributes on the STUN codec: encode/decode of every attribute, the extended table,
unknown families, the draft code points coturn uses, and ``occurrences``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_relay import attributes as t
from nattrav_relay.testing import ScriptedServer, raw_message
from nattrav_stun import codec as c
from nattrav_stun.codec import Address

TID = bytes(range(12))


def roundtrip(attributes: dict[int, object]) -> c.Message:
    data = c.encode(c.Message(t.ALLOCATE, c.REQUEST, TID, attributes), table=t.TURN_ATTRIBUTES)
    return c.decode(data, t.TURN_ATTRIBUTES)


def test_every_turn_attribute_round_trips() -> None:
    attributes: dict[int, object] = {
        t.CHANNEL_NUMBER: 0x4001,
        t.LIFETIME: 3600,
        t.XOR_PEER_ADDRESS: Address("203.0.113.5", 7000),
        t.DATA_INDICATION: b"\x00payload",
        t.XOR_RELAYED_ADDRESS: Address("2001:db8::1", 50000),
        t.REQUESTED_ADDRESS_FAMILY: 6,
        t.EVEN_PORT: True,
        t.REQUESTED_TRANSPORT: t.UDP,
        t.DONT_FRAGMENT: True,
        t.RESERVATION_TOKEN: b"12345678",
        t.ADDITIONAL_ADDRESS_FAMILY: 6,
        t.ADDRESS_ERROR_CODE: t.AddressErrorCode(4, 508, "Insufficient Capacity"),
        t.ICMP: t.Icmp(3, 1, 0xDEADBEEF),
        t.LEGACY_ADDITIONAL_ADDRESS_FAMILY: 6,
        t.LEGACY_ADDRESS_ERROR_CODE: t.AddressErrorCode(6, 440, "no"),
    }
    msg = roundtrip(attributes)
    assert msg.attributes == attributes
    assert msg.unknown_required == ()


def test_wire_format_of_the_fixed_size_attributes() -> None:
    enc = t.TURN_ATTRIBUTES.encoders
    assert enc[t.CHANNEL_NUMBER](0x4000, TID) == b"\x40\x00\x00\x00"
    assert enc[t.REQUESTED_TRANSPORT](17, TID) == b"\x11\x00\x00\x00"
    assert enc[t.REQUESTED_ADDRESS_FAMILY](4, TID) == b"\x01\x00\x00\x00"
    assert enc[t.ADDITIONAL_ADDRESS_FAMILY](6, TID) == b"\x02\x00\x00\x00"
    assert enc[t.EVEN_PORT](True, TID) == b"\x80"
    assert enc[t.ADDRESS_ERROR_CODE](t.AddressErrorCode(6, 440, "x"), TID) == b"\x02\x00\x04\x28x"
    assert enc[t.ICMP](t.Icmp(3, 3, 1), TID) == b"\x00\x00\x03\x03\x00\x00\x00\x01"


def test_a_turn_response_needs_the_turn_table() -> None:
    """Decoded with the plain STUN table, XOR-RELAYED-ADDRESS is an unknown
    comprehension-required attribute: the transaction would fail (RFC 8489 §6.3)."""
    data = c.encode(
        c.Message(t.ALLOCATE, c.SUCCESS, TID, {t.XOR_RELAYED_ADDRESS: Address("192.0.2.1", 5)}),
        table=t.TURN_ATTRIBUTES,
    )
    assert c.decode(data).unknown_required == (t.XOR_RELAYED_ADDRESS,)
    assert c.decode(data, t.TURN_ATTRIBUTES).unknown_required == ()


@pytest.mark.parametrize("attr", [t.XOR_RELAYED_ADDRESS, c.XOR_MAPPED_ADDRESS])
def test_unknown_address_family_is_visible_not_dropped(attr: int) -> None:
    data = raw_message(t.ALLOCATE, c.SUCCESS, TID, [(attr, b"\x00\x07\x21\x12" + bytes(4))])
    msg = c.decode(data, t.TURN_ATTRIBUTES)
    assert msg.get(attr) == t.UnsupportedFamily(7)


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        (t.CHANNEL_NUMBER, b"\x40\x00"),
        (t.LIFETIME, b"\x00\x00\x02"),
        (t.REQUESTED_TRANSPORT, b"\x11"),
        (t.EVEN_PORT, b"\x80\x00"),
        (t.DONT_FRAGMENT, b"\x00"),
        (t.RESERVATION_TOKEN, b"1234567"),
        (t.ADDRESS_ERROR_CODE, b"\x01\x00"),
        (t.ICMP, b"\x00\x00\x03\x03"),
        (t.XOR_PEER_ADDRESS, b"\x00\x01\x00"),
    ],
)
def test_malformed_attribute_values_are_parse_errors(attr: int, value: bytes) -> None:
    with pytest.raises(ParseError):
        c.decode(raw_message(t.ALLOCATE, c.SUCCESS, TID, [(attr, value)]), t.TURN_ATTRIBUTES)


def test_bad_values_cannot_be_encoded() -> None:
    for attr, value in [
        (t.REQUESTED_ADDRESS_FAMILY, 5),
        (t.LIFETIME, -1),
        (t.CHANNEL_NUMBER, 0x10000),
        (t.RESERVATION_TOKEN, b"short"),
        (t.ADDRESS_ERROR_CODE, t.AddressErrorCode(4, 200, "")),
    ]:
        with pytest.raises(LocalProtocolError):
            t.TURN_ATTRIBUTES.encoders[attr](value, TID)


def test_invalid_address_error_code_bits_decode_to_minus_one() -> None:
    data = raw_message(t.ALLOCATE, c.SUCCESS, TID, [(t.ADDRESS_ERROR_CODE, b"\x01\x00\x09\x00")])
    assert c.decode(data, t.TURN_ATTRIBUTES).get(t.ADDRESS_ERROR_CODE).code == -1


def test_occurrences_finds_every_relayed_address_of_a_dual_allocation() -> None:
    a4, a6 = Address("192.0.2.1", 50000), Address("2001:db8::1", 50002)
    enc = c.encode_xor_address
    data = raw_message(
        t.ALLOCATE,
        c.SUCCESS,
        TID,
        [(t.XOR_RELAYED_ADDRESS, enc(a4, TID)), (t.XOR_RELAYED_ADDRESS, enc(a6, TID))],
    )
    msg = c.decode(data, t.TURN_ATTRIBUTES)
    assert msg.get(t.XOR_RELAYED_ADDRESS) == a4  # the codec keeps the first
    assert t.occurrences(msg, t.XOR_RELAYED_ADDRESS) == [a4, a6]


def test_occurrences_ignores_what_follows_message_integrity() -> None:
    """An attacker appending a relayed address after MESSAGE-INTEGRITY must not be heard."""
    server = ScriptedServer()
    a4 = Address("192.0.2.1", 50000)
    signed = raw_message(
        t.ALLOCATE,
        c.SUCCESS,
        TID,
        [(t.XOR_RELAYED_ADDRESS, c.encode_xor_address(a4, TID))],
        server=server,
        sign="md5",
        fingerprint=False,
    )
    evil = c.encode_xor_address(Address("198.51.100.66", 1), TID)
    tail = t.XOR_RELAYED_ADDRESS.to_bytes(2, "big") + len(evil).to_bytes(2, "big") + evil
    body_len = int.from_bytes(signed[2:4], "big") + len(tail)
    appended = signed[:2] + body_len.to_bytes(2, "big") + signed[4:] + tail
    msg = c.decode(appended, t.TURN_ATTRIBUTES)
    assert t.occurrences(msg, t.XOR_RELAYED_ADDRESS) == [a4]


def test_occurrences_of_a_locally_built_message() -> None:
    msg = c.Message(t.ALLOCATE, c.SUCCESS, TID, {t.LIFETIME: 5})
    assert t.occurrences(msg, t.LIFETIME) == [5]
    assert t.occurrences(msg, t.XOR_RELAYED_ADDRESS) == []


@given(st.binary(max_size=64), st.sampled_from(sorted(t.TURN_ATTRIBUTES.specs)))
def test_turn_decoders_raise_only_parse_errors(value: bytes, attr: int) -> None:
    if attr in (c.MESSAGE_INTEGRITY, c.MESSAGE_INTEGRITY_SHA256, c.FINGERPRINT):
        return
    data = raw_message(t.ALLOCATE, c.SUCCESS, TID, [(attr, value)], fingerprint=False)
    try:
        msg = c.decode(data, t.TURN_ATTRIBUTES)
    except ParseError:
        return
    t.occurrences(msg, attr)
