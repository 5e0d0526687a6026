"""Connections to a TURN server: UDP, TCP and TLS (RFC 8656 §3.1), IPv4 and IPv6.

Theory of operation
-------------------
A ``Transport`` is one 5-tuple to the server: the unit a TURN allocation is bound to. The
driver reads with ``receive()`` and writes with ``send_now()`` (no await, UDP only: the fast
path of the relayed data) or ``send()``.

* ``UdpTransport`` is a connected, non-blocking ``socket.socket``: the kernel filters out
  datagrams that do not come from the server (the 5-tuple check of §11.4/§12.6 for free), an
  ICMP port unreachable surfaces as ``ECONNREFUSED`` (reported as ``ServerUnreachable``, a hint
  the driver turns into an early liveness Refresh), and ``receive()`` drains every queued
  datagram after one readiness wait (``anyio.wait_readable``), so a burst costs one event-loop
  round trip instead of one per datagram. The socket buffers are enlarged for bursts.
* ``StreamTransport`` wraps an anyio TCP or TLS stream. TLS verifies the certificate chain
  against the given ``ssl.SSLContext`` (a CA file, or the system store) and the host name
  (``server_name``, or the host of the URI; IP literals are matched against IP SANs), as
  RFC 8489 §6.2.3 requires. Writes are serialised (one TLS record at a time).

Closing is bounded: TLS is opened non-standard-compatible (no wait for the peer's
close_notify), so ``aclose()`` never hangs on a dead server.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from nattrav.errors import NatTravError
from nattrav_stun.codec import Address

__all__ = [
    "Opener",
    "ServerUnreachable",
    "StreamTransport",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UdpTransport",
    "open_transport",
]

_RECV_SIZE = 65536
_BATCH = 256
_BUFFER = 4 * 1024 * 1024


class TransportError(NatTravError):
    """The connection to the TURN server could not be made or broke."""


class TransportClosed(TransportError):
    """The server closed the TCP/TLS connection (or it broke)."""


class ServerUnreachable(TransportError):
    """An ICMP error for the server's address arrived (UDP): it may be down or restarting."""


class Transport(Protocol):
    """One 5-tuple to a TURN server."""

    kind: str  # "udp", "tcp" or "tls"
    stream: bool
    local: Address
    remote: Address

    def send_now(self, data: bytes) -> bool:
        """Send without waiting; ``False`` when the caller must ``await send()``."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one datagram (UDP) or bytes (TCP/TLS)."""
        ...

    async def receive(self) -> list[bytes]:
        """Wait for data: every queued datagram (UDP), or one chunk of the stream."""
        ...

    async def aclose(self) -> None:
        """Close (bounded in time)."""
        ...


def _address(value: object) -> Address:
    assert isinstance(value, tuple)
    return Address(str(value[0]).split("%", 1)[0], int(value[1]))


class UdpTransport:
    """A connected non-blocking UDP socket to the server (see the module docstring)."""

    kind = "udp"
    stream = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.local = _address(sock.getsockname())
        self.remote = _address(sock.getpeername())
        self.unreachable = 0
        self._send = sock.send
        self._recv = sock.recv
        self._closed = False

    @classmethod
    def connect(
        cls, host: str, port: int, *, local_host: str | None = None, local_port: int = 0
    ) -> UdpTransport:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
            if local_host is not None or local_port:
                sock.bind(
                    (local_host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), local_port)
                )
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"UDP socket to {host}:{port}: {exc.strerror or exc}") from exc
        return cls(sock)

    def send_now(self, data: bytes) -> bool:
        if self._closed:
            raise TransportClosed("socket closed")
        try:
            self._send(data)
        except BlockingIOError:
            return False
        except ConnectionRefusedError:
            self.unreachable += 1  # an earlier datagram drew an ICMP error; this one is lost
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return True  # UDP semantics: the datagram is lost
            raise TransportError(f"UDP send to {self.remote}: {exc.strerror or exc}") from exc
        return True

    async def send(self, data: bytes) -> None:
        while not self.send_now(data):
            try:
                await anyio.wait_writable(self.sock)
            except (anyio.ClosedResourceError, OSError, ValueError) as exc:
                raise TransportClosed("socket closed") from exc

    def receive_nowait(self) -> list[bytes]:
        """Every datagram queued now (up to a batch); ``[]`` when there is none. Raises
        ``ServerUnreachable`` (ICMP) or ``TransportError`` only when nothing was read."""
        recv = self._recv
        batch: list[bytes] = []
        try:
            while len(batch) < _BATCH:
                batch.append(recv(_RECV_SIZE))
        except BlockingIOError:
            pass
        except ConnectionRefusedError as exc:
            self.unreachable += 1
            if not batch:
                raise ServerUnreachable(f"ICMP: {self.remote} refused (port unreachable)") from exc
        except OSError as exc:
            if self._closed:
                raise TransportClosed("socket closed") from exc
            if not batch:
                raise TransportError(f"UDP receive: {exc.strerror or exc}") from exc
        return batch

    async def receive(self) -> list[bytes]:
        while True:
            batch = self.receive_nowait()
            if batch:
                return batch
            try:
                await anyio.wait_readable(self.sock)
            except (anyio.ClosedResourceError, OSError, ValueError) as exc:
                raise TransportClosed("socket closed") from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with suppress(Exception):
                anyio.notify_closing(self.sock)
            self.sock.close()


