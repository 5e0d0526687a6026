"""The relay driver: a TURN allocation held open and used like a datagram socket (anyio).

Theory of operation
-------------------
``allocate(server, ...)`` is an async context manager yielding a ``RelayEndpoint``::

    async with allocate("turn:203.0.113.1?transport=udp", username="u", password="p") as ep:
        print(ep.relayed)                      # the relayed transport address peers send to
        await ep.send_to(b"hi", peer)          # permission/channel created on demand
        data, peer = await ep.receive()

It is the only module of the plugin that touches anyio, sockets or the clock. It owns one
``Transport`` (the 5-tuple the allocation is bound to) and one sans-IO ``TurnClient`` and
runs them in two modes:

* *exclusive* (``_drive``): one task reads, writes and fires timers until an event it waits
  for arrives. Used to allocate (at start and when recovering) and to delete (on exit), so
  those steps never depend on background tasks that a cancellation may already have killed.
* *steady*: a reader task drains the socket (every queued datagram per wake-up), hands
  application data to the inbox and control messages to the client; a timer task sleeps until
  ``client.get_timer()`` (its deadline is moved whenever the client's schedule changes).

The hot paths stay short: ``send_to`` asks the client for the framed bytes (a struct pack for
ChannelData) and writes them with a non-blocking ``socket.send``; the reader appends
``(payload, peer)`` to a deque. Peer addresses are converted to ``TransportAddress`` through a
small cache, never per packet.

Recovery: the client reports ``AllocationLost`` (437 on Refresh after a server restart,
expiry, the TCP/TLS connection closed, a ChannelBind 400). The supervisor stops the steady
tasks, reconnects when the 5-tuple is unusable (stream transports, 437 on Allocate), allocates
again honouring RFC 8656 §7.4 back-off, re-installs the sticky permissions and tells the user:
``LeaseEvent(LOST)``, then ``CHANGED`` (new relayed address) or ``RECOVERED`` (same one). If
the server says never (401, 440, ...) the endpoint fails with ``RelayError``.

Redirects (RFC 8489 §10): when the client reports a 300 it may follow (``AllocationFailed.
redirect``), ``_follow`` checks the ``RedirectGuard`` (no server twice within five minutes, at
most ``max_redirects`` hops per attempt), closes the connection to the redirecting server, opens
one to the alternate over the same transport (TLS verifies the ALTERNATE-DOMAIN if the 300 had
one, else the name used for the original server), points the client there (``retarget``: same
credentials, fresh challenge) and allocates again. From then on ``server_address`` is the
alternate: refreshes, permissions, the delete on exit, the journal entry and ``nattrav
cleanup`` all talk to the server that holds the allocation; ``redirected_from`` lists the
servers that sent us on. A refused redirect fails the attempt (``RelayError``, not retryable),
and the chain method goes on with its next configured server.

Release: on exit, error or cancellation, shielded and bounded by ``release_timeout``: stop the
tasks, Refresh with LIFETIME 0 (a 437 counts as done), close the transport. The journal entry
(when a journal was given) is written before the first Allocate, updated whenever the
connection changes (before the next Allocate goes out) and removed once the delete is
confirmed (or the TCP/TLS connection, which the server ties the allocation to, is closed).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nattrav.errors import LocalProtocolError, NatTravError, ParseError
from nattrav.journal import Journal, JournalEntry
from nattrav.models import LeaseEvent, LeaseEventKind, Transport, TransportAddress
from nattrav.taskgroups import single_errors
from nattrav_stun.auth import LongTermCredentials
from nattrav_stun.codec import Address
from nattrav_stun.driver import running_asyncio_loop
from nattrav_stun.uri import ServerAddress, parse_server

from nattrav_relay.client import ClientSettings, RelayStats, State, TurnClient
from nattrav_relay.events import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    ChannelBound,
    ChannelFailed,
    Deleted,
    IcmpReceived,
    PermissionCreated,
    PermissionFailed,
    Refreshed,
    TurnEvent,
)
from nattrav_relay.redirects import RedirectGuard
from nattrav_relay.transport import (
    Opener,
    ServerUnreachable,
    TransportClosed,
    TransportError,
    UdpTransport,
    open_transport,
)
from nattrav_relay.transport import (
    Transport as ServerTransport,
)

if TYPE_CHECKING:
    import asyncio

__all__ = ["RelayEndpoint", "RelayError", "allocate", "release_orphan", "resolve_server"]

log = logging.getLogger("nattrav.relay")

_MAX_PEER_CACHE = 4096


class RelayError(NatTravError):
    """The relay could not be allocated, or was lost for good, or was misused.

    ``event`` is the client event behind it (an ``AllocationFailed`` for allocation
    failures); ``retryable`` tells a caller whether trying again later may help.
    """

    def __init__(
        self, message: str, *, event: TurnEvent | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.event = event
        self.retryable = retryable


async def resolve_server(server: ServerAddress) -> list[str]:
    """The IP addresses of ``server.host`` (itself when it is a literal), in the order
    ``getaddrinfo`` gives them (RFC 6724 preference)."""
    try:
        return [str(ipaddress.ip_address(server.host))]
    except ValueError:
        pass
    kind = 2 if server.transport == "udp" else 1  # SOCK_DGRAM / SOCK_STREAM
    try:
        infos = await anyio.getaddrinfo(server.host, server.port, type=kind)
    except OSError as exc:
        raise RelayError(f"cannot resolve {server.host}: {exc}", retryable=True) from exc
    seen: list[str] = []
    for info in infos:
        host = str(info[4][0]).split("%", 1)[0]
        if host not in seen:
            seen.append(host)
    if not seen:
        raise RelayError(f"{server.host} has no address", retryable=True)
    return seen


def event_loop_clock() -> Callable[[], float]:
    """The running event loop's own clock (what ``anyio.current_time()`` reads), as a plain
    function: ``anyio.current_time()`` looks the backend up on every call (several
    microseconds on trio), too slow for a per-datagram timestamp."""
    import asyncio
    import sys

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time:
            return time.monotonic  # what BaseEventLoop.time returns, minus a Python frame
        return loop.time
    trio: Any = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_root_task()
        except RuntimeError:
            pass
        else:
            clock: Callable[[], float] = trio.current_time
            return clock
    return anyio.current_time


def _as_server(server: str | ServerAddress) -> ServerAddress:
    if isinstance(server, ServerAddress):
        return server
    try:
        parsed = parse_server(server, default_scheme="turn")
    except ValueError as exc:
        raise RelayError(f"bad TURN server address: {exc}") from exc
    if parsed.scheme not in ("turn", "turns"):
        raise RelayError(f"{server!r} is not a turn: or turns: URI")
    return parsed


class _Waiter:
    """One pending outcome (an event) a task waits for."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None

    def set(self, result: Any) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()


