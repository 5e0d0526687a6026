"""ICMP errors read from a Linux socket error queue (IP_RECVERR / IPV6_RECVERR): pure parsing.

Theory of operation
-------------------
With ``IP_RECVERR``/``IPV6_RECVERR`` set, Linux queues every ICMP error that concerns a UDP
socket (and local send errors) instead of only setting ``SO_ERROR``. The driver reads them with
``recvmsg(..., MSG_ERRQUEUE)``, which returns:

* as data, the payload of the packet the ICMP message quoted: the UDP payload of *our* probe,
  as far as the router quoted it (Linux routers quote up to 576 bytes for ICMPv4, so 520 bytes
  of UDP payload; ICMPv6 up to 1280, so 1184; RFC 792 routers may quote only 8 bytes past the
  IP header, i.e. nothing of the payload);
* as address, the quoted packet's destination (address and destination port);
* one control message ``(SOL_IP, IP_RECVERR)`` or ``(SOL_IPV6, IPV6_RECVERR)`` holding
  ``struct sock_extended_err`` followed by the offender's ``sockaddr`` (``SO_EE_OFFENDER``)::

      u32 ee_errno; u8 ee_origin; u8 ee_type; u8 ee_code; u8 ee_pad; u32 ee_info; u32 ee_data;

  in host byte order, then ``sockaddr_in`` (family u16 host order, port, 4-byte address) or
  ``sockaddr_in6`` (family, port, flowinfo, 16-byte address, scope id).

``ee_origin`` is ``SO_EE_ORIGIN_ICMP`` (2) or ``SO_EE_ORIGIN_ICMP6`` (3) for network errors and
``SO_EE_ORIGIN_LOCAL`` (1) when our own host refused the send; for "Fragmentation Needed"
(ICMP type 3 code 4), "Packet Too Big" (ICMPv6 type 2) and local EMSGSIZE, ``ee_info`` is the
MTU. The kernel delivered the entry to this socket only after matching the quoted packet's
addresses, ports and protocol (RFC 8899 §4.6.1); ``prober`` adds the check an off-path attacker
cannot pass: the quoted payload must carry the transaction ID of one of our probes.

The parser raises ``ParseError`` and nothing else; it is fed recorded kernel bytes in tests.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterable
from typing import Literal

import attrs
from nattrav.errors import ParseError

__all__ = [
    "ICMP6_PACKET_TOO_BIG",
    "ICMP_DEST_UNREACH",
    "ICMP_FRAG_NEEDED",
    "ICMP_PORT_UNREACH",
    "IPV6_RECVERR",
    "IP_RECVERR",
    "SOL_IP",
    "SOL_IPV6",
    "SO_EE_ORIGIN_ICMP",
    "SO_EE_ORIGIN_ICMP6",
    "SO_EE_ORIGIN_LOCAL",
    "ExtendedError",
    "QueuedError",
    "parse_extended_error",
    "queued_error",
]

# Linux constants (include/uapi/linux/in.h, in6.h, errqueue.h, icmp.h, icmpv6.h). Python 3.11's
# socket module does not export IP_RECVERR/IPV6_RECVERR, so they are recorded here.
SOL_IP = 0
SOL_IPV6 = 41
IP_RECVERR = 11
IPV6_RECVERR = 25
SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP6_DEST_UNREACH = 1
ICMP6_PORT_UNREACH = 4
ICMP6_PACKET_TOO_BIG = 2
_AF_INET_LINUX = 2
_AF_INET6_LINUX = 10
_EMSGSIZE_LINUX = 90
_ECONNREFUSED_LINUX = 111

_EE_SIZE = 16
ByteOrder = Literal["little", "big"]


@attrs.frozen
class ExtendedError:
    """``struct sock_extended_err`` plus the offender (the router that sent the ICMP)."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    data: int
    offender: tuple[str, int] | None = None


