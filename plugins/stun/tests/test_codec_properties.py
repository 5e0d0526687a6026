"""Property tests (hypothesis) for the codec: the parser's contract on arbitrary input."""

from __future__ import annotations

import socket
import struct
import zlib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nattrav.errors import ParseError
from nattrav_stun import codec as c

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tids = st.binary(min_size=12, max_size=12)
ipv4 = st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
addresses = st.builds(c.Address, st.one_of(ipv4, ipv6), st.integers(0, 65535))
short_text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 120)

known_values = {
    c.MAPPED_ADDRESS: addresses,
    c.XOR_MAPPED_ADDRESS: addresses,
    c.OTHER_ADDRESS: addresses,
    c.RESPONSE_ORIGIN: addresses,
    c.ALTERNATE_SERVER: addresses,
    c.USERNAME: short_text,
    c.REALM: short_text,
    c.NONCE: short_text,
    c.SOFTWARE: short_text,
    c.USERHASH: st.binary(min_size=32, max_size=32),
    c.ERROR_CODE: st.builds(c.ErrorCode, st.integers(300, 699), st.text(max_size=20)),
    c.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
    c.CHANGE_REQUEST: st.sampled_from([0, c.CHANGE_IP, c.CHANGE_PORT, c.CHANGE_IP | c.CHANGE_PORT]),
    c.RESPONSE_PORT: st.integers(0, 65535),
    c.PADDING: st.binary(max_size=40),
    c.PASSWORD_ALGORITHMS: st.lists(
        st.builds(c.AlgorithmEntry, st.integers(0, 0xFFFF), st.binary(max_size=6)), max_size=3
    ).map(tuple),
    c.PASSWORD_ALGORITHM: st.builds(
        c.AlgorithmEntry, st.integers(0, 0xFFFF), st.binary(max_size=6)
    ),
    c.ALTERNATE_DOMAIN: st.text(alphabet="abcdefghij.-0123", min_size=1, max_size=30),
}
unknown_types = st.integers(0, 0xFFFF).filter(
    lambda t: (
        t not in c.STUN_ATTRIBUTES.specs
        and t not in (c.MESSAGE_INTEGRITY, c.MESSAGE_INTEGRITY_SHA256, c.FINGERPRINT)
    )
)


@st.composite
def messages(draw: st.DrawFn) -> c.Message:
    attributes: dict[int, object] = {}
    for t in draw(st.lists(st.sampled_from(sorted(known_values)), max_size=6, unique=True)):
        attributes[t] = draw(known_values[t])
    for t in draw(st.lists(unknown_types, max_size=3, unique=True)):
        attributes[t] = draw(st.binary(max_size=12))
    return c.Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.sampled_from(list(c.MessageClass))),
        draw(tids),
        attributes,
    )


@SETTINGS
@given(st.binary(max_size=200))
def test_decode_raises_only_parse_error_on_random_bytes(data: bytes) -> None:
    try:
        c.decode(data)
    except ParseError:
        pass


@st.composite
def stun_shaped(draw: st.DrawFn) -> bytes:
    """Bytes with a valid header and random TLVs: reaches deep into the attribute parser."""
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        t = draw(
            st.one_of(st.sampled_from(sorted(c.STUN_ATTRIBUTES.specs)), st.integers(0, 0xFFFF))
        )
        value = draw(st.binary(max_size=40))
        length = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFF)))
        body += struct.pack("!HH", t, length) + value + b"\0" * (-len(value) & 3)
    body += b"\0" * draw(st.integers(0, 3))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
    return (
        struct.pack("!HHI", draw(st.integers(0, 0x3FFF)), length, c.MAGIC_COOKIE)
        + draw(tids)
        + body
    )


@SETTINGS
@given(stun_shaped())
def test_decode_raises_only_parse_error_on_stun_shaped_bytes(data: bytes) -> None:
    try:
        c.decode(data)
    except ParseError:
        pass


@SETTINGS
@given(messages(), st.booleans(), st.booleans(), st.booleans())
def test_encode_decode_round_trip(msg: c.Message, mi: bool, mi256: bool, fp: bool) -> None:
    key = c.IntegrityKey(b"round-trip-key")
    data = c.encode(
        msg,
        integrity=key if mi else None,
        integrity_sha256=key if mi256 else None,
        fingerprint=fp,
    )
    out = c.decode(data)
    assert out == msg
    assert out.fingerprint == fp
    assert out.has_integrity == mi and out.has_integrity_sha256 == mi256
    if mi or mi256:
        assert c.verify_integrity(out, key)
    assert (
        c.encode(
            out,
            integrity=key if mi else None,
            integrity_sha256=key if mi256 else None,
            fingerprint=fp,
        )
        == data
    )


@SETTINGS
@given(messages(), st.booleans(), st.data())
def test_integrity_verifies_iff_bytes_untouched(
    msg: c.Message, sha256: bool, data: st.DataObject
) -> None:
    key = c.IntegrityKey(b"integrity-key")
    wire = c.encode(
        msg, integrity=None if sha256 else key, integrity_sha256=key if sha256 else None
    )
    assert c.verify_integrity(c.decode(wire), key)
    # Flip one bit anywhere in the protected part (header length excepted: changing it makes
    # the message undecodable, which is also a rejection).
    position = data.draw(st.integers(0, len(wire) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(wire)
    tampered[position] ^= 1 << bit
    try:
        out = c.decode(bytes(tampered))
    except ParseError:
        return
    # A flip inside attribute padding is allowed to survive decoding but must still fail
    # verification, since the MAC covers the padding as received.
    assert not c.verify_integrity(out, key)
    assert c.verify_integrity(c.decode(wire), c.IntegrityKey(b"integrity-key"))
    assert not c.verify_integrity(c.decode(wire), c.IntegrityKey(b"other-key"))


def _append(wire: bytes, attr: bytes) -> bytes:
    data = bytearray(wire + attr)
    data[2:4] = (len(data) - 20).to_bytes(2)
    return bytes(data)


@SETTINGS
@given(messages(), st.booleans(), addresses, st.booleans())
def test_appended_after_integrity_is_invisible(
    msg: c.Message, sha256: bool, forged: c.Address, with_fingerprint: bool
) -> None:
    key = c.IntegrityKey(b"k")
    wire = c.encode(
        msg, integrity=None if sha256 else key, integrity_sha256=key if sha256 else None
    )
    evil = struct.pack("!HH", c.XOR_MAPPED_ADDRESS, 8 if forged.family == 4 else 20)
    evil += c.encode_xor_address(forged, msg.transaction_id)
    extra = evil + struct.pack("!HH", c.NONCE, 4) + b"evil"
    tampered = _append(wire, extra)
    if with_fingerprint:  # an attacker can recompute FINGERPRINT too
        head = bytearray(tampered)
        head[2:4] = (len(head) + 8 - 20).to_bytes(2)
        crc = zlib.crc32(bytes(head)) ^ 0x5354554E
        tampered = _append(tampered, struct.pack("!HHI", c.FINGERPRINT, 4, crc))
    out = c.decode(tampered)
    assert out.attributes == msg.attributes
    assert c.verify_integrity(out, key)


@SETTINGS
@given(messages())
def test_duplicates_first_occurrence_wins(msg: c.Message) -> None:
    assume(msg.attributes)
    wire = c.encode(msg)
    first_type = next(iter(msg.attributes))
    second = c.encode(
        c.Message(msg.method, msg.cls, msg.transaction_id, {first_type: msg.attributes[first_type]})
    )[20:]
    doubled = _append(wire, second)
    assert c.decode(doubled).attributes == msg.attributes
