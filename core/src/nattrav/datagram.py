"""One UDP port shared by nattrav's protocols and the application.

Why: a NAT mapping belongs to a local port. The STUN binding that discovers the public address,
the keepalives that hold it open and the application's own datagrams must all leave from the
same socket, or the public address the user was given stops being valid. ``DatagramMux`` owns
one socket per IP family bound to the same port number and demultiplexes what arrives:
each subscriber (a protocol driver) gives a classifier (RFC 7983 style: look at the first byte,
the magic cookie); the first classifier that claims a datagram gets it; everything else goes to
the application channel. Core knows no protocol: classifiers come from plugins.

Queues are bounded; a datagram arriving at a full queue is dropped and counted (UDP semantics,
and a flood cannot grow memory).

The mux remembers which IP addresses the port has sent to (``has_sent_to``), because a NAT's
filter is per port: an "unsolicited" answer from an address the port already talked to proves
nothing about inbound reachability, and verifiers must not count it.

Port-mapping methods say when a gateway may forward this port (``note_mapping`` before the
request that creates a mapping, ``forget_mapping`` after its release): while one does, or if
one started since a probe was sent (``mapping_epoch``), an answer arriving "unsolicited" says
nothing about the NAT's own filtering, and the filtering tests of other methods on the same
port must not count it.

A protocol that lets go of the port may still get answers (a retransmitted request answered
twice, a probe answered after its window): ``unsubscribe(sub, linger=s)`` keeps its classifier
for ``s`` seconds, and what it claims then is dropped (counted in ``late_dropped``) instead of
reaching the application as if a peer had sent it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from nattrav.errors import MethodUnavailable, NatTravError
from nattrav.models import Transport, TransportAddress
from nattrav.taskgroups import single_errors

__all__ = ["DatagramMux", "Subscription"]

Classifier = Callable[[bytes, TransportAddress], bool]
Datagram = tuple[bytes, TransportAddress]

#: Distinct destination addresses a mux remembers (``DatagramMux.has_sent_to``).
SENT_TO_LIMIT = 4096


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def _bind(family: socket.AddressFamily, port: int, host: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # A separate IPv4 socket holds the same port number; keep the families apart.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@attrs.define(eq=False)
class Subscription:
    """Datagrams claimed by one classifier. Iterate, or call ``receive()``."""

    name: str
    classifier: Classifier
    _send: MemoryObjectSendStream[Datagram]
    _recv: MemoryObjectReceiveStream[Datagram]
    dropped: int = 0

    async def receive(self) -> Datagram:
        return await self._recv.receive()

    def receive_nowait(self) -> Datagram:
        return self._recv.receive_nowait()

    def __aiter__(self) -> AsyncIterator[Datagram]:
        return self._recv.__aiter__()


class _AppChannel:
    """The application's view of the mux: datagrams no protocol claimed."""

    def __init__(self, mux: DatagramMux) -> None:
        self._mux = mux

    async def send_to(self, data: bytes, peer: TransportAddress) -> None:
        await self._mux.send_to(data, peer)

    async def receive(self) -> Datagram:
        return await self._mux._app_recv.receive()


