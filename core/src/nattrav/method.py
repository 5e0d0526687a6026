"""What a traversal method is, as the chain sees it.

A plugin registers a *factory* (see ``MethodRegistry.add``); the chain calls it once per run to
get a ``TraversalMethod`` and enters ``method.acquire(ctx)``. Entering obtains the endpoint
(binds, maps, allocates); the context stays open while the application uses the endpoint
(renewals, keepalives, recovery happen inside it); leaving releases everything, on success,
error and cancellation alike. That is how the race strategy can cancel a losing method and be
sure its mapping is deleted, and how ``nattrav map`` keeps a mapping alive until interrupted.

Protocol plugins never import the chain: they get what they need from ``AttemptContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from nattrav.models import Candidate, LeaseEvent, TransportAddress, TraversalRequest

if TYPE_CHECKING:
    from nattrav.datagram import DatagramMux
    from nattrav.journal import Journal, JournalEntry
    from nattrav.resilience import BreakerBoard
    from nattrav.telemetry import Telemetry

__all__ = [
    "Acquisition",
    "CleansUp",
    "AttemptContext",
    "DatagramChannel",
    "TraversalMethod",
]


@runtime_checkable
class DatagramChannel(Protocol):
    """A datagram path the application can use: the app socket, or a relay allocation."""

    async def send_to(self, data: bytes, peer: TransportAddress) -> None:
        """Send one datagram to ``peer``."""

    async def receive(self) -> tuple[bytes, TransportAddress]:
        """Wait for the next datagram addressed to the application."""


@attrs.frozen
class Acquisition:
    """What entering ``TraversalMethod.acquire`` yields.

    ``candidate`` is the endpoint. ``channel`` is set by methods whose traffic does not flow
    over the application's own socket (a relay); ``None`` means "use the shared socket".
    ``also`` lists further candidates found on the way (another family, a second server's view)
    for reports and hole punching.
    """

    candidate: Candidate
    channel: DatagramChannel | None = None
    #: The runtime's plugin manager, for hooks a plugin added with ``nattrav_add_hookspecs``.
    pluginmanager: Any = None
    also: tuple[Candidate, ...] = ()


@attrs.define
class AttemptContext:
    """Everything a method may use during one attempt.

    ``sockets`` is the shared UDP socket on the application's port (``None`` for TCP requests or
    when the caller brought no socket); STUN-like methods must send from it so that the mapping
    they discover is the one the application's traffic will use. ``emit`` reports lease events
    (renewed, lost, recovered) to whoever holds the endpoint. ``breakers`` gives per-server
    circuit breakers; ``telemetry`` opens spans for protocol transactions. ``settings`` is this
    method's own configuration table. ``proving`` is called by a method that holds its
    candidate and spends the rest of the attempt proving its reachability (STUN's RFC 5780
    filtering probe): the race then starts the next method at once instead of after
    ``stagger``, since the slow part is no longer a connection attempt.
    """

    request: TraversalRequest
    method: str
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    sockets: DatagramMux | None = None
    breakers: BreakerBoard | None = None
    telemetry: Telemetry | None = None
    emit: Callable[[LeaseEvent], None] = attrs.field(default=lambda _event: None)
    proving: Callable[[], None] = attrs.field(default=lambda: None)
    journal: Journal | None = None
    #: For path probes: the chosen endpoint's channel when its traffic does not flow over
    #: ``sockets`` (a relay allocation), so the path can be probed through it.
    channel: DatagramChannel | None = None
    #: The runtime's plugin manager, for hooks a plugin added with ``nattrav_add_hookspecs``.
    pluginmanager: Any = None
    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("nattrav"))


@runtime_checkable
class TraversalMethod(Protocol):
    """One way to obtain an endpoint. Implemented by plugins; called by the chain.

    ``acquire`` returns an async context manager. Raise ``MethodUnavailable`` when the method
    does not apply (no gateway), ``MethodError(retryable=True)`` for transient failures, and
    release everything acquired when the context exits, including on cancellation (shield the
    release and bound it in time).
    """

    def acquire(self, ctx: AttemptContext) -> AbstractAsyncContextManager[Acquisition]:
        """Obtain the endpoint; keep it alive while the context is open; release on exit."""
        ...


@runtime_checkable
class CleansUp(Protocol):
    """Optional for methods that journal resources: release a crashed run's leftover.

    Called by ``nattrav cleanup`` and at start-up for journal entries whose process is gone.
    Release only what the entry describes (check ownership: internal client, port,
    description, nonce); return normally when it is gone (already expired counts), raise
    ``NatTravError`` when it could not be released now (the entry is kept for next time).
    """

    async def cleanup(self, entry: JournalEntry, ctx: AttemptContext) -> None:
        """Release the resource ``entry`` describes."""
        ...
