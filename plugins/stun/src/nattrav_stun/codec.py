"""STUN message codec (RFC 8489 §5-§7, §14; RFC 5780 §7): bytes in, objects out, nothing else.

Theory of operation
-------------------
``decode(data)`` turns one datagram (or one framed TCP message) into a ``Message`` or raises
``ParseError``; it never raises anything else, whatever the bytes (a hypothesis test holds it
to that). Validation follows RFC 8489 to the letter, because a lenient parser is how an
attacker slips an unprotected XOR-MAPPED-ADDRESS past the integrity check:

* header (§5, §6.3): at least 20 bytes, top two bits zero, magic cookie 0x2112A442, length a
  multiple of 4 and equal to what arrived (trailing bytes are an error, not something to
  ignore);
* attributes (§14): every TLV inside the message; per-type length rules (an IPv4 address is
  8 bytes, MESSAGE-INTEGRITY 20, MESSAGE-INTEGRITY-SHA256 16..32 in steps of 4, ...); padding
  content ignored; only the first occurrence of a type counts;
* integrity (§9): after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
  looked at; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT. Everything else there is walked
  over (it must still be well-formed) and is invisible to callers;
* FINGERPRINT (§7, §14.7) must be last and correct, else the message is discarded;
* unknown attributes are kept raw (``bytes``); unknown comprehension-required ones (type below
  0x8000) are listed in ``Message.unknown_required`` so the transaction layer can fail the
  transaction as §6.3.3/§6.3.4 require.

Integrity is *verified* elsewhere (``verify_integrity`` here, called by the transaction with
the right key): the decoder only records where MESSAGE-INTEGRITY(-SHA256) sit in ``raw``.

Speed matters (benchmarked against aioice): struct objects are precompiled, addresses go
through ``socket.inet_ntop`` and integer XOR rather than ``ipaddress`` and byte loops, and
HMAC inner/outer states are computed once per key (``IntegrityKey``). Attribute codecs live in
an ``AttributeTable`` so that TURN (the relay plugin) can extend the STUN table without global
registration.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import secrets
import socket
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs
from nattrav.errors import LocalProtocolError, ParseError

__all__ = [
    "ALTERNATE_DOMAIN",
    "ALTERNATE_SERVER",
    "BINDING",
    "CHANGE_IP",
    "CHANGE_PORT",
    "CHANGE_REQUEST",
    "COOKIE_BYTES",
    "ERROR",
    "ERROR_CODE",
    "FINGERPRINT",
    "ICE_CONTROLLED",
    "ICE_CONTROLLING",
    "INDICATION",
    "MAGIC_COOKIE",
    "MAPPED_ADDRESS",
    "MESSAGE_INTEGRITY",
    "MESSAGE_INTEGRITY_SHA256",
    "NONCE",
    "OTHER_ADDRESS",
    "PADDING",
    "PASSWORD_ALGORITHM",
    "PASSWORD_ALGORITHMS",
    "PRIORITY",
    "REALM",
    "REQUEST",
    "RESPONSE_ORIGIN",
    "RESPONSE_PORT",
    "SOFTWARE",
    "SUCCESS",
    "UNKNOWN_ATTRIBUTES",
    "USERHASH",
    "USERNAME",
    "USE_CANDIDATE",
    "XOR_MAPPED_ADDRESS",
    "Address",
    "AlgorithmEntry",
    "AttributeSpec",
    "AttributeTable",
    "ErrorCode",
    "IntegrityKey",
    "Message",
    "MessageClass",
    "STUN_ATTRIBUTES",
    "StreamFramer",
    "attribute_name",
    "decode",
    "decode_address",
    "decode_xor_address",
    "encode",
    "encode_address",
    "encode_xor_address",
    "is_stun",
    "message_type",
    "new_transaction_id",
    "split_message_type",
    "verify_fingerprint",
    "verify_integrity",
]

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E
HEADER_SIZE = 20

# --------------------------------------------------------------------- methods and classes

BINDING = 0x001


class MessageClass(enum.IntEnum):
    """The two class bits of the message type (RFC 8489 §5)."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


REQUEST = MessageClass.REQUEST
INDICATION = MessageClass.INDICATION
SUCCESS = MessageClass.SUCCESS
ERROR = MessageClass.ERROR
_CLASSES = (REQUEST, INDICATION, SUCCESS, ERROR)

# --------------------------------------------------------------------- attribute types

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024  # RFC 8445 (ICE); known so RFC 5769 vectors decode cleanly
USE_CANDIDATE = 0x0025  # RFC 8445
PADDING = 0x0026  # RFC 5780 §7.4
RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029  # RFC 8445
ICE_CONTROLLING = 0x802A  # RFC 8445
RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4

#: CHANGE-REQUEST flags (RFC 5780 §7.2): "A" asks for another IP, "B" for another port.
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

# Limits from RFC 8489 §14.3, §14.8-§14.10, §14.14, §14.16: what a receiver must accept.
_TEXT_PARSE_LIMIT = 763
_DOMAIN_LIMIT = 255
# What a sender may send: USERNAME < 509 bytes, the other texts < 128 characters.
_USERNAME_SEND_LIMIT = 508
_TEXT_SEND_CHARS = 127

_HEADER = struct.Struct("!HHI12s")
_HEADER_PACK = _HEADER.pack
_TLV_PACK = struct.Struct("!HH").pack
_TLV = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!BBH")

_inet_ntop = socket.inet_ntop
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_crc32 = zlib.crc32
_ZERO_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def new_transaction_id() -> bytes:
    """96 cryptographically random bits (RFC 8489 §5: uniformly random, from a CSPRNG)."""
    return secrets.token_bytes(12)


def message_type(method: int, cls: int) -> int:
    """Interleave the 12-bit method and the 2 class bits into the 14-bit type (§5)."""
    if not 0 <= method <= 0xFFF:
        raise LocalProtocolError(f"STUN method {method:#x} out of range 0x000-0xFFF")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


#: Method bits of the message type for every 12-bit method, and the class bits (§5).
_METHOD_BITS = tuple(
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) for m in range(0x1000)
)
_CLASS_BITS = (0x000, 0x010, 0x100, 0x110)
#: The first 8 header bytes (type, length 0, cookie) of an attribute-less message, per class,
#: for the methods STUN and TURN define (0x001-0x00A): such a message is then one concatenation.
_PLAIN_HEADS = {
    m: tuple(((_METHOD_BITS[m] | bits) << 48 | MAGIC_COOKIE).to_bytes(8) for bits in _CLASS_BITS)
    for m in range(0x010)
}


def split_message_type(mtype: int) -> tuple[int, MessageClass]:
    """Inverse of :func:`message_type`: ``(method, class)``."""
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    return method, _CLASSES[((mtype >> 4) & 1) | ((mtype >> 7) & 2)]


