"""The values nattrav passes around: addresses, candidates, leases, attempts and results.

All are frozen attrs classes so they can be shared between tasks, logged and serialised
(``nattrav.serialize``) without copying. Nothing here knows a protocol: a plugin says what it
found with a ``Candidate`` of the right ``CandidateKind`` and how sure it is that unsolicited
inbound traffic reaches it (``Reachability``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from nattrav.addresses import format_hostport, parse_hostport

# The enumerations live in nattrav.enums (registration code needs them without these
# classes) and are part of this module's API as before.
from nattrav.enums import (
    AttemptOutcome,
    CandidateKind,
    Goal,
    Inbound,
    LeaseEventKind,
    Transport,
)

__all__ = [
    "AttemptOutcome",
    "AttemptRecord",
    "Candidate",
    "CandidateKind",
    "Goal",
    "Inbound",
    "LeaseEvent",
    "LeaseEventKind",
    "PathProperty",
    "Reachability",
    "Transport",
    "TransportAddress",
    "TraversalRequest",
    "TraversalResult",
]


def _normalise_ip(value: str) -> str:
    # Canonical text form (compressed IPv6, no zone) so equal addresses compare equal.
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"not an IP address literal: {value!r}") from exc


def _check_port(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} out of range 0-65535")


def _to_families(value: Iterable[int]) -> frozenset[int]:
    families = frozenset(value)
    if not families or not families <= {4, 6}:
        raise ValueError(f"families must be a non-empty subset of {{4, 6}}, got {sorted(families)}")
    return families


@attrs.frozen(order=True)
class TransportAddress:
    """An IP literal, a port and a transport protocol: what a peer sends to.

    >>> TransportAddress("2001:db8::1", 3478)
    TransportAddress(host='2001:db8::1', port=3478, transport=<Transport.UDP: 'udp'>)
    >>> str(TransportAddress("192.0.2.1", 5000))
    '192.0.2.1:5000'
    """

    host: str = attrs.field(converter=_normalise_ip)
    port: int = attrs.field(validator=_check_port)
    transport: Transport = Transport.UDP

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.host else 4

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The host as an ``ipaddress`` object."""
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)

    @classmethod
    def parse(cls, text: str, transport: Transport = Transport.UDP) -> TransportAddress:
        """Parse ``IP:PORT`` or ``[IPv6]:PORT`` (IP literals only; resolve names elsewhere)."""
        host, port = parse_hostport(text)
        return cls(host, port, transport)


@attrs.frozen
class Reachability:
    """Whether a candidate accepts unsolicited inbound traffic, and how we know.

    ``inbound`` is the claim; ``verified`` is true only when an inbound packet was actually seen
    arriving through the candidate; ``how`` says where the claim comes from, for example
    ``"gateway created a port mapping"`` or ``"RFC 5780 filtering test: endpoint-independent"``.
    """

    inbound: Inbound = Inbound.UNKNOWN
    verified: bool = False
    how: str = "not tested"

    @classmethod
    def unknown(cls, how: str = "not tested") -> Reachability:
        return cls(Inbound.UNKNOWN, False, how)

    @classmethod
    def claimed(cls, how: str) -> Reachability:
        """Inbound is expected to work (a gateway said so) but no packet proved it yet."""
        return cls(Inbound.YES, False, how)

    @classmethod
    def proven(cls, how: str) -> Reachability:
        """An inbound packet was seen arriving."""
        return cls(Inbound.YES, True, how)

    @classmethod
    def refused(cls, how: str) -> Reachability:
        return cls(Inbound.NO, False, how)


@attrs.frozen
class Candidate:
    """One endpoint a method obtained.

    ``address`` is what a remote peer sends to; ``base`` is the local address the traffic
    arrives at (for a relayed candidate, the local end of the connection to the relay).
    ``lifetime`` is the granted lease in seconds (``None``: no lease, e.g. a host address).
    ``details`` holds method-specific facts for reports (gateway, protocol version, server).
    """

    kind: CandidateKind
    address: TransportAddress
    method: str
    base: TransportAddress | None = None
    reachability: Reachability = attrs.field(factory=Reachability)
    lifetime: float | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, hash=False, eq=False)

    @property
    def accepts_inbound(self) -> Inbound:
        return self.reachability.inbound

    def with_reachability(self, reachability: Reachability) -> Candidate:
        return attrs.evolve(self, reachability=reachability)


@attrs.frozen
class TraversalRequest:
    """What the application asks the chain for.

    ``port`` is the application's local port (0: let the first method pick one and share it);
    ``lifetime`` is the lease to request from gateways and relays; ``families`` limits the IP
    families tried.
    """

    port: int = attrs.field(default=0, validator=_check_port)
    transport: Transport = Transport.UDP
    goal: Goal = Goal.REACHABLE
    lifetime: float = 3600.0
    families: frozenset[int] = attrs.field(default=frozenset({4, 6}), converter=_to_families)
    description: str = "nattrav"


@attrs.frozen
class AttemptRecord:
    """One method's attempt in a chain run: the trace a user reads to learn "why relay?"."""

    method: str
    outcome: AttemptOutcome
    reason: str = ""
    duration: float = 0.0
    tries: int = 0
    error_type: str | None = None
    candidate: Candidate | None = None
    priority: int = 0


@attrs.frozen
class PathProperty:
    """A property of the path to an endpoint found after the chain picked it (e.g. PLPMTU)."""

    name: str
    value: Any
    how: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict, hash=False, eq=False)


@attrs.frozen
class TraversalResult:
    """The outcome of a chain run: which method won, the endpoint, and every attempt."""

    goal: Goal
    candidate: Candidate
    attempts: tuple[AttemptRecord, ...]
    candidates: tuple[Candidate, ...] = ()
    strategy: str = "race"
    path: tuple[PathProperty, ...] = ()

    @property
    def method(self) -> str:
        return self.candidate.method

    @property
    def endpoint(self) -> TransportAddress:
        return self.candidate.address


@attrs.frozen
class LeaseEvent:
    """Something happened to a held endpoint."""

    kind: LeaseEventKind
    method: str
    endpoint: TransportAddress | None
    detail: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict, hash=False, eq=False)
