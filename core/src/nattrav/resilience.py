"""Retry and circuit-breaker policies, and the breakers themselves.

Theory of operation
-------------------
Two layers keep a failing method from costing the user time:

* Retries (stamina) repeat a *whole attempt* of a method when it fails with an error marked
  retryable, with jittered exponential backoff. Packet retransmission is not a retry: it
  belongs to each protocol's state machine.
* A circuit breaker per method (and, for plugins, per server) counts consecutive failures.
  After ``threshold`` of them it *opens*: attempts are skipped at once (``CircuitOpen``) so the
  chain falls through without waiting for a dead server's timeout. After a cool-down it lets
  one trial through (*half-open*); success closes it, failure re-opens it with a doubled
  cool-down (capped). The clock is injected so tests drive it without sleeping.

Breakers live in a ``BreakerBoard`` owned by a ``Runtime``: no global state, so two runtimes in
one process do not share breaker state unless the application passes the same board.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import attrs

__all__ = [
    "BreakerBoard",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "RetryPolicy",
]


@attrs.frozen
class RetryPolicy:
    """How stamina retries a method's retryable failures.

    ``attempts`` counts the first try; ``timeout`` bounds all tries together (seconds).
    """

    attempts: int = 2
    wait_initial: float = 0.1
    wait_max: float = 1.0
    wait_jitter: float = 0.1
    timeout: float | None = None


@attrs.frozen
class BreakerPolicy:
    """When a breaker opens and how long it stays open."""

    threshold: int = 3
    cooldown: float = 5.0
    max_cooldown: float = 300.0
    enabled: bool = True


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


StateListener = Callable[[str, BreakerState, BreakerState], None]


@attrs.define
class CircuitBreaker:
    """A consecutive-failure circuit breaker with exponential cool-down.

    ``allow()`` says whether an attempt may start now; report its end with ``success()`` or
    ``failure()``. In the half-open state only one trial runs at a time.
    """

    name: str
    policy: BreakerPolicy = attrs.field(factory=BreakerPolicy)
    clock: Callable[[], float] = time.monotonic
    on_change: StateListener | None = None
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    _trial_running: bool = False

    def _set(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new and self.on_change is not None:
            self.on_change(self.name, old, new)

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.current_cooldown - self.clock())

    def allow(self) -> bool:
        if not self.policy.enabled:
            return True
        if self.state is BreakerState.OPEN:
            if self.retry_after() > 0:
                return False
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._trial_running:
                return False
            self._trial_running = True
        return True

    def success(self) -> None:
        self._trial_running = False
        self.failures = 0
        self.current_cooldown = 0.0
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        if not self.policy.enabled:
            return
        self._trial_running = False
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.current_cooldown = min(self.current_cooldown * 2, self.policy.max_cooldown)
            self._open()
        elif self.failures >= self.policy.threshold:
            self.current_cooldown = self.policy.cooldown
            self._open()

    def cancelled(self) -> None:
        """An attempt was cancelled (lost a race): neither success nor failure."""
        self._trial_running = False
        if self.state is BreakerState.HALF_OPEN:
            # Let the next caller run the trial instead.
            pass

    def _open(self) -> None:
        self.opened_at = self.clock()
        self._set(BreakerState.OPEN)


@attrs.define
class BreakerBoard:
    """The breakers of one runtime, created on first use, keyed by name.

    Methods use their method name; plugins may key per server (``"stun:[2001:db8::1]:3478"``).
    """

    policy_for: Callable[[str], BreakerPolicy] = attrs.field(default=lambda _name: BreakerPolicy())
    clock: Callable[[], float] = time.monotonic
    on_change: StateListener | None = None
    _breakers: dict[str, CircuitBreaker] = attrs.field(factory=dict)

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name, self.policy_for(name), clock=self.clock, on_change=self.on_change
            )
            self._breakers[name] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        return {name: b.state for name, b in self._breakers.items()}