def is_stun(data: bytes) -> bool:
    """Cheap RFC 7983 demultiplexing test: first byte 0-3 and the magic cookie.

    For a shared port (``DatagramMux``): true for anything that could be a STUN message, before
    any parsing. It says nothing about validity; ``decode`` decides that.
    """
    return len(data) >= HEADER_SIZE and data[0] < 4 and data[4:8] == COOKIE_BYTES


# --------------------------------------------------------------------- value types


class Address(NamedTuple):
    """An IP literal and a port, as carried in address attributes.

    A plain tuple (cheap to build while parsing); ``host`` is in the canonical text form
    ``socket.inet_ntop`` gives. ``nattrav.models.TransportAddress(*address)`` converts.
    """

    host: str
    port: int

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_new_address = tuple.__new__


class ErrorCode(NamedTuple):
    """ERROR-CODE (§14.8). ``code`` is 300-699, or -1 when the class/number bits were invalid
    (class outside 3-6 or number above 99): the transaction then fails (§6.3.4)."""

    code: int
    reason: str = ""

    @property
    def valid(self) -> bool:
        return 300 <= self.code <= 699


class AlgorithmEntry(NamedTuple):
    """One entry of PASSWORD-ALGORITHMS or the PASSWORD-ALGORITHM value (§14.11, §14.12)."""

    algorithm: int
    parameters: bytes = b""


# --------------------------------------------------------------------- attribute codecs
# Decoders take (value, transaction_id) and return the value, or None to ignore the attribute
# (unknown address family, §6.3.3); they raise ParseError on malformed values. Encoders take
# (value, transaction_id) and return the unpadded value bytes.

Decoder = Callable[[bytes, bytes], Any]
Encoder = Callable[[Any, bytes], bytes]
#: Takes (value, transaction_id), returns the whole attribute: TLV header, value, zero padding.
TlvEncoder = Callable[[Any, bytes], bytes]

# Speed (the codec is benchmarked against aioice): the standard decoders below are marked with
# a *kind* so that ``decode`` can handle their attributes inline (no call, no slice), and the
# standard encoders with a factory of whole-TLV encoders so that ``encode`` makes one call per
# attribute. ``AttributeTable`` looks both up by the codec function's identity, so a table
# that replaces a codec with its own gets the generic path, never a wrong shortcut. These two
# mappings are filled once, below, at import; nothing changes them afterwards.
_K_XOR, _K_ADDR, _K_U32, _K_U64, _K_TEXT, _K_TEXT_LENIENT = 1, 2, 3, 4, 5, 6
# The attributes ``decode`` handles itself, whatever the table: kinds above all the others.
_K_MI, _K_MI256, _K_FINGERPRINT = 10, 11, 12
_DECODER_KINDS: dict[Decoder, int] = {}
_TLV_FACTORIES: dict[Encoder, Callable[[int], TlvEncoder]] = {}
_TEXT_QUICK_LIMITS: dict[Encoder, int] = {}


def _bad(name: str, why: str) -> ParseError:
    return ParseError(f"STUN {name}: {why}")


def decode_address(value: bytes, _tid: bytes = b"") -> Address | None:
    """MAPPED-ADDRESS format (§14.1), also ALTERNATE-SERVER, RESPONSE-ORIGIN, OTHER-ADDRESS."""
    n = len(value)
    if n < 4:
        raise _bad("address", f"{n} bytes, need at least 4")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == 1:
        if n != 8:
            raise _bad("address", f"IPv4 address attribute of {n} bytes (must be 8)")
        host = "%d.%d.%d.%d" % (value[4], value[5], value[6], value[7])  # noqa: UP031 (faster)
        return _new_address(Address, (host, port))
    if family == 2:
        if n != 20:
            raise _bad("address", f"IPv6 address attribute of {n} bytes (must be 20)")
        return _new_address(Address, (_inet_ntop(_AF_INET6, value[4:20]), port))
    return None  # unknown family: the attribute is ignored (§6.3.3)


def decode_xor_address(value: bytes, tid: bytes) -> Address | None:
    """XOR-MAPPED-ADDRESS format (§14.2), also TURN's XOR-PEER/RELAYED-ADDRESS."""
    n = len(value)
    if n < 4:
        raise _bad("XOR address", f"{n} bytes, need at least 4")
    family = value[1]
    port = ((value[2] << 8) | value[3]) ^ 0x2112
    if family == 1:
        if n != 8:
            raise _bad("XOR address", f"IPv4 address attribute of {n} bytes (must be 8)")
        # XOR each byte with the cookie's byte: cheaper than int round trips plus inet_ntop.
        host = "%d.%d.%d.%d" % (  # noqa: UP031 (%-formatting is the fastest here)
            value[4] ^ 0x21,
            value[5] ^ 0x12,
            value[6] ^ 0xA4,
            value[7] ^ 0x42,
        )
        return _new_address(Address, (host, port))
    if family == 2:
        if n != 20:
            raise _bad("XOR address", f"IPv6 address attribute of {n} bytes (must be 20)")
        ip = (int.from_bytes(value[4:20]) ^ int.from_bytes(COOKIE_BYTES + tid)).to_bytes(16)
        return _new_address(Address, (_inet_ntop(_AF_INET6, ip), port))
    return None


def _pack_ip(host: str) -> tuple[int, bytes]:
    try:
        if ":" in host:
            return 2, _inet_pton(_AF_INET6, host.split("%", 1)[0])
        return 1, _inet_pton(_AF_INET, host)
    except (OSError, ValueError):
        raise LocalProtocolError(f"not an IP address literal: {host!r}") from None


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port!r} out of range 0-65535")
    return port


def encode_address(value: tuple[str, int], _tid: bytes = b"") -> bytes:
    """Inverse of :func:`decode_address`; ``value`` is ``(host, port)``."""
    host, port = value
    family, packed = _pack_ip(host)
    return _ADDR_HEAD.pack(0, family, _check_port(port)) + packed


def encode_xor_address(value: tuple[str, int], tid: bytes) -> bytes:
    """Inverse of :func:`decode_xor_address`; ``value`` is ``(host, port)``."""
    host, port = value
    family, packed = _pack_ip(host)
    head = _ADDR_HEAD.pack(0, family, _check_port(port) ^ 0x2112)
    if family == 1:
        return head + (int.from_bytes(packed) ^ MAGIC_COOKIE).to_bytes(4)
    return head + (int.from_bytes(packed) ^ int.from_bytes(COOKIE_BYTES + tid)).to_bytes(16)


_DECODER_KINDS[decode_address] = _K_ADDR
_DECODER_KINDS[decode_xor_address] = _K_XOR
# Whole address attributes in one pack: type, length, reserved, family, port, IPv4 address.
_ADDR4_TLV = struct.Struct("!HHxBHI")
_ADDR6_HEAD = struct.Struct("!HHxBH")


