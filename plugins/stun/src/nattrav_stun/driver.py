"""The STUN client driver: the only module that touches anyio, sockets or the clock.

Theory of operation
-------------------
``StunClient`` runs the sans-IO ``StunRequest`` machines of ``transaction.py`` over real
transports and owns everything that must outlive one transaction: the per-server
``AuthSession`` (realm, nonce, negotiated algorithm), the ``RtoCache``, the limit of ten
outstanding transactions per server (RFC 8489 §6.2), TCP/TLS connections and the sockets.

Transports ("endpoints"), all feeding one dispatch table keyed by transaction ID:

* ``UdpEndpoint``: a socket of our own (ephemeral or a given port). On asyncio it is read by
  a ``loop.add_reader`` callback doing ``recvfrom(2048)`` until the socket is drained: the
  stock asyncio datagram transport reads every datagram into a fresh 256 KiB buffer and is
  two to three times slower here. On trio, a reader task waits with ``anyio.wait_readable``.
* ``MuxEndpoint``: a subscription on the application's shared port (``nattrav.datagram.
  DatagramMux``), so the mapping we discover is the one the application's traffic uses. The
  classifier claims only STUN messages whose transaction ID is ours (live or recently
  finished), so TURN and the application's own datagrams on the same port are left alone.
* ``StreamEndpoint``: one TCP or TLS connection per server (RFC 8489 §6.2.2/§6.2.3: the
  certificate is verified against the server name; ``StreamFramer`` cuts messages out).

Waiting: on asyncio a request waits on a bare future plus ``loop.call_at`` for its timer
(two allocations per wait); elsewhere on an ``anyio.Event`` under a cancel scope whose
deadline is the machine's timer. Both wake the same way: the reader feeds the machine
(``receive_message``), then wakes its waiter; the waiter sends what the machine wants sent
and sleeps until the next timer.

Name resolution: a server name resolves to A and AAAA records; UDP requests are tried Happy
Eyeballs style (RFC 8305): IPv6 first, the next address after ``happy_eyeballs_delay`` or as
soon as the previous attempt failed, first answer wins and the others are cancelled. TCP/TLS
use anyio's RFC 8305 connect.
"""

from __future__ import annotations

import heapq
import math
import os
import socket
import ssl
import sys
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from nattrav.errors import NatTravError, ParseError
from nattrav.taskgroups import single_errors

from nattrav_stun.auth import AuthSession, Credentials
from nattrav_stun.binding_table import BindingTable, LeanBinding
from nattrav_stun.codec import (
    BINDING,
    INDICATION,
    OTHER_ADDRESS,
    RESPONSE_ORIGIN,
    SOFTWARE,
    STUN_ATTRIBUTES,
    XOR_MAPPED_ADDRESS,
    Address,
    AttributeTable,
    Message,
    StreamFramer,
    decode,
    encode,
)
from nattrav_stun.events import (
    AuthenticationFailed,
    BindingResult,
    ErrorResponse,
    Event,
    Redirected,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)
from nattrav_stun.transaction import RtoCache, StunRequest, Timers
from nattrav_stun.uri import ServerAddress, parse_server

if TYPE_CHECKING:
    import asyncio

    from nattrav.datagram import DatagramMux, Subscription

__all__ = [
    "BenchResult",
    "ClientSettings",
    "Exchange",
    "MuxEndpoint",
    "StreamEndpoint",
    "StunClient",
    "StunError",
    "UdpEndpoint",
    "local_address_toward",
    "resolve",
    "run_bindings",
    "running_asyncio_loop",
]

ServerLike = ServerAddress | Address | tuple[str, int] | str


class StunError(NatTravError):
    """A STUN exchange ended without the wanted answer; ``event`` says how."""

    def __init__(self, event: Event, server: object) -> None:
        self.event = event
        self.server = server
        super().__init__(f"STUN server {server}: {event.describe()}")


@attrs.frozen
class ClientSettings:
    """Everything a ``StunClient`` needs besides its transports.

    ``fast_path``: ``None`` picks the asyncio reader/futures path when running on asyncio;
    ``False`` forces the portable anyio path (used by tests to cover both).
    ``ssl_context``: overrides the verifying default built from ``ca_file`` (tests pass a
    context trusting a test CA). ``recv_size``: the largest datagram read (TURN data needs
    more than STUN's 2 KiB).
    """

    timers: Timers = attrs.field(factory=Timers)
    rto_min: float = 0.1
    credentials: Credentials | None = None
    software: str | None = "nattrav"
    fingerprint: bool = False
    max_outstanding: int = 10
    happy_eyeballs_delay: float = 0.25
    ca_file: str | None = None
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    table: AttributeTable = attrs.field(default=STUN_ATTRIBUTES, eq=False, repr=False)
    fast_path: bool | None = None
    recv_size: int = 2048
    max_auth_retries: int = 3
    follow_redirects: bool = True


@attrs.frozen
class Exchange:
    """The outcome of ``StunClient.request``: the event, the server address that produced it,
    and the endpoint the request left from."""

    event: Event
    server: Address
    endpoint: Endpoint = attrs.field(eq=False, repr=False)
    transport: str = "udp"


@attrs.define
class ClientStats:
    """Counters for what the dispatcher dropped (DESIGN: garbage is counted, not raised)."""

    received: int = 0
    garbage: int = 0  # failed to decode
    late: int = 0  # response to a finished transaction
    unmatched: int = 0  # STUN with a transaction ID we never used
    not_stun: int = 0


class _Pending:
    """A request in flight: its machine, the endpoint it uses, and how to wake its waiter."""

    __slots__ = ("arrived_on", "endpoint", "event", "fut", "machine", "wait_seq")

    def __init__(self, machine: StunRequest, endpoint: Endpoint) -> None:
        self.machine = machine
        self.endpoint = endpoint
        self.fut: asyncio.Future[bool] | None = None
        self.event: anyio.Event | None = None
        self.wait_seq = 0
        self.arrived_on: Endpoint | None = None

    def outcome(self, event: Event) -> Event:
        """``event``, noting where a success arrived when that was another socket."""
        arrived = self.arrived_on
        if (
            arrived is not None
            and arrived is not self.endpoint
            and isinstance(event, SuccessResponse)
        ):
            local = arrived.reported_local or arrived.local_for(event.source.family)
            return attrs.evolve(event, received_on=local)
        return event

    def wake(self) -> None:
        fut = self.fut
        if fut is not None:
            if not fut.done():
                fut.set_result(True)
        elif self.event is not None:
            self.event.set()


