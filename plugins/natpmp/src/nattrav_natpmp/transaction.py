"""Sans-IO request/response state machines for NAT-PMP and PCP, and protocol negotiation.

Theory of operation
-------------------
A transaction sends one request to the gateway's port 5351 and retransmits it on a schedule
until an acceptable answer arrives or the schedule runs out. It owns no socket and no clock:

    txn.start(now)                       -> the first datagram is queued
    txn.datagrams_to_send()              -> what the driver must send now
    txn.get_timer()                      -> when to call handle_timer (None: finished)
    txn.handle_timer(now)                -> retransmit, or give up (TimedOut)
    txn.receive_datagram(data, src, now) -> maybe an outcome
    txn.connection_refused(now)          -> ICMP port unreachable: nothing listens (Unreachable)
    txn.next_event()                     -> Answered | Refused | VersionUnsupported | ...

Schedules (``timing``):

* ``NatPmpTiming``: RFC 6886 §3.1, first wait 250 ms, doubling, ``max_sends`` transmissions
  (RFC: 9, so the last wait is 64 s and the worst case about 128 s). ``max_duration`` caps the
  whole transaction: the chain's short probe mode is ``max_duration=0.5``.
* ``PcpTiming``: RFC 6887 §8.1.1, ``RT = (1 + RAND) * IRT`` then
  ``RT = (1 + RAND) * MIN(2 * RTprev, MRT)`` with ``RAND`` uniform in ``[-jitter, +jitter]``;
  IRT 3 s, MRT 1024 s, MRC and MRD 0 (unbounded) by default. ``mrc`` bounds the number of
  transmissions and ``mrd`` the duration.
* ``OneShot``: one transmission, then wait a fixed time (RFC 6887 §11.2.1 renewals send a single
  packet per renewal window).

What is accepted (everything else is discarded and counted in ``discards`` by reason, and the
transaction carries on):

* Only datagrams from the gateway's address and port 5351 (P1; the driver's connected socket
  filters too).
* NAT-PMP: version 0, opcode 128 + the request's, exact lengths (P2, P3), the internal port of a
  mapping answer equal to the request's (P4). A non-zero result ends the request with
  ``Refused`` carrying a ``NatPmpError`` (undefined codes included: they are fatal, P5).
* PCP: the length and option rules of ``pcp_codec`` (C2, C5, C6); opcode; for MAP the mapping
  nonce, protocol and internal port equal to the request's (C3), and a THIRD_PARTY option echoed
  when we sent one. A non-zero result ends it with ``Refused`` (``PcpError`` carrying the error
  lifetime, C7); "unsupported version" ends it with ``VersionUnsupported`` (C1).
* After an outcome, late duplicates are discarded ("finished").

``Negotiation`` runs a PCP request and a NAT-PMP external-address request side by side in one
window (both on the same socket; a datagram is offered to both, each takes only its own) and
decides: PCP when the PCP request got an answer, NAT-PMP when PCP said "unsupported version" or
stayed silent while NAT-PMP answered, ``NoServer`` when nothing answered. A missing gateway
therefore costs one short window, not one per protocol.
"""

from __future__ import annotations

import collections
import ipaddress
import random
from collections.abc import Iterator
from typing import Protocol

import attrs
from nattrav.errors import LocalProtocolError, ParseError

from nattrav_natpmp import natpmp_codec, pcp_codec
from nattrav_natpmp.errors import NatPmpError, PcpError
from nattrav_natpmp.events import (
    Answered,
    Event,
    Negotiated,
    NoServer,
    Refused,
    TimedOut,
    Unreachable,
    VersionUnsupported,
)

__all__ = [
    "Negotiation",
    "NatPmpTiming",
    "NatPmpTransaction",
    "OneShot",
    "PcpTiming",
    "PcpTransaction",
    "Timing",
]

SERVER_PORT = 5351


class Timing(Protocol):
    """A retransmission schedule: the wait after each send, and the overall limits."""

    @property
    def max_sends(self) -> int | None: ...

    @property
    def max_duration(self) -> float | None: ...

    def intervals(self, rng: random.Random) -> Iterator[float]: ...


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise LocalProtocolError(f"{attr.name} must be > 0, got {value}")


