"""What the connectivity-check agent reports: frozen values, one per thing that happened.

The agent never raises for something a network does (a check timed out, the peer stopped
answering): those are events. ``Selected`` is the first working path; ``PathChanged`` every
move after it (consent lost, the peer nominated another pair); ``Failed`` ends the agent.
"""

from __future__ import annotations

from typing import Any

import attrs
from nattrav.models import CandidateKind, TransportAddress

__all__ = [
    "AgentEvent",
    "ConsentLost",
    "Failed",
    "PairFailed",
    "PairSucceeded",
    "Path",
    "PathChanged",
    "RoleChanged",
    "Selected",
]


@attrs.frozen
class Path:
    """The candidate pair that carries the traffic, as the application sees it.

    ``local``/``remote``: the pair's candidates (``local`` is a host or relayed candidate: the
    base the packets leave from); ``local_kind``: what the peer sees of us, from the
    XOR-MAPPED-ADDRESS of a successful check (our server-reflexive address after a punch,
    a gateway mapping, ...); ``kind``: ``direct``, ``punched``, ``mapped`` or ``relay``
    (``nattrav_p2p.candidates.path_kind``); ``how``: why this pair was chosen.
    """

    local: TransportAddress
    remote: TransportAddress
    local_kind: CandidateKind
    remote_kind: CandidateKind
    kind: str
    route: str
    how: str
    seen_as: TransportAddress | None = None
    rtt: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "local": str(self.local),
            "local_kind": self.local_kind.value,
            "seen_as": None if self.seen_as is None else str(self.seen_as),
            "remote": str(self.remote),
            "remote_kind": self.remote_kind.value,
            "route": self.route,
            "how": self.how,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 2),
        }

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.local} ({self.local_kind.value}) <-> "
            f"{self.remote} ({self.remote_kind.value}); {self.how}"
        )


@attrs.frozen
class PairSucceeded:
    """A check on a pair got an authenticated answer: the pair is valid."""

    local: TransportAddress
    remote: TransportAddress
    route: str
    at: float


@attrs.frozen
class PairFailed:
    """A check on a pair ended without an answer (or with an error)."""

    local: TransportAddress
    remote: TransportAddress
    route: str
    reason: str


@attrs.frozen
class RoleChanged:
    """A role conflict was resolved (§7.3.1.1): we are now ``controlling`` or not."""

    controlling: bool
    reason: str


@attrs.frozen
class Selected:
    """The first pair both sides use (nominated by the controlling agent)."""

    path: Path
    at: float


@attrs.frozen
class PathChanged:
    """Traffic moved to another pair without the application reconnecting."""

    old: Path
    new: Path
    reason: str
    at: float


@attrs.frozen
class ConsentLost:
    """The selected pair stopped answering consent checks (RFC 7675) for the timeout."""

    path: Path
    at: float


@attrs.frozen
class Failed:
    """No pair works (or none works any more): the agent is done."""

    reason: str
    at: float


AgentEvent = (
    PairSucceeded | PairFailed | RoleChanged | Selected | PathChanged | ConsentLost | Failed
)