class _Watch:
    """Waits for an incoming request/indication with a given transaction ID (hairpin test)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.message: Message | None = None
        self.source: Address | None = None
        self.endpoint: Endpoint | None = None


_new_tuple = tuple.__new__


def _wake(txn: LeanBinding) -> None:
    """Resolve the waiter of a finished lean transaction with the transaction."""
    fut = txn.waiter
    if fut is not None and not fut.done():
        fut.set_result(txn)


def _canonical_source(addr: Any) -> Address:
    host = addr[0]
    if "%" in host:
        host = host.split("%", 1)[0]
    return Address(host, addr[1])


# --------------------------------------------------------------------- endpoints


class Endpoint:
    """A transport the client can send requests over and receive responses on."""

    transport = "udp"
    families: frozenset[int] = frozenset({4, 6})
    #: plain Binding transactions of this socket (asyncio own-socket endpoints only)
    lean: BindingTable | None = None
    _local: Address | None = None
    _armed_at = math.inf
    _unread = 0

    def __init__(self, client: StunClient) -> None:
        self.client = client
        self.closed = False
        #: the address a server would see without NAT (set when the socket is bound to a
        #: wildcard and the route's source address is known); used to recognise "no NAT"
        self.reported_local: Address | None = None

    @property
    def local(self) -> Address | None:
        return None

    def local_for(self, family: int) -> Address | None:
        return self.local

    def send_now(self, data: bytes, address: Address) -> bool:
        """Send without waiting if the transport allows it; ``False``: use ``send``."""
        return False

    def lean_send(self, txn: LeanBinding) -> bool:
        """Send a lean transaction's request (endpoints with a ``lean`` table only)."""
        raise NotImplementedError

    def lean_arm(self, when: float) -> None:
        """Make sure the lean table's timer fires by ``when`` (as ``lean_send``)."""
        raise NotImplementedError

    async def send(self, data: bytes, address: Address) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True


class UdpEndpoint(Endpoint):
    """A UDP socket owned by the client (see the module docstring for the two readers)."""

    def __init__(self, client: StunClient, sock: socket.socket, family: int) -> None:
        super().__init__(client)
        self.sock = sock
        self.family = family
        self.families = frozenset({family})
        self._reading = False
        host, port = sock.getsockname()[:2]
        self._local = Address(str(host).split("%", 1)[0], int(port))
        # The lean path's timer (one loop timer for the socket's whole BindingTable), and
        # requests sent since the socket was last read (a burst reads between sends).
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._unread = 0

    @property
    def local(self) -> Address:
        assert self._local is not None
        return self._local

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        client = self.client
        loop = client._loop
        if loop is not None:
            try:
                loop.add_reader(self.sock.fileno(), self._drain)
                self._reading = True
            except NotImplementedError:  # e.g. the Windows proactor loop
                pass
            else:
                settings = client.settings
                self.lean = BindingTable(
                    timers=settings.timers,
                    software=settings.software,
                    fingerprint=settings.fingerprint,
                    table=client.table,
                    rto_cache=client.rto_cache,
                )
                return
        tg.start_soon(self._reader)

    async def _reader(self) -> None:
        while not self.closed:
            try:
                await anyio.wait_readable(self.sock)
            except (OSError, anyio.ClosedResourceError, ValueError):
                return
            self._drain()

    def _drain(self) -> None:
        # Called for every readiness of the socket (and every 64 requests of a burst): the
        # setup is kept short, since with one request in flight it runs once per answer.
        client = self.client
        recv = self.sock.recvfrom
        lean = self.lean
        pending = lean.pending if lean is not None else None
        now = client._clock()
        self._unread = 0
        for _ in range(256):  # bounded so a flood cannot starve the event loop
            try:
                data, addr = recv(client._recv_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors (ECONNREFUSED...) surface here on some platforms: not fatal.
                if self.closed:
                    return
                continue
            if pending:
                txn = pending.get(data[8:20])
                if txn is not None:
                    out = lean.receive(txn, data, addr, now)  # type: ignore[union-attr]
                    if out is not None:
                        if out.done:
                            fut = out.waiter  # _wake, inline
                            if fut is not None and not fut.done():
                                fut.set_result(out)
                        else:  # a 5xx retried with a new transaction
                            self.lean_send(out)
                    # Nothing else outstanding: return rather than pay a recvfrom that would
                    # only say EAGAIN (readiness is level-triggered: a datagram still queued
                    # calls us again).
                    if not pending and not client._pending and not client._watches:
                        return
                    continue
            client._dispatch(data, addr, self)

    # ---------------------------------------------------------------- the lean path

    def lean_send(self, txn: LeanBinding) -> bool:
        """Send ``txn``'s request without waiting; ``False`` when the socket buffer is full
        (the request counts as lost: retransmission covers it). A hard error fails the
        transaction. In a burst of sends the socket is read every 64 requests, so answers do
        not pile up (and overflow the receive buffer) while the burst is being sent."""
        try:
            self.sock.sendto(txn.data, txn.destination)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            assert self.lean is not None
            self.lean.fail(txn, f"cannot send to {txn.destination}: {exc}")
            _wake(txn)
            return True
        self._unread += 1
        if self._unread >= 64:
            self._drain()
        return True

    def lean_arm(self, when: float) -> None:
        """Make sure the loop timer fires by ``when``."""
        if when < self._armed_at:
            if self._armed is not None:
                self._armed.cancel()
            loop = self.client._loop
            assert loop is not None
            self._armed = loop.call_at(when, self._lean_timer)
            self._armed_at = when

    def _lean_timer(self) -> None:
        self._armed = None
        self._armed_at = math.inf
        lean = self.lean
        if lean is None or self.closed:
            return
        resend, finished = lean.handle_timer(self.client._clock())
        for txn in resend:
            self.lean_send(txn)
        for txn in finished:
            _wake(txn)
        when = lean.next_timer()
        if when is not None:
            self.lean_arm(when)

    def send_now(self, data: bytes, address: Address) -> bool:
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    async def send(self, data: bytes, address: Address) -> None:
        while True:
            try:
                self.sock.sendto(data, address)
                return
            except (BlockingIOError, InterruptedError):
                await anyio.wait_writable(self.sock)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        lean, self.lean = self.lean, None
        if lean is not None:
            for txn in lean:
                lean.fail(txn, "the STUN client was closed")
                _wake(txn)
        loop = self.client._loop
        if self._reading and loop is not None:
            with suppress(Exception):
                loop.remove_reader(self.sock.fileno())
        if loop is None:
            with suppress(Exception):
                anyio.notify_closing(self.sock)
        self.sock.close()


#: Seconds a closed client's shared-port classifier still claims (and drops) late answers.
MUX_LINGER = 10.0
#: SO_RCVBUF asked for on the client's own sockets (best effort).
RECEIVE_BUFFER = 4 * 1024 * 1024


class MuxEndpoint(Endpoint):
    """The application's shared UDP port: a ``DatagramMux`` subscription."""

    def __init__(self, client: StunClient, mux: DatagramMux) -> None:
        super().__init__(client)
        self.mux = mux
        self.families = frozenset(mux.families)
        self.subscription: Subscription | None = None
        self._send_lock = anyio.Lock()

    def local_for(self, family: int) -> Address | None:
        try:
            local = self.mux.local_address(family)
        except KeyError:
            return None
        return Address(local.host, local.port)

    @property
    def local(self) -> Address | None:
        for family in (4, 6):
            if family in self.families:
                return self.local_for(family)
        return None

    def classify(self, data: bytes, _source: object) -> bool:
        """Claim STUN messages whose transaction ID is one of ours (live or just finished)."""
        if len(data) < 20 or data[0] > 3:
            return False
        tid = data[8:20]
        client = self.client
        return tid in client._pending or tid in client._recent or tid in client._watches

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.subscription = self.mux.subscribe("stun", self.classify)
        tg.start_soon(self._reader)

    async def _reader(self) -> None:
        sub = self.subscription
        assert sub is not None
        dispatch = self.client._dispatch
        try:
            async for data, source in sub:
                dispatch(data, (source.host, source.port), self)
        except (anyio.ClosedResourceError, anyio.EndOfStream, anyio.BrokenResourceError):
            return

    async def send(self, data: bytes, address: Address) -> None:
        # The mux's anyio socket refuses concurrent writers (BusyResourceError): serialise
        # our own sends, and yield to another user of the port (the application, TURN).
        async with self._send_lock:
            while True:
                try:
                    await self.mux.send_to(data, (address.host, address.port))
                    return
                except anyio.BusyResourceError:
                    await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.subscription is not None:
            # Answers to our last requests may still come (a retransmission answered twice, a
            # probe answered after its window): they are ours, not the application's.
            self.mux.unsubscribe(self.subscription, linger=MUX_LINGER)


class StreamEndpoint(Endpoint):
    """One TCP or TLS connection to one server."""

    def __init__(
        self, client: StunClient, stream: anyio.abc.ByteStream, server: Address, transport: str
    ) -> None:
        super().__init__(client)
        self.stream = stream
        self.server = server
        self.transport = transport
        self.families = frozenset({server.family})
        self.framer = StreamFramer()
        self._send_lock = anyio.Lock()
        local = stream.extra(anyio.abc.SocketAttribute.local_address, None)
        self._local = _canonical_source(local) if isinstance(local, tuple) else None

    @property
    def local(self) -> Address | None:
        return self._local

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._reader)

    async def _reader(self) -> None:
        reason = "connection closed by the server"
        try:
            async for chunk in self.stream:
                try:
                    messages = self.framer.feed(chunk)
                except ParseError as exc:
                    reason = f"stream out of sync: {exc}"
                    break
                for data in messages:
                    self.client._dispatch(data, self.server, self)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        except (OSError, anyio.BrokenResourceError, ssl.SSLError) as exc:
            reason = f"connection failed: {exc}"
        finally:
            self.client._stream_lost(self, reason)
            with suppress(Exception):
                await anyio.aclose_forcefully(self.stream)

    async def send(self, data: bytes, address: Address) -> None:
        async with self._send_lock:
            await self.stream.send(data)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with anyio.move_on_after(2, shield=True):
            await self.stream.aclose()


