"""Outcomes of a NAT-PMP/PCP transaction and of protocol negotiation, as frozen values.

Protocol-allowed outcomes (an answer, an error answer, a version mismatch, silence) are events;
the state machines never raise for them. The driver turns them into candidates or typed errors.
"""

from __future__ import annotations

from typing import Literal

import attrs

from nattrav_natpmp import natpmp_codec, pcp_codec
from nattrav_natpmp.errors import GatewayError

__all__ = [
    "Answered",
    "Event",
    "Negotiated",
    "NoServer",
    "Refused",
    "TimedOut",
    "Unreachable",
    "VersionUnsupported",
]

AnyResponse = natpmp_codec.Response | pcp_codec.Response


@attrs.frozen
class Answered:
    """The gateway answered with success. ``rtt`` is measured from the first send."""

    response: AnyResponse
    sends: int
    rtt: float


@attrs.frozen
class Refused:
    """The gateway answered with an error result (``error`` is a typed ``GatewayError``)."""

    error: GatewayError
    response: AnyResponse
    sends: int


@attrs.frozen
class VersionUnsupported:
    """A PCP request was answered "unsupported version"; ``version`` is what the server speaks
    (0: NAT-PMP only)."""

    version: int
    epoch: int | None
    sends: int


@attrs.frozen
class TimedOut:
    """No acceptable answer after ``sends`` transmissions and ``waited`` seconds."""

    sends: int
    waited: float


@attrs.frozen
class Unreachable:
    """The gateway's host said nothing listens on the port (ICMP port unreachable)."""

    sends: int
    waited: float


Event = Answered | Refused | VersionUnsupported | TimedOut | Unreachable


@attrs.frozen
class Negotiated:
    """Negotiation chose ``protocol``; ``event`` is that protocol's transaction outcome
    (``Answered``/``Refused`` for the PCP request, or for the NAT-PMP external address request).
    ``pcp_version`` is set when a PCP server said it speaks only another version."""

    protocol: Literal["pcp", "natpmp"]
    event: Answered | Refused | VersionUnsupported
    pcp_version: int | None = None


@attrs.frozen
class NoServer:
    """Neither protocol answered in the probe window (``refused``: ICMP said nothing listens)."""

    sends: int
    waited: float
    refused: bool = False
