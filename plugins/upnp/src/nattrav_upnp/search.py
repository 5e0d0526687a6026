"""The SSDP search as a sans-IO state machine: what to send, when to stop, what to keep.

Theory of operation
-------------------
``SsdpSearch`` is given the places to search (one ``SearchTarget`` per interface socket and
destination: the multicast groups and the default gateway by unicast) and the clock as an
argument. The driver calls ``start(now)``, sends ``datagrams_to_send()``, feeds every datagram
it receives to ``receive_datagram(...)``, sleeps until ``get_timer()`` and calls
``handle_timer(now)``, until ``done``.

Timing (hostile-inputs.md U3, U4): the search ends at an *absolute* deadline,
``start + window``, however much traffic arrives (miniupnp issue #488 looped forever on junk).
It ends earlier once it has what it needs: ``settle`` seconds after the default gateway's
device answered (any device, when no gateway is known) *and* a device answered for every IP
family in ``families`` (IPv6 pinholes need the router reached over IPv6); otherwise at most
``settle_other`` seconds after the first answer, giving the gateway or the other family a
moment to speak up. UDP gets lost, so the M-SEARCHes are sent again at ``resend_at`` offsets
inside the window. When the unicast M-SEARCH to every default gateway drew an ICMP Port
Unreachable (``gateway_refused``: the router runs no SSDP) and nothing answered yet, the
search ends ``refused_wait`` seconds later (a multicast answer's MX delay, for an IGD that is
not the gateway) instead of at the absolute deadline: a network without UPnP costs that much.

Keeping (U1, U2, U4-U7): each datagram goes through ``ssdp.parse_response``, the IGD filter,
and ``urls.location_url`` (re-pointed to the responder, which must be a safe address).
Responses are deduplicated by the effective description URL (a device answers once per search
target, and again per resend), and at most ``max_responders`` devices are kept. Everything
rejected is counted by reason in ``discarded``; nothing raises.
"""

from __future__ import annotations

import math
from collections import Counter

import attrs
from nattrav.errors import ParseError

from nattrav_upnp.ssdp import SEARCH_TARGETS, SsdpResponse, build_msearch, is_igd_response
from nattrav_upnp.ssdp import parse_response as parse_ssdp
from nattrav_upnp.urls import STRICT, Location, UrlPolicy, canonical_ip, location_url

__all__ = ["Outgoing", "Responder", "SearchTarget", "SsdpSearch"]


@attrs.frozen
class SearchTarget:
    """Where to send M-SEARCHes: from the socket ``key`` to ``host:port``."""

    key: str
    host: str
    port: int = 1900
    multicast: bool = True


@attrs.frozen
class Outgoing:
    """One datagram the driver must send from socket ``key``."""

    key: str
    host: str
    port: int
    data: bytes


@attrs.frozen
class Responder:
    """A device that answered: where its description is and how it was found."""

    location: Location
    response: SsdpResponse
    source: str
    key: str
    from_gateway: bool
    first_seen: float
    search_types: frozenset[str] = frozenset()


