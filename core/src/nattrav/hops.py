"""Which routers lie between this host and a public address: a few TTL-limited datagrams.

Why: a home router behind a carrier-grade NAT may learn its "external" address by STUN
(miniupnpd's ``ext_perform_stun`` does), so what the gateway says and what servers see agree
and only the path shows the second NAT: the router after the home gateway answers from an
address in 100.64.0.0/10 (RFC 6598, reserved for exactly that). ``nattrav probe`` reads these
hops (section key ``path_hops``) for its double-NAT verdict.

How: one UDP socket per TTL (1 to ``max_hops``), each sending one empty datagram towards the
target (port 33434, as traceroute does) at the same time; each router whose TTL expires
answers ICMP Time Exceeded, the target itself answers Port Unreachable (or nothing). The
answers are read from the socket's error queue (Linux ``IP_RECVERR``/``IPV6_RECVERR``), so no
raw socket and no privilege is needed. Every hop costs at most one ``window``; they all run at
once. Elsewhere ``trace_hops`` returns ``None`` (unsupported), never a wrong answer.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import Any

import anyio
import attrs

__all__ = ["TRACE_PORT", "Hop", "hops_supported", "trace_hops"]

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ICMP_TIME_EXCEEDED = 11
_ICMP6_TIME_EXCEEDED = 3
_ICMP_UNREACHABLE = 3
_ICMP6_UNREACHABLE = 1


@attrs.frozen
class Hop:
    """One TTL's answer: ``ip`` is the router (or the target) that answered, ``None`` if
    nothing did within the window; ``reached`` when it was the target itself."""

    ttl: int
    ip: str | None
    reached: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "ip": self.ip, "reached": self.reached}


def hops_supported() -> bool:
    """True where the error queue tells us who answered (Linux)."""
    return sys.platform.startswith("linux")


def _read_error(sock: socket.socket, family: int) -> tuple[str, bool] | None:
    """One ICMP error from the error queue: (who answered, was it the target), or ``None``."""
    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(256, 512, socket.MSG_ERRQUEUE)
    except (BlockingIOError, InterruptedError):
        return None
    level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
    kind = _IP_RECVERR if family == 4 else _IPV6_RECVERR
    for cmsg_level, cmsg_type, blob in ancdata:
        if cmsg_level != level or cmsg_type != kind or len(blob) < _EE.size:
            continue
        _errno, origin, icmp_type, _code, _pad, _info, _extra = _EE.unpack_from(blob)
        offender = blob[_EE.size :]
        if family == 4 and origin == _SO_EE_ORIGIN_ICMP and len(offender) >= 8:
            ip = socket.inet_ntop(socket.AF_INET, offender[4:8])
            if icmp_type in (_ICMP_TIME_EXCEEDED, _ICMP_UNREACHABLE):
                return ip, icmp_type == _ICMP_UNREACHABLE
        if family == 6 and origin == _SO_EE_ORIGIN_ICMP6 and len(offender) >= 24:
            ip = socket.inet_ntop(socket.AF_INET6, offender[8:24])
            if icmp_type in (_ICMP6_TIME_EXCEEDED, _ICMP6_UNREACHABLE):
                return ip, icmp_type == _ICMP6_UNREACHABLE
    return None


def _open(family: int, ttl: int) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == 4:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    except BaseException:
        sock.close()
        raise
    return sock


#: Where the datagrams go: traceroute's first port, closed on almost every host, so the target
#: itself answers Port Unreachable and the trace knows it arrived.
TRACE_PORT = 33434


async def trace_hops(
    host: str,
    port: int = TRACE_PORT,
    *,
    max_hops: int = 4,
    window: float = 0.5,
    payload: bytes = b"",
) -> list[Hop] | None:
    """The routers at TTL 1..``max_hops`` towards ``host`` (an IP literal), ``port``.

    Returns the hops up to the first one that is the target itself; ``None`` where the
    platform cannot tell (not Linux). Never raises for silence: a hop that does not answer
    within ``window`` seconds has ``ip=None``. ``payload`` is what each datagram carries (a
    protocol the target ignores, or nothing).
    """
    if not hops_supported():
        return None
    if not 1 <= max_hops <= 32:
        raise ValueError(f"max_hops must be 1-32, got {max_hops}")
    target = ipaddress.ip_address(host)
    host = str(target)
    family = target.version
    found: dict[int, tuple[str, bool]] = {}
    sockets: list[tuple[int, socket.socket]] = []
    try:
        for ttl in range(1, max_hops + 1):
            sockets.append((ttl, _open(family, ttl)))

        async def one(ttl: int, sock: socket.socket) -> None:
            try:
                sock.sendto(payload, (host, port))
            except OSError:
                return  # no route: this hop stays unknown
            with anyio.move_on_after(window):
                while True:
                    answer = _read_error(sock, family)
                    if answer is not None:
                        found[ttl] = answer
                        return
                    await anyio.wait_readable(sock)

        async with anyio.create_task_group() as tg:
            for ttl, sock in sockets:
                tg.start_soon(one, ttl, sock)
    finally:
        for _ttl, sock in sockets:
            sock.close()
    hops: list[Hop] = []
    for ttl in range(1, max_hops + 1):
        ip, reached = found.get(ttl, (None, False))
        hops.append(Hop(ttl, ip, reached or ip == host))
        if hops[-1].reached:
            break
    return hops
