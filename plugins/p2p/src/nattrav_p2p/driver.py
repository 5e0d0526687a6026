"""The ``ice`` connector and the connection it yields: the only module of the plugin that
touches anyio, sockets or the clock (besides the signals and the rendezvous code).

Theory of operation
-------------------
``nattrav.connect`` opens the application's UDP port (``DatagramMux``), gathers every
candidate the installed methods obtain and calls ``IceConnector.connect(gathered, signal,
role=..., sockets=mux, runtime=rt)``. The connector:

1. builds our candidates: host candidates for the interface addresses (LAN addresses too: two
   hosts on one LAN, or with public addresses, connect directly) on the mux's port, plus what
   the chain gathered (server-reflexive, port-mapped, relayed; a relayed candidate's traffic
   goes through its acquisition's channel, the TURN allocation);
2. starts the agent (``agent.py``) and its pump: one task per input (the mux subscription that
   claims our checks and answers, one per relay channel, the application channel) and one
   timer task; every input is handed to the agent, then whatever it wants sent is sent on its
   route and its events are processed;
3. exchanges the offer and the answer through the signal (``description.py``), permits the
   peer's addresses on our relay allocations so its checks can come in before ours go out,
   and waits for the agent's ``Selected`` (or ``Failed``: ``ConnectFailed``);
4. yields an ``IceConnection``; on exit (or cancellation) stops the tasks and unsubscribes.
   The gathered candidates are released by ``nattrav.connect`` itself.

Application datagrams carry a one-byte marker (``DATA_MARKER``, 0xFD: outside every RFC 7983
range, so never mistaken for STUN, TURN, DTLS or RTP). What reaches the application channel
without it, or from an address that is not a working pair's peer, is dropped and counted:
the application only ever sees its peer's data.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nattrav.addresses import is_public
from nattrav.errors import NatTravError
from nattrav.models import CandidateKind, TransportAddress
from nattrav.taskgroups import single_errors

from nattrav_p2p.agent import Agent
from nattrav_p2p.candidates import (
    MUX_ROUTE,
    IceCandidate,
    from_gathered,
    host_candidates,
    relay_route,
)
from nattrav_p2p.config import P2pConfig
from nattrav_p2p.description import (
    Description,
    decode_description,
    new_credentials,
    new_tiebreaker,
)
from nattrav_p2p.errors import ConnectFailed, ConnectionLost, SignalError
from nattrav_p2p.events import (
    AgentEvent,
    ConsentLost,
    Failed,
    Path,
    PathChanged,
    RoleChanged,
    Selected,
)

__all__ = ["DATA_MARKER", "ConnectionStats", "IceConnection", "IceConnector", "run_agent"]

log = logging.getLogger("nattrav.p2p")

DATA_MARKER = 0xFD
_MARKER = bytes([DATA_MARKER])


@attrs.define
class ConnectionStats:
    """Counters of one connection (``IceConnection.stats()`` adds the agent's and the path)."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_unframed: int = 0
    dropped_stranger: int = 0
    dropped_full: int = 0
    send_errors: int = 0
    connect_seconds: float | None = None
    path_changes: int = 0


class _Pump:
    """Runs the agent over the mux and the relay channels (see the module docstring)."""

    def __init__(
        self,
        agent: Agent,
        mux: Any,
        channels: Mapping[str, Any],
        stats: ConnectionStats,
    ) -> None:
        self.agent = agent
        self.mux = mux
        self.channels = dict(channels)
        self.stats = stats
        self._wake = anyio.Event()
        self._mux_lock = anyio.Lock()
        self.selected = anyio.Event()
        self.failure: str | None = None
        self.finished = anyio.Event()
        self.history: list[AgentEvent] = []
        send, recv = anyio.create_memory_object_stream[bytes](256)
        self._app_send: MemoryObjectSendStream[bytes] = send
        self.app_recv: MemoryObjectReceiveStream[bytes] = recv
        esend, erecv = anyio.create_memory_object_stream[AgentEvent](64)
        self._event_send: MemoryObjectSendStream[AgentEvent] = esend
        self.event_recv: MemoryObjectReceiveStream[AgentEvent] = erecv

    # ---------------------------------------------------------------- output

    async def flush(self) -> None:
        for tx in self.agent.datagrams_to_send():
            if log.isEnabledFor(logging.DEBUG) and tx.route != MUX_ROUTE:
                log.debug(
                    "p2p: sending %d bytes to %s on %s", len(tx.data), tx.destination, tx.route
                )
            await self._send_on(tx.route, tx.data, tx.destination)
        while (event := self.agent.next_event()) is not None:
            self._on_event(event)
        self._wake.set()

    async def _send_on(self, route: str, data: bytes, destination: TransportAddress) -> None:
        try:
            if route == MUX_ROUTE:
                # The mux's anyio socket refuses concurrent writers (BusyResourceError):
                # serialise ours, and yield to other users of the port (STUN keepalives).
                async with self._mux_lock:
                    while True:
                        try:
                            await self.mux.send_to(data, destination)
                            break
                        except anyio.BusyResourceError:
                            await anyio.lowlevel.checkpoint()
            else:
                channel = self.channels.get(route)
                if channel is None:
                    return
                await channel.send_to(data, destination)
        except (OSError, NatTravError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            # A family without a route, an unreachable network, a relay being re-created:
            # the check times out like a lost packet would.
            self.stats.send_errors += 1
            log.info("p2p: send to %s over %s failed: %s", destination, route, exc)

    def _on_event(self, event: AgentEvent) -> None:
        self.history.append(event)
        if isinstance(event, Selected):
            log.info("p2p: connected, %s", event.path.describe())
            self.selected.set()
        elif isinstance(event, PathChanged):
            self.stats.path_changes += 1
            log.info("p2p: path changed (%s): %s", event.reason, event.new.describe())
        elif isinstance(event, ConsentLost):
            log.info("p2p: consent lost on %s", event.path.describe())
        elif isinstance(event, RoleChanged):
            log.debug("p2p: role changed: %s", event.reason)
        elif isinstance(event, Failed):
            log.info(
                "p2p: failed (%s); pairs: %s",
                event.reason,
                "; ".join(p.describe() for p in self.agent.ordered_pairs()),
            )
            self.failure = event.reason
            self.finished.set()
            self.selected.set()  # wake a waiting connect
            self._app_send.close()  # receive() ends with ConnectionLost after queued data
        if isinstance(event, Selected | PathChanged | ConsentLost | Failed):
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._event_send.send_nowait(event)

    def deliver(self, data: bytes, source: TransportAddress, route: str) -> None:
        """Application data from ``source`` on ``route``: framed and from the peer, or dropped."""
        if not data or data[0] != DATA_MARKER:
            self.stats.dropped_unframed += 1
            return
        if not self.agent.accepts_data_from(source, route):
            self.stats.dropped_stranger += 1
            return
        try:
            self._app_send.send_nowait(data[1:])
        except anyio.WouldBlock:
            self.stats.dropped_full += 1
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        self.stats.datagrams_received += 1
        self.stats.bytes_received += len(data) - 1

    # ---------------------------------------------------------------- tasks

    async def read_mux(self, subscription: Any) -> None:
        async for data, source in subscription:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("p2p: check traffic from %s on the app port", source)
            self.agent.receive(data, source, MUX_ROUTE, anyio.current_time())
            await self.flush()

    async def read_app(self) -> None:
        while True:
            try:
                data, source = await self.mux.app.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            self.deliver(data, source, MUX_ROUTE)

    async def read_channel(self, route: str, channel: Any) -> None:
        while True:
            try:
                data, source = await channel.receive()
            except (NatTravError, anyio.EndOfStream, anyio.ClosedResourceError) as exc:
                log.info("p2p: relay channel %s ended: %s", route, exc)
                return
            if self.agent.claims(data):
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("p2p: check traffic from %s on %s", source, route)
                self.agent.receive(data, source, route, anyio.current_time())
                await self.flush()
            else:
                self.deliver(data, source, route)

    async def run_timers(self) -> None:
        while not self.agent.done:
            timer = self.agent.get_timer()
            self._wake = anyio.Event()
            deadline = math.inf if timer is None else timer
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await self._wake.wait()
            now = anyio.current_time()
            timer = self.agent.get_timer()
            if timer is not None and now >= timer:
                self.agent.handle_timer(now)
            await self.flush()
        self.finished.set()

    async def send_app(self, data: bytes) -> None:
        agent = self.agent
        if self.failure is not None:
            raise ConnectionLost(f"peer-to-peer connection lost: {self.failure}")
        pair = agent.selected
        if pair is None:
            raise ConnectionLost("peer-to-peer connection has no path")
        await self._send_on(pair.route, _MARKER + data, pair.remote.address)
        self.stats.datagrams_sent += 1
        self.stats.bytes_sent += len(data)

    def close(self) -> None:
        self._app_send.close()
        self._event_send.close()
        self.app_recv.close()
        self.event_recv.close()


class IceConnection:
    """A datagram connection to the peer (``nattrav.connect.Connection``).

    ``send``/``receive`` carry the application's datagrams over the selected pair; when the
    agent moves to another pair (consent lost, renomination) the next ``send`` uses it and
    ``path`` says so. ``path_changes()`` iterates over ``PathChanged``/``ConsentLost``/
    ``Failed`` events; ``stats()`` is a JSON-able snapshot.
    """

    def __init__(self, pump: _Pump, started_at: float) -> None:
        self._pump = pump
        self._started_at = started_at

    async def send(self, data: bytes) -> None:
        """Send one datagram to the peer over the current path (UDP semantics)."""
        await self._pump.send_app(bytes(data))

    async def receive(self) -> bytes:
        """The next datagram from the peer; ``ConnectionLost`` once every path is gone."""
        pump = self._pump
        try:
            return await pump.app_recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            reason = pump.failure or "connection closed"
            raise ConnectionLost(f"peer-to-peer connection lost: {reason}") from None

    @property
    def path(self) -> Path:
        """The pair in use: local and remote candidate, kinds, how it was chosen."""
        path = self._pump.agent.path
        assert path is not None
        return path

    @property
    def controlling(self) -> bool:
        return self._pump.agent.controlling

    async def path_changes(self) -> AsyncIterator[AgentEvent]:
        """``PathChanged``, ``ConsentLost`` and ``Failed`` events as they happen."""
        async for event in self._pump.event_recv:
            if not isinstance(event, Selected):
                yield event

    @property
    def history(self) -> list[AgentEvent]:
        """Every event of the agent so far (pairs succeeded and failed, role changes...)."""
        return list(self._pump.history)

    def stats(self) -> dict[str, Any]:
        """Counters, the agent's counters, the path and the pairs, JSON-able."""
        agent = self._pump.agent
        out: dict[str, Any] = attrs.asdict(self._pump.stats)
        out["agent"] = attrs.asdict(agent.stats)
        out["path"] = None if agent.path is None else agent.path.to_json()
        out["controlling"] = agent.controlling
        out["pairs"] = [
            {
                "local": str(p.local.address),
                "remote": f"{p.remote.kind.value} {p.remote.address}",
                "route": p.route,
                "state": p.state.value,
                "checks": p.checks_sent,
                "nominated": p.nominated,
            }
            for p in agent.ordered_pairs()
        ]
        return out


def _interface_ips(families: Iterable[int]) -> list[str]:
    from nattrav.interfaces import list_addresses

    return [a.ip for a in list_addresses(families=sorted(families))]


def local_candidates(
    gathered: Any,
    mux: Any,
    settings: P2pConfig,
    *,
    interface_ips: list[str] | None = None,
) -> tuple[list[IceCandidate], dict[str, Any]]:
    """Our candidates and the relay channels by route (see the module docstring)."""
    families = set(settings.families) & set(mux.families)
    out: list[IceCandidate] = []
    if settings.host_candidates:
        ips = interface_ips if interface_ips is not None else _interface_ips(families)
        out += [
            c
            for c in host_candidates(ips, mux.port, include_loopback=settings.include_loopback)
            if c.family in families
        ]
    channels: dict[str, Any] = {}
    routes: dict[TransportAddress, str] = {}
    candidates = []
    for acq in getattr(gathered, "acquisitions", ()):
        for cand in (acq.candidate, *acq.also):
            if cand.kind is CandidateKind.RELAYED:
                if acq.channel is None or cand.address.family not in settings.families:
                    continue
                route = relay_route(cand.address)
                routes[cand.address] = route
                channels[route] = acq.channel
            elif cand.address.family not in families:
                continue
            candidates.append(cand)
    for cand in from_gathered(candidates, mux.port, routes):
        if not any(c.address == cand.address and c.route == cand.route for c in out):
            out.append(cand)
    return out, channels


async def _receive_description(signal: Any, expect: str, timeout: float) -> Description:
    try:
        with anyio.fail_after(timeout):
            raw = await signal.receive()
    except TimeoutError:
        raise SignalError(f"no {expect} from the peer within {timeout:g} s") from None
    return decode_description(raw, expect=expect)  # type: ignore[arg-type]


async def _permit(channels: Mapping[str, Any], remote: Iterable[IceCandidate]) -> None:
    """Let the peer's checks reach our relayed addresses before ours reach it (best effort)."""
    # Only public addresses: a TURN server refuses permissions for private ones (coturn 403).
    ips = sorted({c.address.host for c in remote if is_public(c.address.host)})
    for channel in channels.values():
        permit = getattr(channel, "permit", None)
        if permit is None:
            continue
        for ip in ips:
            with suppress(NatTravError, OSError, TimeoutError, ValueError):
                await permit(ip, timeout=2.0)


@asynccontextmanager
async def run_agent(
    signal: Any,
    *,
    role: str,
    mux: Any,
    candidates: list[IceCandidate],
    channels: Mapping[str, Any],
    settings: P2pConfig,
    rng: random.Random | None = None,
) -> AsyncIterator[IceConnection]:
    """Exchange descriptions over ``signal``, run the checks, yield the connection."""
    if role not in ("offer", "answer"):
        raise ValueError(f"role must be 'offer' or 'answer', got {role!r}")
    ufrag, pwd = new_credentials()
    controlling = role == "offer"
    agent = Agent(
        controlling=controlling,
        ufrag=ufrag,
        pwd=pwd,
        tiebreaker=new_tiebreaker(),
        config=settings.agent(),
        rng=rng,
    )
    for cand in candidates:
        agent.add_local(cand)
    if not candidates:
        raise ConnectFailed("no local candidates: no usable interface address and none gathered")
    stats = ConnectionStats()
    pump = _Pump(agent, mux, channels, stats)
    started = anyio.current_time()
    agent.start(started)
    ours = Description(
        type="offer" if controlling else "answer",
        ufrag=ufrag,
        pwd=pwd,
        role="controlling" if controlling else "controlled",
        tiebreaker=agent.tiebreaker,
        candidates=tuple(candidates),
    )
    async with mux.subscription("p2p", lambda data, _src: agent.claims(data)) as sub:
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump.read_mux, sub)
                    tg.start_soon(pump.read_app)
                    for route, channel in channels.items():
                        tg.start_soon(pump.read_channel, route, channel)
                    tg.start_soon(pump.run_timers)
                    if controlling:
                        await signal.send(ours.to_json())
                        theirs = await _receive_description(
                            signal, "answer", settings.signal_timeout
                        )
                    else:
                        theirs = await _receive_description(
                            signal, "offer", settings.signal_timeout
                        )
                        await signal.send(ours.to_json())
                    if not any(
                        c.family in {x.family for x in candidates} for c in theirs.candidates
                    ):
                        raise ConnectFailed(
                            "the peer offered no candidate of an IP family we have "
                            f"(ours: {sorted({c.family for c in candidates})})"
                        )
                    tg.start_soon(_permit, channels, theirs.candidates)
                    agent.set_remote(
                        theirs.ufrag, theirs.pwd, theirs.candidates, anyio.current_time()
                    )
                    await pump.flush()
                    await pump.selected.wait()
                    if agent.path is None:
                        raise ConnectFailed(
                            f"no path to the peer: {pump.failure or 'checks ended'}"
                        )
                    stats.connect_seconds = anyio.current_time() - started
                    yield IceConnection(pump, started)
                    tg.cancel_scope.cancel()
        finally:
            pump.close()


class IceConnector:
    """The ``ice`` connector (``nattrav_register_connectors``)."""

    def __init__(self, settings: P2pConfig | None = None) -> None:
        self.settings = settings or P2pConfig()

    @asynccontextmanager
    async def connect(
        self,
        gathered: Any,
        signal: Any,
        *,
        role: str,
        sockets: Any,
        runtime: Any = None,
    ) -> AsyncIterator[IceConnection]:
        """Connect to the peer at the other end of ``signal`` (see the module docstring)."""
        if sockets is None:
            raise ConnectFailed("peer-to-peer connect needs the application's UDP port (mux)")
        candidates, channels = local_candidates(gathered, sockets, self.settings)
        log.info(
            "p2p: %d local candidates: %s",
            len(candidates),
            ", ".join(c.describe() for c in candidates),
        )
        async with run_agent(
            signal,
            role=role,
            mux=sockets,
            candidates=candidates,
            channels=channels,
            settings=self.settings,
        ) as conn:
            yield conn