@attrs.define
class SsdpSearch:
    """Collects IGD answers to M-SEARCH until an absolute deadline (see module docstring)."""

    targets: tuple[SearchTarget, ...]
    search_types: tuple[str, ...] = SEARCH_TARGETS
    window: float = 2.0
    settle: float = 0.05
    settle_other: float = 0.25
    max_responders: int = 16
    gateways: frozenset[str] = frozenset()
    policy: UrlPolicy = STRICT
    resend_at: tuple[float, ...] = (0.0, 0.25, 1.0)
    mx: int = 1
    families: frozenset[int] = frozenset({4})
    refused_wait: float = 1.0

    started_at: float | None = attrs.field(default=None, init=False)
    deadline: float = attrs.field(default=math.inf, init=False)
    done: bool = attrs.field(default=False, init=False)
    discarded: Counter[str] = attrs.field(factory=Counter, init=False)
    _pending: list[Outgoing] = attrs.field(factory=list, init=False)
    _next_round: int = attrs.field(default=0, init=False)
    _found: dict[str, Responder] = attrs.field(factory=dict, init=False)
    refused: set[str] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        self.gateways = frozenset(canonical_ip(g) or g for g in self.gateways)

    # ---------------------------------------------------------------- driving

    def start(self, now: float) -> None:
        """Begin: the first round of M-SEARCHes is queued and the deadline fixed."""
        if self.started_at is not None:
            raise RuntimeError("search already started")
        self.started_at = now
        self.deadline = now + self.window
        if not self.targets:
            self.done = True
            return
        self._queue_due(now)

    def datagrams_to_send(self) -> list[Outgoing]:
        """Datagrams queued since the last call (empty once done)."""
        out, self._pending = self._pending, []
        return [] if self.done else out

    @property
    def rounds(self) -> int:
        """How many rounds of M-SEARCHes went out so far (the first, then the resends)."""
        return self._next_round

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or ``None`` when done."""
        if self.done or self.started_at is None:
            return None
        if self._next_round < len(self.resend_at):
            return min(self.deadline, self.started_at + self.resend_at[self._next_round])
        return self.deadline

    def handle_timer(self, now: float) -> None:
        """Advance time: end the search at its deadline, or queue the next resend round."""
        if self.done or self.started_at is None:
            return
        if now >= self.deadline:
            self.done = True
            return
        self._queue_due(now)

    def receive_datagram(self, data: bytes, source: str, key: str, now: float) -> None:
        """Feed one received datagram (``source`` is the sender's IP); never raises."""
        if self.done or self.started_at is None:
            self.discarded["late"] += 1
            return
        if now >= self.deadline:
            self.done = True
            self.discarded["late"] += 1
            return
        try:
            response = parse_ssdp(data)
        except ParseError:
            self.discarded["malformed"] += 1
            return
        if not is_igd_response(response):
            self.discarded["not-igd"] += 1
            return
        try:
            location = location_url(response.location, source, self.policy)
        except ParseError:
            self.discarded["unsafe-url"] += 1
            return
        url = str(location.url)
        existing = self._found.get(url)
        if existing is not None:
            self.discarded["duplicate"] += 1
            self._found[url] = attrs.evolve(
                existing, search_types=existing.search_types | {response.st}
            )
            return
        if len(self._found) >= self.max_responders:
            self.discarded["over-cap"] += 1
            return
        from_gateway = location.url.host in self.gateways
        first = not self._found
        self._found[url] = Responder(
            location=location,
            response=response,
            source=location.url.host,
            key=key,
            from_gateway=from_gateway,
            first_seen=now,
            search_types=frozenset({response.st}),
        )
        if first:
            self.deadline = min(self.deadline, now + self.settle_other)
        if self._satisfied():
            self.deadline = min(self.deadline, now + self.settle)

    def gateway_refused(self, host: str, now: float) -> None:
        """The unicast M-SEARCH to ``host`` drew an ICMP Port Unreachable: no SSDP there.

        Only default gateways count (nothing else is sent a unicast). Once every gateway
        refused and nobody answered, the search ends ``refused_wait`` seconds later."""
        if self.done or self.started_at is None:
            return
        ip = canonical_ip(host) or host
        if ip not in self.gateways:
            self.discarded["refused-by-stranger"] += 1
            return
        self.refused.add(ip)
        # Only the gateways this search sent a unicast to can refuse (an IPv4-only search
        # never asks the IPv6 gateway).
        asked = {canonical_ip(t.host) or t.host for t in self.targets if not t.multicast}
        if (asked & self.gateways) <= self.refused and not self._found:
            self.deadline = min(self.deadline, now + self.refused_wait)

    def _satisfied(self) -> bool:
        found = self._found.values()
        if (self.gateways - self.refused) and not any(r.from_gateway for r in found):
            return False
        seen = {r.location.url.family for r in found}
        return self.families <= seen

    # ---------------------------------------------------------------- results

    @property
    def found(self) -> int:
        """How many devices were kept so far."""
        return len(self._found)

    @property
    def latest(self) -> Responder:
        """The device kept most recently."""
        return next(reversed(self._found.values()))

    @property
    def responders(self) -> list[Responder]:
        """Devices found: the default gateway's first, then in order of arrival."""
        return sorted(self._found.values(), key=lambda r: (not r.from_gateway, r.first_seen))

    def _queue_due(self, now: float) -> None:
        assert self.started_at is not None
        while (
            self._next_round < len(self.resend_at)
            and self.started_at + self.resend_at[self._next_round] <= now
        ):
            self._next_round += 1
            for target in self.targets:
                for st in self.search_types:
                    data = build_msearch(
                        st,
                        host=target.host,
                        port=target.port,
                        mx=self.mx if target.multicast else None,
                    )
                    self._pending.append(Outgoing(target.key, target.host, target.port, data))
