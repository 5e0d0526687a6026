"""PCP (RFC 6887) messages: MAP and ANNOUNCE requests, responses, options. Pure functions.

Layouts (RFC 6887 §7, §11.1, §14; all integers big-endian; addresses are always 128 bits,
IPv4 as an IPv4-mapped IPv6 address ``::ffff:a.b.c.d``)::

    request header (24)   0 version=2 | 1 R=0,opcode(7) | 2 reserved(16) | 4 requested lifetime
                          | 8 PCP client's IP address(128)
    response header (24)  0 version | 1 R=1,opcode | 2 reserved(8) | 3 result code(8)
                          | 4 lifetime | 8 epoch time | 12 reserved(96)
    MAP payload (36)      0 mapping nonce(96) | 12 protocol | 13 reserved(24)
                          | 16 internal port | 18 suggested/assigned external port
                          | 20 suggested/assigned external IP address(128)
    option                0 code | 1 reserved | 2 length(16) | 4 data, zero-padded to 4 bytes
                          (the length excludes the padding)

Rules enforced when decoding (each breach is a ``ParseError``, so the datagram is discarded):

* C2: length between 24 and 1100 bytes and a multiple of 4; R bit set.
* C5: an address is IPv4 only if *all* of its first 96 bits are ``::ffff`` (not just 81-96).
* C6: an option that runs past the end, a THIRD_PARTY that is not 16 bytes, PREFER_FAILURE not
  0 bytes, FILTER not 20 bytes, a repeated THIRD_PARTY/PREFER_FAILURE, or an unknown option in
  the mandatory-to-process range 0-127 rejects the message. Unknown optional options (128-255)
  are kept as ``UnknownOption``.
* A MAP response must carry its 36-byte payload (even an error response copies the request's
  nonce, protocol and port; without them it cannot be matched to a request, C3).
* Version negotiation (RFC 6887 §9): a response with another version is only accepted as an
  ``UnsupportedVersion`` answer (result 1). A NAT-PMP server answers a PCP request with its own
  8-byte "unsupported version" packet (version 0, result 1 in its 16-bit result field, which
  lands on PCP's result byte): also decoded as ``UnsupportedVersion(version=0)`` (C1).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Any

import attrs
from nattrav.errors import LocalProtocolError, ParseError
from nattrav.models import Transport

__all__ = [
    "ANNOUNCE_PORT",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "SERVER_PORT",
    "VERSION",
    "AnnounceRequest",
    "Filter",
    "MapRequest",
    "MapResult",
    "Opcode",
    "Option",
    "OptionCode",
    "PreferFailure",
    "Response",
    "ThirdParty",
    "UnknownOption",
    "UnsupportedVersion",
    "decode_address",
    "decode_response",
    "encode_address",
    "protocol_number",
]

VERSION = 2
SERVER_PORT = 5351
#: Unsolicited ANNOUNCE responses go to 224.0.0.1 and ff02::1 on this port (RFC 6887 §14.1.3).
ANNOUNCE_PORT = 5350
MIN_LENGTH = 24
MAX_LENGTH = 1100
HEADER_LENGTH = 24
MAP_PAYLOAD_LENGTH = 36
NONCE_LENGTH = 12
_RESPONSE_BIT = 0x80
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MAX_U32 = 0xFFFFFFFF
_UNSUPP_VERSION = 1


class Opcode(enum.IntEnum):
    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class OptionCode(enum.IntEnum):
    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3


_PROTOCOL = {Transport.UDP: 17, Transport.TCP: 6}


def protocol_number(transport: Transport) -> int:
    """IANA protocol number for a transport (UDP 17, TCP 6)."""
    return _PROTOCOL[transport]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def encode_address(address: str | IPAddress) -> bytes:
    """16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (RFC 6887 §5)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + ip.packed
    return ip.packed


def decode_address(raw: bytes) -> IPAddress:
    """Inverse of ``encode_address``; all first 96 bits are checked for the mapped prefix (C5)."""
    if len(raw) != 16:
        raise ParseError(f"PCP address field must be 16 bytes, got {len(raw)}")
    if raw[:12] == _V4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(raw[12:])
    return ipaddress.IPv6Address(raw)


def _unspecified_like(address: str) -> bytes:
    # "No preference" is the all-zero address of the family: ::ffff:0.0.0.0 or :: (§11.1).
    return encode_address("0.0.0.0" if ":" not in address else "::")


