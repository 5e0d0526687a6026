"""Every STUN row (S1-S21) of ../shared/research/hostile-inputs.md, as a test.

Rows about parsing are checked here on the codec (S1-S6, S9-S11, S13, S15-S17, S19). Rows
about transactions drive the sans-IO request machine with a fake clock and live in
``test_transaction.py`` under the same names: ``test_s07_*`` (late duplicates), ``test_s08_*``
(wrong source), ``test_s09_*`` (unknown required attribute fails the transaction),
``test_s12_*`` (integrity failures), ``test_s14_*`` (other algorithm), ``test_s16_*``
(ERROR-CODE, 5xx budget), ``test_s18_*`` (bid-down, 401 loops), ``test_s20_*`` (redirect
targets), ``test_s21_*`` (a mapped address is no proof of reachability; the method and
verifier prove it separately, see ``test_method.py``/``test_lab.py``).
"""

from __future__ import annotations

import struct
import zlib

import pytest
from nattrav.errors import ParseError
from nattrav_stun import codec as c

TID = bytes(range(12))


def raw(
    body: bytes,
    *,
    mtype: int = 0x0101,
    length: int | None = None,
    cookie: int = c.MAGIC_COOKIE,
    tid: bytes = TID,
) -> bytes:
    return struct.pack("!HHI", mtype, len(body) if length is None else length, cookie) + tid + body


def tlv(attr_type: int, value: bytes, pad: bytes = b"\0") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) & 3)


def xma(host: str = "192.0.2.1", port: int = 4000) -> bytes:
    return tlv(c.XOR_MAPPED_ADDRESS, c.encode_xor_address((host, port), TID))


def with_fingerprint(message: bytes) -> bytes:
    data = bytearray(message)
    data[2:4] = (len(data) + 8 - 20).to_bytes(2)
    crc = zlib.crc32(bytes(data)) ^ 0x5354554E
    return bytes(data) + struct.pack("!HHI", c.FINGERPRINT, 4, crc)


def test_s01_shorter_than_header() -> None:
    for n in range(20):
        with pytest.raises(ParseError):
            c.decode(raw(b"")[:n])


def test_s02_top_bits_or_cookie() -> None:
    with pytest.raises(ParseError, match="top bits"):
        c.decode(raw(b"", mtype=0x4101))
    with pytest.raises(ParseError, match="cookie"):
        c.decode(raw(b"", cookie=0x01020304))
    assert not c.is_stun(raw(b"", cookie=0x01020304))


def test_s03_length_not_multiple_of_four() -> None:
    with pytest.raises(ParseError, match="multiple of 4"):
        c.decode(raw(b"\0\0", length=2))


def test_s04_truncated_or_trailing_bytes() -> None:
    good = raw(xma())
    c.decode(good)
    with pytest.raises(ParseError):
        c.decode(good[:-4])  # header says more than arrived
    with pytest.raises(ParseError):
        c.decode(good + b"\0\0\0\0")  # trailing garbage


def test_s05_attribute_runs_past_end() -> None:
    body = struct.pack("!HH", c.SOFTWARE, 40) + b"abcd"
    with pytest.raises(ParseError, match="past the end"):
        c.decode(raw(body))


def test_s06_nonzero_padding_accepted_and_covered_by_mac() -> None:
    key = c.IntegrityKey(b"k")
    msg = c.Message(c.BINDING, c.SUCCESS, TID, {c.SOFTWARE: "abc"})
    spaced = c.encode(msg, integrity=key, padding=b" ")
    zeroed = c.encode(msg, integrity=key)
    assert spaced != zeroed
    assert c.decode(spaced).get(c.SOFTWARE) == "abc"
    assert c.verify_integrity(c.decode(spaced), key)
    # the MAC covers padding as received: changing padding after signing breaks it
    tampered = bytearray(spaced)
    tampered[20 + 4 + 3] = 0
    assert not c.verify_integrity(c.decode(bytes(tampered)), key)


def test_s09_unknown_comprehension_required_listed_optional_ignored() -> None:
    msg = c.decode(raw(xma() + tlv(0x7001, b"x") + tlv(0xC001, b"y")))
    assert msg.unknown_required == (0x7001,)
    assert msg.xor_mapped_address == c.Address("192.0.2.1", 4000)


