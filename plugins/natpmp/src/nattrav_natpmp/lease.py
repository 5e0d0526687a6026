"""Sans-IO lifecycle of one held mapping: renewal windows, expiry, recovery, gateway reboots.

Theory of operation
-------------------
A ``Lease`` knows what the gateway granted (``Grant``: external endpoint, lifetime, when) and
answers one question for the driver: what must be sent, and when? It owns no socket and no
clock; the driver calls ``poll(now)`` at ``get_timer()`` and reports how each attempt ended with
``succeeded``/``failed``. In NAT-PMP and PCP a renewal and a re-creation are the same request
(RFC 6886 §3.3, RFC 6887 §11.2.1), so the difference is only in timing and in what is reported.

Renewal windows, computed when a grant arrives (``renewal_windows``):

* PCP (RFC 6887 §11.2.1): the first renewal at a uniformly random point in [1/2, 5/8] of the
  lifetime; if that gets no success, [3/4, 3/4 + 1/16], then [7/8, 7/8 + 1/32] and so on, one
  packet per window, never less than ``min_interval`` (4 s) apart.
* NAT-PMP (RFC 6886 §3.3): "begin trying to renew halfway to expiry"; if that attempt gives up,
  try again halfway through what is left (3/4, 7/8, ...), with the same 4 s floor. Each attempt
  retransmits on the RFC schedule until the next window. The request suggests the external port
  the gateway mapped last time, not the one we first asked for.

Windows never fall before ``min_interval`` after the grant, so an absurdly short lifetime cannot
make the client spin (P7).

States: ``ACTIVE`` (renewing on schedule), ``LOST`` (the gateway no longer has it: the lease
expired without a successful renewal, or the gateway lost its state), ``CLOSED``. A lost lease
is re-created immediately after expiry, or after the random 0-5 s delay the RFCs ask for after a
gateway reboot (RFC 6886 §3.7, RFC 6887 §14.1.3), then with exponential back-off
(``recovery_initial`` doubling to ``recovery_max``) while the gateway does not answer.

Reported changes (the driver turns them into ``LeaseEvent``): ``RENEWED`` (same endpoint, new
lifetime), ``LOST``, ``RECOVERED`` (re-created with the same endpoint) and ``CHANGED`` (the
gateway gave a different external address or port).
"""

from __future__ import annotations

import enum
import math
import random
from typing import Literal

import attrs
from nattrav.addresses import format_hostport
from nattrav.models import LeaseEventKind

__all__ = [
    "Action",
    "Change",
    "Due",
    "ErrorMemory",
    "Grant",
    "Lease",
    "LeaseState",
    "renewal_windows",
]

Protocol = Literal["pcp", "natpmp"]


@attrs.frozen
class Grant:
    """What the gateway granted, and when (monotonic seconds) the answer arrived."""

    external_address: str | None
    external_port: int
    lifetime: int
    at: float

    @property
    def expires_at(self) -> float:
        return self.at + self.lifetime

    @property
    def endpoint(self) -> str:
        return format_hostport(self.external_address or "?", self.external_port)


class LeaseState(enum.Enum):
    ACTIVE = "active"
    LOST = "lost"
    CLOSED = "closed"


class Action(enum.Enum):
    RENEW = "renew"  # a renewal in a window: give up at the next window
    RECREATE = "recreate"  # the mapping is (or may be) gone: ask again, retransmitting


@attrs.frozen
class Due:
    """Send the mapping request now; give up on this attempt at ``deadline``."""

    action: Action
    deadline: float


@attrs.frozen
class Change:
    kind: LeaseEventKind
    detail: str


def renewal_windows(
    protocol: Protocol, grant: Grant, rng: random.Random, min_interval: float = 4.0
) -> list[float]:
    """Times (monotonic) at which to send renewals for ``grant``; see the module doc."""
    times: list[float] = []
    lifetime = float(grant.lifetime)
    last = grant.at
    for k in range(1, 64):
        fraction = 1 - 2.0**-k
        if protocol == "pcp":
            fraction += rng.uniform(0, 2.0 ** -(k + 2))
        t = max(grant.at + lifetime * fraction, last + min_interval)
        if t >= grant.expires_at:
            break
        times.append(t)
        last = t
    return times


