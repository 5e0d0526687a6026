"""NAT-PMP (RFC 6886) messages: encode requests, decode responses. Pure: bytes in, objects out.

Packet layouts (RFC 6886 §3.2-§3.5; all integers big-endian)::

    external address request   0 vers=0 | 1 op=0                                    (2 bytes)
    external address response  0 vers=0 | 1 op=128 | 2 result(16) | 4 epoch(32)
                               | 8 external IPv4 address                          (12 bytes)
    mapping request            0 vers=0 | 1 op=1 (UDP) or 2 (TCP) | 2 reserved(16)=0
                               | 4 internal port | 6 suggested external port
                               | 8 requested lifetime(32)                          (12 bytes)
    mapping response           0 vers=0 | 1 op=128+op | 2 result | 4 epoch
                               | 8 internal port | 10 mapped external port
                               | 12 lifetime(32)                                   (16 bytes)

Error responses (result != 0) may be cut to the 8-byte common header: that is what a NAT-PMP
server sends for an unsupported version or opcode (RFC 6886 §3.5), so both the full length and
8 bytes are accepted when the result is non-zero; a success must have the exact length (P3).
When the result is non-zero the address/port/lifetime fields are undefined and are not read
(P5). An external address of 0.0.0.0 means "unknown" and is decoded as ``None`` (P6).

Deleting (§3.4): lifetime 0 and suggested external port 0; "delete all mappings of this host
for this protocol" is additionally internal port 0.

``decode_response`` raises only ``ParseError``; the transaction discards and counts it.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs
from nattrav.errors import LocalProtocolError, ParseError
from nattrav.models import Transport

__all__ = [
    "ANNOUNCE_PORT",
    "SERVER_PORT",
    "VERSION",
    "ExternalAddressRequest",
    "ExternalAddressResponse",
    "MapRequest",
    "MapResponse",
    "Opcode",
    "Response",
    "decode_response",
    "opcode_for",
]

VERSION = 0
SERVER_PORT = 5351
#: Gratuitous announcements go to 224.0.0.1 on this port (RFC 6886 §3.2.1).
ANNOUNCE_PORT = 5350
#: RFC 6886 §3.3 recommends two hours.
RECOMMENDED_LIFETIME = 7200
_MAX_U32 = 0xFFFFFFFF
_RESPONSE_BIT = 0x80
_ERROR_HEADER = 8


class Opcode(enum.IntEnum):
    """Request opcodes; a response's opcode is 128 + the request's."""

    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


def opcode_for(transport: Transport) -> Opcode:
    """The mapping opcode for a transport."""
    return Opcode.MAP_UDP if transport is Transport.UDP else Opcode.MAP_TCP


def _check_port(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{attr.name} {value} out of range 0-65535")


def _check_u32(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= _MAX_U32:
        raise LocalProtocolError(f"{attr.name} {value} out of range 0-{_MAX_U32}")


@attrs.frozen
class ExternalAddressRequest:
    """Ask the gateway for its external IPv4 address (and its epoch)."""

    opcode = Opcode.EXTERNAL_ADDRESS

    def encode(self) -> bytes:
        return bytes((VERSION, Opcode.EXTERNAL_ADDRESS))


@attrs.frozen
class MapRequest:
    """Create, renew (same request again) or delete (``lifetime=0``) a UDP or TCP mapping."""

    transport: Transport
    internal_port: int = attrs.field(validator=_check_port)
    suggested_external_port: int = attrs.field(default=0, validator=_check_port)
    lifetime: int = attrs.field(default=RECOMMENDED_LIFETIME, validator=_check_u32)

    def __attrs_post_init__(self) -> None:
        if self.internal_port == 0 and self.lifetime != 0:
            raise LocalProtocolError("internal port 0 is only valid when deleting (lifetime 0)")
        if self.lifetime == 0 and self.suggested_external_port != 0:
            # RFC 6886 §3.4: the client MUST set it to zero when deleting.
            raise LocalProtocolError("a deletion must suggest external port 0")

    @classmethod
    def delete(cls, transport: Transport, internal_port: int) -> MapRequest:
        """Delete the mapping of ``internal_port`` (RFC 6886 §3.4)."""
        return cls(transport, internal_port, 0, 0)

    @classmethod
    def delete_all(cls, transport: Transport) -> MapRequest:
        """Delete every mapping of this host for ``transport`` (internal port 0, lifetime 0)."""
        return cls(transport, 0, 0, 0)

    @property
    def opcode(self) -> Opcode:
        return opcode_for(self.transport)

    @property
    def is_deletion(self) -> bool:
        return self.lifetime == 0

    def encode(self) -> bytes:
        return struct.pack(
            "!BBHHHI",
            VERSION,
            self.opcode,
            0,
            self.internal_port,
            self.suggested_external_port,
            self.lifetime,
        )


Request = ExternalAddressRequest | MapRequest


@attrs.frozen
class ExternalAddressResponse:
    """``external_address`` is ``None`` when the result is an error or the address is 0.0.0.0."""

    result: int
    epoch: int
    external_address: str | None = None


@attrs.frozen
class MapResponse:
    """A mapping answer. On an error result the external port and lifetime are zero (unread);
    ``internal_port`` is ``None`` when an error came as the bare 8-byte header."""

    opcode: Opcode
    result: int
    epoch: int
    internal_port: int | None = None
    external_port: int = 0
    lifetime: int = 0

    @property
    def transport(self) -> Transport:
        return Transport.UDP if self.opcode is Opcode.MAP_UDP else Transport.TCP


Response = ExternalAddressResponse | MapResponse

_FULL_LENGTH = {Opcode.EXTERNAL_ADDRESS: 12, Opcode.MAP_UDP: 16, Opcode.MAP_TCP: 16}


def decode_response(data: bytes) -> Response:
    """Decode a NAT-PMP response. Raises ``ParseError`` for anything that is not one."""
    if len(data) < _ERROR_HEADER:
        raise ParseError(f"NAT-PMP response too short ({len(data)} bytes)")
    version, op, result, epoch = struct.unpack_from("!BBHI", data)
    if version != VERSION:
        raise ParseError(f"not a NAT-PMP response: version {version}")
    if not op & _RESPONSE_BIT:
        raise ParseError(f"not a response: opcode {op}")
    try:
        opcode = Opcode(op & ~_RESPONSE_BIT)
    except ValueError:
        raise ParseError(f"unknown NAT-PMP response opcode {op}") from None
    full = _FULL_LENGTH[opcode]
    if result != 0 and len(data) == _ERROR_HEADER:
        if opcode is Opcode.EXTERNAL_ADDRESS:
            return ExternalAddressResponse(result, epoch)
        return MapResponse(opcode, result, epoch)
    if len(data) != full:
        raise ParseError(f"NAT-PMP opcode {op} response must be {full} bytes, got {len(data)}")
    if opcode is Opcode.EXTERNAL_ADDRESS:
        if result != 0:
            return ExternalAddressResponse(result, epoch)
        address = ipaddress.IPv4Address(data[8:12])
        return ExternalAddressResponse(
            result, epoch, None if address.is_unspecified else str(address)
        )
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    if result != 0:
        # Only the internal port is meaningful in an error (it tells whose request it answers).
        return MapResponse(opcode, result, epoch, internal)
    return MapResponse(opcode, result, epoch, internal, external, lifetime)