def test_s10_attributes_after_integrity_ignored() -> None:
    key = c.IntegrityKey(b"k")
    signed = c.encode(c.Message(c.BINDING, c.SUCCESS, TID), integrity=key)
    forged = bytearray(signed + xma("203.0.113.66", 6666) + tlv(0x7001, b"x"))
    forged[2:4] = (len(forged) - 20).to_bytes(2)
    msg = c.decode(with_fingerprint(bytes(forged)))
    assert msg.xor_mapped_address is None  # invisible
    assert msg.unknown_required == ()
    assert c.verify_integrity(msg, key)
    # after MESSAGE-INTEGRITY-SHA256 without MESSAGE-INTEGRITY: only FINGERPRINT counts
    signed256 = c.encode(c.Message(c.BINDING, c.SUCCESS, TID), integrity_sha256=key)
    forged256 = bytearray(
        signed256 + xma("203.0.113.66", 6666) + tlv(c.MESSAGE_INTEGRITY, b"\0" * 20)
    )
    forged256[2:4] = (len(forged256) - 20).to_bytes(2)
    msg256 = c.decode(bytes(forged256))
    assert msg256.xor_mapped_address is None and not msg256.has_integrity


def test_s11_fingerprint_wrong_or_not_last() -> None:
    good = with_fingerprint(raw(xma()))
    assert c.decode(good).fingerprint
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    with pytest.raises(ParseError, match="FINGERPRINT does not match"):
        c.decode(bytes(bad))
    not_last = bytearray(good + tlv(c.SOFTWARE, b"late"))
    not_last[2:4] = (len(not_last) - 20).to_bytes(2)
    with pytest.raises(ParseError, match="not the last"):
        c.decode(bytes(not_last))


def test_s13_integrity_lengths() -> None:
    with pytest.raises(ParseError):
        c.decode(raw(tlv(c.MESSAGE_INTEGRITY, b"\0" * 16)))
    for n in (12, 18, 36):
        with pytest.raises(ParseError):
            c.decode(raw(tlv(c.MESSAGE_INTEGRITY_SHA256, b"\0" * n)))
    for n in (16, 20, 32):
        c.decode(raw(tlv(c.MESSAGE_INTEGRITY_SHA256, b"\0" * n)))


def test_s15_address_family_and_length() -> None:
    unknown_family = tlv(c.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01" + b"\0" * 4)
    assert c.decode(raw(unknown_family)).xor_mapped_address is None  # ignored
    # ...and its duplicate does not sneak in as the "first" occurrence (first one counts)
    assert c.decode(raw(unknown_family + xma())).xor_mapped_address is None
    with pytest.raises(ParseError):
        c.decode(raw(tlv(c.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01" + b"\0" * 16)))  # v4, 20 B
    with pytest.raises(ParseError):
        c.decode(raw(tlv(c.XOR_MAPPED_ADDRESS, b"\x00\x02\x00\x01" + b"\0" * 4)))  # v6, 8 B
    v6 = c.decode(raw(xma("2001:db8::1", 5)))
    assert v6.xor_mapped_address == c.Address("2001:db8::1", 5)


def test_s16_error_code_class_and_number_bounds() -> None:
    bad_class = c.decode(raw(tlv(c.ERROR_CODE, b"\0\0\x02\x00oops"), mtype=0x0111))
    assert bad_class.error_code is not None and not bad_class.error_code.valid
    bad_number = c.decode(raw(tlv(c.ERROR_CODE, b"\0\0\x04\x78x"), mtype=0x0111))
    assert bad_number.error_code is not None and bad_number.error_code.code == -1
    good = c.decode(raw(tlv(c.ERROR_CODE, b"\0\0\x04\x26Stale Nonce"), mtype=0x0111))
    assert good.error_code == c.ErrorCode(438, "Stale Nonce")


def test_s17_overlong_texts() -> None:
    for attr in (c.USERNAME, c.REALM, c.NONCE, c.SOFTWARE):
        c.decode(raw(tlv(attr, b"a" * 763)))
        with pytest.raises(ParseError):
            c.decode(raw(tlv(attr, b"a" * 764)))
    with pytest.raises(ParseError):
        c.decode(raw(tlv(c.ERROR_CODE, b"\0\0\x04\x00" + b"r" * 764), mtype=0x0111))


def test_s19_duplicates_first_wins() -> None:
    msg = c.decode(raw(xma("192.0.2.1", 1) + xma("203.0.113.9", 2)))
    assert msg.xor_mapped_address == c.Address("192.0.2.1", 1)