@attrs.define
class Lease:
    """One mapping's schedule; see the module doc."""

    protocol: Protocol
    grant: Grant
    rng: random.Random = attrs.field(factory=random.Random)
    min_interval: float = 4.0
    recovery_initial: float = 5.0
    recovery_max: float = 300.0
    recovery_window: float = 30.0
    state: LeaseState = LeaseState.ACTIVE
    windows: list[float] = attrs.field(factory=list)
    _next: float | None = None
    _recreate: bool = False
    _refreshing: bool = False
    _in_flight: bool = False
    _last_attempt: float = -math.inf
    _backoff: float = 0.0

    def __attrs_post_init__(self) -> None:
        self._backoff = self.recovery_initial
        self._plan(self.grant)

    # ------------------------------------------------------------------ queries

    @property
    def in_flight(self) -> bool:
        """An attempt was handed out by ``poll`` and its outcome not yet reported."""
        return self._in_flight

    def get_timer(self) -> float | None:
        """When ``poll`` has something to do (``None``: nothing until told otherwise)."""
        if self.state is LeaseState.CLOSED or self._in_flight:
            return None
        timers = [t for t in (self._next,) if t is not None]
        if self.state is LeaseState.ACTIVE:
            timers.append(self.grant.expires_at)
        return min(timers) if timers else None

    def poll(self, now: float) -> tuple[Due | None, list[Change]]:
        """What to send now, and the changes that happened by ``now`` (expiry)."""
        changes: list[Change] = []
        if self.state is LeaseState.CLOSED or self._in_flight:
            return None, changes
        if self.state is LeaseState.ACTIVE and now >= self.grant.expires_at:
            self.state = LeaseState.LOST
            self._recreate = True
            # Straight away, but never closer than min_interval to the last try (P7: a gateway
            # granting a lifetime of a second must not make us spin).
            self._next = max(now, self._last_attempt + self.min_interval)
            self._backoff = self.recovery_initial
            changes.append(
                Change(
                    LeaseEventKind.LOST,
                    f"lease of {self.grant.endpoint} expired without a successful renewal",
                )
            )
        if self._next is None or now < self._next:
            return None, changes
        self._in_flight = True
        self._last_attempt = now
        if self._recreate or self.state is LeaseState.LOST:
            return Due(Action.RECREATE, now + self.recovery_window), changes
        later = [w for w in self.windows if w > now]
        deadline = min(later[0] if later else self.grant.expires_at, self.grant.expires_at)
        return Due(Action.RENEW, max(deadline, now + 0.001)), changes

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, grant: Grant) -> list[Change]:
        """The mapping request was answered with success: a new grant."""
        previous, was_lost = self.grant, self.state is LeaseState.LOST
        self._in_flight = False
        if self.state is LeaseState.CLOSED:
            return []
        refreshed, self._refreshing = self._refreshing, False
        self.grant = grant
        self.state = LeaseState.ACTIVE
        self._recreate = False
        self._backoff = self.recovery_initial
        self._plan(grant)
        moved = (previous.external_address, previous.external_port) != (
            grant.external_address,
            grant.external_port,
        )
        if moved:
            return [
                Change(
                    LeaseEventKind.CHANGED,
                    f"gateway moved the mapping from {previous.endpoint} to {grant.endpoint}",
                )
            ]
        if was_lost:
            return [Change(LeaseEventKind.RECOVERED, f"re-created {grant.endpoint}")]
        if refreshed:
            return [
                Change(
                    LeaseEventKind.RENEWED,
                    f"re-sent after a gateway announcement; held for {grant.lifetime} s",
                )
            ]
        return [Change(LeaseEventKind.RENEWED, f"renewed for {grant.lifetime} s")]

    def failed(self, now: float, retry_after: float = 0.0) -> list[Change]:
        """The attempt ended without success (silence, or an error whose lifetime is
        ``retry_after`` seconds: the server promised the same answer until then, C7)."""
        self._in_flight = False
        if self.state is LeaseState.CLOSED:
            return []
        earliest = max(now, now + retry_after, self._last_attempt + self.min_interval)
        if self.state is LeaseState.ACTIVE and not self._recreate:
            later = [w for w in self.windows if w >= earliest]
            self._next = later[0] if later else None  # None: expiry takes over
        else:
            self._next = max(earliest, now + self._backoff)
            self._backoff = min(self._backoff * 2, self.recovery_max)
        return []

    def gateway_reset(self, now: float, delay: float, reason: str) -> list[Change]:
        """The gateway lost its state (epoch check or announcement): re-create after ``delay``."""
        if self.state is LeaseState.CLOSED:
            return []
        changes = []
        if self.state is LeaseState.ACTIVE:
            changes.append(Change(LeaseEventKind.LOST, f"gateway lost its mappings ({reason})"))
        self.state = LeaseState.LOST
        self._recreate = True
        self._backoff = self.recovery_initial
        if not self._in_flight:
            self._next = now + delay
        return changes

    def refresh(self, now: float, delay: float) -> None:
        """Re-send the mapping request after ``delay`` although it may still exist (a gateway
        announcement: its address or state may have changed)."""
        if self.state is LeaseState.CLOSED:
            return
        self._recreate = True
        self._refreshing = self.state is LeaseState.ACTIVE
        if not self._in_flight:
            self._next = now + delay if self._next is None else min(self._next, now + delay)

    def close(self) -> None:
        self.state = LeaseState.CLOSED
        self._next = None

    # ------------------------------------------------------------------ internals

    def _plan(self, grant: Grant) -> None:
        self.windows = renewal_windows(self.protocol, grant, self.rng, self.min_interval)
        self._next = self.windows[0] if self.windows else None


@attrs.define
class ErrorMemory:
    """What gateways promised to keep answering (RFC 6887 §7.2 error lifetimes, C7).

    A PCP error response's lifetime says how long the same request will get the same error.
    Asking again sooner only adds load, so a create attempt for the same gateway, protocol and
    internal port within that time gets the remembered error without sending anything.
    """

    _until: dict[tuple[str, int, int], tuple[float, Exception]] = attrs.field(factory=dict)

    def remember(
        self, key: tuple[str, int, int], error: Exception, lifetime: float, now: float
    ) -> None:
        if lifetime > 0:
            self._until[key] = (now + lifetime, error)

    def recall(self, key: tuple[str, int, int], now: float) -> Exception | None:
        found = self._until.get(key)
        if found is None:
            return None
        until, error = found
        if now >= until:
            del self._until[key]
            return None
        return error

    def forget(self, key: tuple[str, int, int]) -> None:
        self._until.pop(key, None)