class RelayEndpoint:
    """A held TURN allocation, usable like a datagram socket. Made by ``allocate()``.

    Attributes: ``relayed`` (the primary relayed address), ``relayed_addresses`` (two for a
    dual allocation), ``mapped`` (what the server saw as our address), ``local`` (our end of
    the connection to the server), ``server`` (as configured), ``server_address`` (the server
    that holds the allocation: the alternate after a followed 300 redirect),
    ``redirected_from`` (the servers that redirected us there, in order), ``lifetime``,
    ``generation`` (1, then +1 per re-allocation), ``stats`` (``RelayStats``: bytes, packets,
    refreshes, ...).
    """

    def __init__(
        self,
        server: ServerAddress,
        credentials: LongTermCredentials,
        settings: ClientSettings,
        *,
        opener: Opener | None,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
        local_host: str | None,
        permit: Iterable[str],
        on_event: Callable[[LeaseEvent], None] | None,
        recover: bool,
        allocate_timeout: float,
        release_timeout: float,
        receive_queue: int,
        journal: Journal | None,
        method: str,
        max_redirects: int = 3,
    ) -> None:
        self.server = server
        self.credentials = credentials
        self.settings = settings
        self._opener = opener
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._local_host = local_host
        self._permit = [_peer_ip(p) for p in permit]
        self._callbacks: list[Callable[[LeaseEvent], None]] = [on_event] if on_event else []
        self._subscribers: list[MemoryObjectSendStream[LeaseEvent]] = []
        self._recover = recover
        self.allocate_timeout = allocate_timeout
        self.release_timeout = release_timeout
        self._journal = journal
        self._entry: JournalEntry | None = None
        self.method = method
        self._addresses: list[str] = []
        self._transport: ServerTransport | None = None
        self._client: TurnClient | None = None
        self._inbox: deque[tuple[bytes, TransportAddress]] = deque()
        self._inbox_max = receive_queue
        self._inbox_waiter: anyio.Event | None = None
        # On asyncio (not trio, not trio guest mode) the steady reader is a persistent
        # ``add_reader`` callback and waiters are bare futures (see ``_reader_asyncio``).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox_future: asyncio.Future[None] | None = None
        self._closed = False
        self._failure: RelayError | None = None
        self._peers: dict[Address, TransportAddress] = {}
        self._keys: dict[Any, tuple[str, int]] = {}
        self._timer_scope: anyio.CancelScope | None = None
        self._lost_send: MemoryObjectSendStream[AllocationLost]
        self._lost_recv: MemoryObjectReceiveStream[AllocationLost]
        self._lost_send, self._lost_recv = anyio.create_memory_object_stream[AllocationLost](16)
        self._supervisor_scope: anyio.CancelScope | None = None
        self._supervisor_done = anyio.Event()
        self._steady = False
        self._perm_waiters: dict[str, list[_Waiter]] = {}
        self._channel_waiters: dict[Address, list[_Waiter]] = {}
        self._sends = 0
        self._receives = 0
        self._now: Callable[[], float] = anyio.current_time
        self.inbox_dropped = 0
        #: configured permissions the server refused or did not answer (ip -> why)
        self.permit_failures: dict[str, str] = {}
        self.icmp_errors: deque[IcmpReceived] = deque(maxlen=32)
        self.relayed_addresses: tuple[TransportAddress, ...] = ()
        self.mapped: TransportAddress | None = None
        self.local: TransportAddress | None = None
        self.server_address: TransportAddress | None = None
        self.redirected_from: list[TransportAddress] = []
        self._redirects = RedirectGuard(limit=max_redirects)
        # the TLS name to verify at the current server (None: the address connected to)
        self._tls_name: str | None = None
        self.lifetime = 0
        self.expires_at = 0.0

    # ================================================================= public API

    @property
    def relayed(self) -> TransportAddress:
        """The relayed transport address (the first of a dual allocation)."""
        if not self.relayed_addresses:
            raise RelayError("no allocation")
        return self.relayed_addresses[0]

    def relayed_for(self, family: int) -> TransportAddress | None:
        """The relayed address of ``family`` (4 or 6), if the allocation has one."""
        return next((a for a in self.relayed_addresses if a.family == family), None)

    @property
    def stats(self) -> RelayStats:
        """Counters since the endpoint opened (across re-allocations)."""
        assert self._client is not None
        return self._client.stats

    @property
    def generation(self) -> int:
        return 0 if self._client is None else self._client.generation

    @property
    def transport(self) -> str:
        """``udp``, ``tcp`` or ``tls``: how we reach the server."""
        return self.server.transport

    @property
    def permitted(self) -> list[str]:
        """Peer IPs with an installed permission."""
        if self._client is None:
            return []
        return sorted(ip for ip, p in self._client.permissions.items() if p.installed)

    def describe(self) -> dict[str, Any]:
        """A JSON-able snapshot: addresses, lifetime, permissions, channels, statistics."""
        assert self._client is not None
        out = self._client.describe()
        out.update(
            {
                "server": str(self.server),
                "server_address": None if self.server_address is None else str(self.server_address),
                "local": None if self.local is None else str(self.local),
                "redirected_from": [str(a) for a in self.redirected_from],
                "relayed": [str(a) for a in self.relayed_addresses],
                "stats": self.stats.as_dict(),
            }
        )
        return out

    def add_listener(self, callback: Callable[[LeaseEvent], None]) -> None:
        """Call ``callback(event)`` for every lease event (renewed, lost, changed...)."""
        self._callbacks.append(callback)

    @asynccontextmanager
    async def events(
        self, buffer: int = 64
    ) -> AsyncIterator[MemoryObjectReceiveStream[LeaseEvent]]:
        """``async with ep.events() as stream: async for event in stream: ...``"""
        send, recv = anyio.create_memory_object_stream[LeaseEvent](buffer)
        self._subscribers.append(send)
        try:
            yield recv
        finally:
            with suppress(ValueError):
                self._subscribers.remove(send)
            send.close()
            recv.close()

    async def send_to(self, data: bytes, peer: TransportAddress | tuple[str, int] | str) -> None:
        """Relay one datagram to ``peer`` (UDP semantics: it may be lost).

        The first datagram to a new peer creates its permission and channel (it waits in a
        small queue meanwhile). While the allocation is being re-created datagrams are dropped
        (counted in ``stats.dropped``). Raises ``RelayError`` when the endpoint failed or
        the peer's address family has no relayed address.
        """
        client = self._client
        key = self._key(peer)
        assert client is not None
        try:
            wire = client.send(key, data, self._now())
        except LocalProtocolError as exc:
            raise RelayError(str(exc)) from None
        if wire is not None:
            transport = self._transport
            if transport is not None and not transport.send_now(wire):
                await self._write(wire)
        elif client.has_output:
            await self._pump()
        elif self._failure is not None:
            raise self._failure
        self._sends += 1
        if not self._sends & 63:
            await anyio.lowlevel.checkpoint()  # let the reader and timers run under load

    async def receive(self) -> tuple[bytes, TransportAddress]:
        """The next datagram a permitted peer sent to the relayed address, and the peer."""
        inbox = self._inbox
        while not inbox:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise RelayError("the relay endpoint is closed")
            loop = self._loop
            if loop is not None:
                future = self._inbox_future = loop.create_future()
                try:
                    await future
                finally:
                    self._inbox_future = None
                continue
            waiter = self._inbox_waiter
            if waiter is None or waiter.is_set():
                waiter = self._inbox_waiter = anyio.Event()
            await waiter.wait()
        self._receives += 1
        if not self._receives & 63:
            await anyio.lowlevel.checkpoint()
        return inbox.popleft()

    def receive_nowait(self) -> tuple[bytes, TransportAddress] | None:
        """The next queued datagram, or ``None``."""
        return self._inbox.popleft() if self._inbox else None

    def __aiter__(self) -> RelayEndpoint:
        return self

    async def __anext__(self) -> tuple[bytes, TransportAddress]:
        try:
            return await self.receive()
        except RelayError:
            if self._closed and self._failure is None:
                raise StopAsyncIteration from None
            raise

    async def permit(self, *peers: str | TransportAddress, timeout: float = 5.0) -> None:
        """Install permissions for ``peers`` (IPs or addresses) and keep them while the
        endpoint lives, so those peers can send first. Waits until the server confirmed;
        ``RelayError`` when it refused one."""
        client = self._client
        assert client is not None
        ips = [_peer_ip(p) for p in peers]
        waiters = []
        now = anyio.current_time()
        for ip in ips:
            if client.has_permission(ip):
                client.permit(ip, now)
                continue
            waiter = _Waiter()
            self._perm_waiters.setdefault(ip, []).append(waiter)
            waiters.append((ip, waiter))
            client.permit(ip, now)
        await self._pump()
        await self._await_all(waiters, timeout, "permission")

    async def check(self) -> None:
        """Refresh now: a liveness check (after a network change, or when a peer went quiet).
        If the server no longer has the allocation, it is re-created as usual (``LOST``, then
        ``CHANGED``)."""
        client = self._client
        assert client is not None
        client.refresh(anyio.current_time())
        await self._pump()

    async def bind(
        self, peer: TransportAddress | tuple[str, int] | str, timeout: float = 5.0
    ) -> int:
        """Bind a channel to ``peer`` now (``send_to`` does it on demand); its number."""
        client = self._client
        assert client is not None
        key = Address(*self._key(peer))
        channel = client.channels.get(key)
        if channel is not None and channel.bound:
            return channel.number
        waiter = _Waiter()
        self._channel_waiters.setdefault(key, []).append(waiter)
        try:
            channel = client.bind(key, anyio.current_time())
        except LocalProtocolError as exc:
            raise RelayError(str(exc)) from None
        if channel is None:
            raise RelayError(f"no channel available for {key} (numbers exhausted or quarantined)")
        await self._pump()
        await self._await_all([(str(key), waiter)], timeout, "channel")
        return channel.number

    # ================================================================= lifecycle

    async def _start(self, tg: anyio.abc.TaskGroup) -> None:
        self._now = event_loop_clock()
        self._loop = running_asyncio_loop()
        self._addresses = await resolve_server(self.server)
        failure: RelayError | None = None
        for host in self._addresses:
            try:
                with anyio.fail_after(self.allocate_timeout + 1):
                    await self._first_allocation(host)
            except TimeoutError:
                failure = RelayError(
                    f"{self.server} ({host}): no allocation within {self.allocate_timeout:.1f} s",
                    retryable=True,
                )
                continue
            except RelayError as exc:
                failure = exc
                if not exc.retryable:
                    raise
                continue
            failure = None
            break
        if failure is not None:
            raise failure
        await tg.start(self._supervise)

    async def _first_allocation(self, host: str) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        self.redirected_from = []
        self._tls_name = self._server_name or (
            None if _is_literal(self.server.host) else self.server.host
        )
        await self._connect(host, self.server.port)
        self.server_address = TransportAddress(host, self.server.port, _transport_of(self.server))
        self._journal_where()
        self._client = TurnClient(
            (host, self.server.port),
            self.credentials,
            transport=self.server.transport,
            settings=self.settings,
        )
        for ip in self._permit:
            self._client.permit(ip, anyio.current_time())
        await self._establish(budget=self.allocate_timeout, initial=True)
        await self._await_permits()

    async def _await_permits(self) -> None:
        """Wait (exclusive mode, bounded) until the configured permissions are answered, so
        the permitted peers can send as soon as the caller has the endpoint."""
        waiting = set(self._permit)
        if not waiting:
            return

        def answered(event: TurnEvent) -> bool:
            if isinstance(event, PermissionCreated | PermissionFailed):
                waiting.discard(event.ip)
                if isinstance(event, PermissionFailed):
                    self.permit_failures[event.ip] = event.reason
            return not waiting

        try:
            await self._drive(answered, self.allocate_timeout)
        except (TimeoutError, TransportError) as exc:
            why = str(exc) or f"no answer within {self.allocate_timeout:.1f} s"
            for ip in waiting:
                self.permit_failures[ip] = f"{why} (still retrying)"
        for ip, reason in self.permit_failures.items():
            log.warning("relay: permission for %s not installed: %s", ip, reason)

    async def _connect(self, host: str, port: int) -> None:
        kind = self.server.transport
        try:
            if self._opener is not None:
                transport = await self._opener(host, port, kind)
            else:
                transport = await open_transport(
                    host,
                    port,
                    kind,
                    ssl_context=self._ssl_context,
                    server_name=self._tls_name,
                    local_host=self._local_host,
                    connect_timeout=self.allocate_timeout,
                )
        except TransportError as exc:
            raise RelayError(str(exc), retryable=True) from exc
        self._transport = transport
        proto = Transport.TCP if transport.stream else Transport.UDP
        self.local = TransportAddress(transport.local.host, transport.local.port, proto)

    async def _reconnect(self) -> None:
        assert self._client is not None and self.server_address is not None
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        await self._connect(self.server_address.host, self.server_address.port)
        self._client.reset_transport()
        self._journal_where()

    async def _follow(self, event: AllocationFailed) -> None:
        """Follow a 300 redirect the client accepted (see the module docstring), or raise
        ``RelayError`` when the ``RedirectGuard`` refuses it (a loop, too many hops)."""
        client = self._client
        alternate = event.redirect
        assert client is not None and alternate is not None and self.server_address is not None
        kind = self.server.transport
        why = self._redirects.refusal(kind, alternate, anyio.current_time())
        if why is not None:
            raise RelayError(f"{self.server}: {event.reason}; not followed: {why}", event=event)
        origin = self.server_address
        self._redirects.follow(client.server, alternate)
        log.info("relay: %s redirected us to %s; following", origin, alternate)
        if kind == "tls":
            # RFC 8489 §10: ALTERNATE-DOMAIN names the certificate the alternate must present;
            # without it, "the same domain that was used for the original request".
            self._tls_name = event.redirect_domain or self._server_name or self.server.host
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        client.retarget(alternate)
        self.server_address = TransportAddress(alternate.host, alternate.port, origin.transport)
        self.redirected_from.append(origin)
        await self._connect(alternate.host, alternate.port)
        self._journal_where()

    async def _establish(self, *, budget: float, initial: bool) -> Allocated:
        """Allocate (exclusive mode) until granted, honouring §7.4; ``RelayError`` when the
        server refuses for good or ``budget`` seconds pass (``math.inf``: keep trying)."""
        client = self._client
        assert client is not None
        started = anyio.current_time()
        deadline = started + budget
        backoff = 1.0
        self._redirects.begin()
        while True:
            now = anyio.current_time()
            self._journal_record()
            try:
                client.allocate(now)
            except LocalProtocolError as exc:
                raise RelayError(str(exc)) from None
            self._redirects.sent(self.server.transport, client.server, now)
            try:
                outcome = await self._drive(
                    lambda e: isinstance(e, Allocated | AllocationFailed | AllocationLost),
                    max(0.1, min(deadline, now + self.allocate_timeout) - now),
                )
            except TimeoutError:
                outcome = AllocationFailed(
                    f"no allocation within {self.allocate_timeout:.1f} s",
                    timed_out=True,
                    retry_at=anyio.current_time(),
                )
                client.abandon()
            except TransportError as exc:
                outcome = AllocationFailed(
                    str(exc),
                    timed_out=True,
                    new_five_tuple=True,  # the connection is unusable: make a new one
                    retry_at=anyio.current_time(),
                )
                client.abandon()
            if isinstance(outcome, Allocated):
                return outcome
            if isinstance(outcome, AllocationLost):  # the connection broke while allocating
                outcome = AllocationFailed(
                    outcome.reason,
                    timed_out=True,
                    new_five_tuple=True,
                    retry_at=anyio.current_time(),
                )
            event = outcome
            assert isinstance(event, AllocationFailed)
            if event.redirect is not None:
                await self._follow(event)
                continue
            if event.blocked:
                with suppress(TimeoutError, TransportError):
                    await self._drive(lambda e: isinstance(e, Deleted), self.release_timeout)
                self._journal_remove()
                raise RelayError(f"{self.server}: {event.reason}", event=event)
            now = anyio.current_time()
            retry_at = event.retry_at
            if retry_at is None:
                raise RelayError(f"{self.server}: {event.describe()}", event=event)
            if event.timed_out:
                if initial:
                    raise RelayError(f"{self.server}: {event.reason}", event=event, retryable=True)
                retry_at = max(retry_at, now + backoff)
                backoff = min(backoff * 2, 60.0)
            if retry_at > deadline:
                raise RelayError(f"{self.server}: {event.describe()}", event=event, retryable=True)
            log.info("relay: %s; retrying in %.1f s", event.describe(), max(0.0, retry_at - now))
            if retry_at > now:
                await anyio.sleep(retry_at - now)
            if event.new_five_tuple or self.server.transport != "udp":
                await self._reconnect_or_wait(deadline)

    async def _reconnect_or_wait(self, deadline: float) -> None:
        backoff = 1.0
        while True:
            try:
                await self._reconnect()
                return
            except RelayError as exc:
                now = anyio.current_time()
                if now + backoff > deadline:
                    raise
                log.info("relay: reconnect failed (%s); retrying in %.0f s", exc, backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def _drive(self, until: Callable[[TurnEvent], bool], timeout: float) -> TurnEvent:
        """Exclusive mode: run the client on the transport until ``until(event)``."""
        client = self._client
        assert client is not None
        deadline = anyio.current_time() + timeout
        while True:
            transport = self._transport
            if transport is None:
                raise TransportError("no connection to the TURN server")
            for wire in client.datagrams_to_send():
                await transport.send(wire)
            while (event := client.next_event()) is not None:
                self._handle(event)
                if until(event):
                    return event
            now = anyio.current_time()
            if now >= deadline:
                raise TimeoutError
            timer = client.get_timer()
            wake = deadline if timer is None else min(timer, deadline)
            batch: list[bytes] | None = None
            with anyio.move_on_after(max(0.0, wake - now)):
                try:
                    batch = await transport.receive()
                except ServerUnreachable:
                    batch = []
                except TransportClosed as exc:
                    client.connection_lost(str(exc), anyio.current_time())
                    batch = []
            now = anyio.current_time()
            if batch:
                self._ingest(batch, now)
            elif batch is None:
                client.handle_timer(now)

    def _ingest(self, batch: list[bytes], now: float) -> None:
        client = self._client
        assert client is not None
        if client.stream:
            for chunk in batch:
                try:
                    items = client.feed_stream(chunk, now)
                except ParseError as exc:
                    client.connection_lost(f"stream out of sync: {exc}", now)
                    return
                for payload, peer in items:
                    self._deliver(payload, peer)
            return
        receive = client.receive
        for datagram in batch:
            got = receive(datagram, now)
            if got is not None:
                self._deliver(got[0], got[1])

    def _deliver(self, payload: bytes, peer: Address) -> None:
        inbox = self._inbox
        if len(inbox) >= self._inbox_max:
            self.inbox_dropped += 1
            return
        address = self._peers.get(peer)
        if address is None:
            if len(self._peers) >= _MAX_PEER_CACHE:
                self._peers.clear()
            address = self._peers[peer] = TransportAddress(peer.host, peer.port)
        inbox.append((payload, address))
        future = self._inbox_future
        if future is not None:
            if not future.done():
                future.set_result(None)
        elif self._inbox_waiter is not None:
            self._inbox_waiter.set()

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._supervisor_scope = scope
            try:
                first = True
                while True:
                    async with anyio.create_task_group() as steady:
                        self._steady = True
                        steady.start_soon(self._reader)
                        steady.start_soon(self._timer)
                        await self._pump()
                        if first:
                            task_status.started()
                            first = False
                        lost = await self._lost_recv.receive()
                        self._steady = False
                        steady.cancel_scope.cancel()
                    await self._recover_from(lost)
            finally:
                self._steady = False
                self._supervisor_done.set()

    async def _recover_from(self, lost: AllocationLost) -> None:
        # Drain duplicate notifications of the same loss.
        with suppress(anyio.WouldBlock):
            while True:
                self._lost_recv.receive_nowait()
        old = self.relayed_addresses
        detail = f"allocation lost: {lost.reason}"
        self._emit(LeaseEventKind.LOST, detail, {"code": lost.code})
        if not self._recover:
            self._fail(RelayError(detail, event=lost))
            return
        try:
            if self.server.transport != "udp" or self._transport is None:
                await self._reconnect_or_wait(math.inf)
            event = await self._establish(budget=math.inf, initial=False)
        except RelayError as exc:
            self._fail(exc)
            return
        new = self.relayed_addresses
        if new != old:
            self._emit(
                LeaseEventKind.CHANGED,
                f"relayed address changed from {', '.join(map(str, old))} to "
                f"{', '.join(map(str, new))}",
                {"previous": [str(a) for a in old], "generation": event.generation},
            )
        else:
            self._emit(LeaseEventKind.RECOVERED, "re-allocated the same relayed address", {})

    def _fail(self, error: RelayError) -> None:
        self._failure = error
        self._wake_receiver()
        raise error

    def _wake_receiver(self) -> None:
        future = self._inbox_future
        if future is not None and not future.done():
            future.set_result(None)
        waiter = self._inbox_waiter
        if waiter is not None:
            waiter.set()

    async def _reader(self) -> None:
        client = self._client
        transport = self._transport
        assert client is not None and transport is not None
        if self._loop is not None and isinstance(transport, UdpTransport):
            await self._reader_asyncio(self._loop, transport)
            return
        last_probe = -math.inf
        while True:
            try:
                batch = await transport.receive()
            except ServerUnreachable:
                now = anyio.current_time()
                if now - last_probe > 2.0:  # an ICMP hint: check the allocation now
                    last_probe = now
                    client.refresh(now)
                    await self._pump()
                continue
            except TransportError as exc:
                client.connection_lost(str(exc), anyio.current_time())
                await self._pump()
                return
            self._ingest(batch, self._now())
            if client.has_output:
                await self._pump()

    async def _reader_asyncio(
        self, loop: asyncio.AbstractEventLoop, transport: UdpTransport
    ) -> None:
        """The steady reader on asyncio: a persistent ``add_reader`` callback reads every
        queued datagram and delivers application data at once, without a task switch (and
        without ``anyio.wait_readable`` adding and removing the reader on every wake-up);
        this task only wakes for control work (a message the client answered, an ICMP error,
        a broken socket)."""
        client = self._client
        assert client is not None
        last_probe = -math.inf
        problem: list[TransportError] = []
        wake: asyncio.Future[None] | None = None

        def readable() -> None:
            nonlocal wake
            try:
                batch = transport.receive_nowait()
            except TransportError as exc:
                problem.append(exc)
                batch = []
            if batch:
                self._ingest(batch, self._now())
            if (problem or client.has_output) and wake is not None and not wake.done():
                wake.set_result(None)

        fd = transport.sock.fileno()
        loop.add_reader(fd, readable)
        try:
            while True:
                wake = loop.create_future()
                if not problem and not client.has_output:
                    await wake
                wake = None
                while problem:
                    exc = problem.pop(0)
                    if isinstance(exc, ServerUnreachable):
                        now = anyio.current_time()
                        if now - last_probe > 2.0:  # an ICMP hint: check the allocation now
                            last_probe = now
                            client.refresh(now)
                    else:
                        client.connection_lost(str(exc), anyio.current_time())
                        await self._pump()
                        return
                if client.has_output:
                    await self._pump()
        finally:
            with suppress(Exception):
                loop.remove_reader(fd)

    async def _timer(self) -> None:
        client = self._client
        assert client is not None
        while True:
            timer = client.get_timer()
            with anyio.CancelScope(deadline=math.inf if timer is None else timer) as scope:
                self._timer_scope = scope
                await anyio.sleep_forever()
            self._timer_scope = None
            now = anyio.current_time()
            timer = client.get_timer()
            if timer is not None and timer <= now:
                client.handle_timer(now)
                await self._pump()

    async def _pump(self) -> None:
        """Send what the client wants sent, dispatch its events, re-arm the timer."""
        client = self._client
        assert client is not None
        wires = client.datagrams_to_send()
        transport = self._transport
        if wires and transport is not None:
            try:
                if transport.stream:
                    await self._write(b"".join(wires))
                else:
                    for wire in wires:
                        if not transport.send_now(wire):
                            await transport.send(wire)
            except TransportError as exc:
                client.connection_lost(str(exc), anyio.current_time())
        while (event := client.next_event()) is not None:
            self._handle(event)
        scope = self._timer_scope
        if scope is not None:
            timer = client.get_timer()
            scope.deadline = math.inf if timer is None else timer

    async def _write(self, wire: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            await transport.send(wire)
        except TransportError as exc:
            assert self._client is not None
            self._client.connection_lost(str(exc), anyio.current_time())
            while (event := self._client.next_event()) is not None:
                self._handle(event)

    # ================================================================= events

    def _handle(self, event: TurnEvent) -> None:
        if isinstance(event, Allocated):
            self._allocated(event)
        elif isinstance(event, AllocationFailed):
            log.info("relay %s: %s", self.server, event.describe())
        elif isinstance(event, Refreshed):
            self.lifetime = event.lifetime
            self.expires_at = event.expires_at
            self._journal_update(expires=time.time() + event.lifetime)
            self._emit(
                LeaseEventKind.RENEWED,
                f"refreshed for {event.lifetime} s",
                {"lifetime": event.lifetime, "refreshes": self.stats.refreshes},
            )
        elif isinstance(event, AllocationLost):
            if self._steady:  # in exclusive mode the driving task sees it itself
                with suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    self._lost_send.send_nowait(event)
        elif isinstance(event, PermissionCreated | PermissionFailed):
            for waiter in self._perm_waiters.pop(event.ip, []):
                waiter.set(event)
            if isinstance(event, PermissionFailed):
                log.info("relay: permission for %s failed: %s", event.ip, event.reason)
        elif isinstance(event, ChannelBound | ChannelFailed):
            for waiter in self._channel_waiters.pop(event.peer, []):
                waiter.set(event)
        elif isinstance(event, IcmpReceived):
            self.icmp_errors.append(event)

    def _allocated(self, event: Allocated) -> None:
        self.relayed_addresses = tuple(TransportAddress(a.host, a.port) for a in event.relayed)
        self.mapped = (
            None
            if event.mapped is None
            else TransportAddress(event.mapped.host, event.mapped.port, _transport_of(self.server))
        )
        self.lifetime = event.lifetime
        self.expires_at = event.expires_at
        self._journal_update(
            data={
                "relayed": [str(a) for a in self.relayed_addresses],
                "mapped": None if self.mapped is None else str(self.mapped),
                "local": None if self.local is None else str(self.local),
                "generation": event.generation,
            },
            expires=time.time() + event.lifetime,
        )
        if event.generation == 1:
            where = str(self.server)
            if self.redirected_from:
                where = f"{self.server_address} (redirected from {self.server})"
            self._emit(
                LeaseEventKind.ACQUIRED,
                f"allocated on {where} for {event.lifetime} s",
                {"lifetime": event.lifetime},
            )

    def _emit(self, kind: LeaseEventKind, detail: str, details: dict[str, Any]) -> None:
        endpoint = self.relayed_addresses[0] if self.relayed_addresses else None
        where = None if self.server_address is None else str(self.server_address)
        event = LeaseEvent(
            kind,
            self.method,
            endpoint,
            detail,
            {"server": str(self.server), "server_address": where, **details},
        )
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # a listener's bug must not break the relay
                log.exception("relay event listener failed")
        for stream in list(self._subscribers):
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.send_nowait(event)

    async def _await_all(
        self, waiters: list[tuple[str, _Waiter]], timeout: float, what: str
    ) -> None:
        problems: list[str] = []
        with anyio.move_on_after(timeout):
            for _key, waiter in waiters:
                await waiter.done.wait()
        for key, waiter in waiters:
            result = waiter.result
            if result is None:
                problems.append(f"{key}: no answer within {timeout:.1f} s")
            elif isinstance(result, PermissionFailed | ChannelFailed):
                problems.append(f"{key}: {result.reason}")
        if problems:
            raise RelayError(f"{what} not installed: " + "; ".join(problems))

    # ================================================================= release

    async def _close(self) -> None:
        """Stop the tasks, delete the allocation (bounded), close the connection."""
        with anyio.CancelScope(shield=True):
            scope = self._supervisor_scope
            if scope is not None:
                scope.cancel()
                with anyio.move_on_after(self.release_timeout):
                    await self._supervisor_done.wait()
            client = self._client
            confirmed = False
            if client is not None and self._transport is not None:
                if client.state in (State.ALLOCATED, State.ALLOCATING, State.DELETING):
                    client.delete(anyio.current_time())
                    try:
                        event = await self._drive(
                            lambda e: isinstance(e, Deleted), self.release_timeout
                        )
                        confirmed = isinstance(event, Deleted) and event.confirmed
                    except (TimeoutError, TransportError) as exc:
                        log.info("relay: delete on %s not confirmed: %s", self.server, exc)
                else:
                    confirmed = True
            if confirmed or self.server.transport != "udp":
                self._journal_remove()
            if self.relayed_addresses:
                self._emit(
                    LeaseEventKind.RELEASED,
                    "allocation deleted"
                    if confirmed
                    else "delete not confirmed; it expires with its lifetime",
                    {"confirmed": confirmed},
                )
            self._closed = True
            self._wake_receiver()
            if self._transport is not None:
                await self._transport.aclose()
            for stream in self._subscribers:
                stream.close()
            self._lost_send.close()
            self._lost_recv.close()

    # ================================================================= journal

    def _journal_record(self) -> None:
        if self._journal is None or self._entry is not None:
            return
        data: dict[str, Any] = {
            "server": str(self.server),
            "server_address": None if self.server_address is None else str(self.server_address),
            "transport": self.server.transport,
            "local": None if self.local is None else str(self.local),
            "username": self.credentials.username,
            "realm": self.credentials.realm,
            "redirected_from": [str(a) for a in self.redirected_from],
            "relayed": [],
        }
        lifetime = self.settings.lifetime or 600
        self._entry = self._journal.record(
            self.method, "allocation", data, expires=time.time() + lifetime + 60
        )

    def _journal_where(self) -> None:
        """The connection changed (another server address after a redirect, another local
        port after a reconnect): say so before the next Allocate goes out, so a crash leaves
        an entry that points at the right 5-tuple."""
        where = None if self.server_address is None else str(self.server_address)
        self._journal_update(
            data={
                "server_address": where,
                "local": None if self.local is None else str(self.local),
                "redirected_from": [str(a) for a in self.redirected_from],
            }
        )

    def _journal_update(self, **changes: Any) -> None:
        if self._journal is not None and self._entry is not None:
            with suppress(OSError):
                self._entry = self._journal.update(self._entry, **changes)

    def _journal_remove(self) -> None:
        if self._journal is not None and self._entry is not None:
            with suppress(OSError):
                self._journal.remove(self._entry)
            self._entry = None

    # ================================================================= helpers

    def _key(self, peer: TransportAddress | tuple[str, int] | str) -> tuple[str, int]:
        if type(peer) is TransportAddress:
            return (peer.host, peer.port)
        key = self._keys.get(peer)
        if key is None:
            try:
                if isinstance(peer, str):
                    parsed = TransportAddress.parse(peer)
                else:
                    assert isinstance(peer, tuple)
                    parsed = TransportAddress(str(peer[0]).split("%", 1)[0], int(peer[1]))
            except (ValueError, TypeError, AssertionError) as exc:
                raise RelayError(f"bad peer address {peer!r}: {exc}") from None
            key = (parsed.host, parsed.port)
            if len(self._keys) >= _MAX_PEER_CACHE:
                self._keys.clear()
            self._keys[peer] = key
        return key


def _peer_ip(peer: str | TransportAddress | Address) -> str:
    if isinstance(peer, TransportAddress):
        return peer.host
    if isinstance(peer, tuple):
        return str(ipaddress.ip_address(str(peer[0])))
    text = peer.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    try:
        return TransportAddress.parse(text).host
    except ValueError as exc:
        raise RelayError(f"bad peer address {peer!r}: give an IP address or IP:PORT") from exc


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _transport_of(server: ServerAddress) -> Transport:
    return Transport.UDP if server.transport == "udp" else Transport.TCP


@asynccontextmanager
async def allocate(
    server: str | ServerAddress,
    *,
    username: str | None = None,
    password: str | None = None,
    realm: str | None = None,
    credentials: LongTermCredentials | None = None,
    settings: ClientSettings | None = None,
    lifetime: int | None = None,
    families: tuple[int, ...] | None = None,
    channels: bool | None = None,
    permit: Iterable[str] = (),
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
    server_name: str | None = None,
    local_host: str | None = None,
    opener: Opener | None = None,
    on_event: Callable[[LeaseEvent], None] | None = None,
    recover: bool = True,
    allocate_timeout: float = 10.0,
    release_timeout: float = 2.0,
    receive_queue: int = 4096,
    journal: Journal | None = None,
    method: str = "relay",
    max_redirects: int = 3,
) -> AsyncIterator[RelayEndpoint]:
    """Allocate a relayed address on a TURN server and hold it for the body.

    ``server``: a ``turn:``/``turns:`` URI (``?transport=udp|tcp``) or ``HOST[:PORT]``.
    Credentials: ``username``/``password`` (and optionally the expected ``realm``), or a
    ``LongTermCredentials``. ``settings`` tunes the client; ``lifetime``, ``families``
    (``(4,)``, ``(6,)`` or ``(4, 6)`` for a dual allocation) and ``channels`` override it.
    ``permit``: peer IPs allowed to send first (kept for the endpoint's life). TLS verifies
    against ``ssl_context`` or ``ca_file`` (default: the system store) and ``server_name``
    (default: the URI's host). ``on_event`` receives ``LeaseEvent``s (acquired, renewed,
    lost, changed, recovered, released). ``recover=False`` makes a lost allocation end the
    body with ``RelayError`` instead of re-allocating. ``max_redirects``: how many 300 (Try
    Alternate) redirects one allocation attempt follows (0: none; RFC 8489 §10 loops are
    refused regardless).

    Raises ``RelayError`` when no allocation could be made (``.retryable`` says whether a
    later try may succeed).
    """
    address = _as_server(server)
    if max_redirects < 0:
        raise RelayError(f"max_redirects must be >= 0, got {max_redirects}")
    if credentials is None:
        if not username or not password:
            raise RelayError("TURN needs long-term credentials: give username and password")
        try:
            credentials = LongTermCredentials(username, password, realm=realm)
        except ValueError as exc:
            raise RelayError(f"bad credentials: {exc}") from None
    base = settings or ClientSettings()
    overrides: dict[str, Any] = {}
    if lifetime is not None:
        overrides["lifetime"] = lifetime
    if families is not None:
        overrides["families"] = tuple(families)
    if channels is not None:
        overrides["use_channels"] = channels
    if overrides:
        import attrs

        try:
            base = attrs.evolve(base, **overrides)
        except ValueError as exc:
            raise RelayError(f"bad relay settings: {exc}") from None
    if address.transport == "tls" and ssl_context is None:
        ssl_context = ssl.create_default_context(cafile=ca_file)
    endpoint = RelayEndpoint(
        address,
        credentials,
        base,
        opener=opener,
        ssl_context=ssl_context,
        server_name=server_name,
        local_host=local_host,
        permit=permit,
        on_event=on_event,
        recover=recover,
        allocate_timeout=allocate_timeout,
        release_timeout=release_timeout,
        receive_queue=receive_queue,
        journal=journal,
        method=method,
        max_redirects=max_redirects,
    )
    with single_errors():
        async with anyio.create_task_group() as tg:
            try:
                await endpoint._start(tg)
                yield endpoint
            finally:
                await endpoint._close()
                tg.cancel_scope.cancel()


async def release_orphan(
    server_address: TransportAddress,
    local: TransportAddress,
    credentials: LongTermCredentials,
    *,
    mapped: TransportAddress | None = None,
    settings: ClientSettings | None = None,
    timeout: float = 3.0,
) -> str:
    """Delete a crashed run's UDP allocation by re-using its 5-tuple: bind the same local
    address and port, check with a Binding request that the server still sees the journaled
    ``mapped`` address (else a NAT in between gave us a new mapping and a 437 would prove
    nothing), then Refresh with LIFETIME 0. Returns what happened; ``RelayError`` when the
    allocation cannot be reached from here (it then lives until its lifetime ends)."""
    import socket as _socket

    from nattrav_stun.codec import BINDING, REQUEST, Message, decode, encode

    from nattrav_relay.attributes import TURN_ATTRIBUTES
    from nattrav_relay.transport import UdpTransport

    family = _socket.AF_INET6 if local.family == 6 else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((local.host, local.port))
        sock.connect((server_address.host, server_address.port))
    except OSError as exc:
        sock.close()
        raise RelayError(
            f"cannot re-use the allocation's local address {local}: {exc.strerror or exc}"
        ) from exc
    transport = UdpTransport(sock)
    try:
        with anyio.fail_after(timeout):
            if mapped is not None:
                probe = Message(BINDING, REQUEST)
                seen = None
                for _ in range(3):
                    await transport.send(encode(probe, fingerprint=True))
                    with anyio.move_on_after(timeout / 4):
                        while seen is None:
                            for datagram in await transport.receive():
                                try:
                                    answer = decode(datagram, TURN_ATTRIBUTES)
                                except ParseError:
                                    continue
                                if answer.transaction_id == probe.transaction_id:
                                    seen = answer.xor_mapped_address
                    if seen is not None:
                        break
                if seen is None:
                    raise RelayError(f"{server_address} does not answer from {local}")
                if (seen.host, seen.port) != (mapped.host, mapped.port):
                    raise RelayError(
                        f"the server now sees {local} as {seen}, not {mapped}: the NAT "
                        "mapping changed and the old allocation cannot be reached"
                    )
            client = TurnClient(
                (server_address.host, server_address.port),
                credentials,
                settings=settings or ClientSettings(keepalive=None),
            )
            client.delete_orphan(anyio.current_time())
            while True:
                for wire in client.datagrams_to_send():
                    await transport.send(wire)
                event = client.next_event()
                if isinstance(event, Deleted):
                    if not event.confirmed:
                        raise RelayError(f"delete not confirmed: {event.reason}")
                    return event.reason or "deleted"
                timer = client.get_timer()
                now = anyio.current_time()
                batch: list[bytes] | None = None
                with anyio.move_on_after(max(0.0, (timer or now + 0.1) - now)):
                    try:
                        batch = await transport.receive()
                    except ServerUnreachable:
                        batch = []
                now = anyio.current_time()
                if batch:
                    for datagram in batch:
                        client.receive(datagram, now)
                elif batch is None:
                    client.handle_timer(now)
    except TimeoutError as exc:
        raise RelayError(f"{server_address} did not answer within {timeout:.1f} s") from exc
    finally:
        await transport.aclose()
