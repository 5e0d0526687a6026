"""Helpers for the natpmp plugin's tests: hand-built response packets, a fake clock's RNG, and a
scripted gateway on loopback.

The scripted gateway (``ScriptedGateway``) exists only for behaviours no real peer in the lab
produces on demand: wrong sources, malformed packets, a chosen nonce mismatch, a chosen epoch
regression, silence, a NAT-PMP-only server, error results with lifetimes. Everything a correct
server does is tested against miniupnpd in the lab (test_lab.py).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from nattrav_natpmp.pcp_codec import encode_address

V4_MAPPED = bytes(10) + b"\xff\xff"


def natpmp_external(epoch: int, address: str = "198.51.100.2", result: int = 0) -> bytes:
    return struct.pack("!BBHI", 0, 128, result, epoch) + ipaddress.IPv4Address(address).packed


def natpmp_map(
    epoch: int, internal: int, external: int, lifetime: int, *, op: int = 1, result: int = 0
) -> bytes:
    return struct.pack("!BBHIHHI", 0, 128 + op, result, epoch, internal, external, lifetime)


def natpmp_short_error(op: int, result: int, epoch: int) -> bytes:
    return struct.pack("!BBHI", 0, 128 + op, result, epoch)


def pcp_map(
    nonce: bytes,
    *,
    result: int = 0,
    lifetime: int = 7200,
    epoch: int = 10,
    protocol: int = 17,
    internal: int = 5000,
    external: int = 5000,
    address: str = "198.51.100.2",
    options: bytes = b"",
) -> bytes:
    return (
        struct.pack("!BBBBII", 2, 0x81, 0, result, lifetime, epoch)
        + bytes(12)
        + nonce
        + struct.pack("!B3xHH", protocol, internal, external)
        + encode_address(address)
        + options
    )


def pcp_announce(epoch: int, result: int = 0) -> bytes:
    return struct.pack("!BBBBII", 2, 0x80, 0, result, 0, epoch) + bytes(12)


class FixedRandom(random.Random):
    """``uniform(a, b)`` returns the point ``fraction`` of the way from a to b."""

    def __init__(self, fraction: float = 0.0) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@attrs.frozen
class Request:
    """A request the scripted gateway received."""

    data: bytes
    source: tuple[str, int]

    @property
    def version(self) -> int:
        return self.data[0]

    @property
    def opcode(self) -> int:
        return self.data[1] & 0x7F

    @property
    def lifetime(self) -> int:
        if self.version == 2:
            return int(struct.unpack_from("!I", self.data, 4)[0])
        return int(struct.unpack_from("!I", self.data, 8)[0])

    @property
    def nonce(self) -> bytes:
        return self.data[24:36]

    @property
    def internal_port(self) -> int:
        if self.version == 2:
            return int(struct.unpack_from("!H", self.data, 40)[0])
        return int(struct.unpack_from("!H", self.data, 4)[0])

    @property
    def suggested_port(self) -> int:
        if self.version == 2:
            return int(struct.unpack_from("!H", self.data, 42)[0])
        return int(struct.unpack_from("!H", self.data, 6)[0])


Responder = Callable[[Request, "ScriptedGateway"], list[bytes]]


class ScriptedGateway:
    """A UDP responder on 127.0.0.1 whose answers a test scripts (see the module doc).

    ``respond(request, gateway)`` returns the datagrams to send back (possibly none). The
    default speaks PCP and NAT-PMP correctly with ``external`` as the external address and
    ``epoch`` as the (settable) epoch.
    """

    def __init__(self, responder: Responder | None = None, *, host: str = "127.0.0.1") -> None:
        self.responder = responder or correct
        self.host = host
        self.requests: list[Request] = []
        self.epoch = 10
        self.external = "198.51.100.2"
        self.granted: int | None = None  # lifetime override
        self.sock: socket.socket | None = None
        self.port = 0

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        task_status.started(self)
        try:
            while True:
                await anyio.wait_readable(sock)
                try:
                    data, source = sock.recvfrom(2048)
                except BlockingIOError:
                    continue
                request = Request(data, (source[0], source[1]))
                self.requests.append(request)
                for reply in self.responder(request, self):
                    sock.sendto(reply, source)
        finally:
            anyio.notify_closing(sock)
            sock.close()

    def send(self, data: bytes, target: tuple[str, int]) -> None:
        assert self.sock is not None
        self.sock.sendto(data, target)

    def deletions(self) -> list[Request]:
        return [r for r in self.requests if r.opcode in (1, 2) and r.lifetime == 0]

    def maps(self) -> list[Request]:
        return [r for r in self.requests if r.opcode in (1, 2) and r.lifetime != 0]


def correct(request: Request, gw: ScriptedGateway) -> list[bytes]:
    """What a PCP + NAT-PMP server answers."""
    if request.version == 0:
        if request.opcode == 0:
            return [natpmp_external(gw.epoch, gw.external)]
        lifetime = request.lifetime if gw.granted is None else gw.granted
        external = 0 if request.lifetime == 0 else (request.suggested_port or request.internal_port)
        return [
            natpmp_map(
                gw.epoch,
                request.internal_port,
                external,
                lifetime if request.lifetime else 0,
                op=request.opcode,
            )
        ]
    if request.version == 2 and request.opcode == 1:
        lifetime = request.lifetime if gw.granted is None else gw.granted
        if request.lifetime == 0:
            lifetime = 0
        return [
            pcp_map(
                request.nonce,
                lifetime=lifetime,
                epoch=gw.epoch,
                protocol=request.data[36],
                internal=request.internal_port,
                external=request.suggested_port or request.internal_port,
                address=gw.external,
            )
        ]
    if request.version == 2 and request.opcode == 0:
        return [pcp_announce(gw.epoch)]
    return []


def natpmp_only(request: Request, gw: ScriptedGateway) -> list[bytes]:
    """An RFC 6886 server: any other version gets the 8-byte "unsupported version"."""
    if request.version != 0:
        return [natpmp_short_error(request.opcode, 1, gw.epoch)]
    return correct(request, gw)


def silent(request: Request, gw: ScriptedGateway) -> list[bytes]:
    return []