class StreamTransport:
    """A TCP or TLS connection to the server."""

    stream = True

    def __init__(self, stream: anyio.abc.ByteStream, kind: str) -> None:
        self._stream = stream
        self.kind = kind
        self.local = _address(stream.extra(SocketAttribute.local_address))
        self.remote = _address(stream.extra(SocketAttribute.remote_address))
        self._lock = anyio.Lock()

    def send_now(self, data: bytes) -> bool:
        return False

    async def send(self, data: bytes) -> None:
        try:
            async with self._lock:
                await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise TransportClosed(f"{self.kind.upper()} to {self.remote}: {exc}") from exc

    async def receive(self) -> list[bytes]:
        try:
            return [await self._stream.receive(_RECV_SIZE)]
        except anyio.EndOfStream as exc:
            raise TransportClosed(f"{self.remote} closed the connection") from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            raise TransportClosed(f"{self.kind.upper()} to {self.remote}: {exc}") from exc

    async def aclose(self) -> None:
        with anyio.move_on_after(1.0, shield=True):
            with suppress(Exception):
                await self._stream.aclose()


#: ``opener(host, port, kind) -> Transport``: how the driver connects (tests substitute one
#: that creates the socket inside a lab namespace).
Opener = Callable[[str, int, str], Awaitable[Transport]]


async def open_transport(
    host: str,
    port: int,
    kind: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
    local_host: str | None = None,
    connect_timeout: float = 10.0,
) -> Transport:
    """Connect to ``host`` (an IP literal) and ``port`` over ``kind`` (udp, tcp or tls)."""
    if kind == "udp":
        return UdpTransport.connect(host, port, local_host=local_host)
    if kind not in ("tcp", "tls"):
        raise TransportError(f"unknown transport {kind!r}")
    context: ssl.SSLContext | None = None
    if kind == "tls":
        context = ssl_context or ssl.create_default_context()
    try:
        with anyio.fail_after(connect_timeout):
            if context is not None:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    host,
                    port,
                    local_host=local_host,
                    ssl_context=context,
                    tls_hostname=server_name or host,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(host, port, local_host=local_host)
    except TimeoutError as exc:
        raise TransportError(
            f"{kind.upper()} connection to {host}:{port} not established within "
            f"{connect_timeout:.1f} s"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise TransportError(
            f"TLS certificate of {server_name or host} ({host}:{port}) not trusted: "
            f"{exc.verify_message or exc}"
        ) from exc
    except (ssl.SSLError, anyio.BrokenResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise TransportError(
                f"TLS certificate of {server_name or host} ({host}:{port}) not trusted: "
                f"{cause.verify_message or cause}"
            ) from exc
        raise TransportError(f"TLS handshake with {host}:{port} failed: {cause}") from exc
    except OSError as exc:
        raise TransportError(
            f"{kind.upper()} connection to {host}:{port} failed: {exc.strerror or exc}"
        ) from exc
    return StreamTransport(stream, kind)
