"""Codec: golden vectors (RFC 5769, RFC 8489 App. B + erratum 6268), encode and decode."""

from __future__ import annotations

import pytest
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_stun import codec as c
from nattrav_stun.auth import PasswordAlgorithm, long_term_key, userhash

# ----------------------------------------------------------------------------- vectors
# Hex from ../shared/research/hostile-inputs.md §4 (RFC 5769 and RFC 8489 Appendix B).

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c"
)
RFC5769_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe3"
    "82b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b"
    "6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
B1_PUBLISHED = bytes.fromhex(
    "0001009c2112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f"
    "24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b"
    "39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700"
    "001c0020e4686c8f0edeb59013e07090010a93efccbccc544c0a45d9f830aa6d6f735a01"
)
B1_ERRATUM_6268 = bytes.fromhex(
    "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f"
    "24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b"
    "39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700"
    "001d000400020000001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278c"
    "c6518e65"
)
B1_RUSTUN = bytes.fromhex(
    "000100882112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f"
    "24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b"
    "39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700"
    "001c0020fd8c273860d2e18ebca4c89b6973befa7ee8ecc69e9642db326fab65a0b955ba"
)

SHORT_TERM_KEY = c.IntegrityKey(b"VOkJxbRl1RmTxUk/WvJxBt")
TID_5769 = bytes.fromhex("b7e7a701bc34d686fa87dfae")
TID_LONG = bytes.fromhex("78ad3433c6ad72c029da412e")
USERNAME_MATRIX = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # マトリックス
# "The\u00adM\u00aatr\u2168" after SASLprep; OpaqueString rejects U+00AD (see auth docs).
PASSWORD_MATRIX = "TheMatrIX"
NONCE_B1 = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"


def test_rfc5769_request_decodes() -> None:
    msg = c.decode(RFC5769_REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id) == (c.BINDING, c.REQUEST, TID_5769)
    assert msg.attributes == {
        c.SOFTWARE: "STUN test client",
        c.PRIORITY: 0x6E0001FF,
        c.ICE_CONTROLLED: 0x932FF9B151263B36,
        c.USERNAME: "evtj:h6vY",
    }
    assert msg.fingerprint and msg.has_integrity and not msg.has_integrity_sha256
    assert msg.unknown_required == ()
    assert c.verify_integrity(msg, SHORT_TERM_KEY)
    assert not c.verify_integrity(msg, c.IntegrityKey(b"wrong"))


def test_rfc5769_request_encodes_byte_exact() -> None:
    msg = c.Message(
        c.BINDING,
        c.REQUEST,
        TID_5769,
        {
            c.SOFTWARE: "STUN test client",
            c.PRIORITY: 0x6E0001FF,
            c.ICE_CONTROLLED: 0x932FF9B151263B36,
            c.USERNAME: "evtj:h6vY",
        },
    )
    # RFC 5769 pads with spaces on purpose; RFC 8489 senders pad with zeros.
    data = c.encode(msg, integrity=SHORT_TERM_KEY, fingerprint=True, padding=b" ")
    assert data == RFC5769_REQUEST


