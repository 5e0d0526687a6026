"""The enumerations nattrav's values are made of: transport, candidate kind, inbound, goal,
attempt outcome and lease event kind.

They are also available from ``nattrav.models`` (where the values using them live). They have
a module of their own because registration needs them and nothing else: a plugin's
``plugin.py`` registers a method with ``kind=CandidateKind.PORT_MAPPED`` at every start of the
command line, and importing ``nattrav.models`` for that would also build its value classes.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nattrav.models import Candidate

__all__ = [
    "AttemptOutcome",
    "CandidateKind",
    "Goal",
    "Inbound",
    "LeaseEventKind",
    "Transport",
]


class Transport(enum.Enum):
    """The transport protocol of an endpoint."""

    UDP = "udp"
    TCP = "tcp"


class CandidateKind(enum.Enum):
    """How a candidate endpoint was obtained, in the chain's order of preference."""

    HOST = "host"  # an address of a local interface
    SERVER_REFLEXIVE = "srflx"  # what a server saw as our source (STUN)
    PEER_REFLEXIVE = "prflx"  # what a peer saw during connectivity checks
    PORT_MAPPED = "mapped"  # a mapping the gateway created on request (UPnP, NAT-PMP, PCP)
    RELAYED = "relay"  # an address on a relay server (TURN)

    @property
    def preference(self) -> int:
        """Lower is better: direct beats reflexive beats mapped beats relayed."""
        return _KIND_PREFERENCE[self]


_KIND_PREFERENCE = {
    CandidateKind.HOST: 0,
    CandidateKind.SERVER_REFLEXIVE: 1,
    CandidateKind.PEER_REFLEXIVE: 1,
    CandidateKind.PORT_MAPPED: 2,
    CandidateKind.RELAYED: 3,
}


class Inbound(enum.Enum):
    """Whether unsolicited inbound traffic reaches a candidate."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class Goal(enum.Enum):
    """What the chain must obtain before it stops.

    ``reachable``: a candidate that accepts unsolicited inbound traffic (``Inbound.YES``);
    a server-reflexive address behind a filtering NAT is kept as a hole-punching candidate and
    the chain goes on. ``any``: the first candidate of any kind.
    """

    REACHABLE = "reachable"
    ANY = "any"

    def accepts(self, candidate: Candidate) -> bool:
        return self is Goal.ANY or candidate.reachability.inbound is Inbound.YES


class AttemptOutcome(enum.Enum):
    """How one attempt of one method ended."""

    SUCCEEDED = "succeeded"  # produced a candidate that met the goal
    INSUFFICIENT = "insufficient"  # produced a candidate that did not meet the goal (kept)
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # not applicable on this network
    TIMED_OUT = "timed-out"
    CANCELLED = "cancelled"  # a better method won first
    SKIPPED = "skipped"  # circuit breaker open, or never started because a winner was found


class LeaseEventKind(enum.Enum):
    """Lifecycle of a held endpoint, as ``nattrav map --json`` prints it."""

    ACQUIRED = "acquired"
    VERIFIED = "verified"
    RENEWED = "renewed"
    LOST = "lost"
    RECOVERED = "recovered"
    CHANGED = "changed"  # the public endpoint changed (re-allocation, new external port)
    RELEASED = "released"