@attrs.frozen
class QueuedError:
    """One error-queue entry: the extended error, the quoted payload and its destination."""

    error: ExtendedError
    quoted: bytes
    destination: tuple[str, int] | None

    @property
    def family(self) -> int:
        return 6 if self.error.origin == SO_EE_ORIGIN_ICMP6 else 4

    @property
    def is_packet_too_big(self) -> bool:
        """ICMP Fragmentation Needed or ICMPv6 Packet Too Big; ``mtu`` is the reported MTU."""
        e = self.error
        if e.origin == SO_EE_ORIGIN_ICMP:
            return e.type == ICMP_DEST_UNREACH and e.code == ICMP_FRAG_NEEDED
        if e.origin == SO_EE_ORIGIN_ICMP6:
            return e.type == ICMP6_PACKET_TOO_BIG
        return False

    @property
    def is_local_mtu(self) -> bool:
        """Our own host refused a send larger than the interface MTU (``mtu`` is that MTU)."""
        return self.error.origin == SO_EE_ORIGIN_LOCAL and self.error.errno == _EMSGSIZE_LINUX

    @property
    def is_port_unreachable(self) -> bool:
        """The destination answered ICMP port unreachable: nothing listens there."""
        e = self.error
        if e.origin == SO_EE_ORIGIN_ICMP:
            return e.type == ICMP_DEST_UNREACH and e.code == ICMP_PORT_UNREACH
        if e.origin == SO_EE_ORIGIN_ICMP6:
            return e.type == ICMP6_DEST_UNREACH and e.code == ICMP6_PORT_UNREACH
        return False

    @property
    def mtu(self) -> int:
        return self.error.info


def _sockaddr(data: bytes, byteorder: ByteOrder) -> tuple[str, int] | None:
    if len(data) < 2:
        return None
    family = int.from_bytes(data[:2], byteorder)
    if family == _AF_INET_LINUX and len(data) >= 8:
        port = int.from_bytes(data[2:4], "big")
        return socket.inet_ntop(socket.AF_INET, data[4:8]), port
    if family == _AF_INET6_LINUX and len(data) >= 24:
        port = int.from_bytes(data[2:4], "big")
        return socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None  # SO_EE_ORIGIN_LOCAL entries carry an all-zero offender


def parse_extended_error(
    level: int, ctype: int, data: bytes, *, byteorder: ByteOrder | None = None
) -> ExtendedError:
    """Parse the IP_RECVERR/IPV6_RECVERR control message; raise ``ParseError`` otherwise.

    ``byteorder`` is the kernel's (host) byte order; recorded bytes from another machine pass
    it explicitly.
    """
    order: ByteOrder = byteorder or ("little" if sys.byteorder == "little" else "big")
    if (level, ctype) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
        raise ParseError(f"not an IP_RECVERR/IPV6_RECVERR control message: ({level}, {ctype})")
    if len(data) < _EE_SIZE:
        raise ParseError(f"sock_extended_err of {len(data)} bytes is shorter than {_EE_SIZE}")
    fmt = "<IBBBBII" if order == "little" else ">IBBBBII"
    err, origin, etype, code, _pad, info, edata = struct.unpack_from(fmt, data)
    if origin > 6:  # 4-6: TXSTATUS, ZEROCOPY, TXTIME (not ours, but well-formed)
        raise ParseError(f"sock_extended_err origin {origin} is not known")
    return ExtendedError(err, origin, etype, code, info, edata, _sockaddr(data[_EE_SIZE:], order))


def queued_error(
    quoted: bytes,
    ancdata: Iterable[tuple[int, int, bytes]],
    address: object,
    *,
    byteorder: ByteOrder | None = None,
) -> QueuedError:
    """Build a ``QueuedError`` from what ``recvmsg(..., MSG_ERRQUEUE)`` returned.

    Raises ``ParseError`` when no well-formed IP_RECVERR/IPV6_RECVERR message is present.
    """
    error: ExtendedError | None = None
    for level, ctype, data in ancdata:
        if (level, ctype) in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
            error = parse_extended_error(level, ctype, bytes(data), byteorder=byteorder)
            break
    if error is None:
        raise ParseError("error-queue message without an IP_RECVERR/IPV6_RECVERR control message")
    destination: tuple[str, int] | None = None
    if isinstance(address, tuple) and len(address) >= 2:
        try:
            destination = (str(address[0]).split("%", 1)[0], int(address[1]))
        except (TypeError, ValueError):
            destination = None
    return QueuedError(error, bytes(quoted), destination)