@pytest.mark.parametrize(
    ("vector", "mapped"),
    [
        (RFC5769_IPV4_RESPONSE, c.Address("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, c.Address("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_responses_round_trip(vector: bytes, mapped: c.Address) -> None:
    msg = c.decode(vector)
    assert msg.cls == c.SUCCESS and msg.method == c.BINDING
    assert msg.xor_mapped_address == mapped
    assert msg.get(c.SOFTWARE) == "test vector"
    assert msg.fingerprint
    assert c.verify_integrity(msg, SHORT_TERM_KEY)
    built = c.Message(
        c.BINDING, c.SUCCESS, TID_5769, {c.SOFTWARE: "test vector", c.XOR_MAPPED_ADDRESS: mapped}
    )
    assert c.encode(built, integrity=SHORT_TERM_KEY, fingerprint=True, padding=b" ") == vector


def test_rfc5769_long_term_request() -> None:
    key = c.IntegrityKey(
        long_term_key(USERNAME_MATRIX, "example.org", PASSWORD_MATRIX, PasswordAlgorithm.MD5)
    )
    msg = c.decode(RFC5769_LONG_TERM)
    assert msg.attributes == {
        c.USERNAME: USERNAME_MATRIX,
        c.NONCE: "f//499k954d6OL34oL9FSTvy64sA",
        c.REALM: "example.org",
    }
    assert not msg.fingerprint
    assert c.verify_integrity(msg, key)
    rebuilt = c.Message(c.BINDING, c.REQUEST, TID_LONG, dict(msg.attributes))
    assert c.encode(rebuilt, integrity=key) == RFC5769_LONG_TERM


def test_rfc8489_b1_erratum_6268_encode_and_decode() -> None:
    key = c.IntegrityKey(
        long_term_key(USERNAME_MATRIX, "example.org", PASSWORD_MATRIX, PasswordAlgorithm.SHA256)
    )
    uh = userhash(USERNAME_MATRIX, "example.org")
    assert uh.hex() == "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    msg = c.decode(B1_ERRATUM_6268)
    assert msg.attributes == {
        c.USERHASH: uh,
        c.NONCE: NONCE_B1,
        c.REALM: "example.org",
        c.PASSWORD_ALGORITHM: c.AlgorithmEntry(2, b""),
    }
    assert msg.has_integrity_sha256 and not msg.has_integrity
    assert c.verify_integrity(msg, key)
    built = c.Message(
        c.BINDING,
        c.REQUEST,
        TID_LONG,
        {
            c.USERHASH: uh,
            c.NONCE: NONCE_B1,
            c.REALM: "example.org",
            c.PASSWORD_ALGORITHM: c.AlgorithmEntry(PasswordAlgorithm.SHA256, b""),
        },
    )
    assert c.encode(built, integrity_sha256=key) == B1_ERRATUM_6268


def test_rfc8489_b1_as_published_fails_verification() -> None:
    """The published B.1 is self-inconsistent (header length 0x9c over 0x88 bytes of body):
    it is not even a well-formed message, and no §14.6 verifier can accept it."""
    with pytest.raises(ParseError):
        c.decode(B1_PUBLISHED)


def test_rustun_b1_variant_md5_key() -> None:
    key = c.IntegrityKey(long_term_key(USERNAME_MATRIX, "example.org", PASSWORD_MATRIX))
    msg = c.decode(B1_RUSTUN)
    assert c.verify_integrity(msg, key)
    built = c.Message(c.BINDING, c.REQUEST, TID_LONG, dict(msg.attributes))
    assert c.encode(built, integrity_sha256=key) == B1_RUSTUN


def test_md5_key_example_from_rfc8489() -> None:
    assert long_term_key("user", "realm", "pass").hex() == "8493fbc53ba582fb4c044c456bdc40eb"


# ----------------------------------------------------------------------------- attributes


def _round_trip(attributes: dict[int, object], **kw: object) -> c.Message:
    msg = c.Message(c.BINDING, c.SUCCESS, attributes=attributes)
    out = c.decode(c.encode(msg, **kw))  # type: ignore[arg-type]
    assert out == msg
    return out


def test_every_attribute_round_trips() -> None:
    _round_trip(
        {
            c.MAPPED_ADDRESS: c.Address("192.0.2.7", 1),
            c.XOR_MAPPED_ADDRESS: c.Address("2001:db8::9", 65535),
            c.USERNAME: "alice",
            c.USERHASH: bytes(range(32)),
            c.ERROR_CODE: c.ErrorCode(438, "Stale Nonce"),
            c.REALM: "example.org",
            c.NONCE: "obMatJos2AAABxyz",
            c.PASSWORD_ALGORITHMS: (c.AlgorithmEntry(2, b""), c.AlgorithmEntry(1, b"")),
            c.PASSWORD_ALGORITHM: c.AlgorithmEntry(2, b""),
            c.UNKNOWN_ATTRIBUTES: (0x0031, 0x0032, 0x0033),
            c.SOFTWARE: "nattrav \u00e9",
            c.ALTERNATE_SERVER: c.Address("198.51.100.1", 3478),
            c.ALTERNATE_DOMAIN: "stun.example.org",
            c.CHANGE_REQUEST: c.CHANGE_IP | c.CHANGE_PORT,
            c.RESPONSE_ORIGIN: c.Address("198.51.100.2", 3478),
            c.OTHER_ADDRESS: c.Address("198.51.100.3", 3479),
            c.RESPONSE_PORT: 40000,
            c.PADDING: b"\0" * 17,
            0x7F01: b"raw-required",
            0xC001: b"raw-optional",
        },
        integrity=c.IntegrityKey(b"k"),
        integrity_sha256=c.IntegrityKey(b"k"),
        fingerprint=True,
    )


def test_unknown_attributes_kept_raw_and_required_ones_listed() -> None:
    msg = _round_trip({0x7F01: b"abc", 0xC001: b"def", 0x7F02: b""})
    assert msg.unknown_required == (0x7F01, 0x7F02)
    assert msg.get(0xC001) == b"def"


def test_table_extension_makes_an_attribute_known() -> None:
    table = c.STUN_ATTRIBUTES.extend(
        c.AttributeSpec(0x0012, "XOR-PEER-ADDRESS", c.decode_xor_address, c.encode_xor_address)
    )
    msg = c.Message(c.BINDING, c.SUCCESS, attributes={0x0012: c.Address("192.0.2.5", 99)})
    data = c.encode(msg, table=table)
    assert c.decode(data, table).get(0x0012) == c.Address("192.0.2.5", 99)
    assert c.decode(data).unknown_required == (0x0012,)  # plain STUN does not know it
    assert 0x0012 not in c.STUN_ATTRIBUTES  # the base table is untouched


def test_sha256_truncation() -> None:
    key = c.IntegrityKey(b"secret")
    msg = c.Message(c.BINDING, c.REQUEST, attributes={c.USERNAME: "u"})
    data = c.encode(msg, integrity_sha256=key, sha256_length=16)
    out = c.decode(data)
    assert c.verify_integrity(out, key)
    for bad in (12, 18, 36):
        with pytest.raises(LocalProtocolError):
            c.encode(msg, integrity_sha256=key, sha256_length=bad)


def test_message_type_interleaving() -> None:
    assert c.message_type(c.BINDING, c.REQUEST) == 0x0001
    assert c.message_type(c.BINDING, c.SUCCESS) == 0x0101
    assert c.message_type(c.BINDING, c.ERROR) == 0x0111
    assert c.message_type(0x003, c.INDICATION) == 0x0013  # TURN Allocate is 0x003
    for method in (0x001, 0x0FF, 0xABC, 0xFFF):
        for cls in c.MessageClass:
            assert c.split_message_type(c.message_type(method, cls)) == (method, cls)


def test_is_stun_classifier() -> None:
    assert c.is_stun(RFC5769_REQUEST)
    assert not c.is_stun(b"\x80" + RFC5769_REQUEST[1:])  # RTP-like first byte
    assert not c.is_stun(RFC5769_REQUEST[:19])
    assert not c.is_stun(RFC5769_REQUEST[:4] + b"\0\0\0\0" + RFC5769_REQUEST[8:])


def test_encode_rejects_unsendable_values() -> None:
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(c.BINDING, c.REQUEST, attributes={c.USERNAME: "x" * 509}))
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(c.BINDING, c.REQUEST, attributes={c.REALM: "\u00e9" * 128}))
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(c.BINDING, c.REQUEST, attributes={c.MESSAGE_INTEGRITY: b"x" * 20}))
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(c.BINDING, c.REQUEST, attributes={c.XOR_MAPPED_ADDRESS: ("nope", 1)}))
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(0x1000, c.REQUEST))
    with pytest.raises(LocalProtocolError):
        c.encode(c.Message(c.BINDING, c.ERROR, attributes={c.ERROR_CODE: c.ErrorCode(200, "")}))


def test_username_send_limit_is_bytes_and_parse_limit_is_763() -> None:
    c.encode(c.Message(c.BINDING, c.REQUEST, attributes={c.USERNAME: "x" * 508}))
    long_username = b"\x00\x06\x02\xfc" + b"u" * 764  # 764 bytes: above the parse limit
    data = c.encode(c.Message(c.BINDING, c.REQUEST))
    bad = bytearray(data[:20] + long_username)
    bad[2:4] = (len(bad) - 20).to_bytes(2)
    with pytest.raises(ParseError):
        c.decode(bytes(bad))


def test_stream_framer_splits_and_joins() -> None:
    a = c.encode(c.Message(c.BINDING, c.REQUEST))
    b = c.encode(c.Message(c.BINDING, c.SUCCESS, attributes={c.SOFTWARE: "x"}))
    framer = c.StreamFramer()
    stream = a + b
    assert framer.feed(stream[:7]) == []
    assert framer.feed(stream[7:25]) == [a]
    assert framer.feed(stream[25:]) == [b]
    assert framer.pending == 0
    with pytest.raises(ParseError):
        c.StreamFramer().feed(b"GET / HTTP/1.1\r\n\r\n")