def _optional_positive(
    _inst: object, attr: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not value > 0:
        raise LocalProtocolError(f"{attr.name} must be > 0 or None, got {value}")


@attrs.frozen
class NatPmpTiming:
    """RFC 6886 §3.1: wait ``initial`` after the first send, doubling each time."""

    initial: float = attrs.field(default=0.25, validator=_positive)
    max_sends: int | None = 9
    max_duration: float | None = attrs.field(default=None, validator=_optional_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_sends is not None and self.max_sends < 1:
            raise LocalProtocolError(f"max_sends must be >= 1, got {self.max_sends}")

    def intervals(self, rng: random.Random) -> Iterator[float]:
        wait = self.initial
        while True:
            yield wait
            wait *= 2


@attrs.frozen
class PcpTiming:
    """RFC 6887 §8.1.1 retransmission (IRT, MRT, MRC, MRD; 0 means unbounded)."""

    irt: float = attrs.field(default=3.0, validator=_positive)
    mrt: float = attrs.field(default=1024.0, validator=_positive)
    mrc: int = 0
    mrd: float = 0.0
    jitter: float = 0.1

    def __attrs_post_init__(self) -> None:
        if self.mrc < 0 or self.mrd < 0 or not 0 <= self.jitter < 1:
            raise LocalProtocolError("mrc and mrd must be >= 0 and jitter in [0, 1)")

    @property
    def max_sends(self) -> int | None:
        return self.mrc or None

    @property
    def max_duration(self) -> float | None:
        return self.mrd or None

    def intervals(self, rng: random.Random) -> Iterator[float]:
        rt = (1 + rng.uniform(-self.jitter, self.jitter)) * self.irt
        while True:
            yield rt
            rt = (1 + rng.uniform(-self.jitter, self.jitter)) * min(2 * rt, self.mrt)


@attrs.frozen
class OneShot:
    """Send once and wait ``wait`` seconds for the answer."""

    wait: float = attrs.field(validator=_positive)

    @property
    def max_sends(self) -> int | None:
        return 1

    @property
    def max_duration(self) -> float | None:
        return self.wait

    def intervals(self, rng: random.Random) -> Iterator[float]:
        while True:
            yield self.wait


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False


class _Transaction:
    """Retransmission, source checks and event queue shared by both protocols."""

    def __init__(
        self,
        datagram: bytes,
        gateway: str,
        timing: Timing,
        *,
        port: int = SERVER_PORT,
        rng: random.Random | None = None,
    ) -> None:
        self.datagram = datagram
        self.gateway = str(ipaddress.ip_address(gateway.split("%", 1)[0]))
        self.port = port
        self.timing = timing
        self._rng = rng or random.Random()
        self._intervals = timing.intervals(self._rng)
        self._outbox: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        self._timer: float | None = None
        self._final = False
        self.started_at: float | None = None
        self.sends = 0
        self.done = False
        self.discards: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ driver interface

    def start(self, now: float) -> None:
        if self.started_at is not None:
            raise LocalProtocolError("transaction already started")
        self.started_at = now
        self._send(now)

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        return None if self.done else self._timer

    def handle_timer(self, now: float) -> None:
        if self.done or self._timer is None or now < self._timer:
            return
        if self._final:
            self._finish(TimedOut(self.sends, now - self._start()))
        else:
            self._send(now)

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        if self.started_at is None:
            raise LocalProtocolError("receive_datagram before start")
        if self.done:
            self.discards["finished"] += 1
            return
        host, port = source[0], source[1]
        if port != self.port or not _same_ip(host, self.gateway):
            self.discards["wrong source"] += 1
            return
        self._accept(data, now)

    def connection_refused(self, now: float) -> None:
        """The host answered ICMP port unreachable: nothing listens on 5351."""
        if not self.done and self.started_at is not None:
            self._finish(Unreachable(self.sends, now - self.started_at))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ internals

    def _start(self) -> float:
        assert self.started_at is not None
        return self.started_at

    def _send(self, now: float) -> None:
        self._outbox.append(self.datagram)
        self.sends += 1
        interval = next(self._intervals)
        deadline = now + interval
        last = self.timing.max_sends is not None and self.sends >= self.timing.max_sends
        if self.timing.max_duration is not None:
            cap = self._start() + self.timing.max_duration
            if deadline >= cap:
                deadline, last = cap, True
        self._timer, self._final = deadline, last

    def _finish(self, event: Event) -> None:
        self.done = True
        self._timer = None
        self._events.append(event)

    def _discard(self, reason: str) -> None:
        self.discards[reason] += 1

    def _accept(self, data: bytes, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class NatPmpTransaction(_Transaction):
    """One NAT-PMP request (external address or mapping) until answered or given up."""

    def __init__(
        self,
        request: natpmp_codec.Request,
        gateway: str,
        timing: NatPmpTiming | OneShot | None = None,
        *,
        port: int = SERVER_PORT,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(request.encode(), gateway, timing or NatPmpTiming(), port=port, rng=rng)
        self.request = request

    def _accept(self, data: bytes, now: float) -> None:
        try:
            response = natpmp_codec.decode_response(data)
        except ParseError as exc:
            self._discard(f"malformed: {exc}")
            return
        if isinstance(self.request, natpmp_codec.ExternalAddressRequest):
            if not isinstance(response, natpmp_codec.ExternalAddressResponse):
                self._discard("opcode mismatch")
                return
        else:
            if not isinstance(response, natpmp_codec.MapResponse) or (
                response.opcode != self.request.opcode
            ):
                self._discard("opcode mismatch")
                return
            if response.internal_port is not None and (
                response.internal_port != self.request.internal_port
            ):
                self._discard("internal port mismatch")
                return
            if self.request.is_deletion and response.result == 0 and response.lifetime != 0:
                # RFC 6886 §3.4: a deletion is answered with lifetime 0; this one is a late
                # answer to an earlier create or renewal of the same port.
                self._discard("answer to another request")
                return
        if response.result != 0:
            self._finish(Refused(NatPmpError(response.result), response, self.sends))
        else:
            self._finish(Answered(response, self.sends, now - self._start()))


class PcpTransaction(_Transaction):
    """One PCP request (MAP or ANNOUNCE) until answered or given up."""

    def __init__(
        self,
        request: pcp_codec.Request,
        gateway: str,
        timing: PcpTiming | OneShot | NatPmpTiming | None = None,
        *,
        port: int = SERVER_PORT,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(request.encode(), gateway, timing or PcpTiming(), port=port, rng=rng)
        self.request = request

    def _accept(self, data: bytes, now: float) -> None:
        try:
            response = pcp_codec.decode_response(data)
        except ParseError as exc:
            self._discard(f"malformed: {exc}")
            return
        if isinstance(response, pcp_codec.UnsupportedVersion):
            self._finish(VersionUnsupported(response.version, response.epoch, self.sends))
            return
        if response.opcode != self.request.opcode:
            self._discard("opcode mismatch")
            return
        if isinstance(self.request, pcp_codec.MapRequest):
            answer = response.map
            if answer is None or answer.nonce != self.request.nonce:
                self._discard("nonce mismatch")
                return
            if answer.protocol != self.request.protocol:
                self._discard("protocol mismatch")
                return
            if answer.internal_port != self.request.internal_port:
                self._discard("internal port mismatch")
                return
            if self.request.is_deletion and response.result == 0 and response.lifetime != 0:
                self._discard("answer to another request")
                return
            sent = [o for o in self.request.options if isinstance(o, pcp_codec.ThirdParty)]
            if sent and sent[0] not in response.options:
                self._discard("THIRD_PARTY option not echoed")
                return
        if response.result != 0:
            self._finish(
                Refused(PcpError(response.result, response.lifetime), response, self.sends)
            )
        else:
            self._finish(Answered(response, self.sends, now - self._start()))


class Negotiation:
    """PCP first, NAT-PMP fallback, decided within one probe window (see module doc).

    ``pcp`` is the PCP request to try (usually the real MAP request, so a PCP gateway maps in one
    round trip); ``natpmp`` the NAT-PMP external address request. Either may be ``None`` when the
    configuration allows only one protocol. After NAT-PMP answers, PCP gets a grace period of
    ``max(grace, 2 x the NAT-PMP round trip)`` to answer too before NAT-PMP is chosen.
    """

    def __init__(
        self,
        pcp: PcpTransaction | None,
        natpmp: NatPmpTransaction | None,
        *,
        grace: float = 0.05,
    ) -> None:
        if pcp is None and natpmp is None:
            raise LocalProtocolError("negotiation needs at least one protocol")
        self.pcp = pcp
        self.natpmp = natpmp
        self.grace = grace
        self._pcp_event: Event | None = None
        self._natpmp_event: Event | None = None
        self._grace_until: float | None = None
        self._result: Negotiated | NoServer | None = None
        self._reported = False
        self.started_at: float | None = None

    @property
    def _parts(self) -> list[_Transaction]:
        return [t for t in (self.pcp, self.natpmp) if t is not None]

    def start(self, now: float) -> None:
        self.started_at = now
        for t in self._parts:
            t.start(now)

    def datagrams_to_send(self) -> list[bytes]:
        return [d for t in self._parts for d in t.datagrams_to_send()]

    def get_timer(self) -> float | None:
        if self._result is not None:
            return None
        timers = [t.get_timer() for t in self._parts]
        candidates = [x for x in timers if x is not None]
        if self._grace_until is not None:
            candidates.append(self._grace_until)
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        for t in self._parts:
            t.handle_timer(now)
        self._collect(now)

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        # A version-2 datagram can only be PCP's; version 0 may be a NAT-PMP answer or a
        # NAT-PMP server's "unsupported version" answer to the PCP request: offer it to both.
        for t in self._parts:
            if t.done or (data[:1] == b"\x02" and t is self.natpmp):
                continue
            t.receive_datagram(data, source, now)
        self._collect(now)

    def connection_refused(self, now: float) -> None:
        for t in self._parts:
            t.connection_refused(now)
        self._collect(now)

    def next_event(self) -> Negotiated | NoServer | None:
        if self._result is not None and not self._reported:
            self._reported = True
            return self._result
        return None

    @property
    def discards(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for t in self._parts:
            total.update(t.discards)
        return total

    def _collect(self, now: float) -> None:
        if self._result is not None:
            return
        if self.pcp is not None and self._pcp_event is None:
            self._pcp_event = self.pcp.next_event()
        if self.natpmp is not None and self._natpmp_event is None:
            self._natpmp_event = self.natpmp.next_event()
            if isinstance(self._natpmp_event, Answered | Refused) and self._grace_until is None:
                rtt = now - (self.started_at or now)
                self._grace_until = now + max(self.grace, 2 * rtt)
        self._result = self._decide(now)

    def _decide(self, now: float) -> Negotiated | NoServer | None:
        pcp, pmp = self._pcp_event, self._natpmp_event
        if isinstance(pcp, Answered | Refused):
            return Negotiated("pcp", pcp)
        pcp_version = pcp.version if isinstance(pcp, VersionUnsupported) else None
        pcp_over = self.pcp is None or pcp is not None
        pmp_answer = isinstance(pmp, Answered | Refused)
        if pmp_answer and (
            pcp_over or (self._grace_until is not None and now >= self._grace_until)
        ):
            assert isinstance(pmp, Answered | Refused)
            return Negotiated("natpmp", pmp, pcp_version)
        pmp_over = self.natpmp is None or pmp is not None
        if not (pcp_over and pmp_over):
            return None
        if isinstance(pcp, VersionUnsupported):
            # PCP said "not my version" and NAT-PMP is off or silent: report that, it is
            # more useful than "no server".
            return Negotiated("pcp", pcp, pcp_version)
        events = [e for e in (pcp, pmp) if e is not None]
        refused = any(isinstance(e, Unreachable) for e in events)
        sends = sum(t.sends for t in self._parts)
        start = self.started_at if self.started_at is not None else now
        return NoServer(sends, now - start, refused)