# --------------------------------------------------------------------- name resolution


async def resolve(
    host: str, port: int, families: frozenset[int] = frozenset({4, 6})
) -> list[Address]:
    """A and AAAA addresses of ``host`` ordered for Happy Eyeballs (RFC 8305 §4): IPv6
    first, then alternating families. An IP literal resolves to itself."""
    for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            literal = socket.inet_ntop(af, socket.inet_pton(af, host))
        except OSError:
            continue
        if family not in families:
            raise StunError(
                TransactionFailed(
                    f"{host} is an IPv{family} address but IPv{family} is not enabled"
                ),
                host,
            )
        return [Address(literal, port)]
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise StunError(TransactionFailed(f"cannot resolve {host}: {exc}"), host) from None
    v6: list[Address] = []
    v4: list[Address] = []
    for af, _type, _proto, _canon, sockaddr in infos:
        addr = Address(str(sockaddr[0]).split("%", 1)[0], int(sockaddr[1]))
        if af == socket.AF_INET6 and 6 in families and addr not in v6:
            v6.append(addr)
        elif af == socket.AF_INET and 4 in families and addr not in v4:
            v4.append(addr)
    ordered: list[Address] = []
    for i in range(max(len(v6), len(v4))):
        ordered += v6[i : i + 1] + v4[i : i + 1]
    if not ordered:
        raise StunError(TransactionFailed(f"{host} has no address of an enabled family"), host)
    return ordered


_ANSWERS = (SuccessResponse, ErrorResponse, AuthenticationFailed, Redirected)


def _is_answer(event: Event) -> bool:
    """The server answered (even with an error): for Happy Eyeballs, that family works."""
    return isinstance(event, _ANSWERS)


async def happy_eyeballs(
    addresses: list[Address],
    attempt: Callable[[Address], Awaitable[Event]],
    delay: float,
) -> tuple[Address, Event]:
    """Run ``attempt`` on each address, staggered by ``delay`` (or at once after a failure);
    return the first answer and cancel the rest (RFC 8305 §5). Without any answer, return
    the last failure."""
    if len(addresses) == 1:
        return addresses[0], await attempt(addresses[0])
    winner: tuple[Address, Event] | None = None
    last: tuple[Address, Event] | None = None

    async with anyio.create_task_group() as tg:

        async def run(address: Address, failed: anyio.Event) -> None:
            nonlocal winner, last
            try:
                event = await attempt(address)
            except StunError as exc:
                event = exc.event
            if _is_answer(event):
                if winner is None:
                    winner = (address, event)
                    tg.cancel_scope.cancel()
            else:
                last = (address, event)
            failed.set()

        for address in addresses:
            failed = anyio.Event()
            tg.start_soon(run, address, failed)
            with anyio.move_on_after(delay):
                await failed.wait()
            if winner is not None:
                break
    if winner is not None:
        return winner
    assert last is not None
    return last