def _address_tlv_factory(xor: bool) -> Callable[[int], TlvEncoder]:
    def factory(attr_type: int) -> TlvEncoder:
        pack4 = _ADDR4_TLV.pack
        pack6 = _ADDR6_HEAD.pack
        port_mask = 0x2112 if xor else 0
        ip4_mask = MAGIC_COOKIE if xor else 0

        def tlv(value: tuple[str, int], tid: bytes) -> bytes:
            host, port = value
            if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
                raise LocalProtocolError(f"port {port!r} out of range 0-65535")
            try:
                if ":" not in host:
                    ip = int.from_bytes(_inet_pton(_AF_INET, host))
                    return pack4(attr_type, 8, 1, port ^ port_mask, ip ^ ip4_mask)
                packed = _inet_pton(_AF_INET6, host.split("%", 1)[0])
            except (OSError, ValueError, TypeError):
                raise LocalProtocolError(f"not an IP address literal: {host!r}") from None
            if xor:
                packed = (int.from_bytes(packed) ^ int.from_bytes(COOKIE_BYTES + tid)).to_bytes(16)
            return pack6(attr_type, 20, 2, port ^ port_mask) + packed

        return tlv

    return factory


_TLV_FACTORIES[encode_address] = _address_tlv_factory(False)
_TLV_FACTORIES[encode_xor_address] = _address_tlv_factory(True)


def _text_codec(
    name: str, *, send_limit_bytes: int | None, send_limit_chars: int | None, strict: bool = True
) -> tuple[Decoder, Encoder]:
    errors = "strict" if strict else "replace"

    def dec(value: bytes, _tid: bytes) -> str:
        if len(value) > _TEXT_PARSE_LIMIT:
            raise _bad(name, f"{len(value)} bytes, more than {_TEXT_PARSE_LIMIT}")
        try:
            return value.decode("utf-8", errors)
        except UnicodeDecodeError:
            raise _bad(name, "not UTF-8") from None

    def enc(value: str | bytes, _tid: bytes) -> bytes:
        if type(value) is str:
            data = value.encode()
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        else:
            raise LocalProtocolError(f"STUN {name} must be str, got {type(value).__name__}")
        if send_limit_bytes is not None and len(data) > send_limit_bytes:
            raise LocalProtocolError(
                f"STUN {name} is {len(data)} bytes; at most "
                f"{send_limit_bytes} may be sent (RFC 8489 §14)"
            )
        # Characters never outnumber bytes: count them only when the bytes exceed the limit.
        if (
            send_limit_chars is not None
            and len(data) > send_limit_chars
            and len(data.decode("utf-8", "replace")) > send_limit_chars
        ):
            raise LocalProtocolError(
                f"STUN {name} longer than {send_limit_chars} characters (RFC 8489 §14)"
            )
        return data

    _DECODER_KINDS[dec] = _K_TEXT if strict else _K_TEXT_LENIENT

    # ``encode`` writes a str of at most this many UTF-8 bytes inline: below both limits it
    # needs no checks beyond its length.
    _TEXT_QUICK_LIMITS[enc] = min(
        send_limit_bytes or _TEXT_PARSE_LIMIT, send_limit_chars or _TEXT_PARSE_LIMIT
    )
    return dec, enc


def _dec_domain(value: bytes, _tid: bytes) -> str:
    if len(value) > _DOMAIN_LIMIT:
        raise _bad("ALTERNATE-DOMAIN", f"{len(value)} bytes, more than {_DOMAIN_LIMIT}")
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _bad("ALTERNATE-DOMAIN", "not ASCII") from None


def _enc_domain(value: str, _tid: bytes) -> bytes:
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError("ALTERNATE-DOMAIN must be ASCII (A-labels)") from None
    if len(data) > _DOMAIN_LIMIT:
        raise LocalProtocolError("ALTERNATE-DOMAIN longer than 255 characters")
    return data


def _dec_error_code(value: bytes, _tid: bytes) -> ErrorCode:
    if len(value) < 4:
        raise _bad("ERROR-CODE", f"{len(value)} bytes, need at least 4")
    if len(value) - 4 > _TEXT_PARSE_LIMIT:
        raise _bad("ERROR-CODE", "reason phrase longer than 763 bytes")
    cls = value[2] & 0x07
    number = value[3]
    # The reason phrase is diagnostic only: a bad byte must not cost the whole response.
    reason = value[4:].decode("utf-8", "replace")
    if 3 <= cls <= 6 and number <= 99:
        return ErrorCode(cls * 100 + number, reason)
    return ErrorCode(-1, f"[invalid class {cls} number {number}] {reason}")


