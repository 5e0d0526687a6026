from __future__ import annotations

from nattrav.resilience import BreakerBoard, BreakerPolicy, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_cools_down_exponentially() -> None:
    clock = Clock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    b = CircuitBreaker(
        "stun",
        BreakerPolicy(threshold=2, cooldown=5.0, max_cooldown=12.0),
        clock=clock,
        on_change=lambda n, o, s: changes.append((n, o, s)),
    )
    assert b.allow()
    b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_after() == 5.0
    clock.now = 5.0
    assert b.allow()  # half-open trial
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # only one trial at a time
    b.failure()  # trial failed: open again, doubled cool-down
    assert b.state is BreakerState.OPEN
    assert b.retry_after() == 10.0
    clock.now = 15.0
    assert b.allow()
    b.failure()
    assert b.retry_after() == 12.0  # capped
    clock.now = 27.0
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.failures == 0
    assert [c[2] for c in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_success_resets_the_count() -> None:
    b = CircuitBreaker("m", BreakerPolicy(threshold=2), clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state is BreakerState.CLOSED


def test_cancelled_trial_frees_the_half_open_slot() -> None:
    clock = Clock()
    b = CircuitBreaker("m", BreakerPolicy(threshold=1, cooldown=1.0), clock=clock)
    b.failure()
    clock.now = 1.0
    assert b.allow()
    b.cancelled()
    assert b.allow()


def test_disabled_breaker_never_opens() -> None:
    b = CircuitBreaker("m", BreakerPolicy(threshold=1, enabled=False), clock=Clock())
    for _ in range(5):
        b.failure()
    assert b.allow() and b.state is BreakerState.CLOSED


def test_board_keys_breakers_and_uses_policy() -> None:
    board = BreakerBoard(policy_for=lambda n: BreakerPolicy(threshold=1 if n == "a" else 5))
    board.get("a").failure()
    board.get("b").failure()
    assert board.states() == {"a": BreakerState.OPEN, "b": BreakerState.CLOSED}
    assert board.get("a") is board.get("a")