# --------------------------------------------------------------------- the client


def _loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``; for stock asyncio, whose ``time()`` is ``time.monotonic()`` behind a
    Python method, ``time.monotonic`` itself (one frame less per reading)."""
    import asyncio
    import time

    if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop when anyio runs on asyncio (uvloop included), else ``None``
    (trio, and trio in guest mode on top of asyncio): the loop whose ``add_reader`` the fast
    paths of this driver and the relay's use."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    trio = sys.modules.get("trio")
    if trio is not None:  # trio guest mode on top of asyncio: not ours to drive
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return loop
        return None
    return loop


class StunClient:
    """Sends STUN requests and indications; owns sockets, sessions, RTO cache and limits.

    Open with ``async with StunClient.open(settings, mux=...)``; everything it opened is closed
    on exit (also on cancellation). Without ``mux`` it binds its own sockets lazily, one per
    family, on ``local_host``/``local_port`` (0: ephemeral).
    """

    def __init__(self, settings: ClientSettings, tg: anyio.abc.TaskGroup) -> None:
        self.settings = settings
        self.table = settings.table
        self._tg = tg
        self._loop = running_asyncio_loop() if settings.fast_path is not False else None
        self.rto_cache = RtoCache(initial=settings.timers.rto, min_rto=settings.rto_min)
        self.stats = ClientStats()
        self._pending: dict[bytes, _Pending] = {}
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._watches: dict[bytes, _Watch] = {}
        self._sessions: dict[tuple[str, Address], AuthSession] = {}
        # Without credentials a shared session only answers challenges with a clear failure.
        self._anonymous = AuthSession(None)
        self._outstanding: dict[Address, int] = {}
        self._slot_waiters: dict[Address, deque[anyio.Event]] = {}
        self._endpoints: list[Endpoint] = []
        self._defaults: dict[int, Endpoint] = {}
        self._streams: dict[tuple[str, str, int], StreamEndpoint] = {}
        self._stream_locks: dict[tuple[str, str, int], anyio.Lock] = {}
        self._ssl: ssl.SSLContext | None = settings.ssl_context
        self.mux_endpoint: MuxEndpoint | None = None
        self._local_host: str | None = None
        self._local_port = 0
        if self._loop is not None:
            self._clock: Callable[[], float] = _loop_clock(self._loop)
        else:
            self._clock = anyio.current_time
        self._tid_pool = b""
        self._tid_offset = 0
        self._timer_heap: list[tuple[float, int, _Pending]] = []
        self._timer_seq = 0
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        # Unauthenticated Binding requests over UDP take the lean path (binding_table.py)
        # when the endpoint has a BindingTable: without credentials nothing is signed.
        self._lean_ok = settings.credentials is None
        self._max_outstanding = settings.max_outstanding
        self._recv_size = settings.recv_size
        if self._loop is not None:
            import asyncio
            import functools

            # loop.create_future() minus a Python frame on stock asyncio
            self._new_future: Callable[[], asyncio.Future[Any]] = functools.partial(
                asyncio.Future, loop=self._loop
            )

    def new_transaction_id(self) -> bytes:
        """96 random bits from the OS CSPRNG, drawn 256 IDs per system call (one syscall per
        request measurably slows a busy client; the bits are just as random)."""
        offset = self._tid_offset
        if offset >= len(self._tid_pool):
            self._tid_pool = os.urandom(12 * 256)
            offset = 0
        self._tid_offset = offset + 12
        return self._tid_pool[offset : offset + 12]

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: ClientSettings | None = None,
        *,
        mux: DatagramMux | None = None,
        local_host: str | None = None,
        local_port: int = 0,
    ) -> AsyncIterator[StunClient]:
        """A client; with ``mux`` its UDP traffic uses the application's shared port."""
        settings = settings or ClientSettings()
        with single_errors():
            async with anyio.create_task_group() as tg:
                client = cls(settings, tg)
                client._local_host = local_host
                client._local_port = local_port
                try:
                    if mux is not None:
                        endpoint = MuxEndpoint(client, mux)
                        endpoint.start(tg)
                        client.mux_endpoint = endpoint
                        client._endpoints.append(endpoint)
                        for family in endpoint.families:
                            client._defaults[family] = endpoint
                    yield client
                finally:
                    with anyio.CancelScope(shield=True):
                        await client._close()
                    tg.cancel_scope.cancel()

    async def _close(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._timer_heap.clear()
        for pending in list(self._pending.values()):
            pending.machine.cancel()
            pending.wake()
        for endpoint in self._endpoints:
            with suppress(Exception):
                await endpoint.aclose()

    async def add_socket(
        self, family: int = 4, *, host: str | None = None, port: int = 0
    ) -> UdpEndpoint:
        """Open another UDP socket owned by this client (RFC 5780 tests need several)."""
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Answers to a burst of requests arrive faster than a busy client reads them;
            # the default buffer (about 200 KiB, a few hundred datagrams) overflows first.
            # Best effort: the kernel caps it at net.core.rmem_max.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((host or ("::" if family == 6 else "0.0.0.0"), port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        endpoint = UdpEndpoint(self, sock, family)
        endpoint.start(self._tg)
        self._endpoints.append(endpoint)
        return endpoint

    async def endpoint_for(self, family: int) -> Endpoint:
        """The default endpoint of ``family`` (the mux, or an own socket opened on demand)."""
        endpoint = self._defaults.get(family)
        if endpoint is None or endpoint.closed:
            if self.mux_endpoint is not None:
                raise StunError(
                    TransactionFailed(f"the shared port has no IPv{family} socket"), "-"
                )
            host = self._local_host
            if host is not None and (":" in host) != (family == 6):
                host = None
            try:
                endpoint = await self.add_socket(family, host=host, port=self._local_port)
            except OSError as exc:
                raise StunError(
                    TransactionFailed(f"cannot open an IPv{family} UDP socket: {exc}"), "-"
                ) from None
            self._defaults[family] = endpoint
        return endpoint

    def session(self, transport: str, server: Address) -> AuthSession:
        """The authentication state toward ``server`` (same IP and port, §9.1.5)."""
        key = (transport, server)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = AuthSession(self.settings.credentials)
        return session

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, data: bytes, addr: Any, endpoint: Endpoint) -> None:
        """Called by every reader for every datagram/message: match, decode, feed, wake."""
        stats = self.stats
        stats.received += 1
        if len(data) < 20 or data[0] > 3:
            stats.not_stun += 1
            return
        tid = data[8:20]
        pending = self._pending.get(tid)
        if pending is None:
            watch = self._watches.get(tid)
            if watch is not None:
                self._deliver_watch(watch, data, addr, endpoint)
            elif tid in self._recent:
                stats.late += 1
            else:
                stats.unmatched += 1
            return
        try:
            msg = decode(data, self.table)
        except ParseError:
            stats.garbage += 1
            return
        source = addr if type(addr) is Address else _canonical_source(addr)
        if pending.machine.receive_message(msg, source, self._clock()):
            pending.arrived_on = endpoint
            pending.wake()

    def _deliver_watch(self, watch: _Watch, data: bytes, addr: Any, endpoint: Endpoint) -> None:
        try:
            msg = decode(data, self.table)
        except ParseError:
            self.stats.garbage += 1
            return
        if watch.message is None:
            watch.message = msg
            watch.source = _canonical_source(addr)
            watch.endpoint = endpoint
            watch.event.set()

    def _track(self, machine: StunRequest, pending: _Pending) -> None:
        tid = machine.transaction_id
        if tid not in self._pending:
            self._pending[tid] = pending

    def _untrack(self, machine: StunRequest) -> None:
        recent = self._recent
        for tid in machine.transaction_ids:
            self._pending.pop(tid, None)
            recent[tid] = None
        while len(recent) > 1024:
            recent.popitem(last=False)

    def _stream_lost(self, endpoint: StreamEndpoint, reason: str) -> None:
        endpoint.closed = True
        for key, value in list(self._streams.items()):
            if value is endpoint:
                del self._streams[key]
        for pending in list(self._pending.values()):
            if pending.endpoint is endpoint:
                pending.machine.transport_failed(reason)
                pending.wake()

    # ---------------------------------------------------------------- driving

    async def _drive(self, machine: StunRequest, endpoint: Endpoint) -> Event:
        if self._loop is not None:
            return await self._drive_asyncio(machine, endpoint)
        return await self._drive_anyio(machine, endpoint)

    async def _drive_asyncio(self, machine: StunRequest, endpoint: Endpoint) -> Event:
        loop = self._loop
        assert loop is not None
        pending = _Pending(machine, endpoint)
        machine.start(loop.time())
        self._track(machine, pending)
        try:
            while True:
                # A response can arrive while ``send`` awaits and start a new transaction
                # (a 401 retry): drain until the machine has nothing more to send.
                # Register the (possibly new) transaction ID before sending: the answer can
                # be dispatched while ``send`` is still awaiting.
                outgoing = machine.datagrams_to_send()
                while outgoing:
                    self._track(machine, pending)
                    try:
                        for data, address in outgoing:
                            if not endpoint.send_now(data, address):
                                await endpoint.send(data, address)
                    except OSError as exc:
                        # A local hard error (no route, address family unsupported...)
                        # fails the transaction, as a hard ICMP error would (§6.2.1).
                        machine.transport_failed(f"cannot send to {outgoing[0][1]}: {exc}")
                    outgoing = machine.datagrams_to_send()
                event = machine.next_event()
                if event is not None:
                    return pending.outcome(event)
                if machine.done:
                    return TransactionFailed("the STUN client was closed")
                timer = machine.get_timer()
                fut: asyncio.Future[bool] = loop.create_future()
                pending.fut = fut
                if timer is not None:
                    self._arm(timer, pending)
                try:
                    woken = await fut
                finally:
                    pending.fut = None
                    pending.wait_seq = 0
                if not woken:
                    machine.handle_timer(loop.time())
        finally:
            self._untrack(machine)
            if not machine.done:
                machine.cancel()

    def _arm(self, when: float, pending: _Pending) -> None:
        """Schedule ``pending``'s timer on the client's own heap (asyncio path).

        One loop timer serves every request: asyncio's per-call ``TimerHandle`` compares in
        Python and keeps cancelled handles in its heap, which cost about a tenth of a busy
        client's time. Entries whose request was answered meanwhile are skipped when due.
        """
        self._timer_seq += 1
        seq = pending.wait_seq = self._timer_seq
        heapq.heappush(self._timer_heap, (when, seq, pending))
        if when < self._armed_at:
            if self._armed is not None:
                self._armed.cancel()
            assert self._loop is not None
            self._armed = self._loop.call_at(when, self._on_timer)
            self._armed_at = when

    def _on_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        self._armed = None
        self._armed_at = math.inf
        heap = self._timer_heap
        now = loop.time()
        while heap and heap[0][0] <= now:
            _when, seq, pending = heapq.heappop(heap)
            fut = pending.fut
            if pending.wait_seq == seq and fut is not None and not fut.done():
                fut.set_result(False)
        if heap:
            self._armed_at = heap[0][0]
            self._armed = loop.call_at(self._armed_at, self._on_timer)

    async def _drive_anyio(self, machine: StunRequest, endpoint: Endpoint) -> Event:
        clock = anyio.current_time
        pending = _Pending(machine, endpoint)
        machine.start(clock())
        self._track(machine, pending)
        try:
            while True:
                # A response can arrive while ``send`` awaits and start a new transaction
                # (a 401 retry): drain until the machine has nothing more to send.
                # Register the (possibly new) transaction ID before sending: the answer can
                # be dispatched while ``send`` is still awaiting.
                outgoing = machine.datagrams_to_send()
                while outgoing:
                    self._track(machine, pending)
                    try:
                        for data, address in outgoing:
                            if not endpoint.send_now(data, address):
                                await endpoint.send(data, address)
                    except OSError as exc:
                        # A local hard error (no route, address family unsupported...)
                        # fails the transaction, as a hard ICMP error would (§6.2.1).
                        machine.transport_failed(f"cannot send to {outgoing[0][1]}: {exc}")
                    outgoing = machine.datagrams_to_send()
                event = machine.next_event()
                if event is not None:
                    return pending.outcome(event)
                if machine.done:
                    return TransactionFailed("the STUN client was closed")
                timer = machine.get_timer()
                wake = pending.event = anyio.Event()
                with anyio.CancelScope(deadline=math.inf if timer is None else timer) as scope:
                    await wake.wait()
                pending.event = None
                if scope.cancelled_caught:
                    machine.handle_timer(clock())
        finally:
            self._untrack(machine)
            if not machine.done:
                machine.cancel()

    async def _take_slot(self, server: Address) -> None:
        """Wait for one of ``server``'s outstanding-transaction slots (§6.2) and take it."""
        outstanding = self._outstanding
        while outstanding.get(server, 0) >= self.settings.max_outstanding:
            await self._wait_slot(server)
        outstanding[server] = outstanding.get(server, 0) + 1

    # ---------------------------------------------------------------- the lean path

    def _lean_start(
        self, endpoint: Endpoint, table: BindingTable, server: Address, timeout: float | None
    ) -> LeanBinding:
        """Start a plain Binding on ``table`` and send it (the caller holds a slot)."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        rto = self.rto_cache.rto_for(server.host, now)
        if timeout is not None:
            rto = min(rto, max(0.05, timeout / 3))  # as exchange_udp: a few sends per window
        txn = table.start(server, now, rto, timeout)
        txn.waiter = self._new_future()
        endpoint.lean_send(txn)
        if txn.due < endpoint._armed_at:
            endpoint.lean_arm(txn.due)
        return txn

    def _lean_end(
        self, table: BindingTable, txn: LeanBinding, server: Address, timeout: float | None
    ) -> None:
        """After the wait, also when it was cancelled: release the slot, tell the RTO cache
        about a timeout."""
        outstanding = self._outstanding
        left = outstanding[server] - 1
        if left:
            outstanding[server] = left
        else:
            del outstanding[server]
        if self._slot_waiters:
            self._wake_slot_waiter(server)
        if not txn.done or txn.successor is not None:
            table.cancel(txn)  # the caller was cancelled
            return
        if timeout is None and type(txn.event) is TimedOut:
            self.rto_cache.timed_out(server.host)  # (answers fed it in the table)
            table.rto_hints.pop(server.host, None)

    async def _wait_slot(self, server: Address) -> None:
        waiter = anyio.Event()
        self._slot_waiters.setdefault(server, deque()).append(waiter)
        await waiter.wait()

    def _release_slot(self, server: Address) -> None:
        left = self._outstanding[server] - 1
        if left:
            self._outstanding[server] = left
        else:
            del self._outstanding[server]
        self._wake_slot_waiter(server)

    def _wake_slot_waiter(self, server: Address) -> None:
        waiters = self._slot_waiters.get(server)
        if waiters:
            waiters.popleft().set()
            if not waiters:
                del self._slot_waiters[server]

    # ---------------------------------------------------------------- UDP exchanges

    async def exchange_udp(
        self,
        server: Address,
        method: int = BINDING,
        attributes: Mapping[int, Any] | None = None,
        *,
        endpoint: Endpoint | None = None,
        timeout: float | None = None,
        accept_from: tuple[str, int] | str | None = "destination",
        authenticate: bool = True,
        timers: Timers | None = None,
    ) -> Event:
        """One request to one IP address over UDP, with challenges and retries; no
        resolution, no redirects. The workhorse under ``request``."""
        if endpoint is None:
            endpoint = self._defaults.get(server.family) or await self.endpoint_for(server.family)
        elif server.family not in endpoint.families:
            return TransactionFailed(f"{server} is IPv{server.family}; the socket is not")
        table = endpoint.lean
        if (
            table is not None
            and method == BINDING
            and not attributes
            and accept_from == "destination"
            and timers is None
            and (self._lean_ok or not authenticate)
            and not endpoint.closed
        ):
            await self._take_slot(server)
            txn = self._lean_start(endpoint, table, server, timeout)
            try:
                txn = await txn.waiter
            finally:
                self._lean_end(table, txn, server, timeout)
            outcome: Event = txn.outcome()
            return outcome
        settings = self.settings
        if timers is None:
            timers = settings.timers
            rto = self.rto_cache.rto_for(server.host, self._clock())
        else:
            rto = timers.rto
        if timeout is not None:
            # a short probe window still gets two or three sends, for lossy paths
            rto = min(rto, max(0.05, timeout / 3))
        machine = StunRequest(
            method,
            attributes,
            server,
            auth=(
                self.session("udp", server)
                if authenticate and settings.credentials is not None
                else self._anonymous
            ),
            timers=timers,
            rto=rto,
            timeout=timeout,
            accept_from=accept_from,
            software=settings.software,
            fingerprint=settings.fingerprint,
            table=self.table,
            max_auth_retries=settings.max_auth_retries,
            transaction_ids=self.new_transaction_id,
        )
        # At most max_outstanding transactions per server at a time (§6.2).
        outstanding = self._outstanding
        while outstanding.get(server, 0) >= settings.max_outstanding:
            await self._wait_slot(server)
        outstanding[server] = outstanding.get(server, 0) + 1
        try:
            if self._loop is not None:
                event = await self._drive_asyncio(machine, endpoint)
            else:
                event = await self._drive_anyio(machine, endpoint)
        finally:
            self._release_slot(server)
        if machine.rtt is not None and _is_answer(event):
            self.rto_cache.record(server.host, machine.rtt, self._clock())
        elif isinstance(event, TimedOut) and timeout is None:
            self.rto_cache.timed_out(server.host)
        return event

    # ---------------------------------------------------------------- TCP / TLS

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=self.settings.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
            self._ssl = context
        return self._ssl

    async def stream_endpoint(self, server: ServerAddress) -> StreamEndpoint:
        """The (cached) TCP or TLS connection to ``server``; verifies the TLS certificate
        against the server name (RFC 8489 §6.2.3)."""
        key = (server.transport, server.host, server.port)
        endpoint = self._streams.get(key)
        if endpoint is not None and not endpoint.closed:
            return endpoint
        lock = self._stream_locks.setdefault(key, anyio.Lock())
        async with lock:
            endpoint = self._streams.get(key)
            if endpoint is not None and not endpoint.closed:
                return endpoint
            tls = server.transport == "tls"
            try:
                with anyio.fail_after(self.settings.timers.ti):
                    stream: anyio.abc.ByteStream
                    if tls:
                        stream = await anyio.connect_tcp(
                            server.host,
                            server.port,
                            ssl_context=self._ssl_context(),
                            tls_hostname=server.host,
                            tls_standard_compatible=False,
                            happy_eyeballs_delay=self.settings.happy_eyeballs_delay,
                        )
                    else:
                        stream = await anyio.connect_tcp(
                            server.host,
                            server.port,
                            happy_eyeballs_delay=self.settings.happy_eyeballs_delay,
                        )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                kind = "TLS" if tls else "TCP"
                raise StunError(
                    TransactionFailed(f"cannot open a {kind} connection: {exc}"), server
                ) from None
            remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
            address = (
                _canonical_source(remote)
                if isinstance(remote, tuple)
                else Address(server.host, server.port)
            )
            endpoint = StreamEndpoint(self, stream, address, server.transport)
            endpoint.start(self._tg)
            self._endpoints.append(endpoint)
            self._streams[key] = endpoint
            return endpoint

    async def exchange_stream(
        self,
        server: ServerAddress,
        method: int = BINDING,
        attributes: Mapping[int, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[Event, StreamEndpoint]:
        endpoint = await self.stream_endpoint(server)
        machine = StunRequest(
            method,
            attributes,
            endpoint.server,
            auth=self.session(endpoint.transport, endpoint.server),
            timers=self.settings.timers,
            reliable=True,
            timeout=timeout,
            software=self.settings.software,
            fingerprint=self.settings.fingerprint,
            table=self.table,
            max_auth_retries=self.settings.max_auth_retries,
            transaction_ids=self.new_transaction_id,
        )
        outstanding = self._outstanding
        while outstanding.get(endpoint.server, 0) >= self.settings.max_outstanding:
            await self._wait_slot(endpoint.server)
        outstanding[endpoint.server] = outstanding.get(endpoint.server, 0) + 1
        try:
            event = await self._drive(machine, endpoint)
        finally:
            self._release_slot(endpoint.server)
        return event, endpoint

    # ---------------------------------------------------------------- the public calls

    async def request(
        self,
        server: ServerLike,
        method: int = BINDING,
        attributes: Mapping[int, Any] | None = None,
        *,
        endpoint: Endpoint | None = None,
        timeout: float | None = None,
        accept_from: tuple[str, int] | str | None = "destination",
        families: frozenset[int] | None = None,
    ) -> Exchange:
        """Send one request to ``server`` (a URI, ``HOST:PORT``, ``ServerAddress`` or an IP
        ``Address``) and return the outcome. Names are resolved and tried Happy Eyeballs
        style; an authenticated 300 redirect is followed once (S20 checks apply)."""
        target = _as_server(server)
        if isinstance(target, ServerAddress) and target.transport != "udp":
            event, stream = await self.exchange_stream(target, method, attributes, timeout=timeout)
            return Exchange(event, stream.server, stream, target.transport)

        async def attempt(address: Address) -> Event:
            return await self.exchange_udp(
                address,
                method,
                attributes,
                endpoint=endpoint,
                timeout=timeout,
                accept_from=accept_from,
            )

        if isinstance(target, Address):
            address = target
            event = await attempt(address)
        else:
            allowed = families or (endpoint.families if endpoint else frozenset({4, 6}))
            if self.mux_endpoint is not None and endpoint is None:
                allowed = allowed & self.mux_endpoint.families
            candidates = await resolve(target.host, target.port, frozenset(allowed))
            address, event = await happy_eyeballs(
                candidates, attempt, self.settings.happy_eyeballs_delay
            )
        if isinstance(event, Redirected) and self.settings.follow_redirects:
            address = event.alternate
            event = await attempt(address)
            if isinstance(event, Redirected):
                event = TransactionFailed(f"redirected again to {event.alternate}; not followed")
        used = endpoint or self._defaults.get(address.family)
        assert used is not None
        return Exchange(event, address, used, "udp")

    async def binding(
        self,
        server: ServerLike,
        *,
        endpoint: Endpoint | None = None,
        attributes: Mapping[int, Any] | None = None,
        timeout: float | None = None,
        accept_from: tuple[str, int] | str | None = "destination",
        families: frozenset[int] | None = None,
    ) -> BindingResult:
        """A Binding transaction; raises ``StunError`` unless it yields a mapped address."""
        if type(server) is Address:
            target: ServerAddress | Address = server
        else:
            target = _as_server(server)
        if (
            type(target) is Address
            and attributes is None
            and accept_from == "destination"
            and self._lean_ok
        ):
            # The lean path (binding_table.py), written out here rather than in a helper
            # coroutine: one frame less per transaction, in time and in memory. Without an
            # endpoint, the default one (opened by the general path on first use).
            family = 6 if ":" in target.host else 4
            used = self._defaults.get(family) if endpoint is None else endpoint
            if (
                used is not None
                and (table := used.lean) is not None  # None once closed
                and family in used.families
                and (families is None or family in families)
            ):
                outstanding = self._outstanding
                count = outstanding.get(target, 0)
                if count < self._max_outstanding:
                    outstanding[target] = count + 1
                else:
                    await self._take_slot(target)
                # _lean_start, inline
                now = self._clock()
                host = target.host
                hint = table.rto_hints.get(host)
                if hint is not None and now < hint[1]:
                    rto = hint[0]
                else:
                    rto = self.rto_cache.rto_for(host, now)
                if timeout is not None:
                    rto = min(rto, max(0.05, timeout / 3))
                txn = table.start(target, now, rto, timeout)
                txn.waiter = fut = self._new_future()
                try:  # UdpEndpoint.lean_send, inline (only UdpEndpoints have a table)
                    used.sock.sendto(txn.data, target)  # type: ignore[attr-defined]
                except OSError:
                    used.lean_send(txn)  # it says what to do about it
                else:
                    used._unread += 1
                    if used._unread >= 64:
                        used._drain()  # type: ignore[attr-defined]
                if txn.due < used._armed_at:
                    used.lean_arm(txn.due)
                try:
                    txn = await fut
                except BaseException:
                    self._lean_end(table, txn, target, timeout)
                    raise
                if txn.event is not None:
                    self._lean_end(table, txn, target, timeout)
                    raise StunError(txn.event, server)
                # _lean_end of a success, inline: release the slot (the table fed the RTO
                # cache)
                left = outstanding[target] - 1
                if left:
                    outstanding[target] = left
                else:
                    del outstanding[target]
                if self._slot_waiters:
                    self._wake_slot_waiter(target)
                values = txn.attributes
                assert values is not None
                mapped = values.get(XOR_MAPPED_ADDRESS)
                if mapped is None:
                    raise StunError(
                        TransactionFailed("Binding success response without XOR-MAPPED-ADDRESS"),
                        server,
                    )
                return _new_tuple(
                    BindingResult,
                    (
                        mapped,
                        target,
                        target,  # the source: answers come from the destination only
                        used._local,
                        values.get(RESPONSE_ORIGIN),
                        values.get(OTHER_ADDRESS),
                        values.get(SOFTWARE),
                        txn.rtt,
                        False,
                        "udp",
                        None,
                    ),
                )
        exchange = await self.request(
            server,
            BINDING,
            attributes,
            endpoint=endpoint,
            timeout=timeout,
            accept_from=accept_from,
            families=families,
        )
        event = exchange.event
        if not isinstance(event, SuccessResponse):
            raise StunError(event, server)
        try:
            local = exchange.endpoint.local_for(exchange.server.family)
            return BindingResult.from_event(event, exchange.server, local, exchange.transport)
        except ValueError as exc:
            raise StunError(TransactionFailed(str(exc)), server) from None

    async def indication(
        self,
        server: Address,
        method: int = BINDING,
        attributes: Mapping[int, Any] | None = None,
        *,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Send one indication (never retransmitted, §6.2.1), e.g. a Binding keepalive."""
        if endpoint is None:
            endpoint = await self.endpoint_for(server.family)
        data = encode(
            Message(method, INDICATION, None, dict(attributes or {})),
            fingerprint=self.settings.fingerprint,
            table=self.table,
        )
        if not endpoint.send_now(data, server):
            await endpoint.send(data, server)

    @asynccontextmanager
    async def watch(self, transaction_id: bytes) -> AsyncIterator[_Watch]:
        """Expect an incoming request or indication with ``transaction_id`` on any of this
        client's endpoints (used by the hairpinning test)."""
        watch = _Watch()
        self._watches[transaction_id] = watch
        try:
            yield watch
        finally:
            self._watches.pop(transaction_id, None)

    async def gather(self, *coroutines: Awaitable[Any]) -> None:
        """Run ``coroutines`` concurrently and wait for all (for callers that must not touch
        anyio themselves, such as ``discovery``)."""
        async with anyio.create_task_group() as tg:
            for coroutine in coroutines:
                tg.start_soon(_await, coroutine)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def wait_event(self, event: anyio.Event, timeout: float) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds; True when it was set."""
        with anyio.move_on_after(timeout):
            await event.wait()
        return event.is_set()

    async def send_raw(self, data: bytes, address: Address, endpoint: Endpoint) -> None:
        """Send prepared bytes (a request whose answer another endpoint will see)."""
        if not endpoint.send_now(data, address):
            await endpoint.send(data, address)


async def _await(coroutine: Awaitable[Any]) -> None:
    await coroutine


def local_address_toward(destination: Address) -> str | None:
    """The source IP the routing table picks toward ``destination`` (no packet is sent: a
    connected UDP socket only consults the route). ``None`` when there is no route."""
    family = socket.AF_INET6 if destination.family == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination.host, destination.port or 9))
            return str(probe.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return None


def _as_server(server: ServerLike) -> ServerAddress | Address:
    if isinstance(server, ServerAddress | Address):
        if isinstance(server, ServerAddress) and server.is_literal and server.transport == "udp":
            return Address(server.host, server.port)
        return server
    if isinstance(server, tuple):
        return Address(*server)
    parsed = parse_server(server)
    if parsed.is_literal and parsed.transport == "udp":
        return Address(parsed.host, parsed.port)
    return parsed


# --------------------------------------------------------------------- benchmark hook


@attrs.frozen
class BenchResult:
    """What ``run_bindings`` measured."""

    count: int
    succeeded: int
    failed: int
    elapsed: float
    fast_path: bool

    @property
    def per_second(self) -> float:
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0


async def run_bindings(
    server: ServerLike,
    count: int,
    *,
    concurrency: int = 1,
    sockets: int = 1,
    settings: ClientSettings | None = None,
) -> BenchResult:
    """Run ``count`` Binding transactions against ``server`` (for ``benchmarks/``).

    ``sockets`` clients (one socket each) run ``concurrency`` workers each; a worker is a
    strict request/response loop. ``sockets=1, concurrency=1`` compares with a raw asyncio
    loop; ``sockets=1, concurrency=50`` is "one socket, 50 in flight" (the per-server limit is
    raised to match: RFC 8489's ten is a politeness rule for real servers); ``sockets=50`` is
    "50 sockets". Call inside ``anyio.run``; the asyncio fast path (uvloop included) is used
    when available and reported in ``BenchResult.fast_path``."""
    base = settings or ClientSettings(software=None)
    if base.max_outstanding < concurrency:
        base = attrs.evolve(base, max_outstanding=concurrency)
    target = _as_server(server)
    if not isinstance(target, Address):
        resolved = await resolve(target.host, target.port)
        target = resolved[0]
    target_address: Address = target
    totals = {"ok": 0, "failed": 0, "left": count}
    fast = True

    async def one_socket() -> None:
        nonlocal fast
        async with StunClient.open(base) as client:
            fast = fast and client._loop is not None
            endpoint = await client.endpoint_for(target_address.family)

            async def worker() -> None:
                while totals["left"] > 0:
                    totals["left"] -= 1
                    event = await client.exchange_udp(target_address, endpoint=endpoint)
                    totals["ok" if isinstance(event, SuccessResponse) else "failed"] += 1

            async with anyio.create_task_group() as tg:
                for _ in range(max(1, concurrency)):
                    tg.start_soon(worker)

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(max(1, sockets)):
            tg.start_soon(one_socket)
    elapsed = anyio.current_time() - start
    return BenchResult(count, totals["ok"], totals["failed"], elapsed, fast)


def bench_bindings(
    server: str,
    count: int,
    *,
    concurrency: int = 1,
    sockets: int = 1,
    backend: str = "asyncio",
    use_uvloop: bool = False,
) -> BenchResult:
    """Synchronous wrapper of ``run_bindings`` for benchmark scripts."""
    options: dict[str, Any] = {"use_uvloop": True} if use_uvloop and backend == "asyncio" else {}
    result: BenchResult = anyio.run(
        lambda: run_bindings(server, count, concurrency=concurrency, sockets=sockets),
        backend=backend,
        backend_options=options,
    )
    return result
