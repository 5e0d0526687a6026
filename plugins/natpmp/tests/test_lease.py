"""Lease lifecycle under a fake clock: renewal windows (RFC 6886 §3.3, RFC 6887 §11.2.1), the
4 s floor, expiry, recovery back-off, gateway resets, announcements and error lifetimes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from natpmp_testkit import FixedRandom
from nattrav.models import LeaseEventKind
from nattrav_natpmp.lease import (
    Action,
    ErrorMemory,
    Grant,
    Lease,
    LeaseState,
    renewal_windows,
)


def grant(lifetime: int = 3600, at: float = 100.0, port: int = 40000) -> Grant:
    return Grant("198.51.100.2", port, lifetime, at)


def test_pcp_windows_at_their_lower_bounds() -> None:
    windows = renewal_windows("pcp", grant(3200, at=0.0), FixedRandom(0.0))
    assert windows[:4] == [1600.0, 2400.0, 2800.0, 3000.0]  # 1/2, 3/4, 7/8, 15/16


def test_pcp_windows_at_their_upper_bounds() -> None:
    windows = renewal_windows("pcp", grant(3200, at=0.0), FixedRandom(1.0))
    assert windows[:3] == [2000.0, 2600.0, 2900.0]  # 5/8, 3/4+1/16, 7/8+1/32


def test_natpmp_windows_halve_what_is_left() -> None:
    assert renewal_windows("natpmp", grant(64, at=0.0), random.Random())[:3] == [32.0, 48.0, 56.0]


def test_windows_never_closer_than_four_seconds() -> None:
    windows = renewal_windows("natpmp", grant(64, at=0.0), random.Random())
    assert windows == [32.0, 48.0, 56.0, 60.0]  # 60 + 4 reaches the expiry: no more
    assert renewal_windows("natpmp", grant(6, at=0.0), random.Random()) == [4.0]
    assert renewal_windows("pcp", grant(3, at=0.0), random.Random()) == []  # P7: no spinning


@given(st.integers(1, 10**6), st.integers(0, 2**32), st.floats(0, 1))
def test_pcp_windows_property(lifetime: int, seed: int, fraction: float) -> None:
    g = grant(lifetime, at=0.0)
    windows = renewal_windows("pcp", g, random.Random(seed))
    assert windows == sorted(windows)
    assert all(w < g.expires_at for w in windows)
    assert all(b - a >= 4.0 - 1e-9 for a, b in zip([0.0, *windows], windows, strict=False))
    for k, w in enumerate(windows, start=1):
        low = lifetime * (1 - 2.0**-k)
        high = low + lifetime * 2.0 ** -(k + 2)
        assert w >= low - 1e-6
        # Pushed later only by the 4 s floor.
        assert w <= max(high, windows[k - 2] + 4.0 if k > 1 else 4.0) + 1e-6


def lease(lifetime: int = 3600, protocol: str = "pcp", **kw: object) -> Lease:
    return Lease(protocol, grant(lifetime), rng=FixedRandom(0.0), **kw)  # type: ignore[arg-type]


def test_renewal_is_due_in_its_window_and_gives_up_at_the_next() -> None:
    lz = lease()
    assert lz.get_timer() == 1900.0  # 100 + 3600/2
    assert lz.poll(1899.0) == (None, [])
    due, changes = lz.poll(1900.0)
    assert due is not None and due.action is Action.RENEW and due.deadline == 2800.0 and not changes
    assert lz.in_flight and lz.get_timer() is None
    assert lz.failed(2800.0) == []
    assert lz.get_timer() == 2800.0  # the 3/4 window starts as the 1/2 window's attempt ends
    due, _ = lz.poll(2800.0)
    assert due is not None and due.deadline == 3250.0  # 7/8


def test_renewal_success_reports_renewed_and_replans() -> None:
    lz = lease()
    lz.poll(1900.0)
    changes = lz.succeeded(grant(3600, at=1900.5))
    assert [c.kind for c in changes] == [LeaseEventKind.RENEWED]
    assert lz.get_timer() == pytest.approx(1900.5 + 1800)


def test_a_new_external_port_is_changed() -> None:
    lz = lease()
    lz.poll(1900.0)
    changes = lz.succeeded(grant(3600, at=1901.0, port=40001))
    assert [c.kind for c in changes] == [LeaseEventKind.CHANGED]
    assert "198.51.100.2:40000 to 198.51.100.2:40001" in changes[0].detail


def test_expiry_loses_the_lease_then_recreates_with_backoff() -> None:
    lz = lease(60, protocol="natpmp")
    for _ in range(10):  # every renewal window fails
        timer = lz.get_timer()
        assert timer is not None
        due, changes = lz.poll(timer)
        if changes:
            break
        assert due is not None and due.action is Action.RENEW
        lz.failed(timer)
    assert [c.kind for c in changes] == [LeaseEventKind.LOST]
    assert lz.state.value == "lost" and timer == 160.0
    assert lz.windows == [130.0, 145.0, 152.5, 156.5]
    # Re-created straight away, but not within 4 s of the last renewal attempt (156.5).
    assert due is None and lz.get_timer() == 160.5
    due, _ = lz.poll(160.5)
    assert due is not None and due.action is Action.RECREATE and due.deadline == 160.5 + 30.0
    retry_times = []
    now = 160.5
    for _ in range(8):
        lz.failed(now)
        now = lz.get_timer()  # type: ignore[assignment]
        retry_times.append(now)
        due, _ = lz.poll(now)
    gaps = [b - a for a, b in zip([160.5, *retry_times], retry_times, strict=False)]
    assert gaps == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    changes = lz.succeeded(grant(60, at=now + 0.1))
    assert [c.kind for c in changes] == [LeaseEventKind.RECOVERED]
    assert lz.state is LeaseState.ACTIVE


def test_p7_one_second_lifetime_cannot_spin() -> None:
    lz = Lease("natpmp", grant(1, at=0.0), rng=random.Random(), min_interval=4.0)
    assert lz.windows == []
    due, changes = lz.poll(1.0)  # expired
    assert [c.kind for c in changes] == [LeaseEventKind.LOST] and due is not None
    lz.succeeded(grant(1, at=1.01))
    due, changes = lz.poll(2.02)  # expired again, but the last try was at 1.0
    assert due is None and lz.get_timer() == 5.0


def test_gateway_reset_marks_lost_and_recreates_after_the_delay() -> None:
    lz = lease()
    changes = lz.gateway_reset(500.0, 3.2, "epoch 2 after 400")
    assert [c.kind for c in changes] == [LeaseEventKind.LOST]
    assert "epoch 2 after 400" in changes[0].detail
    assert lz.get_timer() == 503.2
    due, _ = lz.poll(503.2)
    assert due is not None and due.action is Action.RECREATE
    assert [c.kind for c in lz.succeeded(grant(3600, at=503.3))] == [LeaseEventKind.RECOVERED]
    assert lz.gateway_reset(600.0, 1.0, "again")[0].kind is LeaseEventKind.LOST


def test_reset_detected_on_our_own_answer_reports_lost_then_recovered() -> None:
    lz = lease()
    lz.poll(1900.0)  # the renewal is in flight; its answer reveals the reboot
    lost = lz.gateway_reset(1900.1, 4.0, "went backwards")
    recovered = lz.succeeded(grant(3600, at=1900.1))
    assert [c.kind for c in lost + recovered] == [LeaseEventKind.LOST, LeaseEventKind.RECOVERED]


def test_announcement_refresh_resends_without_reporting_loss() -> None:
    lz = lease()
    lz.refresh(200.0, 2.5)
    assert lz.get_timer() == 202.5
    due, changes = lz.poll(202.5)
    assert due is not None and due.action is Action.RECREATE and changes == []
    [change] = lz.succeeded(grant(3600, at=202.6))
    assert change.kind is LeaseEventKind.RENEWED and "gateway announcement" in change.detail


def test_c7_error_lifetime_postpones_the_next_try() -> None:
    lz = lease()
    lz.poll(1900.0)
    lz.failed(1900.5, retry_after=1000.0)  # same error promised until 2900.5
    assert lz.get_timer() == 3250.0  # first window after 2900.5
    lz2 = lease(60, protocol="natpmp")
    lz2.gateway_reset(110.0, 0.0, "x")
    lz2.poll(110.0)
    lz2.failed(110.2, retry_after=30.0)
    assert lz2.get_timer() == pytest.approx(140.2)


def test_closed_lease_does_nothing() -> None:
    lz = lease()
    lz.close()
    assert lz.get_timer() is None and lz.poll(10**6) == (None, [])
    assert lz.succeeded(grant()) == [] and lz.gateway_reset(1.0, 0.0, "x") == []


def test_error_memory() -> None:
    memory = ErrorMemory()
    key = ("192.168.1.1", 17, 5000)
    error = RuntimeError("no resources")
    memory.remember(key, error, 30, now=100.0)
    assert memory.recall(key, 129.9) is error
    assert memory.recall(key, 130.0) is None
    memory.remember(key, error, 0, now=200.0)  # lifetime 0: nothing promised
    assert memory.recall(key, 200.0) is None