class DatagramMux:
    """UDP sockets (IPv4 and/or IPv6) on one port, demultiplexed by classifier.

    Use ``async with DatagramMux.open(port) as mux``; ``mux.app`` is the application's channel.

    I/O runs on the non-blocking OS sockets directly (``anyio.wait_readable`` and
    ``recvfrom_into`` a reused buffer; ``sendto`` first, waiting for writability only when the
    kernel buffer is full). That is the fast path on every backend: stock asyncio's datagram
    transport allocates a 256 KiB buffer per datagram, and concurrent senders need no lock.
    """

    def __init__(self, raw: dict[int, socket.socket], port: int, queue: int) -> None:
        self._raw = raw
        self.port = port
        self._queue = queue
        self._subs: list[Subscription] = []
        self._app_send, self._app_recv = anyio.create_memory_object_stream[Datagram](queue)
        self.app = _AppChannel(self)
        self.app_dropped = 0
        self.received = 0
        self.send_errors = 0
        self._sent_to: set[str] = set()
        self._sent_overflow = False
        self._lingering: list[tuple[float, Classifier]] = []
        self.late_dropped = 0
        self._mappings: dict[str, int] = {}
        #: Incremented by every ``note_mapping``: compare before and after a filtering probe.
        self.mapping_epoch = 0

    @property
    def families(self) -> frozenset[int]:
        return frozenset(self._raw)

    def raw_socket(self, family: int) -> socket.socket:
        """The OS socket of ``family``, for socket options and the error queue (PMTUD).

        Do not receive from it: the mux's reader owns receiving.
        """
        return self._raw[family]

    def local_address(self, family: int) -> TransportAddress:
        address = self._raw[family].getsockname()
        return TransportAddress(str(address[0]).split("%", 1)[0], int(address[1]))

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        port: int = 0,
        *,
        families: frozenset[int] | set[int] = frozenset({4, 6}),
        host4: str | None = None,
        host6: str | None = None,
        queue: int = 512,
    ) -> AsyncIterator[DatagramMux]:
        """Bind ``port`` (0: pick one) for each family; skip a family the host lacks."""
        raw: dict[int, socket.socket] = {}
        errors: list[str] = []
        try:
            order = sorted(families)  # IPv4 first: it decides the port number when port == 0
            for fam in order:
                af = socket.AF_INET if fam == 4 else socket.AF_INET6
                want = port or (next(iter(raw.values())).getsockname()[1] if raw else 0)
                try:
                    raw[fam] = _bind(af, want, host4 if fam == 4 else host6)
                except OSError as exc:
                    errors.append(f"IPv{fam} port {want}: {exc.strerror or exc}")
            if not raw:
                raise MethodUnavailable("socket", "cannot bind UDP: " + "; ".join(errors))
            bound_port = next(iter(raw.values())).getsockname()[1]
        except BaseException:
            for s in raw.values():
                s.close()
            raise
        mux = cls(raw, bound_port, queue)
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    for sock in raw.values():
                        tg.start_soon(mux._reader, sock)
                    yield mux
                    tg.cancel_scope.cancel()
        finally:
            for sock in raw.values():
                anyio.notify_closing(sock)
                sock.close()
            mux._app_send.close()
            mux._app_recv.close()
            for sub in mux._subs:
                sub._send.close()
                sub._recv.close()

    def subscribe(
        self, name: str, classifier: Classifier, *, size: int | None = None
    ) -> Subscription:
        """Claim datagrams for which ``classifier(data, source)`` is true (first claim wins)."""
        send, recv = anyio.create_memory_object_stream[Datagram](size or self._queue)
        sub = Subscription(name, classifier, send, recv)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription, *, linger: float = 0.0) -> None:
        """Stop delivering to ``sub``; with ``linger`` its classifier keeps claiming (and
        dropping) late datagrams that long, so they never reach the application."""
        with suppress(ValueError):
            self._subs.remove(sub)
        sub._send.close()
        sub._recv.close()
        if linger > 0:
            self._lingering.append((time.monotonic() + linger, sub.classifier))

    @asynccontextmanager
    async def subscription(
        self, name: str, classifier: Classifier, *, linger: float = 0.0
    ) -> AsyncIterator[Subscription]:
        sub = self.subscribe(name, classifier)
        try:
            yield sub
        finally:
            self.unsubscribe(sub, linger=linger)

    def note_mapping(self, owner: str) -> None:
        """A gateway may forward this port from now on (call before requesting the mapping)."""
        self._mappings[owner] = self._mappings.get(owner, 0) + 1
        self.mapping_epoch += 1

    def forget_mapping(self, owner: str) -> None:
        """The mapping ``owner`` noted is released (call after deleting it)."""
        left = self._mappings.get(owner, 0) - 1
        if left > 0:
            self._mappings[owner] = left
        else:
            self._mappings.pop(owner, None)

    @property
    def forwarded(self) -> bool:
        """True while a port mapping of this port may exist (see ``note_mapping``)."""
        return bool(self._mappings)

    def has_sent_to(self, host: str) -> bool:
        """True if this port has sent to ``host`` (an IP literal) since it was opened.

        Past ``SENT_TO_LIMIT`` distinct addresses it stops counting and answers True for any
        address (the safe answer for a verifier).
        """
        return self._sent_overflow or _canonical(host) in self._sent_to

    async def send_to(self, data: bytes, peer: TransportAddress | tuple[str, int]) -> None:
        """Send from the shared port; safe to call from many tasks at once."""
        if isinstance(peer, TransportAddress):
            host, port, fam = peer.host, peer.port, peer.family
        else:
            host, port = peer
            fam = 6 if ":" in host else 4
        sock = self._raw.get(fam)
        if sock is None:
            raise NatTravError(f"no IPv{fam} socket on port {self.port} to reach {host}")
        if host not in self._sent_to and not self._sent_overflow:
            if len(self._sent_to) >= SENT_TO_LIMIT:
                self._sent_overflow = True
            else:
                self._sent_to.add(_canonical(host))
        await anyio.lowlevel.checkpoint()
        for _ in range(3):
            try:
                sock.sendto(data, (host, port))
                return
            except BlockingIOError:
                await anyio.wait_writable(sock)
            except (ConnectionRefusedError, ConnectionResetError):
                # An ICMP error from an earlier datagram surfaced here; this one is unsent.
                self.send_errors += 1
        sock.sendto(data, (host, port))

    async def _reader(self, sock: socket.socket) -> None:
        buffer = bytearray(65536)
        view = memoryview(buffer)
        recv_into = sock.recvfrom_into
        while True:
            try:
                await anyio.wait_readable(sock)
            except (anyio.ClosedResourceError, OSError):
                return
            # Drain what is queued (bounded, so one busy socket cannot starve the loop).
            for _ in range(64):
                try:
                    size, addr = recv_into(buffer)
                except BlockingIOError:
                    break
                except (ConnectionRefusedError, ConnectionResetError):
                    continue  # ICMP port unreachable for an earlier send: not fatal
                except OSError:
                    return
                self._dispatch(bytes(view[:size]), addr)

    def _dispatch(self, data: bytes, addr: Any) -> None:
        self.received += 1
        try:
            source = TransportAddress(str(addr[0]).split("%", 1)[0], int(addr[1]), Transport.UDP)
        except ValueError:
            return
        for sub in self._subs:
            try:
                claimed = sub.classifier(data, source)
            except Exception:
                claimed = False
            if claimed:
                try:
                    sub._send.send_nowait((data, source))
                except anyio.WouldBlock:
                    sub.dropped += 1
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    continue
                return
        if self._lingering and self._late(data, source):
            self.late_dropped += 1
            return
        try:
            self._app_send.send_nowait((data, source))
        except (anyio.WouldBlock, anyio.BrokenResourceError):
            self.app_dropped += 1

    def _late(self, data: bytes, source: TransportAddress) -> bool:
        """Does a protocol that let go of the port recently still claim this datagram?"""
        now = time.monotonic()
        self._lingering = [(until, c) for until, c in self._lingering if until > now]
        for _until, classifier in self._lingering:
            try:
                if classifier(data, source):
                    return True
            except Exception:
                continue
        return False
