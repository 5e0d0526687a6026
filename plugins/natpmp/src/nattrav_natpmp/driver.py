"""The anyio driver: the only module of this plugin that touches sockets or the clock.

Theory of operation
-------------------
``GatewayClient.open(gateway)`` connects one non-blocking UDP socket to the gateway's port 5351
(connected, so the kernel drops datagrams from anyone else: P1 by construction, and the
sans-IO transactions check the source again) and starts two background tasks:

* the *maintainer*, which asks each held mapping's ``Lease`` what is due and sends it, one
  request at a time (re-creation after a gateway reboot is serial, as RFC 6886 §3.7 asks), then
  sleeps until the next lease timer or until woken;
* the *announcement listener* (optional), a socket on port 5350 joined to 224.0.0.1 (IPv4) or
  ff02::1 (IPv6) that believes only the gateway's address (P9) and reacts like an epoch reset:
  every mapping is sent again after a random 0-5 s delay.

Every answer's epoch goes through an ``EpochTracker`` (one per protocol); when it says the
gateway lost state, every other mapping is marked lost and re-created after the random delay,
and the mapping whose answer revealed it is reported lost-then-recovered.

All I/O runs the sans-IO machines from ``transaction`` over the socket with
``anyio.wait_readable`` (the same code on asyncio and trio; an ICMP "port unreachable" surfaces
as ``ConnectionRefusedError`` on both). One lock serialises transactions on the socket;
``_drain`` discards stale datagrams before each one.

``GatewayClient.mapping(...)`` is the async context manager that owns one mapping: it creates
it (negotiating PCP or NAT-PMP on first contact within the short probe window), hands it to the
maintainer, and on exit, normal or cancelled, deletes it (shielded, bounded by
``release_timeout``): NAT-PMP lifetime 0 with suggested port 0; PCP lifetime 0 with the same
nonce. A crash-safe journal entry (when a journal is given) covers the time in between.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
import secrets
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import attrs
from nattrav.addresses import AddressScope, format_hostport
from nattrav.errors import MethodError, MethodUnavailable, NatTravError
from nattrav.gateways import Gateway
from nattrav.models import LeaseEventKind, Transport, TransportAddress
from nattrav.taskgroups import single_errors

from nattrav_natpmp import natpmp_codec, pcp_codec
from nattrav_natpmp.announce import Announcement, parse_announcement
from nattrav_natpmp.config import NatPmpSettings, ProtocolName
from nattrav_natpmp.epoch import EpochObservation, EpochTracker
from nattrav_natpmp.errors import METHOD, GatewayError, PcpError
from nattrav_natpmp.events import (
    Answered,
    Negotiated,
    NoServer,
    Refused,
    TimedOut,
    Unreachable,
    VersionUnsupported,
)
from nattrav_natpmp.lease import Action, Change, Due, ErrorMemory, Grant, Lease, LeaseState
from nattrav_natpmp.transaction import (
    NatPmpTiming,
    NatPmpTransaction,
    Negotiation,
    OneShot,
    PcpTiming,
    PcpTransaction,
)

if TYPE_CHECKING:
    from nattrav.journal import Journal, JournalEntry
    from nattrav.telemetry import Telemetry

__all__ = ["ExternalAddress", "GatewayClient", "PortMapping", "local_address_for"]

log = logging.getLogger("nattrav.natpmp")

SERVER_PORT = 5351
ANNOUNCE_PORT = 5350
ANNOUNCE_GROUP = {4: "224.0.0.1", 6: "ff02::1"}
JOURNAL_KIND = "port-mapping"

ChangeCallback = Callable[["PortMapping", Change], None]


@attrs.define(eq=False)
class PortMapping:
    """A mapping held through a ``GatewayClient``; its fields follow the lease as it changes."""

    gateway: Gateway
    protocol: ProtocolName
    transport: Transport
    internal_address: str
    internal_port: int
    requested_lifetime: int
    lease: Lease
    nonce: bytes | None = None
    suggested_port: int = 0
    epoch: int | None = None
    pcp_version_seen: int | None = None
    on_change: ChangeCallback | None = None
    journal_entry: JournalEntry | None = None

    def __str__(self) -> str:
        name = "PCP" if self.protocol == "pcp" else "NAT-PMP"
        return f"{name} {self.transport.value} {self.internal} -> {self.external or '?'}"

    @property
    def version(self) -> int:
        return pcp_codec.VERSION if self.protocol == "pcp" else natpmp_codec.VERSION

    @property
    def external(self) -> TransportAddress | None:
        grant = self.lease.grant
        if grant.external_address is None:
            return None
        return TransportAddress(grant.external_address, grant.external_port, self.transport)

    @property
    def internal(self) -> TransportAddress:
        return TransportAddress(self.internal_address, self.internal_port, self.transport)

    @property
    def lifetime(self) -> int:
        return self.lease.grant.lifetime

    def details(self) -> dict[str, Any]:
        """Facts for candidates, events and ``--json`` output."""
        return {
            "protocol": "PCP" if self.protocol == "pcp" else "NAT-PMP",
            "version": self.version,
            "epoch": self.epoch,
            "gateway": self.gateway.host,
            "internal": str(self.internal),
            "lifetime": self.lifetime,
            "nonce": self.nonce.hex() if self.nonce else None,
            "state": self.lease.state.value,
        }


@attrs.frozen
class ExternalAddress:
    """What ``GatewayClient.external_address`` learned."""

    protocol: ProtocolName
    address: str | None
    epoch: int
    version: int


def local_address_for(gateway: Gateway) -> str | None:
    """The source address to use towards an IPv6 gateway: a global (else ULA) address on the
    gateway's interface. A link-local gateway would otherwise make the kernel pick our
    link-local address, and a PCP pinhole for that address is useless from outside."""
    if gateway.family != 6:
        return None
    from nattrav.interfaces import list_addresses

    candidates = [
        a
        for a in list_addresses(families=[6])
        if (gateway.interface is None or a.interface == gateway.interface)
        and a.scope in (AddressScope.PUBLIC, AddressScope.PRIVATE)
    ]
    candidates.sort(key=lambda a: (a.scope is not AddressScope.PUBLIC, a.ip))
    return candidates[0].ip if candidates else None


def _open_socket(gateway: Gateway, port: int, local: str | None) -> socket.socket:
    family = socket.AF_INET if gateway.family == 4 else socket.AF_INET6
    target = socket.getaddrinfo(
        gateway.host, port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
    )[0][4]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if local is not None:
            sock.bind((local, 0))
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def _group_socket(gateway: Gateway, port: int, group: str | None) -> socket.socket:
    """A socket receiving the announcement group (or, with ``group=None``, unicast to ``port``
    on the gateway's family: used by tests)."""
    family = socket.AF_INET if gateway.family == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if group is None:
            sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", port))
        elif family == socket.AF_INET:
            # Binding to the group address keeps unicast to 5350 out (Linux); elsewhere bind any.
            try:
                sock.bind((group, port) if sys.platform.startswith("linux") else ("", port))
            except OSError:
                sock.bind(("", port))
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
            with suppress(OSError):  # 224.0.0.1 is joined implicitly on multicast interfaces
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        else:
            sock.bind(("::", port))
            index = 0
            if gateway.interface:
                with suppress(OSError):
                    index = socket.if_nametoindex(gateway.interface)
            mreq6 = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class GatewayClient:
    """NAT-PMP/PCP client for one gateway; see the module doc. Use ``GatewayClient.open``."""

    def __init__(
        self,
        gateway: Gateway,
        sock: socket.socket,
        *,
        settings: NatPmpSettings,
        rng: random.Random,
        errors: ErrorMemory,
        server_port: int,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.server_port = server_port
        self._sock = sock
        self._rng = rng
        self._errors = errors
        self._telemetry = telemetry
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._busy: tuple[PortMapping, anyio.CancelScope] | None = None
        self._trackers = {"pcp": EpochTracker("pcp"), "natpmp": EpochTracker("natpmp")}
        self.mappings: list[PortMapping] = []
        self.protocol: ProtocolName | None = None
        self.pcp_version_seen: int | None = None
        self.external_address: str | None = None
        self.epochs: dict[str, int] = {}
        self.discards: dict[str, int] = {}
        self.announcements = 0
        self.listening = False
        self._journal: Journal | None = None
        local = sock.getsockname()[0]
        self.client_address = str(ipaddress.ip_address(str(local).split("%", 1)[0]))

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        gateway: Gateway,
        *,
        settings: NatPmpSettings | None = None,
        rng: random.Random | None = None,
        errors: ErrorMemory | None = None,
        server_port: int = SERVER_PORT,
        announce_port: int = ANNOUNCE_PORT,
        announce_group: str | Literal["default"] | None = "default",
        listen: bool = True,
        local_address: str | None = None,
        telemetry: Telemetry | None = None,
    ) -> AsyncIterator[GatewayClient]:
        """Connect to ``gateway`` and run the maintainer (and listener) until exit."""
        settings = settings or NatPmpSettings()
        if local_address is None:
            local_address = local_address_for(gateway)
        try:
            sock = _open_socket(gateway, server_port, local_address)
        except OSError as exc:
            raise MethodUnavailable(
                METHOD, f"cannot reach gateway {gateway.host}: {exc.strerror or exc}"
            ) from None
        # The listener socket is made here, not in its task, so that it lives in the same
        # network namespace as the client socket (tests switch namespaces per thread).
        listener: socket.socket | None = None
        if listen and settings.announcements:
            group = (
                ANNOUNCE_GROUP[gateway.family] if announce_group == "default" else (announce_group)
            )
            try:
                listener = _group_socket(gateway, announce_port, group)
            except OSError as exc:
                log.info("not listening for announcements on port %d: %s", announce_port, exc)
        client = cls(
            gateway,
            sock,
            settings=settings,
            rng=rng or random.Random(),
            errors=errors or ErrorMemory(),
            server_port=server_port,
            telemetry=telemetry,
        )
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client._maintain)
                    if listener is not None:
                        client.listening = True
                        tg.start_soon(client._listen, listener)
                    try:
                        yield client
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            for s in (sock, listener):
                if s is not None:
                    anyio.notify_closing(s)
                    s.close()

    def _emit(self, mapping: PortMapping, changes: list[Change]) -> None:
        for change in changes:
            log.info("%s %s: %s", mapping.protocol, change.kind.value, change.detail)
            if mapping.journal_entry is not None and change.kind in (
                LeaseEventKind.RENEWED,
                LeaseEventKind.RECOVERED,
                LeaseEventKind.CHANGED,
            ):
                self._journal_grant(mapping)
            if mapping.on_change is not None:
                mapping.on_change(mapping, change)

    # ------------------------------------------------------------------ I/O

    def _drain(self) -> None:
        while True:
            try:
                self._sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue

    async def _run(self, machine: Any, what: str) -> Any:
        """Drive a sans-IO transaction or negotiation over the socket until it has an outcome."""
        async with self._lock:
            self._drain()
            span = (
                self._telemetry.span(
                    "nattrav.natpmp.transaction",
                    method=METHOD,
                    what=what,
                    gateway=self.gateway.host,
                    server=format_hostport(self.gateway.host, self.server_port),
                )
                if self._telemetry is not None
                else None
            )
            if span is None:
                return await self._exchange(machine)
            with span as s:
                event = await self._exchange(machine)
                outcome, sends = _span_outcome(event)
                s.set_attribute("nattrav.outcome", outcome)
                s.set_attribute("nattrav.result", type(event).__name__)
                s.set_attribute("nattrav.retransmissions", max(0, sends - 1))
                return event

    async def _exchange(self, machine: Any) -> Any:
        source = (self.gateway.ip, self.server_port)
        machine.start(anyio.current_time())
        try:
            while True:
                for datagram in machine.datagrams_to_send():
                    try:
                        self._sock.send(datagram)
                    except (BlockingIOError, InterruptedError):
                        pass  # the retransmission schedule covers a full send buffer
                    except OSError:
                        # ICMP errors from an earlier send, or no route: nobody there.
                        machine.connection_refused(anyio.current_time())
                event = machine.next_event()
                if event is not None:
                    return event
                timer = machine.get_timer()
                readable = False
                with anyio.CancelScope(deadline=math.inf if timer is None else timer):
                    await anyio.wait_readable(self._sock)
                    readable = True
                if not readable:
                    # An answer that arrived in time is not lost because this task was late
                    # to look (a busy event loop): read what is queued before giving up.
                    if not self._receive_queued(machine, source):
                        machine.handle_timer(anyio.current_time())
                    continue
                self._receive_queued(machine, source)
        finally:
            for reason, count in machine.discards.items():
                self.discards[reason] = self.discards.get(reason, 0) + count
                if self._telemetry is not None:
                    self._telemetry.counter(
                        "nattrav.natpmp.discarded", description="datagrams discarded by reason"
                    ).add(count, {"reason": reason.split(":", 1)[0]})

    def _receive_queued(self, machine: Any, source: tuple[str, int]) -> bool:
        """Feed every datagram already queued on the socket to ``machine``; whether any was."""
        fed = False
        while True:
            try:
                data = self._sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return fed
            except OSError:
                machine.connection_refused(anyio.current_time())
                return True
            machine.receive_datagram(data, source, anyio.current_time())
            fed = True

    def _observe(self, protocol: ProtocolName, event: Any, now: float) -> EpochObservation | None:
        response = getattr(event, "response", None)
        epoch = getattr(response, "epoch", None)
        if epoch is None:
            return None
        self.epochs[protocol] = epoch
        observation = self._trackers[protocol].observe(epoch, now)
        if observation.lost_state:
            log.warning("gateway %s lost state: %s", self.gateway.host, observation.describe())
        return observation

    # ------------------------------------------------------------------ timings

    def _probe_timing(self) -> NatPmpTiming:
        window = self.settings.probe_window
        return NatPmpTiming(
            initial=min(self.settings.natpmp_initial, window), max_sends=None, max_duration=window
        )

    def _natpmp_timing(self, budget: float | None = None) -> NatPmpTiming:
        return NatPmpTiming(
            initial=self.settings.natpmp_initial,
            max_sends=self.settings.natpmp_max_sends,
            max_duration=budget,
        )

    def _pcp_timing(self, budget: float | None = None) -> PcpTiming:
        s = self.settings
        mrd = s.pcp_mrd if budget is None else (min(s.pcp_mrd, budget) if s.pcp_mrd else budget)
        return PcpTiming(irt=s.pcp_irt, mrt=s.pcp_mrt, mrc=s.pcp_mrc, mrd=mrd, jitter=s.pcp_jitter)

    def _release_timing(self) -> NatPmpTiming:
        # Releasing is bounded (release_timeout): a 3 s PCP IRT would allow one send, so both
        # protocols retransmit from 250 ms, doubling, here.
        budget = self.settings.release_timeout
        return NatPmpTiming(min(self.settings.natpmp_initial, budget), None, budget)

    # ------------------------------------------------------------------ requests

    def _pcp_request(
        self,
        mapping: PortMapping | None,
        *,
        transport: Transport,
        internal_port: int,
        lifetime: int,
        nonce: bytes,
        suggested_port: int,
        suggested_address: str | None,
    ) -> pcp_codec.MapRequest:
        if mapping is not None and mapping.lease.grant.external_port:
            suggested_port = mapping.lease.grant.external_port
            suggested_address = mapping.lease.grant.external_address or suggested_address
        options: tuple[pcp_codec.Option, ...] = (
            (pcp_codec.PreferFailure(),) if self.settings.prefer_failure else ()
        )
        if suggested_address is not None and ipaddress.ip_address(suggested_address).version != (
            ipaddress.ip_address(self.client_address).version
        ):
            suggested_address = None
        return pcp_codec.MapRequest(
            nonce=nonce,
            protocol=pcp_codec.protocol_number(transport),
            internal_port=internal_port,
            client_address=self.client_address,
            lifetime=lifetime,
            suggested_external_port=suggested_port,
            suggested_external_address=suggested_address,
            options=options,
        )

    def _grant_from(self, protocol: ProtocolName, event: Answered, now: float) -> Grant:
        response = event.response
        if protocol == "pcp":
            assert isinstance(response, pcp_codec.Response) and response.map is not None
            return Grant(
                response.map.external_address, response.map.external_port, response.lifetime, now
            )
        assert isinstance(response, natpmp_codec.MapResponse)
        return Grant(self.external_address, response.external_port, response.lifetime, now)

    async def external_address_natpmp(self, timing: NatPmpTiming | None = None) -> ExternalAddress:
        """NAT-PMP external address request (RFC 6886 §3.2); raises typed errors."""
        txn = NatPmpTransaction(
            natpmp_codec.ExternalAddressRequest(),
            self.gateway.ip,
            timing or self._natpmp_timing(),
            port=self.server_port,
            rng=self._rng,
        )
        event = await self._run(txn, "natpmp external address")
        now = anyio.current_time()
        self._check_epoch("natpmp", event, now, None)
        if isinstance(event, Answered):
            response = event.response
            assert isinstance(response, natpmp_codec.ExternalAddressResponse)
            self.external_address = response.external_address
            return ExternalAddress("natpmp", response.external_address, response.epoch, 0)
        raise self._failure(event, "NAT-PMP external address request")

    async def announce(self, timing: PcpTiming | NatPmpTiming | None = None) -> ExternalAddress:
        """PCP ANNOUNCE (RFC 6887 §14.1): is a PCP server there, and what is its epoch?"""
        txn = PcpTransaction(
            pcp_codec.AnnounceRequest(self.client_address),
            self.gateway.ip,
            timing or self._pcp_timing(),
            port=self.server_port,
            rng=self._rng,
        )
        event = await self._run(txn, "pcp announce")
        self._check_epoch("pcp", event, anyio.current_time(), None)
        if isinstance(event, Answered):
            assert isinstance(event.response, pcp_codec.Response)
            return ExternalAddress("pcp", None, event.response.epoch, pcp_codec.VERSION)
        raise self._failure(event, "PCP ANNOUNCE")

    def _failure(self, event: Any, what: str) -> NatTravError:
        where = f"{format_hostport(self.gateway.host, self.server_port)}"
        if isinstance(event, Refused):
            return event.error
        if isinstance(event, VersionUnsupported):
            speaks = "NAT-PMP only" if event.version == 0 else f"PCP version {event.version}"
            return MethodUnavailable(METHOD, f"{what}: the server at {where} speaks {speaks}")
        if isinstance(event, Unreachable):
            return MethodUnavailable(
                METHOD, f"{what}: nothing listens on {where} (ICMP port unreachable)"
            )
        if isinstance(event, TimedOut):
            return MethodError(
                METHOD,
                f"{what}: no answer from {where} after {event.sends} tries in {event.waited:.1f} s",
                retryable=True,
            )
        return MethodError(METHOD, f"{what}: unexpected outcome {event!r}")

    def _check_epoch(
        self, protocol: ProtocolName, event: Any, now: float, origin: PortMapping | None
    ) -> EpochObservation | None:
        observation = self._observe(protocol, event, now)
        if observation is not None and observation.lost_state:
            self._gateway_reset(now, observation.describe(), origin)
        return observation

    def _gateway_reset(self, now: float, reason: str, origin: PortMapping | None) -> None:
        delay = self._rng.uniform(0, self.settings.recovery_delay)
        for mapping in list(self.mappings):
            changes = mapping.lease.gateway_reset(now, delay, reason)
            self._emit(mapping, changes)
        if origin is not None and origin not in self.mappings:
            self._emit(origin, origin.lease.gateway_reset(now, delay, reason))
        self._wake.set()

    # ------------------------------------------------------------------ creating

    async def create(
        self,
        transport: Transport,
        internal_port: int,
        *,
        lifetime: int,
        suggested_port: int = 0,
        suggested_address: str | None = None,
        journal: Journal | None = None,
    ) -> PortMapping:
        """Create a mapping (negotiating the protocol on first contact). Raises
        ``MethodUnavailable`` when nothing answers, ``GatewayError`` subclasses for error
        results, ``MethodError`` otherwise. The caller owns the result: prefer ``mapping()``."""
        if not 1 <= internal_port <= 0xFFFF:
            raise MethodError(METHOD, f"internal port {internal_port} cannot be mapped")
        protocols = self.settings.protocols()
        if self.gateway.family == 6:
            protocols = tuple(p for p in protocols if p == "pcp")
            if not protocols:
                raise MethodUnavailable(METHOD, "NAT-PMP is IPv4-only and PCP is disabled")
        key = (self.gateway.ip, pcp_codec.protocol_number(transport), internal_port)
        remembered = self._errors.recall(key, anyio.current_time())
        if remembered is not None:
            raise remembered
        nonce = secrets.token_bytes(pcp_codec.NONCE_LENGTH)
        entry = None
        if journal is not None:
            entry = journal.record(
                METHOD,
                JOURNAL_KIND,
                {
                    "gateway": self.gateway.host,
                    "server_port": self.server_port,
                    "transport": transport.value,
                    "internal_address": self.client_address,
                    "internal_port": internal_port,
                    "nonce": nonce.hex(),
                    "protocol": self.protocol,
                },
            )
        try:
            mapping = await self._create(
                transport,
                internal_port,
                lifetime,
                nonce,
                suggested_port,
                suggested_address,
                protocols,
            )
        except (GatewayError, MethodUnavailable):
            if journal is not None and entry is not None:
                journal.remove(entry)
            raise
        except BaseException:
            # Cancelled (a racing method won) or failed with the request out: the gateway may
            # have made the mapping. Delete it now, shielded and bounded, and drop the entry
            # once that is settled; otherwise it stays for the next start's cleanup.
            if (
                journal is not None
                and entry is not None
                and await self._settle_abandoned(transport, internal_port, nonce, protocols)
            ):
                journal.remove(entry)
            raise
        mapping.journal_entry = entry
        if journal is not None and entry is not None:
            mapping.journal_entry = journal.update(entry, data={"protocol": mapping.protocol})
            self._journal = journal
            self._journal_grant(mapping)
        if mapping.lifetime < self.settings.min_lifetime:
            with anyio.move_on_after(self.settings.release_timeout, shield=True):
                await self.delete(mapping)
            raise MethodError(
                METHOD,
                f"gateway granted only {mapping.lifetime} s (minimum {self.settings.min_lifetime}"
                " s): such a mapping cannot be kept alive; deleted it",
            )
        return mapping

    async def _settle_abandoned(
        self,
        transport: Transport,
        internal_port: int,
        nonce: bytes,
        protocols: tuple[ProtocolName, ...],
    ) -> bool:
        """Delete what an abandoned creation may have made; ``True`` when settled: the gateway
        confirmed the deletion, or (nothing heard from it yet) nothing listens there at all.

        Bounded by ``release_timeout``, or by ``probe_window`` while no server has answered
        (a silent gateway must not hold up the chain that cancelled us)."""
        heard = self.protocol is not None
        bound = self.settings.release_timeout
        if not heard:
            bound = min(bound, self.settings.probe_window)
        order = (self.protocol,) if self.protocol in protocols else protocols
        with anyio.move_on_after(bound, shield=True):
            for protocol in order:
                if protocol is None or (protocol == "natpmp" and self.gateway.family == 6):
                    continue
                try:
                    event = await self._delete_event(
                        transport, internal_port, protocol=protocol, nonce=nonce
                    )
                except (NatTravError, OSError):
                    continue
                if isinstance(event, Answered) or (not heard and isinstance(event, Unreachable)):
                    return True
        return False

    def _withdraw(self, transport: Transport, internal_port: int, nonce: bytes) -> None:
        """Send one PCP deletion for the MAP a silent negotiation sent, without waiting.

        Silence within ``probe_window`` is taken for "no server", but a busy gateway (a
        hundred mapping requests queued in one miniupnpd) may still make the mapping after
        that; it handles requests in order, so this deletion, queued behind the MAP, removes
        it then. Where nobody listens it is one lost datagram."""
        request = pcp_codec.MapRequest(
            nonce=nonce,
            protocol=pcp_codec.protocol_number(transport),
            internal_port=internal_port,
            client_address=self.client_address,
            lifetime=0,
        )
        with suppress(OSError):
            self._sock.send(request.encode())

    def _journal_grant(self, mapping: PortMapping) -> None:
        journal, entry = self._journal, mapping.journal_entry
        if journal is None or entry is None:
            return
        import time

        grant = mapping.lease.grant
        mapping.journal_entry = journal.update(
            entry,
            data={
                "external_address": grant.external_address,
                "external_port": grant.external_port,
            },
            expires=time.time() + max(0.0, grant.expires_at - anyio.current_time()),
        )

    async def _create(
        self,
        transport: Transport,
        internal_port: int,
        lifetime: int,
        nonce: bytes,
        suggested_port: int,
        suggested_address: str | None,
        protocols: tuple[ProtocolName, ...],
    ) -> PortMapping:
        pcp_request = self._pcp_request(
            None,
            transport=transport,
            internal_port=internal_port,
            lifetime=lifetime,
            nonce=nonce,
            suggested_port=suggested_port,
            suggested_address=suggested_address,
        )
        where = format_hostport(self.gateway.host, self.server_port)
        protocol = self.protocol
        first: Answered | None = None
        if protocol is None or protocol not in protocols:
            negotiation = Negotiation(
                PcpTransaction(
                    pcp_request,
                    self.gateway.ip,
                    self._probe_timing(),
                    port=self.server_port,
                    rng=self._rng,
                )
                if "pcp" in protocols
                else None,
                NatPmpTransaction(
                    natpmp_codec.ExternalAddressRequest(),
                    self.gateway.ip,
                    self._probe_timing(),
                    port=self.server_port,
                    rng=self._rng,
                )
                if "natpmp" in protocols
                else None,
            )
            outcome = await self._run(negotiation, "negotiation")
            now = anyio.current_time()
            if isinstance(outcome, NoServer):
                if not outcome.refused and "pcp" in protocols:
                    self._withdraw(transport, internal_port, nonce)
                names = " or ".join("PCP" if p == "pcp" else "NAT-PMP" for p in protocols)
                why = (
                    "nothing listens there (ICMP port unreachable)"
                    if outcome.refused
                    else f"no answer within {self.settings.probe_window:g} s"
                )
                raise MethodUnavailable(
                    METHOD,
                    f"no {names} server at {where}: {why}; is NAT-PMP/PCP enabled on the router?",
                )
            assert isinstance(outcome, Negotiated)
            self.pcp_version_seen = outcome.pcp_version
            event = outcome.event
            if isinstance(event, VersionUnsupported):
                raise self._failure(event, "PCP MAP")
            protocol = outcome.protocol
            self.protocol = protocol
            self._check_epoch(protocol, event, now, None)
            if isinstance(event, Refused):
                self._remember(transport, internal_port, event.error)
                raise event.error
            if protocol == "pcp":
                first = event
            else:
                response = event.response
                assert isinstance(response, natpmp_codec.ExternalAddressResponse)
                self.external_address = response.external_address
        elif protocol == "natpmp" and self.external_address is None:
            await self.external_address_natpmp()
        if first is None:
            if protocol == "pcp":
                txn: Any = PcpTransaction(
                    pcp_request,
                    self.gateway.ip,
                    self._pcp_timing(),
                    port=self.server_port,
                    rng=self._rng,
                )
            else:
                txn = NatPmpTransaction(
                    natpmp_codec.MapRequest(transport, internal_port, suggested_port, lifetime),
                    self.gateway.ip,
                    self._natpmp_timing(),
                    port=self.server_port,
                    rng=self._rng,
                )
            event = await self._run(txn, f"{protocol} map")
            now = anyio.current_time()
            self._check_epoch(protocol, event, now, None)
            if isinstance(event, Refused):
                self._remember(transport, internal_port, event.error)
            if not isinstance(event, Answered):
                raise self._failure(event, f"{'PCP' if protocol == 'pcp' else 'NAT-PMP'} map")
            first = event
        now = anyio.current_time()
        grant = self._grant_from(protocol, first, now)
        mapping = PortMapping(
            gateway=self.gateway,
            protocol=protocol,
            transport=transport,
            internal_address=self.client_address,
            internal_port=internal_port,
            requested_lifetime=lifetime,
            lease=self._lease(protocol, grant),
            nonce=nonce if protocol == "pcp" else None,
            suggested_port=suggested_port,
            epoch=self.epochs.get(protocol),
            pcp_version_seen=self.pcp_version_seen,
        )
        if grant.lifetime == 0:
            raise MethodError(METHOD, f"gateway {where} granted lifetime 0: no mapping was made")
        return mapping

    def _remember(self, transport: Transport, internal_port: int, error: GatewayError) -> None:
        if isinstance(error, PcpError) and error.lifetime:
            key = (self.gateway.ip, pcp_codec.protocol_number(transport), internal_port)
            self._errors.remember(key, error, error.lifetime, anyio.current_time())

    def _lease(self, protocol: ProtocolName, grant: Grant) -> Lease:
        s = self.settings
        return Lease(
            protocol,
            grant,
            rng=self._rng,
            min_interval=s.renewal_min_interval,
            recovery_initial=max(1.0, s.recovery_delay),
            recovery_max=s.recovery_backoff_max,
            recovery_window=s.recovery_window,
        )

    @asynccontextmanager
    async def mapping(
        self,
        transport: Transport,
        internal_port: int,
        *,
        lifetime: int,
        suggested_port: int = 0,
        suggested_address: str | None = None,
        on_change: ChangeCallback | None = None,
        journal: Journal | None = None,
        keep: bool = False,
    ) -> AsyncIterator[PortMapping]:
        """Own one mapping: create, keep renewed and recovered, delete on exit (unless
        ``keep``: then it is left to expire at the end of its lease)."""
        mapping = await self.create(
            transport,
            internal_port,
            lifetime=lifetime,
            suggested_port=suggested_port,
            suggested_address=suggested_address,
            journal=journal,
        )
        mapping.on_change = on_change
        self.mappings.append(mapping)
        self._wake.set()
        try:
            yield mapping
        finally:
            with suppress(ValueError):
                self.mappings.remove(mapping)
            mapping.lease.close()
            if self._busy is not None and self._busy[0] is mapping:
                self._busy[1].cancel()
            if keep:
                # Left to expire on purpose: not a leftover for `nattrav cleanup` to release.
                if journal is not None and mapping.journal_entry is not None:
                    journal.remove(mapping.journal_entry)
            else:
                with anyio.move_on_after(self.settings.release_timeout, shield=True):
                    with suppress(NatTravError, OSError):
                        await self.delete(mapping)

    async def delete(self, mapping: PortMapping) -> bool:
        """Delete ``mapping`` now (bounded by ``release_timeout``); ``True`` when the gateway
        confirmed. The journal entry is removed once confirmed.

        If the gateway *refuses* the deletion, the lease is shortened instead (the same request
        with a 1 s lifetime, which a server raises to its minimum), so the mapping expires soon.
        miniupnpd does refuse: its PCP deletion looks a mapping up by internal address and port,
        and when another mapping of the same internal port exists (a UPnP one, made by a method
        racing this one in the chain) it finds that one first and answers NOT_AUTHORIZED.
        """
        try:
            ok = await self.delete_port(
                mapping.transport,
                mapping.internal_port,
                protocol=mapping.protocol,
                nonce=mapping.nonce,
            )
        except GatewayError as exc:
            log.warning("gateway refused to delete %s: %s; shortening its lease", mapping, exc)
            await self._shorten(mapping)
            return False
        if ok and self._journal is not None and mapping.journal_entry is not None:
            self._journal.remove(mapping.journal_entry)
        return ok

    async def _shorten(self, mapping: PortMapping) -> None:
        if mapping.protocol == "pcp":
            assert mapping.nonce is not None
            request: Any = self._pcp_request(
                mapping,
                transport=mapping.transport,
                internal_port=mapping.internal_port,
                lifetime=1,
                nonce=mapping.nonce,
                suggested_port=mapping.suggested_port,
                suggested_address=None,
            )
            txn: Any = PcpTransaction(
                request,
                self.gateway.ip,
                self._release_timing(),
                port=self.server_port,
                rng=self._rng,
            )
        else:
            previous = mapping.lease.grant.external_port or mapping.suggested_port
            txn = NatPmpTransaction(
                natpmp_codec.MapRequest(mapping.transport, mapping.internal_port, previous, 1),
                self.gateway.ip,
                self._release_timing(),
                port=self.server_port,
                rng=self._rng,
            )
        event = await self._run(txn, f"{mapping.protocol} shorten")
        if isinstance(event, Answered):
            mapping.lease = self._lease(
                mapping.protocol, self._grant_from(mapping.protocol, event, anyio.current_time())
            )
            mapping.lease.close()
            self._journal_grant(mapping)
            log.info("%s lease shortened to %d s", mapping, mapping.lifetime)

    async def delete_port(
        self,
        transport: Transport,
        internal_port: int,
        *,
        protocol: ProtocolName,
        nonce: bytes | None = None,
    ) -> bool:
        """Send a deletion (``internal_port`` 0: NAT-PMP "delete all of this host"). PCP needs
        the mapping's nonce: a PCP server refuses deletions with another one."""
        event = await self._delete_event(transport, internal_port, protocol=protocol, nonce=nonce)
        if isinstance(event, Answered):
            return True
        if isinstance(event, Refused):
            raise event.error
        log.info("deletion of %s port %d not confirmed: %r", protocol, internal_port, event)
        return False

    async def _delete_event(
        self,
        transport: Transport,
        internal_port: int,
        *,
        protocol: ProtocolName,
        nonce: bytes | None = None,
    ) -> Any:
        """Run one deletion transaction; its outcome event (``Answered``, ``Refused``,
        ``Unreachable``, ``TimedOut``)."""
        if protocol == "pcp":
            if nonce is None:
                raise MethodError(METHOD, "a PCP deletion needs the mapping's nonce")
            request = pcp_codec.MapRequest(
                nonce=nonce,
                protocol=pcp_codec.protocol_number(transport),
                internal_port=internal_port,
                client_address=self.client_address,
                lifetime=0,
            )
            txn: Any = PcpTransaction(
                request,
                self.gateway.ip,
                self._release_timing(),
                port=self.server_port,
                rng=self._rng,
            )
        else:
            pmp = (
                natpmp_codec.MapRequest.delete(transport, internal_port)
                if internal_port
                else natpmp_codec.MapRequest.delete_all(transport)
            )
            txn = NatPmpTransaction(
                pmp,
                self.gateway.ip,
                self._release_timing(),
                port=self.server_port,
                rng=self._rng,
            )
        event = await self._run(txn, f"{protocol} delete")
        self._observe(protocol, event, anyio.current_time())
        return event

    # ------------------------------------------------------------------ background tasks

    async def _maintain(self) -> None:
        while True:
            for mapping in list(self.mappings):
                if mapping.lease.state is LeaseState.CLOSED:
                    continue
                due, changes = mapping.lease.poll(anyio.current_time())
                self._emit(mapping, changes)
                if due is None:
                    continue
                with anyio.CancelScope() as scope:
                    self._busy = (mapping, scope)
                    try:
                        await self._attempt(mapping, due)
                    except (NatTravError, OSError) as exc:
                        log.info("%s attempt failed: %s", mapping.protocol, exc)
                    finally:
                        self._busy = None
                        if mapping.lease.in_flight:
                            mapping.lease.failed(anyio.current_time())
            timers = [t for m in self.mappings if (t := m.lease.get_timer()) is not None]
            with anyio.CancelScope(deadline=min(timers, default=math.inf)):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()

    async def _attempt(self, mapping: PortMapping, due: Due) -> None:
        start = anyio.current_time()
        budget = max(0.05, due.deadline - start)
        if mapping.protocol == "pcp":
            assert mapping.nonce is not None
            request = self._pcp_request(
                mapping,
                transport=mapping.transport,
                internal_port=mapping.internal_port,
                lifetime=mapping.requested_lifetime,
                nonce=mapping.nonce,
                suggested_port=mapping.suggested_port,
                suggested_address=None,
            )
            timing: Any = (
                OneShot(budget) if due.action is Action.RENEW else self._pcp_timing(budget)
            )
            txn: Any = PcpTransaction(
                request, self.gateway.ip, timing, port=self.server_port, rng=self._rng
            )
        else:
            if due.action is Action.RECREATE:
                # After a reboot or an announcement the external address may be new.
                with suppress(NatTravError):
                    await self.external_address_natpmp(self._natpmp_timing(budget))
            previous = mapping.lease.grant.external_port or mapping.suggested_port
            request_pmp = natpmp_codec.MapRequest(
                mapping.transport, mapping.internal_port, previous, mapping.requested_lifetime
            )
            remaining = max(0.05, due.deadline - anyio.current_time())
            txn = NatPmpTransaction(
                request_pmp,
                self.gateway.ip,
                self._natpmp_timing(remaining),
                port=self.server_port,
                rng=self._rng,
            )
        event = await self._run(txn, f"{mapping.protocol} {due.action.value}")
        now = anyio.current_time()
        self._check_epoch(mapping.protocol, event, now, mapping)
        mapping.epoch = self.epochs.get(mapping.protocol, mapping.epoch)
        if isinstance(event, Answered):
            grant = self._grant_from(mapping.protocol, event, now)
            if grant.lifetime == 0:
                log.warning("gateway answered the %s with lifetime 0", due.action.value)
                self._emit(mapping, mapping.lease.failed(now))
                return
            self._emit(mapping, mapping.lease.succeeded(grant))
        elif isinstance(event, Refused):
            retry_after = float(event.error.lifetime) if isinstance(event.error, PcpError) else 0.0
            log.warning("%s %s refused: %s", mapping.protocol, due.action.value, event.error)
            self._emit(mapping, mapping.lease.failed(now, retry_after))
        else:
            self._emit(mapping, mapping.lease.failed(now))

    async def _listen(self, sock: socket.socket) -> None:
        try:
            while True:
                await anyio.wait_readable(sock)
                while True:
                    try:
                        data, source = sock.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    announcement, reason = parse_announcement(data, str(source[0]), self.gateway.ip)
                    if announcement is None:
                        key = f"announcement: {reason}"
                        self.discards[key] = self.discards.get(key, 0) + 1
                        continue
                    self._on_announcement(announcement, anyio.current_time())
        finally:
            self.listening = False

    def _on_announcement(self, announcement: Announcement, now: float) -> None:
        self.announcements += 1
        tracker = self._trackers[announcement.protocol]
        observation = tracker.observe(announcement.epoch, now)
        self.epochs[announcement.protocol] = announcement.epoch
        if announcement.external_address is not None:
            self.external_address = announcement.external_address
        log.info(
            "%s announcement from %s: %s",
            announcement.protocol,
            self.gateway.host,
            observation.describe(),
        )
        if observation.lost_state:
            self._gateway_reset(now, f"announcement: {observation.describe()}", None)
            return
        # Not a reboot by the epoch, but the gateway spoke up for a reason (a new external
        # address, or state we cannot see): send every mapping again after the random delay.
        delay = self._rng.uniform(0, self.settings.recovery_delay)
        for mapping in self.mappings:
            mapping.lease.refresh(now, delay)
        self._wake.set()


def _span_outcome(event: Any) -> tuple[str, int]:
    """A transaction's outcome in the words every protocol's spans use, and its sends (all
    transmissions of the request; for a negotiation, of both protocols' requests)."""
    if isinstance(event, Negotiated):
        return "succeeded", event.event.sends
    if isinstance(event, NoServer):
        return ("unreachable" if event.refused else "timed-out"), event.sends
    outcome = {
        Answered: "succeeded",
        Refused: "refused",
        VersionUnsupported: "refused",
        TimedOut: "timed-out",
        Unreachable: "unreachable",
    }.get(type(event), "failed")
    return outcome, int(getattr(event, "sends", 1))