def _check_port(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{attr.name} {value} out of range 0-65535")


def _check_u32(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= _MAX_U32:
        raise LocalProtocolError(f"{attr.name} {value} out of range 0-{_MAX_U32}")


def _check_ip(_inst: object, attr: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    try:
        ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        raise LocalProtocolError(f"{attr.name} {value!r} is not an IP literal") from None


# --------------------------------------------------------------------------- options


@attrs.frozen
class ThirdParty:
    """THIRD_PARTY (§13.1): map for another host's internal address."""

    address: str = attrs.field(validator=_check_ip)
    code = OptionCode.THIRD_PARTY

    def data(self) -> bytes:
        return encode_address(self.address)


@attrs.frozen
class PreferFailure:
    """PREFER_FAILURE (§13.2): fail rather than assign another external address/port."""

    code = OptionCode.PREFER_FAILURE

    def data(self) -> bytes:
        return b""


@attrs.frozen
class Filter:
    """FILTER (§13.3): only let this remote prefix/port in through the mapping."""

    prefix_length: int
    remote_port: int = attrs.field(validator=_check_port)
    remote_address: str = attrs.field(validator=_check_ip)
    code = OptionCode.FILTER

    def data(self) -> bytes:
        return struct.pack("!BBH", 0, self.prefix_length, self.remote_port) + encode_address(
            self.remote_address
        )


@attrs.frozen
class UnknownOption:
    """An optional-to-process option (code 128-255) this client does not interpret."""

    code: int
    payload: bytes

    def data(self) -> bytes:
        return self.payload


Option = ThirdParty | PreferFailure | Filter | UnknownOption


def encode_option(option: Option) -> bytes:
    data = option.data()
    padding = (-len(data)) % 4
    return struct.pack("!BBH", int(option.code), 0, len(data)) + data + b"\x00" * padding


def _decode_options(data: bytes, offset: int) -> tuple[Option, ...]:
    options: list[Option] = []
    seen: set[int] = set()
    while offset < len(data):
        if offset + 4 > len(data):
            raise ParseError("PCP option header runs past the end of the message")
        code, _reserved, length = struct.unpack_from("!BBH", data, offset)
        padded = (length + 3) & ~3
        start = offset + 4
        if start + padded > len(data):
            raise ParseError(f"PCP option {code} length {length} runs past the end")
        value = data[start : start + length]
        offset = start + padded
        if code in (OptionCode.THIRD_PARTY, OptionCode.PREFER_FAILURE) and code in seen:
            raise ParseError(f"PCP option {code} repeated")
        seen.add(code)
        if code == OptionCode.THIRD_PARTY:
            if length != 16:
                raise ParseError(f"THIRD_PARTY option length {length}, must be 16")
            options.append(ThirdParty(str(decode_address(value))))
        elif code == OptionCode.PREFER_FAILURE:
            if length != 0:
                raise ParseError(f"PREFER_FAILURE option length {length}, must be 0")
            options.append(PreferFailure())
        elif code == OptionCode.FILTER:
            if length != 20:
                raise ParseError(f"FILTER option length {length}, must be 20")
            _res, prefix, port = struct.unpack_from("!BBH", value)
            options.append(Filter(prefix, port, str(decode_address(value[4:]))))
        elif code < 128:
            raise ParseError(f"unknown mandatory-to-process PCP option {code}")
        else:
            options.append(UnknownOption(code, value))
    return tuple(options)


# --------------------------------------------------------------------------- requests


def _nonce(_inst: object, _attr: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) != NONCE_LENGTH:
        raise LocalProtocolError(f"mapping nonce must be {NONCE_LENGTH} bytes, got {len(value)}")


def _header(opcode: Opcode, lifetime: int, client_address: str) -> bytes:
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime) + encode_address(client_address)


@attrs.frozen
class MapRequest:
    """A MAP request (§11.1): create, renew (the same request again) or delete (lifetime 0).

    ``client_address`` must be the source address the packet leaves from (the server answers
    ADDRESS_MISMATCH otherwise). ``suggested_external_address`` ``None`` means no preference.
    Keep ``nonce`` for the life of the mapping: renewals and the deletion must carry it.
    """

    nonce: bytes = attrs.field(validator=_nonce)
    protocol: int
    internal_port: int = attrs.field(validator=_check_port)
    client_address: str = attrs.field(validator=_check_ip)
    lifetime: int = attrs.field(validator=_check_u32)
    suggested_external_port: int = attrs.field(default=0, validator=_check_port)
    suggested_external_address: str | None = attrs.field(default=None, validator=_check_ip)
    options: tuple[Option, ...] = ()
    opcode = Opcode.MAP

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.protocol <= 255:
            raise LocalProtocolError(f"protocol {self.protocol} out of range 0-255")
        if self.protocol == 0 and self.internal_port != 0:
            raise LocalProtocolError("protocol 0 (all protocols) requires internal port 0")
        if len(self.encode()) > MAX_LENGTH:
            raise LocalProtocolError(f"PCP request longer than {MAX_LENGTH} bytes")

    @property
    def is_deletion(self) -> bool:
        return self.lifetime == 0

    def encode(self) -> bytes:
        suggested = (
            encode_address(self.suggested_external_address)
            if self.suggested_external_address is not None
            else _unspecified_like(self.client_address)
        )
        payload = (
            self.nonce
            + struct.pack("!B3xHH", self.protocol, self.internal_port, self.suggested_external_port)
            + suggested
        )
        options = b"".join(encode_option(o) for o in self.options)
        return _header(Opcode.MAP, self.lifetime, self.client_address) + payload + options


@attrs.frozen
class AnnounceRequest:
    """ANNOUNCE (§14.1): ask for the epoch; no side effects. Lifetime is 0."""

    client_address: str = attrs.field(validator=_check_ip)
    opcode = Opcode.ANNOUNCE

    def encode(self) -> bytes:
        return _header(Opcode.ANNOUNCE, 0, self.client_address)


Request = MapRequest | AnnounceRequest


# --------------------------------------------------------------------------- responses


@attrs.frozen
class MapResult:
    """A MAP response's payload. ``external_address`` is ``None`` when all zero."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: str | None


@attrs.frozen
class Response:
    """A PCP response of our version. ``lifetime``: the granted lifetime on success, the error
    lifetime on an error (how long the same request will get the same error, §7.2)."""

    opcode: Opcode
    result: int
    lifetime: int
    epoch: int
    map: MapResult | None = None
    options: tuple[Option, ...] = ()
    version: int = VERSION


@attrs.frozen
class UnsupportedVersion:
    """The server does not speak our version; ``version`` is the one it does (0 = NAT-PMP)."""

    version: int
    epoch: int | None = None
    lifetime: int = 0


def decode_response(data: bytes) -> Response | UnsupportedVersion:
    """Decode a PCP response. Raises ``ParseError`` for anything that is not a valid one."""
    if len(data) < 4:
        raise ParseError(f"PCP response too short ({len(data)} bytes)")
    version, r_opcode = data[0], data[1]
    if not r_opcode & _RESPONSE_BIT:
        raise ParseError(f"not a response: opcode byte {r_opcode:#04x}")
    if version == 0:
        # A NAT-PMP server (RFC 6886 §3.5): 16-bit result, then epoch at offset 4.
        result16 = struct.unpack_from("!H", data, 2)[0]
        if result16 != _UNSUPP_VERSION:
            raise ParseError(f"NAT-PMP packet with result {result16} on the PCP path")
        epoch = struct.unpack_from("!I", data, 4)[0] if len(data) >= 8 else None
        return UnsupportedVersion(0, epoch)
    if len(data) < MIN_LENGTH or len(data) > MAX_LENGTH or len(data) % 4:
        raise ParseError(f"PCP length {len(data)} not within 24..1100 or not a multiple of 4")
    _v, _op, _reserved, result, lifetime, epoch = struct.unpack_from("!BBBBII", data)
    if version != VERSION:
        if result != _UNSUPP_VERSION:
            raise ParseError(f"PCP version {version} response with result {result}")
        return UnsupportedVersion(version, epoch, lifetime)
    try:
        opcode = Opcode(r_opcode & ~_RESPONSE_BIT)
    except ValueError:
        raise ParseError(f"unknown PCP opcode {r_opcode & ~_RESPONSE_BIT}") from None
    offset = HEADER_LENGTH
    result_map: MapResult | None = None
    if opcode is Opcode.MAP:
        if len(data) < HEADER_LENGTH + MAP_PAYLOAD_LENGTH:
            raise ParseError("PCP MAP response without its 36-byte payload")
        nonce = data[offset : offset + NONCE_LENGTH]
        protocol, internal, external = struct.unpack_from("!B3xHH", data, offset + NONCE_LENGTH)
        ext = decode_address(data[offset + 20 : offset + 36])
        result_map = MapResult(
            nonce, protocol, internal, external, None if ext.is_unspecified else str(ext)
        )
        offset += MAP_PAYLOAD_LENGTH
    elif opcode is not Opcode.ANNOUNCE:
        raise ParseError(f"PCP opcode {opcode.name} is not used by this client")
    options = _decode_options(data, offset)
    return Response(opcode, result, lifetime, epoch, result_map, options)
