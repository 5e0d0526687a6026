"""Epoch validation (P8, C4) on a fake monotonic clock: both RFC rules, their boundaries."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav_natpmp.epoch import EpochTracker, EpochVerdict


def test_first_epoch_is_valid_by_definition() -> None:
    rules: tuple[Literal["natpmp", "pcp"], ...] = ("natpmp", "pcp")
    for rule in rules:
        obs = EpochTracker(rule).observe(123, 1000.0)
        assert obs.verdict is EpochVerdict.FIRST and not obs.lost_state


@pytest.mark.parametrize(
    ("epoch", "elapsed", "verdict"),
    [
        (110, 10.0, EpochVerdict.VALID),  # in step with our clock
        (107, 10.0, EpochVerdict.VALID),  # estimate 100 + 8.75 = 108.75; 107 >= 106.75
        (106, 10.0, EpochVerdict.BELOW_ESTIMATE),  # 106 < 106.75: lost state (P8)
        (5, 10.0, EpochVerdict.BELOW_ESTIMATE),  # rebooted
        (99, 0.5, EpochVerdict.VALID),  # 1 s back, within the 2 s allowance
        (97, 0.0, EpochVerdict.BELOW_ESTIMATE),  # went backwards by 3 s
        (500, 10.0, EpochVerdict.VALID),  # NAT-PMP has no upper bound
    ],
)
def test_natpmp_rule(epoch: int, elapsed: float, verdict: EpochVerdict) -> None:
    tracker = EpochTracker("natpmp")
    tracker.observe(100, 50.0)
    assert tracker.observe(epoch, 50.0 + elapsed).verdict is verdict


@pytest.mark.parametrize(
    ("epoch", "elapsed", "verdict"),
    [
        (1010, 10.0, EpochVerdict.VALID),
        (999, 0.0, EpochVerdict.VALID),  # back by 1 s: reordering, tolerated
        (998, 0.0, EpochVerdict.WENT_BACKWARDS),  # back by 2 s
        (3, 100.0, EpochVerdict.WENT_BACKWARDS),  # rebooted
        # client_delta + 2 < server_delta - server_delta/16: the server ran too fast.
        (1020, 16.0, EpochVerdict.DRIFTED),  # 18 < 20 - 1 = 19
        (1019, 16.0, EpochVerdict.VALID),  # 18 < 19 - 1 = 18 is false
        # server_delta + 2 < client_delta - client_delta/16: the server ran too slow (it lost
        # time: a reboot that happened long enough ago to look like "forward").
        (1013, 16.0, EpochVerdict.VALID),  # 15 < 16 - 1 = 15 is false
        (1012, 16.0, EpochVerdict.DRIFTED),  # 14 < 15
        (1100, 1000.0, EpochVerdict.DRIFTED),  # an hour-long outage cannot be 100 s
    ],
)
def test_pcp_rule(epoch: int, elapsed: float, verdict: EpochVerdict) -> None:
    tracker = EpochTracker("pcp")
    tracker.observe(1000, 7.0)
    assert tracker.observe(epoch, 7.0 + elapsed).verdict is verdict


def test_pcp_uses_integer_arithmetic_truncating_towards_zero() -> None:
    tracker = EpochTracker("pcp")
    tracker.observe(1000, 0.0)
    # client_delta 15.9 s truncates to 15: 15 + 2 = 17 < 19 - 1 = 18 -> drifted.
    assert tracker.observe(1019, 15.9).verdict is EpochVerdict.DRIFTED


def test_one_reboot_is_reported_once() -> None:
    tracker = EpochTracker("pcp")
    tracker.observe(5000, 0.0)
    assert tracker.observe(2, 10.0).lost_state
    assert tracker.observe(12, 20.0).verdict is EpochVerdict.VALID


def test_forget_starts_over() -> None:
    tracker = EpochTracker("natpmp")
    tracker.observe(5000, 0.0)
    tracker.forget()
    assert tracker.observe(1, 1.0).verdict is EpochVerdict.FIRST


def test_describe_mentions_the_numbers() -> None:
    tracker = EpochTracker("pcp")
    tracker.observe(100, 0.0)
    text = tracker.observe(3, 4.0).describe()
    assert "epoch 3 after 100" in text and "went-backwards" in text


@given(
    st.integers(0, 2**31),
    st.floats(0, 10**6),
    st.floats(0, 10**5),
    st.sampled_from(["natpmp", "pcp"]),
)
def test_a_server_that_keeps_time_is_never_judged_rebooted(
    start: int, t0: float, elapsed: float, rule: str
) -> None:
    tracker = EpochTracker(rule)  # type: ignore[arg-type]
    tracker.observe(start, t0)
    assert not tracker.observe(start + int(elapsed), t0 + elapsed).lost_state
