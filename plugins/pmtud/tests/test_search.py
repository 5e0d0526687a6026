"""The RFC 8899 search under a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError
from nattrav_pmtud.search import (
    BlackHoleDetected,
    EnteredError,
    Phase,
    PlpmtuChanged,
    PmtuSearch,
    PtbVerdict,
    SearchCompleted,
    SearchSettings,
    udp_payload,
)
from pmtud_fakes import run

S4 = SearchSettings(family=4, probe_timeout=1.0, rtt_floor=0.01)
S6 = SearchSettings(family=6, probe_timeout=1.0, rtt_floor=0.01)


def test_defaults_follow_rfc_8899() -> None:
    assert (S4.base, S4.minimum, S6.base, S6.minimum) == (1200, 68, 1280, 1280)
    assert S4.max_probes == 3 and S4.raise_interval == 600.0
    assert udp_payload(1400, 4) == 1372 and udp_payload(1400, 6) == 1352


def test_first_probe_is_the_base_size_at_once() -> None:
    search = PmtuSearch(S6)
    search.start(5.0)
    [order] = search.probes_to_send()
    assert (order.size, order.purpose, order.attempt) == (1280, "base", 1)
    assert search.phase is Phase.BASE and search.get_timer() == 6.0


def test_methods_before_start_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        PmtuSearch(S4).handle_timer(0.0)


def test_unconstrained_path_confirms_the_maximum_optimistically() -> None:
    r = run(9000, S4)
    r.until_settled()
    res = r.search.result()
    assert res.plpmtu == 9000 and res.confirmed and res.limited_by == "configured-maximum"
    assert [o.size for _t, o in r.sent] == [1200, 9000]
    assert isinstance(r.events[-1], SearchCompleted)


@pytest.mark.parametrize("pmtu", [1280, 1400, 1492, 1500, 4352, 8996])
def test_loss_alone_finds_the_exact_size(pmtu: int) -> None:
    """An ICMP black hole: probes above the PMTU vanish; bisection still hits it exactly."""
    r = run(pmtu, S4)
    r.until_settled()
    res = r.search.result()
    assert res.plpmtu == pmtu and res.confirmed
    assert res.upper_bound == pmtu + 4
    assert "silent-loss" in res.how and "ptb-hint" not in res.how
    # Every failed size cost exactly MAX_PROBES lost probes.
    assert res.probes_lost % 3 == 0


def test_ptb_hint_is_probed_next_and_confirmed_by_a_probe() -> None:
    r = run(1400, S4, ptb=True)
    r.until_settled()
    sizes = [o.size for _t, o in r.sent]
    assert sizes == [1200, 9000, 1400]  # base, optimistic max, the PTB's size
    res = r.search.result()
    assert res.plpmtu == 1400 and "ptb-hint" in res.how and res.probes_lost == 0
    changes = [e for e in r.events if isinstance(e, PlpmtuChanged)]
    assert [c.reason for c in changes] == ["probe acknowledged"]


def test_ptb_never_sets_the_plpmtu_by_itself() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    base = search.probes_to_send()[0]
    search.probe_acked(base.probe_id, 0.05)
    big = search.probes_to_send()[0]
    assert search.ptb_received(big.probe_id, 1400, 0.06) is PtbVerdict.USED
    assert search.plpmtu == 1200  # unchanged until a 1400 probe is answered
    search.handle_timer(search.get_timer() or 0.0)
    [hinted] = search.probes_to_send()
    assert hinted.size == 1400 and search.plpmtu == 1200


@pytest.mark.parametrize(
    ("mtu", "verdict"),
    [
        (60, PtbVerdict.BELOW_MIN),
        (9000, PtbVerdict.NOT_SMALLER),
        (12000, PtbVerdict.NOT_SMALLER),
        (1100, PtbVerdict.BELOW_BASE),
    ],
)
def test_ptb_sizes_that_must_be_discarded(mtu: int, verdict: PtbVerdict) -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    search.probe_acked(search.probes_to_send()[0].probe_id, 0.05)
    big = search.probes_to_send()[0]
    assert big.size == 9000
    assert search.ptb_received(big.probe_id, mtu, 0.06) is verdict
    assert search.in_flight == big and search.plpmtu == 1200 and search.upper_bound is None
    assert search.ptb_discarded[verdict.value] == 1 and search.ptb_used == 0


def test_ptb_for_a_probe_we_never_sent_is_discarded() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    assert search.ptb_received(999, 1300, 0.01) is PtbVerdict.UNKNOWN_PROBE


def test_ptb_below_base_never_lowers_anything_even_when_repeated() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    base = search.probes_to_send()[0]
    for _ in range(5):
        assert search.ptb_received(base.probe_id, 600, 0.01) is PtbVerdict.BELOW_BASE
    assert search.phase is Phase.BASE and search.plpmtu == 1200


def test_isolated_loss_does_not_fail_a_size() -> None:
    """MAX_PROBES: the first 9000 probe is lost, the second answered."""
    r = run(9000, S4, lose={2})
    r.until_settled()
    assert r.search.result().plpmtu == 9000
    sizes = [o.size for _t, o in r.sent]
    assert sizes == [1200, 9000, 9000]
    assert [o.attempt for _t, o in r.sent] == [1, 1, 2]


def test_a_size_fails_after_exactly_max_probes_losses() -> None:
    r = run(1200, SearchSettings(family=4, max_probes=3, optimistic=True))
    r.until(3.2)  # base answered at 0.05; 9000 sent at 0.05, 1.05, 2.05
    nines = [(t, o.attempt) for t, o in r.sent if o.size == 9000]
    assert nines == [(0.05, 1), (1.05, 2), (2.05, 3)]
    assert r.search.upper_bound == 9000
    assert [o.size for _t, o in r.sent][-1] == 1500  # next: the Ethernet size


def test_probes_are_at_least_one_rtt_apart() -> None:
    """A PTB from a nearby router arrives long before an RTT: the next probe waits."""
    r = run(1400, S4, ptb=True, rtt=0.2, ptb_delay=0.001)
    r.until_settled()
    times = [t for t, _o in r.sent]
    srtt_after_base = 0.2
    assert all(b - a >= srtt_after_base - 1e-9 for a, b in itertools.pairwise(times))


def test_spacing_has_a_floor_when_the_rtt_is_tiny() -> None:
    r = run(1400, SearchSettings(family=4, rtt_floor=0.05), ptb=True, rtt=0.0001)
    r.until_settled()
    times = [t for t, _o in r.sent]
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times))


def test_probe_timer_grows_with_a_slow_path() -> None:
    search = PmtuSearch(SearchSettings(family=4, probe_timeout=0.1))
    search.start(0.0)
    search.probe_acked(search.probes_to_send()[0].probe_id, 2.0)
    assert search.srtt == 2.0 and search.probe_timer() == pytest.approx(6.0)


def test_late_reply_still_proves_the_size() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    search.probe_acked(search.probes_to_send()[0].probe_id, 0.05)
    first = search.probes_to_send()[0]
    search.handle_timer(1.05)  # lost: a second 9000 probe goes out
    assert search.probes_to_send()[0].size == 9000
    assert search.probe_acked(first.probe_id, 1.5)
    assert search.plpmtu == 9000 and search.confirmed
    assert not search.probe_acked(first.probe_id, 1.6)  # a duplicate changes nothing


def test_base_lost_max_probes_times_enters_error_then_recovers() -> None:
    s = SearchSettings(family=6, confirm_interval=30.0)
    search = PmtuSearch(s)
    search.start(0.0)
    for t in (1.0, 2.0, 3.0):
        assert search.probes_to_send()[0].size == 1280
        search.handle_timer(t)
    assert search.phase is Phase.ERROR
    assert isinstance(list(search.events())[-1], EnteredError)
    res = search.result()
    assert not res.confirmed and res.plpmtu == 1280 and res.limited_by == "unconfirmed"
    assert search.get_timer() == 33.0 and search.settled
    search.handle_timer(33.0)
    retry = search.probes_to_send()[0]
    assert retry.size == 1280
    search.probe_acked(retry.probe_id, 33.1)
    assert search.phase is Phase.SEARCHING and search.confirmed


def test_error_reports_min_plpmtu_for_ipv4() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    for t in (1.0, 2.0, 3.0):
        search.handle_timer(t)
    assert search.result().plpmtu == 68


def test_validated_ptb_below_plpmtu_is_a_black_hole() -> None:
    r = run(1500, S4)
    r.until_settled()
    assert r.search.plpmtu == 1500
    # The path shrinks to 1400: the next confirmation probe draws a PTB of 1400.
    r.path.pmtu, r.path.ptb = 1400, True
    settled_at = r.now
    r.until(settled_at + 60.5)  # the confirmation probe went out and drew the PTB
    r.until_settled()
    assert any(isinstance(e, BlackHoleDetected) for e in r.events)
    res = r.search.result()
    assert res.plpmtu == 1400 and res.confirmed and "black-hole-detected" in res.how
    assert 1200 in [o.size for t, o in r.sent if t >= settled_at + 60]  # back through BASE


def test_lost_confirmation_probes_are_a_black_hole() -> None:
    r = run(1500, S4)
    r.until_settled()
    r.path.pmtu = 1300  # silently, no ICMP
    r.until(r.now + 64.0)
    assert any(isinstance(e, BlackHoleDetected) for e in r.events)
    r.until_settled()
    assert r.search.result().plpmtu == 1300


def test_report_black_hole_from_the_application() -> None:
    r = run(1500, S4)
    r.until_settled()
    r.search.report_black_hole(r.now, "app lost PLPMTU-sized datagrams")
    assert r.search.phase is Phase.BASE and r.search.plpmtu == 1200
    r.until_settled()
    # The size that was reported failing is excluded until the raise timer re-searches.
    assert r.search.plpmtu == 1496 and r.search.upper_bound == 1500


def test_raise_timer_finds_a_larger_path() -> None:
    s = SearchSettings(family=4, raise_interval=600.0, confirm_interval=None)
    r = run(1400, s, ptb=True)
    r.until_settled()
    done_at = r.now
    assert r.search.plpmtu == 1400 and r.search.get_timer() == pytest.approx(done_at + 600.0)
    r.path.pmtu = 1500
    r.until(done_at + 599.0)
    assert r.search.plpmtu == 1400 and r.search.phase is Phase.SEARCH_COMPLETE
    r.until(done_at + 700.0)
    assert r.search.plpmtu == 1500 and r.search.phase is Phase.SEARCH_COMPLETE


def test_timers_off_leave_a_completed_search_quiet() -> None:
    r = run(1400, SearchSettings(family=4, raise_interval=None, confirm_interval=None))
    r.until_settled()
    assert r.search.get_timer() is None


def test_local_interface_limit_lowers_the_maximum() -> None:
    r = run(9000, SearchSettings(family=4, max_plpmtu=65535), local_mtu=1500)
    r.until_settled()
    res = r.search.result()
    assert res.plpmtu == 1500 and res.limited_by == "local-interface" and res.local_mtu == 1500


def test_local_refusal_without_an_mtu_still_converges() -> None:
    search = PmtuSearch(S4)
    search.start(0.0)
    search.probe_acked(search.probes_to_send()[0].probe_id, 0.01)
    big = search.probes_to_send()[0]
    search.send_failed(big.probe_id, 0.01)  # no MTU given (non-Linux)
    assert search.max_plpmtu == 8996 and search.local_mtu is None
    search.handle_timer(search.get_timer() or 0.0)
    # Bisection goes on (no walk down in 4-byte steps when the platform hides the MTU).
    assert search.probes_to_send()[0].size == 1500


def test_invalid_settings_are_all_reported() -> None:
    bad = SearchSettings(family=4, max_plpmtu=70000, max_probes=0, probe_timeout=0)
    problems = bad.problems()
    assert len(problems) == 3
    with pytest.raises(LocalProtocolError, match="max_probes"):
        PmtuSearch(bad)
    assert SearchSettings(family=6, min_plpmtu=1000).problems()


@settings(max_examples=200, deadline=None)
@given(
    pmtu=st.integers(1200, 9000),
    ptb=st.booleans(),
    family=st.sampled_from([4, 6]),
    rtt=st.floats(0.0001, 0.5),
)
def test_search_always_converges_on_the_aligned_path_mtu(
    pmtu: int, ptb: bool, family: int, rtt: float
) -> None:
    s = SearchSettings(family=family, probe_timeout=1.0)
    pmtu = max(pmtu, s.base)
    r = run(pmtu, s, ptb=ptb, rtt=rtt)
    r.until_settled()
    res = r.search.result()
    assert res.confirmed and res.plpmtu == pmtu - pmtu % 4
    assert res.probes_sent <= 60
    times = [t for t, _o in r.sent]
    assert all(b >= a for a, b in itertools.pairwise(times))


@settings(max_examples=200, deadline=None)
@given(
    ptbs=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 70000)), max_size=20),
    pmtu=st.integers(1200, 9000),
)
def test_ptbs_never_take_the_plpmtu_below_base(ptbs: list[tuple[int, int]], pmtu: int) -> None:
    """Whatever PTBs arrive for our probes (M2), the PLPMTU stays >= BASE and only grows by
    acknowledged probes."""
    r = run(pmtu, S4)
    acked_sizes = {1200}
    for pid, size in ptbs:
        r.step()
        r.search.ptb_received(pid, size, r.now)
        assert r.search.plpmtu >= 1200
        acked_sizes |= {o.size for _t, o in r.sent if o.size <= pmtu}
        assert r.search.plpmtu in acked_sizes or not r.search.confirmed
