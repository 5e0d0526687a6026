"""TURN's additions to the STUN codec (RFC 8656 §13, §14, §18): methods, attributes, values.

Theory of operation
-------------------
TURN is a STUN usage, so it reuses ``nattrav_stun.codec`` whole: ``TURN_ATTRIBUTES`` is the
STUN attribute table extended with TURN's attributes (``AttributeTable.extend``), and every
TURN message is encoded and decoded with ``table=TURN_ATTRIBUTES``. Knowing the attributes
matters beyond convenience: whether an attribute type is *known* decides the
comprehension-required check of RFC 8489 §6.3, so a TURN response decoded with the plain STUN
table would fail on XOR-RELAYED-ADDRESS.

Two decoders differ from what the STUN table does, on purpose:

* XOR-RELAYED-ADDRESS and XOR-MAPPED-ADDRESS with an address family we do not know decode to
  ``UnsupportedFamily`` instead of being dropped. RFC 8656 §7.3 requires the client to *delete*
  an allocation whose addresses it cannot handle (hostile-inputs T1); a silently dropped
  attribute would look like a missing one and the allocation would leak until it expires.
* REQUESTED-/ADDITIONAL-ADDRESS-FAMILY decode to 4 or 6 (``UnsupportedFamily`` otherwise).

A dual allocation (RFC 8656 §7.3, ADDITIONAL-ADDRESS-FAMILY) is answered with *two*
XOR-RELAYED-ADDRESS attributes; the STUN codec keeps the first occurrence of each type, so
``occurrences()`` walks the integrity-protected part of the raw message for all of them.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from nattrav.errors import LocalProtocolError, ParseError
from nattrav_stun.codec import (
    STUN_ATTRIBUTES,
    Address,
    AttributeSpec,
    AttributeTable,
    Message,
    decode_xor_address,
    encode_xor_address,
)

__all__ = [
    "ADDITIONAL_ADDRESS_FAMILY",
    "ADDRESS_ERROR_CODE",
    "ALLOCATE",
    "CHANNEL_BIND",
    "CHANNEL_NUMBER",
    "CREATE_PERMISSION",
    "DATA",
    "DATA_INDICATION",
    "DONT_FRAGMENT",
    "EVEN_PORT",
    "ICMP",
    "LEGACY_ADDITIONAL_ADDRESS_FAMILY",
    "LEGACY_ADDRESS_ERROR_CODE",
    "LIFETIME",
    "METHOD_NAMES",
    "REFRESH",
    "REQUESTED_ADDRESS_FAMILY",
    "REQUESTED_TRANSPORT",
    "RESERVATION_TOKEN",
    "SEND",
    "TURN_ATTRIBUTES",
    "UDP",
    "XOR_PEER_ADDRESS",
    "XOR_RELAYED_ADDRESS",
    "AddressErrorCode",
    "Icmp",
    "UnsupportedFamily",
    "occurrences",
]

# --------------------------------------------------------------------- methods (§13)

ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006
DATA = 0x007  # the Data *method*; DATA_INDICATION below is the DATA *attribute*
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009

METHOD_NAMES = {
    0x001: "Binding",
    ALLOCATE: "Allocate",
    REFRESH: "Refresh",
    SEND: "Send",
    DATA: "Data",
    CREATE_PERMISSION: "CreatePermission",
    CHANNEL_BIND: "ChannelBind",
}

# --------------------------------------------------------------------- attributes (§14, §18)

CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_INDICATION = 0x0013  # the DATA attribute (named apart from the Data method)
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
RESERVATION_TOKEN = 0x0022
ADDITIONAL_ADDRESS_FAMILY = 0x8000
ADDRESS_ERROR_CODE = 0x8001
ICMP = 0x8004
#: The code points of the pre-RFC draft (draft-ietf-tram-turnbis "SSODA") that coturn still
#: uses (4.6.1 ignores 0x8000). Both are comprehension-optional, so a dual-allocation request
#: carries both ADDITIONAL-ADDRESS-FAMILY types: each server ignores the one it does not know.
LEGACY_ADDITIONAL_ADDRESS_FAMILY = 0x8032
LEGACY_ADDRESS_ERROR_CODE = 0x8033

#: IANA protocol number for REQUESTED-TRANSPORT: TURN relays UDP (RFC 8656 §14.7).
UDP = 17

_FAMILY_TO_WIRE = {4: 0x01, 6: 0x02}
_WIRE_TO_FAMILY = {0x01: 4, 0x02: 6}
_U16x2 = struct.Struct("!HH")
_U32 = struct.Struct("!I")


class UnsupportedFamily(NamedTuple):
    """An address attribute whose family byte is neither IPv4 (1) nor IPv6 (2)."""

    family: int

    def __str__(self) -> str:
        return f"<address family {self.family:#04x}>"


class AddressErrorCode(NamedTuple):
    """ADDRESS-ERROR-CODE (§14.13): why one family of a dual allocation was not allocated.

    ``family`` is 4 or 6 (the raw byte for an unknown family); ``code`` 300-699 or -1 when the
    class/number bits were invalid.
    """

    family: int | UnsupportedFamily
    code: int
    reason: str = ""


class Icmp(NamedTuple):
    """ICMP (§14.14): an ICMP error the server received from a peer, in a Data indication."""

    type: int
    code: int
    data: int = 0


def _bad(name: str, why: str) -> ParseError:
    return ParseError(f"TURN {name}: {why}")


def _dec_relayed(value: bytes, tid: bytes) -> Address | UnsupportedFamily:
    if len(value) >= 2 and value[1] not in (1, 2):
        return UnsupportedFamily(value[1])
    address = decode_xor_address(value, tid)
    if address is None:  # pragma: no cover - families 1 and 2 always decode or raise
        raise _bad("XOR address", "undecodable")
    return address


def _enc_relayed(value: Any, tid: bytes) -> bytes:
    if isinstance(value, UnsupportedFamily):
        # Only tests (scripted hostile servers) send this: a plausible-looking IPv4 body.
        return bytes((0, value.family & 0xFF)) + b"\x21\x12\x21\x12\xa4\x42"
    return encode_xor_address(value, tid)


def _dec_channel(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise _bad("CHANNEL-NUMBER", f"{len(value)} bytes (must be 4)")
    return _U16x2.unpack(value)[0]  # type: ignore[no-any-return]


def _enc_channel(value: int, _tid: bytes) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"channel number {value!r} out of range")
    return _U16x2.pack(value, 0)


def _dec_u32(name: str) -> Any:
    def dec(value: bytes, _tid: bytes) -> int:
        if len(value) != 4:
            raise _bad(name, f"{len(value)} bytes (must be 4)")
        return _U32.unpack(value)[0]  # type: ignore[no-any-return]

    return dec


def _enc_u32(value: int, _tid: bytes) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"32-bit value {value!r} out of range")
    return _U32.pack(value)


def _dec_data(value: bytes, _tid: bytes) -> bytes:
    return value


def _enc_data(value: bytes, _tid: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"DATA must be bytes, got {type(value).__name__}")
    return bytes(value)


def _dec_family(name: str) -> Any:
    def dec(value: bytes, _tid: bytes) -> int | UnsupportedFamily:
        if len(value) != 4:
            raise _bad(name, f"{len(value)} bytes (must be 4)")
        family = _WIRE_TO_FAMILY.get(value[0])
        return UnsupportedFamily(value[0]) if family is None else family

    return dec


def _enc_family(value: int, _tid: bytes) -> bytes:
    wire = _FAMILY_TO_WIRE.get(value)
    if wire is None:
        raise LocalProtocolError(f"address family must be 4 or 6, not {value!r}")
    return bytes((wire, 0, 0, 0))


def _dec_transport(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise _bad("REQUESTED-TRANSPORT", f"{len(value)} bytes (must be 4)")
    return value[0]


def _enc_transport(value: int, _tid: bytes) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise LocalProtocolError(f"protocol number {value!r} out of range")
    return bytes((value, 0, 0, 0))


def _dec_even_port(value: bytes, _tid: bytes) -> bool:
    if len(value) != 1:
        raise _bad("EVEN-PORT", f"{len(value)} bytes (must be 1)")
    return bool(value[0] & 0x80)


def _enc_even_port(value: bool, _tid: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


def _dec_token(value: bytes, _tid: bytes) -> bytes:
    if len(value) != 8:
        raise _bad("RESERVATION-TOKEN", f"{len(value)} bytes (must be 8)")
    return value


def _enc_token(value: bytes, _tid: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 8:
        raise LocalProtocolError("RESERVATION-TOKEN must be 8 bytes")
    return value


def _dec_empty(value: bytes, _tid: bytes) -> bool:
    if value:
        raise _bad("DONT-FRAGMENT", f"{len(value)} bytes (must be empty)")
    return True


def _enc_empty(_value: Any, _tid: bytes) -> bytes:
    return b""


def _dec_address_error(value: bytes, _tid: bytes) -> AddressErrorCode:
    if len(value) < 4:
        raise _bad("ADDRESS-ERROR-CODE", f"{len(value)} bytes, need at least 4")
    known = _WIRE_TO_FAMILY.get(value[0])
    # An unknown wire byte must not read as a family number (0x04 is not IPv4).
    family = UnsupportedFamily(value[0]) if known is None else known
    cls = value[2] & 0x07
    number = value[3]
    reason = value[4:].decode("utf-8", "replace")
    code = cls * 100 + number if 3 <= cls <= 6 and number <= 99 else -1
    return AddressErrorCode(family, code, reason)


def _enc_address_error(value: AddressErrorCode, _tid: bytes) -> bytes:
    family = value.family
    # An unknown family round-trips as its raw wire byte.
    wire = family.family if isinstance(family, UnsupportedFamily) else _FAMILY_TO_WIRE.get(family)
    if wire is None:
        raise LocalProtocolError(f"ADDRESS-ERROR-CODE family must be 4 or 6, not {family!r}")
    if not 300 <= value.code <= 699:
        raise LocalProtocolError(f"ADDRESS-ERROR-CODE {value.code} out of range 300-699")
    return bytes((wire, 0, value.code // 100, value.code % 100)) + value.reason.encode()


def _dec_icmp(value: bytes, _tid: bytes) -> Icmp:
    if len(value) != 8:
        raise _bad("ICMP", f"{len(value)} bytes (must be 8)")
    return Icmp(value[2], value[3], _U32.unpack_from(value, 4)[0])


def _enc_icmp(value: Icmp, _tid: bytes) -> bytes:
    return bytes((0, 0, value.type & 0xFF, value.code & 0xFF)) + _U32.pack(value.data)


_xma = STUN_ATTRIBUTES.specs[0x0020]

#: The STUN table plus every attribute of RFC 8656 (and XOR-MAPPED-ADDRESS decoded so that
#: an unknown family is visible, for T1).
TURN_ATTRIBUTES: AttributeTable = STUN_ATTRIBUTES.extend(
    AttributeSpec(CHANNEL_NUMBER, "CHANNEL-NUMBER", _dec_channel, _enc_channel),
    AttributeSpec(LIFETIME, "LIFETIME", _dec_u32("LIFETIME"), _enc_u32),
    AttributeSpec(XOR_PEER_ADDRESS, "XOR-PEER-ADDRESS", decode_xor_address, encode_xor_address),
    AttributeSpec(DATA_INDICATION, "DATA", _dec_data, _enc_data),
    AttributeSpec(XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS", _dec_relayed, _enc_relayed),
    AttributeSpec(
        REQUESTED_ADDRESS_FAMILY,
        "REQUESTED-ADDRESS-FAMILY",
        _dec_family("REQUESTED-ADDRESS-FAMILY"),
        _enc_family,
    ),
    AttributeSpec(EVEN_PORT, "EVEN-PORT", _dec_even_port, _enc_even_port),
    AttributeSpec(REQUESTED_TRANSPORT, "REQUESTED-TRANSPORT", _dec_transport, _enc_transport),
    AttributeSpec(DONT_FRAGMENT, "DONT-FRAGMENT", _dec_empty, _enc_empty),
    AttributeSpec(RESERVATION_TOKEN, "RESERVATION-TOKEN", _dec_token, _enc_token),
    AttributeSpec(
        ADDITIONAL_ADDRESS_FAMILY,
        "ADDITIONAL-ADDRESS-FAMILY",
        _dec_family("ADDITIONAL-ADDRESS-FAMILY"),
        _enc_family,
    ),
    AttributeSpec(ADDRESS_ERROR_CODE, "ADDRESS-ERROR-CODE", _dec_address_error, _enc_address_error),
    AttributeSpec(
        LEGACY_ADDITIONAL_ADDRESS_FAMILY,
        "ADDITIONAL-ADDRESS-FAMILY (draft)",
        _dec_family("ADDITIONAL-ADDRESS-FAMILY"),
        _enc_family,
    ),
    AttributeSpec(
        LEGACY_ADDRESS_ERROR_CODE,
        "ADDRESS-ERROR-CODE (draft)",
        _dec_address_error,
        _enc_address_error,
    ),
    AttributeSpec(ICMP, "ICMP", _dec_icmp, _enc_icmp),
    AttributeSpec(_xma.type, _xma.name, _dec_relayed, _enc_relayed),
)


def occurrences(msg: Message, attr_type: int, table: AttributeTable = TURN_ATTRIBUTES) -> list[Any]:
    """Every decodable occurrence of ``attr_type`` before the integrity attributes.

    For attributes a message may carry twice (XOR-RELAYED-ADDRESS and ADDRESS-ERROR-CODE of a
    dual allocation). Only the part of the message that MESSAGE-INTEGRITY(-SHA256) protects
    is looked at, as ``decode`` does; a malformed extra occurrence is skipped. A message built
    locally (no ``raw``) gives its single attribute value, if any.
    """
    raw = msg.raw
    if raw is None:
        value = msg.attributes.get(attr_type)
        return [] if value is None else [value]
    decoder = table.decoders.get(attr_type)
    tid = msg.transaction_id
    found: list[Any] = []
    pos, end = 20, len(raw)
    while pos + 4 <= end:
        kind, length = _U16x2.unpack_from(raw, pos)
        if kind in (0x0008, 0x001C, 0x8028):  # MESSAGE-INTEGRITY(-SHA256), FINGERPRINT
            break
        value_end = pos + 4 + length
        if value_end > end:
            break
        if kind == attr_type:
            chunk = raw[pos + 4 : value_end]
            if decoder is None:
                found.append(chunk)
            else:
                try:
                    value = decoder(chunk, tid)
                except ParseError:
                    value = None
                if value is not None:
                    found.append(value)
        pos = value_end + (-length & 3)
    return found