def _enc_error_code(value: ErrorCode | tuple[int, str] | int, _tid: bytes) -> bytes:
    if isinstance(value, int):
        code, reason = value, ""
    else:
        code, reason = value[0], value[1]
    if not 300 <= code <= 699:
        raise LocalProtocolError(f"ERROR-CODE {code} out of range 300-699")
    text = reason.encode()
    if len(reason) > _TEXT_SEND_CHARS:
        raise LocalProtocolError("ERROR-CODE reason phrase longer than 127 characters")
    return bytes((0, 0, code // 100, code % 100)) + text


def _dec_fixed(name: str, size: int) -> Decoder:
    def dec(value: bytes, _tid: bytes) -> bytes:
        if len(value) != size:
            raise _bad(name, f"{len(value)} bytes (must be {size})")
        return value

    return dec


def _enc_bytes(value: bytes, _tid: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _dec_bytes(value: bytes, _tid: bytes) -> bytes:
    return value


def _dec_u32(name: str) -> Decoder:
    def dec(value: bytes, _tid: bytes) -> int:
        if len(value) != 4:
            raise _bad(name, f"{len(value)} bytes (must be 4)")
        return int.from_bytes(value)

    _DECODER_KINDS[dec] = _K_U32
    return dec


def _enc_u32(value: int, _tid: bytes) -> bytes:
    return _U32.pack(value)


def _dec_u64(name: str) -> Decoder:
    def dec(value: bytes, _tid: bytes) -> int:
        if len(value) != 8:
            raise _bad(name, f"{len(value)} bytes (must be 8)")
        return int.from_bytes(value)

    _DECODER_KINDS[dec] = _K_U64
    return dec


def _enc_u64(value: int, _tid: bytes) -> bytes:
    return _U64.pack(value)


# Type, length, value, and a zero-length string that swallows the transaction ID argument:
# ``partial(layout.pack, type, size)`` is then a whole-TLV encoder without a Python frame.
_U32_TLV = struct.Struct("!HHI0s")
_U64_TLV = struct.Struct("!HHQ0s")


def _int_tlv_factory(layout: struct.Struct, size: int) -> Callable[[int], TlvEncoder]:
    def factory(attr_type: int) -> TlvEncoder:
        return functools.partial(layout.pack, attr_type, size)  # struct.error: see encode()

    return factory


_TLV_FACTORIES[_enc_u32] = _int_tlv_factory(_U32_TLV, 4)
_TLV_FACTORIES[_enc_u64] = _int_tlv_factory(_U64_TLV, 8)


def _dec_empty(name: str) -> Decoder:
    def dec(value: bytes, _tid: bytes) -> bool:
        if value:
            raise _bad(name, f"{len(value)} bytes (must be empty)")
        return True

    return dec


def _enc_empty(_value: Any, _tid: bytes) -> bytes:
    return b""


def _dec_change_request(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise _bad("CHANGE-REQUEST", f"{len(value)} bytes (must be 4)")
    return int.from_bytes(value) & (CHANGE_IP | CHANGE_PORT)


def _dec_response_port(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise _bad("RESPONSE-PORT", f"{len(value)} bytes (must be 4)")
    return (value[0] << 8) | value[1]


def _enc_response_port(value: int, _tid: bytes) -> bytes:
    return _U16.pack(_check_port(value)) + b"\0\0"


def _dec_unknown_attributes(value: bytes, _tid: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise _bad("UNKNOWN-ATTRIBUTES", f"odd length {len(value)}")
    return tuple(int.from_bytes(value[i : i + 2]) for i in range(0, len(value), 2))


def _enc_unknown_attributes(value: Iterable[int], _tid: bytes) -> bytes:
    return b"".join(_U16.pack(t) for t in value)


def _dec_algorithms(value: bytes, _tid: bytes) -> tuple[AlgorithmEntry, ...]:
    out: list[AlgorithmEntry] = []
    pos, n = 0, len(value)
    while pos < n:
        if pos + 4 > n:
            raise _bad("PASSWORD-ALGORITHMS", "truncated entry")
        alg, plen = _TLV.unpack_from(value, pos)
        pos += 4
        end = pos + plen
        if end > n:
            raise _bad("PASSWORD-ALGORITHMS", "parameters run past the attribute")
        out.append(AlgorithmEntry(alg, value[pos:end]))
        pos = end + (-plen & 3)
    if pos != n:
        raise _bad("PASSWORD-ALGORITHMS", "parameter padding runs past the attribute")
    return tuple(out)


def _enc_algorithm_entry(entry: tuple[int, bytes]) -> bytes:
    alg, params = entry
    return _TLV.pack(int(alg), len(params)) + params + b"\0" * (-len(params) & 3)


def _enc_algorithms(value: Iterable[tuple[int, bytes]], _tid: bytes) -> bytes:
    return b"".join(_enc_algorithm_entry(e) for e in value)


def _dec_algorithm(value: bytes, _tid: bytes) -> AlgorithmEntry:
    if len(value) < 4:
        raise _bad("PASSWORD-ALGORITHM", f"{len(value)} bytes, need at least 4")
    alg, plen = _TLV.unpack_from(value)
    if len(value) not in (4 + plen, 4 + plen + (-plen & 3)):
        raise _bad("PASSWORD-ALGORITHM", "parameter length does not match the attribute")
    return AlgorithmEntry(alg, value[4 : 4 + plen])


def _enc_algorithm(value: tuple[int, bytes] | int, _tid: bytes) -> bytes:
    if isinstance(value, int):
        value = (value, b"")
    return _enc_algorithm_entry(value)


def _dec_mi256(value: bytes, _tid: bytes) -> bytes:
    n = len(value)
    if n < 16 or n > 32 or n % 4:
        raise _bad("MESSAGE-INTEGRITY-SHA256", f"{n} bytes (16-32, a multiple of 4)")
    return value


def _dec_fingerprint(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise _bad("FINGERPRINT", f"{len(value)} bytes (must be 4)")
    return int.from_bytes(value)


# Attributes the codec places itself (encode keyword arguments), never from ``attributes``.
_PLACED = frozenset({MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT})


def _placed_encoder(name: str) -> TlvEncoder:
    def refuse(_value: Any, _tid: bytes) -> bytes:
        raise LocalProtocolError(f"{name} is added by encode(), not by attributes")

    return refuse


@attrs.frozen
class AttributeSpec:
    """How one attribute type is named, decoded and encoded."""

    type: int
    name: str
    decode: Decoder = attrs.field(eq=False, repr=False)
    encode: Encoder = attrs.field(eq=False, repr=False)


class AttributeTable:
    """The attributes a STUN usage understands. Immutable; ``extend`` returns a new table.

    Whether an attribute is *known* decides the comprehension-required check (§6.3), so each
    usage decodes with its own table: the relay plugin builds
    ``TURN_ATTRIBUTES = STUN_ATTRIBUTES.extend(AttributeSpec(0x0012, "XOR-PEER-ADDRESS",
    decode_xor_address, encode_xor_address), ...)``.
    """

    __slots__ = ("decoders", "encoders", "inline", "names", "specs", "tlv_encoders")

    def __init__(self, specs: Iterable[AttributeSpec]) -> None:
        self.specs: dict[int, AttributeSpec] = {s.type: s for s in specs}
        self.decoders: dict[int, Decoder] = {t: s.decode for t, s in self.specs.items()}
        self.encoders: dict[int, Encoder] = {t: s.encode for t, s in self.specs.items()}
        self.names: dict[int, str] = {t: s.name for t, s in self.specs.items()}
        #: attribute type -> kind, for the standard decoders ``decode`` runs inline
        self.inline: dict[int, int] = {}
        #: attribute type -> whole-TLV encoder for the standard codecs, or for the standard
        #: texts the length ``encode`` writes inline; the attributes ``encode`` places itself
        #: have an entry that raises (so the loop needs no extra test)
        self.tlv_encoders: dict[int, TlvEncoder | int] = {}
        for t, spec in self.specs.items():
            kind = _DECODER_KINDS.get(spec.decode)
            if kind is not None:
                self.inline[t] = kind
            factory = _TLV_FACTORIES.get(spec.encode)
            if factory is not None:
                self.tlv_encoders[t] = factory(t)
            quick = _TEXT_QUICK_LIMITS.get(spec.encode)
            if quick is not None:
                self.tlv_encoders[t] = quick
        for t in _PLACED:
            self.tlv_encoders[t] = _placed_encoder(self.names.get(t, f"{t:#06x}"))
        self.inline[MESSAGE_INTEGRITY] = _K_MI
        self.inline[MESSAGE_INTEGRITY_SHA256] = _K_MI256
        self.inline[FINGERPRINT] = _K_FINGERPRINT

    def extend(self, *specs: AttributeSpec) -> AttributeTable:
        """A new table with ``specs`` added (replacing any of the same type)."""
        return AttributeTable([*self.specs.values(), *specs])

    def __contains__(self, attr_type: object) -> bool:
        return attr_type in self.specs


def _spec(t: int, name: str, dec: Decoder, enc: Encoder) -> AttributeSpec:
    return AttributeSpec(t, name, dec, enc)


_USERNAME_CODEC = _text_codec(
    "USERNAME", send_limit_bytes=_USERNAME_SEND_LIMIT, send_limit_chars=None
)
_REALM_CODEC = _text_codec("REALM", send_limit_bytes=None, send_limit_chars=_TEXT_SEND_CHARS)
_NONCE_CODEC = _text_codec("NONCE", send_limit_bytes=None, send_limit_chars=_TEXT_SEND_CHARS)
_SOFTWARE_CODEC = _text_codec(
    "SOFTWARE", send_limit_bytes=None, send_limit_chars=_TEXT_SEND_CHARS, strict=False
)

#: Every attribute of RFC 8489 and RFC 5780, plus the four ICE attributes of RFC 8445.
STUN_ATTRIBUTES = AttributeTable(
    [
        _spec(MAPPED_ADDRESS, "MAPPED-ADDRESS", decode_address, encode_address),
        _spec(CHANGE_REQUEST, "CHANGE-REQUEST", _dec_change_request, _enc_u32),
        _spec(USERNAME, "USERNAME", *_USERNAME_CODEC),
        _spec(
            MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY", _dec_fixed("MESSAGE-INTEGRITY", 20), _enc_bytes
        ),
        _spec(ERROR_CODE, "ERROR-CODE", _dec_error_code, _enc_error_code),
        _spec(
            UNKNOWN_ATTRIBUTES,
            "UNKNOWN-ATTRIBUTES",
            _dec_unknown_attributes,
            _enc_unknown_attributes,
        ),
        _spec(REALM, "REALM", *_REALM_CODEC),
        _spec(NONCE, "NONCE", *_NONCE_CODEC),
        _spec(MESSAGE_INTEGRITY_SHA256, "MESSAGE-INTEGRITY-SHA256", _dec_mi256, _enc_bytes),
        _spec(PASSWORD_ALGORITHM, "PASSWORD-ALGORITHM", _dec_algorithm, _enc_algorithm),
        _spec(USERHASH, "USERHASH", _dec_fixed("USERHASH", 32), _enc_bytes),
        _spec(XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", decode_xor_address, encode_xor_address),
        _spec(PRIORITY, "PRIORITY", _dec_u32("PRIORITY"), _enc_u32),
        _spec(USE_CANDIDATE, "USE-CANDIDATE", _dec_empty("USE-CANDIDATE"), _enc_empty),
        _spec(PADDING, "PADDING", _dec_bytes, _enc_bytes),
        _spec(RESPONSE_PORT, "RESPONSE-PORT", _dec_response_port, _enc_response_port),
        _spec(PASSWORD_ALGORITHMS, "PASSWORD-ALGORITHMS", _dec_algorithms, _enc_algorithms),
        _spec(ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", _dec_domain, _enc_domain),
        _spec(SOFTWARE, "SOFTWARE", *_SOFTWARE_CODEC),
        _spec(ALTERNATE_SERVER, "ALTERNATE-SERVER", decode_address, encode_address),
        _spec(FINGERPRINT, "FINGERPRINT", _dec_fingerprint, _enc_u32),
        _spec(ICE_CONTROLLED, "ICE-CONTROLLED", _dec_u64("ICE-CONTROLLED"), _enc_u64),
        _spec(ICE_CONTROLLING, "ICE-CONTROLLING", _dec_u64("ICE-CONTROLLING"), _enc_u64),
        _spec(RESPONSE_ORIGIN, "RESPONSE-ORIGIN", decode_address, encode_address),
        _spec(OTHER_ADDRESS, "OTHER-ADDRESS", decode_address, encode_address),
    ]
)


def attribute_name(attr_type: int, table: AttributeTable = STUN_ATTRIBUTES) -> str:
    """``"XOR-MAPPED-ADDRESS"``, or ``"0x8055"`` for an attribute the table does not know."""
    return table.names.get(attr_type, f"{attr_type:#06x}")


# --------------------------------------------------------------------- integrity keys


class IntegrityKey:
    """An HMAC key with its SHA-1 and SHA-256 inner/outer states computed once.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)); the two padded-key blocks do not depend
    on the message, so hashing them once per key and ``copy()``-ing the states saves two
    compression rounds per message (about 40 % of an HMAC of a small STUN message).
    """

    __slots__ = ("_i1", "_i256", "_o1", "_o256", "key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray):
            raise LocalProtocolError("an integrity key must be bytes")
        self.key = bytes(key)
        self._i1, self._o1 = self._states(hashlib.sha1)
        self._i256, self._o256 = self._states(hashlib.sha256)

    def _states(self, factory: Callable[..., Any]) -> tuple[Any, Any]:
        key = self.key
        if len(key) > 64:  # both hashes have 64-byte blocks
            key = factory(key).digest()
        key = key.ljust(64, b"\0")
        inner = factory(key.translate(_IPAD))
        outer = factory(key.translate(_OPAD))
        return inner, outer

    def sha1(self, data: bytes) -> bytes:
        """HMAC-SHA1(key, data): 20 bytes."""
        inner = self._i1.copy()
        inner.update(data)
        outer = self._o1.copy()
        outer.update(inner.digest())
        return outer.digest()  # type: ignore[no-any-return]

    def sha256(self, data: bytes) -> bytes:
        """HMAC-SHA256(key, data): 32 bytes."""
        inner = self._i256.copy()
        inner.update(data)
        outer = self._o256.copy()
        outer.update(inner.digest())
        return outer.digest()  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntegrityKey) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return "IntegrityKey(<secret>)"


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


# --------------------------------------------------------------------- the message


class Message:
    """One STUN message.

    ``attributes`` maps attribute type to decoded value, in wire order, first occurrence only;
    values are ``Address`` (address attributes), ``str`` (USERNAME, REALM, NONCE, SOFTWARE,
    ALTERNATE-DOMAIN), ``ErrorCode``, ``int`` (CHANGE-REQUEST flags, RESPONSE-PORT, PRIORITY),
    ``tuple[AlgorithmEntry, ...]`` (PASSWORD-ALGORITHMS), ``AlgorithmEntry``
    (PASSWORD-ALGORITHM), ``tuple[int, ...]`` (UNKNOWN-ATTRIBUTES) or raw ``bytes`` (USERHASH,
    PADDING, anything the table does not know). MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
    FINGERPRINT are not in ``attributes``: ``encode`` adds them from its arguments and
    ``decode`` records where they were (``raw`` plus offsets) for ``verify_integrity``.

    Equality compares method, class, transaction ID and attributes only.

    A hand-written ``__slots__`` class rather than attrs: one is built per datagram, and the
    decode-only facts travel in a single ``_wire`` tuple so construction stays at five stores.
    """

    __slots__ = ("_wire", "attributes", "cls", "method", "transaction_id")

    def __init__(
        self,
        method: int,
        cls: MessageClass | int,
        transaction_id: bytes | None = None,
        attributes: dict[int, Any] | None = None,
        _wire: tuple[bytes, int, int, bool, tuple[int, ...]] | None = None,
    ) -> None:
        self.method = method
        self.cls = cls if type(cls) is MessageClass else MessageClass(cls)
        self.transaction_id = new_transaction_id() if transaction_id is None else transaction_id
        self.attributes = {} if attributes is None else attributes
        self._wire = _wire

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.method == other.method
            and self.cls == other.cls
            and self.transaction_id == other.transaction_id
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Message(method={self.method:#x}, cls={self.cls.name}, "
            f"transaction_id={self.transaction_id.hex()}, attributes={self.attributes!r})"
        )

    # ------------------------------------------------------------ decode facts

    @property
    def raw(self) -> bytes | None:
        """The bytes this message was decoded from (``None`` for messages built locally)."""
        return None if self._wire is None else self._wire[0]

    @property
    def integrity_offset(self) -> int:
        """Offset in ``raw`` of MESSAGE-INTEGRITY (-1: absent or ignored)."""
        return -1 if self._wire is None else self._wire[1]

    @property
    def integrity_sha256_offset(self) -> int:
        """Offset in ``raw`` of MESSAGE-INTEGRITY-SHA256 (-1: absent or ignored)."""
        return -1 if self._wire is None else self._wire[2]

    @property
    def fingerprint(self) -> bool:
        """A FINGERPRINT was present (and, since ``decode`` checks it, correct)."""
        return False if self._wire is None else self._wire[3]

    @property
    def unknown_required(self) -> tuple[int, ...]:
        """Unknown comprehension-required attribute types seen before the integrity
        attributes (§6.3: a response carrying any fails its transaction)."""
        return () if self._wire is None else self._wire[4]

    # ------------------------------------------------------------ convenience accessors

    def get(self, attr_type: int, default: Any = None) -> Any:
        return self.attributes.get(attr_type, default)

    def __contains__(self, attr_type: object) -> bool:
        return attr_type in self.attributes

    @property
    def has_integrity(self) -> bool:
        """MESSAGE-INTEGRITY was present (visible) in the decoded message."""
        return self.integrity_offset >= 0

    @property
    def has_integrity_sha256(self) -> bool:
        return self.integrity_sha256_offset >= 0

    @property
    def xor_mapped_address(self) -> Address | None:
        value: Address | None = self.attributes.get(XOR_MAPPED_ADDRESS)
        return value

    @property
    def error_code(self) -> ErrorCode | None:
        value: ErrorCode | None = self.attributes.get(ERROR_CODE)
        return value

    def encode(
        self,
        *,
        integrity: IntegrityKey | None = None,
        integrity_sha256: IntegrityKey | None = None,
        sha256_length: int = 32,
        fingerprint: bool = False,
        table: AttributeTable = STUN_ATTRIBUTES,
        padding: bytes = b"\0",
    ) -> bytes:
        """``encode(self, ...)``."""
        return encode(
            self,
            integrity=integrity,
            integrity_sha256=integrity_sha256,
            sha256_length=sha256_length,
            fingerprint=fingerprint,
            table=table,
            padding=padding,
        )

    def describe(self, table: AttributeTable = STUN_ATTRIBUTES) -> str:
        """One line for logs: ``Binding success 3f2a.. XOR-MAPPED-ADDRESS=192.0.2.1:4000``."""
        names = {BINDING: "Binding"}
        kind = ("request", "indication", "success", "error")[self.cls]
        parts = [f"{names.get(self.method, hex(self.method))} {kind} {self.transaction_id.hex()}"]
        parts += [f"{attribute_name(t, table)}={v}" for t, v in self.attributes.items()]
        return " ".join(parts)


# --------------------------------------------------------------------- encode


def encode(
    msg: Message,
    # Not keyword-only, although callers pass them by keyword: CPython fills missing
    # keyword-only defaults with a dict lookup each, a tenth of a small message's encoding.
    integrity: IntegrityKey | None = None,
    integrity_sha256: IntegrityKey | None = None,
    sha256_length: int = 32,
    fingerprint: bool = False,
    table: AttributeTable = STUN_ATTRIBUTES,
    padding: bytes = b"\0",
) -> bytes:
    """Serialise ``msg``; add MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.

    Attributes are written in ``msg.attributes`` order; values of types the table does not know
    must be ``bytes``. The integrity attributes and FINGERPRINT are placed last, in the order
    RFC 8489 §14.5-§14.7 requires, each computed with the header length adjusted to end at it.
    ``sha256_length`` truncates MESSAGE-INTEGRITY-SHA256 (16-32, a multiple of 4; only when
    the usage allows it, §14.6). ``padding`` is the padding byte: RFC 8489 requires zero; the
    RFC 5769 test vectors use a space, which is the only reason this knob exists.
    Raises ``LocalProtocolError`` for values that cannot be sent.
    """
    attributes = msg.attributes
    if not attributes and integrity is None and not fingerprint and integrity_sha256 is None:
        # The plain request (a Binding request or keepalive, the commonest message there
        # is): a precomputed header start and the transaction ID.
        try:
            data = _PLAIN_HEADS[msg.method][msg.cls] + msg.transaction_id
        except (KeyError, TypeError):
            pass  # an unusual method, or a bad ID: the general path says what is wrong
        else:
            if len(data) == 20:
                return data
    tid = msg.transaction_id
    method = msg.method
    if len(tid) != 12:
        raise LocalProtocolError("a STUN transaction ID is 12 bytes")
    if not 0 <= method <= 0xFFF:
        raise LocalProtocolError(f"STUN method {method:#x} out of range 0x000-0xFFF")
    mtype = _METHOD_BITS[method] | _CLASS_BITS[msg.cls]
    if not attributes:
        body = b""
    elif padding != b"\0":
        body = _encode_padded(attributes, tid, table, padding)
    else:
        # Inline for speed: one whole-TLV call per standard attribute (an int in the table
        # marks a text attribute and is the length below which it needs no further checks);
        # the generic steps for the rest.
        fast = table.tlv_encoders
        parts: list[bytes] = []
        append = parts.append
        attr_type = 0
        try:
            for attr_type, value in attributes.items():
                tlv = fast.get(attr_type)
                if tlv is not None:
                    if type(tlv) is not int:
                        append(tlv(value, tid))  # type: ignore[operator]  # not an int here
                        continue
                    if type(value) is str:
                        data = value.encode()
                        n = len(data)
                        if n <= tlv:
                            append(_TLV_PACK(attr_type, n))
                            append(data)
                            append(_ZERO_PADS[n & 3])
                            continue
                append(_generic_tlv(attr_type, value, tid, table, _ZERO_PADS))
        except struct.error as exc:  # an integer attribute out of range, or not an integer
            raise LocalProtocolError(f"{attribute_name(attr_type, table)}: {exc}") from None
        body = b"".join(parts)
    if integrity is None and integrity_sha256 is None and not fingerprint:
        if len(body) > 0xFFFF:
            raise LocalProtocolError(f"STUN message too long ({len(body)} bytes of attributes)")
        return _HEADER.pack(mtype, len(body), MAGIC_COOKIE, tid) + body
    pack_header = _HEADER.pack
    if integrity is not None:
        head = pack_header(mtype, len(body) + 24, MAGIC_COOKIE, tid)
        body += b"\x00\x08\x00\x14" + integrity.sha1(head + body)
    if integrity_sha256 is not None:
        if not 16 <= sha256_length <= 32 or sha256_length % 4:
            raise LocalProtocolError("MESSAGE-INTEGRITY-SHA256 length must be 16-32, step 4")
        head = pack_header(mtype, len(body) + 4 + sha256_length, MAGIC_COOKIE, tid)
        mac = integrity_sha256.sha256(head + body)[:sha256_length]
        body += _TLV.pack(MESSAGE_INTEGRITY_SHA256, sha256_length) + mac
    if fingerprint:
        head = pack_header(mtype, len(body) + 8, MAGIC_COOKIE, tid)
        body += b"\x80\x28\x00\x04" + _U32.pack(_crc32(head + body) ^ _FINGERPRINT_XOR)
    if len(body) > 0xFFFF:
        raise LocalProtocolError(f"STUN message too long ({len(body)} bytes of attributes)")
    return pack_header(mtype, len(body), MAGIC_COOKIE, tid) + body


def _generic_tlv(
    attr_type: int, value: Any, tid: bytes, table: AttributeTable, pads: tuple[bytes, ...]
) -> bytes:
    """One attribute the slow way: the table's value encoder (raw bytes for unknown types),
    the TLV header, the padding."""
    if attr_type in _PLACED:
        raise LocalProtocolError(
            f"{attribute_name(attr_type, table)} is added by encode(), not by attributes"
        )
    enc = table.encoders.get(attr_type)
    data = _enc_bytes(value, tid) if enc is None else enc(value, tid)
    n = len(data)
    if n > 0xFFFF:
        raise LocalProtocolError(f"{attribute_name(attr_type, table)} too long ({n} bytes)")
    return _TLV_PACK(attr_type, n) + data + pads[n & 3]


def _encode_padded(
    attributes: dict[int, Any], tid: bytes, table: AttributeTable, padding: bytes
) -> bytes:
    """The attribute section with a non-zero padding byte (RFC 5769's vectors): every
    attribute the generic way."""
    pads = (b"", padding * 3, padding * 2, padding)
    attr_type = 0
    try:
        return b"".join(
            _generic_tlv(attr_type, value, tid, table, pads)
            for attr_type, value in attributes.items()
        )
    except struct.error as exc:
        raise LocalProtocolError(f"{attribute_name(attr_type, table)}: {exc}") from None


# --------------------------------------------------------------------- decode


def decode(data: bytes, table: AttributeTable = STUN_ATTRIBUTES) -> Message:
    """Parse one STUN message; raise ``ParseError`` (and nothing else) when it is invalid.

    ``data`` must be exactly one message (a UDP datagram, or a message ``StreamFramer`` cut
    out of a TCP stream). See the module docstring for the rules applied.
    """
    # Hot path (one call per datagram). Every attribute type maps to a small int "kind" (the
    # table's ``inline``): the integrity attributes and FINGERPRINT, and the standard codecs
    # this loop runs inline (IPv4 addresses, integers, texts: what Binding responses and ICE
    # checks carry), with the same rules and errors as the decoder functions; kind 0 is
    # "call the table's decoder" or "unknown". The message is filled in without running
    # ``Message.__init__``: everything it would check is known good here.
    try:
        n = len(data)
        if n < 20:
            raise ParseError(f"STUN message of {n} bytes is shorter than the 20-byte header")
        if type(data) is not bytes:
            data = bytes(data)
        mtype, length, cookie, tid = _HEADER_UNPACK(data)
        if mtype & 0xC000 or cookie != 0x2112A442 or length & 3 or length + 20 != n:
            raise _header_error(mtype, length, cookie, n)
        msg = _new_object(Message)
        split = _SPLIT_TYPE.get(mtype)
        if split is None:
            msg.method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
            msg.cls = _CLASSES[((mtype >> 4) & 1) | ((mtype >> 7) & 2)]
        else:
            msg.method, msg.cls = split
        msg.transaction_id = tid
        if n == 20:
            msg.attributes = {}
            msg._wire = (data, -1, -1, False, ())
            return msg
        attributes: dict[int, Any] = {}
        kinds = table.inline
        unknown: list[int] | None = None
        dropped: set[int] | None = None  # types whose first occurrence was ignored
        mi_off = mi256_off = -1
        sealed = 0  # 1: after MESSAGE-INTEGRITY, 2: after MESSAGE-INTEGRITY-SHA256 (§9)
        fingerprint = False
        unpack_tlv = _TLV_UNPACK
        pos = 20
        while pos < n:
            if pos + 4 > n:
                raise ParseError("STUN attribute header runs past the end of the message")
            attr_type, alen = unpack_tlv(data, pos)
            start = pos + 4
            end = start + alen
            if end > n:
                raise ParseError(
                    f"STUN attribute {attr_type:#06x} runs past the end of the message"
                )
            next_pos = end + (-alen & 3)
            kind = kinds.get(attr_type, 0)
            if kind >= 10:
                if kind == 12:  # FINGERPRINT
                    if alen != 4:
                        raise ParseError("STUN FINGERPRINT must be 4 bytes")
                    if next_pos != n:
                        raise ParseError("STUN FINGERPRINT is not the last attribute")
                    if _U32_UNPACK(data, start)[0] != _crc32(data[:pos]) ^ 0x5354554E:
                        raise ParseError("STUN FINGERPRINT does not match")
                    fingerprint = True
                    break
                if sealed:
                    # After MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 (and FINGERPRINT)
                    # count; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT (§9).
                    if sealed == 1 and kind == 11:
                        _dec_mi256(data[start:end], tid)
                        mi256_off = pos
                        sealed = 2
                elif kind == 10:  # MESSAGE-INTEGRITY
                    if alen != 20:
                        raise ParseError("STUN MESSAGE-INTEGRITY must be 20 bytes")
                    mi_off = pos
                    sealed = 1
                else:  # MESSAGE-INTEGRITY-SHA256
                    _dec_mi256(data[start:end], tid)
                    mi256_off = pos
                    sealed = 2
            elif sealed:
                pass  # walked over (it was well-formed) and invisible (§9)
            elif attr_type in attributes or (dropped is not None and attr_type in dropped):
                pass  # only the first occurrence counts
            elif kind == 1 and alen == 8 and data[start + 1] == 1:  # XOR address, IPv4
                _, _, port, a, b, c, d = _ADDR4_UNPACK(data, start)
                attributes[attr_type] = _new_address(
                    Address, (f"{_X21[a]}.{_X12[b]}.{_XA4[c]}.{_X42[d]}", port ^ 0x2112)
                )
            elif kind == 2 and alen == 8 and data[start + 1] == 1:  # plain address, IPv4
                _, _, port, a, b, c, d = _ADDR4_UNPACK(data, start)
                attributes[attr_type] = _new_address(
                    Address, (f"{_DEC[a]}.{_DEC[b]}.{_DEC[c]}.{_DEC[d]}", port)
                )
            elif kind >= 5:  # text
                if alen > 763:
                    raise _bad(table.names[attr_type], f"{alen} bytes, more than {763}")
                try:
                    attributes[attr_type] = data[start:end].decode()
                except UnicodeDecodeError:
                    if kind == 5:
                        raise _bad(table.names[attr_type], "not UTF-8") from None
                    attributes[attr_type] = data[start:end].decode("utf-8", "replace")
            elif kind == 3:
                if alen != 4:
                    raise _bad(table.names[attr_type], f"{alen} bytes (must be 4)")
                attributes[attr_type] = _U32_UNPACK(data, start)[0]
            elif kind == 4:
                if alen != 8:
                    raise _bad(table.names[attr_type], f"{alen} bytes (must be 8)")
                attributes[attr_type] = _U64_UNPACK(data, start)[0]
            elif (dec := table.decoders.get(attr_type)) is not None:
                value = dec(data[start:end], tid)
                if value is not None:
                    attributes[attr_type] = value
                else:  # unknown address family: ignored, and so are its duplicates (§14)
                    if dropped is None:
                        dropped = set()
                    dropped.add(attr_type)
            else:
                attributes[attr_type] = data[start:end]
                if attr_type < 0x8000:
                    if unknown is None:
                        unknown = [attr_type]
                    else:
                        unknown.append(attr_type)
            pos = next_pos
        msg.attributes = attributes
        msg._wire = (data, mi_off, mi256_off, fingerprint, tuple(unknown) if unknown else ())
        return msg
    except ParseError:
        raise
    except Exception as exc:  # defence in depth: a decoder bug must not escape as a crash
        raise ParseError(f"STUN message rejected: {type(exc).__name__}: {exc}") from None


def _header_error(mtype: int, length: int, cookie: int, n: int) -> ParseError:
    """Why a header failed ``decode``'s combined check, in the order the RFC lists them."""
    if mtype & 0xC000:
        return ParseError("not STUN: the two top bits of the message type are not zero")
    if cookie != 0x2112A442:
        return ParseError("not STUN (RFC 8489): wrong magic cookie")
    if length & 3:
        return ParseError(f"STUN message length {length} is not a multiple of 4")
    return ParseError(f"STUN header says {length + 20} bytes, {n} arrived")


_HEADER_UNPACK = _HEADER.unpack_from
_TLV_UNPACK = _TLV.unpack_from
_U32_UNPACK = _U32.unpack_from
_U64_UNPACK = _U64.unpack_from
#: reserved, family, port, and the four bytes of an IPv4 address attribute
_ADDR4_UNPACK = struct.Struct("!BBH4B").unpack_from
_new_object = object.__new__
#: (method, class) of the message types of the methods STUN and TURN define
_SPLIT_TYPE: dict[int, tuple[int, MessageClass]] = {
    _METHOD_BITS[m] | _CLASS_BITS[c]: (m, _CLASSES[c]) for m in range(0x010) for c in range(4)
}
# Decimal text of each byte value, and of each byte XORed with the magic cookie's byte at its
# position (XOR-MAPPED-ADDRESS): an IPv4 address is then four lookups and one f-string, half
# the cost of "%d.%d.%d.%d" formatting.
_DEC = tuple(str(b) for b in range(256))
_X21 = tuple(str(b ^ 0x21) for b in range(256))
_X12 = tuple(str(b ^ 0x12) for b in range(256))
_XA4 = tuple(str(b ^ 0xA4) for b in range(256))
_X42 = tuple(str(b ^ 0x42) for b in range(256))


# --------------------------------------------------------------------- verification


# Verification re-creates what the sender hashed (§14.5, §14.6): the message up to the
# integrity attribute, with the header length pointing at that attribute's end.


def verify_integrity(msg: Message, key: IntegrityKey, *, sha256: bool | None = None) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 or MESSAGE-INTEGRITY of a decoded message with ``key``.

    ``sha256=None`` checks MESSAGE-INTEGRITY-SHA256 when present, else MESSAGE-INTEGRITY;
    ``True``/``False`` insists on that algorithm (a message without it fails). Returns False
    for a message that carries neither, or that was not decoded from bytes.
    """
    wire = msg._wire
    if wire is None:
        return False
    raw, mi_off, mi256_off = wire[0], wire[1], wire[2]
    if mi256_off >= 0 if sha256 is None else sha256:
        if mi256_off < 0:
            return False
        alen = (raw[mi256_off + 2] << 8) | raw[mi256_off + 3]
        prefix = raw[:2] + _U16.pack(mi256_off + alen - 16) + raw[4:mi256_off]
        mac = key.sha256(prefix)[:alen]
        return _compare(mac, raw[mi256_off + 4 : mi256_off + 4 + alen])
    if mi_off < 0:
        return False
    prefix = raw[:2] + _U16.pack(mi_off + 4) + raw[4:mi_off]
    return _compare(key.sha1(prefix), raw[mi_off + 4 : mi_off + 24])


_compare = hmac.compare_digest


def verify_fingerprint(data: bytes) -> bool:
    """True when ``data`` decodes and carries a (correct) FINGERPRINT."""
    try:
        return decode(data).fingerprint
    except ParseError:
        return False


# --------------------------------------------------------------------- TCP framing


class StreamFramer:
    """Cut STUN messages out of a TCP/TLS byte stream (RFC 8489 §6.2.2: no extra framing).

    ``feed(data)`` returns the complete messages received so far. Bytes that cannot start a
    STUN message mean the stream is out of sync: ``ParseError``, and the connection must be
    closed (there is no way to find the next message boundary).
    """

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = 65535 + 20) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while buf:
            # Check what has arrived of the header as early as possible: a stream that is not
            # STUN should fail on its first bytes, not after 20.
            if buf[0] >= 4 or (len(buf) >= 8 and buf[4:8] != COOKIE_BYTES):
                raise ParseError("TCP stream is not STUN (bad first byte or magic cookie)")
            if len(buf) < 20:
                break
            length = (buf[2] << 8) | buf[3]
            if length & 3:
                raise ParseError(f"STUN message length {length} is not a multiple of 4")
            total = 20 + length
            if total > self.max_message:
                raise ParseError(f"STUN message of {total} bytes exceeds the limit")
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered toward an incomplete message."""
        return len(self._buffer)
