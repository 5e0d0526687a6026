"""The recovery ladder and lease schedule, as pure decisions (every SOAP error path)."""

from __future__ import annotations

import random

import pytest
from nattrav.errors import MethodError, MethodUnavailable
from nattrav_upnp import errors as e
from nattrav_upnp.planner import GatewayQuirks, LeaseSchedule, MappingPlanner, MapStep, QuirkBook


def _planner(
    igd2: bool = True, quirks: GatewayQuirks | None = None, lease: int = 3600
) -> MappingPlanner:
    ports = iter([50001, 50002, 50003, 50004, 50005])
    return MappingPlanner(
        quirks or GatewayQuirks(),
        igd2=igd2,
        wanted_port=40000,
        lease=lease,
        random_port=lambda: next(ports),
    )


def test_first_step_is_plain_add_with_finite_lease() -> None:
    assert _planner().first() == MapStep("AddPortMapping", 40000, 3600)


def test_718_on_igd2_switches_to_add_any_and_is_remembered_on_success() -> None:
    p = _planner()
    step = p.next_after(p.first(), e.ConflictInMappingEntryError(718))
    assert step == MapStep("AddAnyPortMapping", 40000, 3600)
    p.succeeded(step)
    assert p.quirks.use_add_any
    assert _planner(quirks=p.quirks).first().action == "AddAnyPortMapping"


def test_718_on_igd1_tries_other_ports_then_gives_up() -> None:
    p = _planner(igd2=False)
    step = p.first()
    ports = []
    for _ in range(3):
        step = p.next_after(step, e.ConflictInMappingEntryError(718))
        assert step.action == "AddPortMapping"
        ports.append(step.external_port)
    assert ports == [50001, 50002, 50003]
    with pytest.raises(MethodError, match="conflicting") as info:
        p.next_after(step, e.ConflictInMappingEntryError(718))
    assert not info.value.retryable


def test_729_is_treated_like_a_conflict() -> None:
    p = _planner(igd2=False)
    step = p.next_after(p.first(), e.ConflictWithOtherMechanismsError(729))
    assert step.external_port == 50001


def test_725_means_lease_zero_remembered() -> None:
    quirks = GatewayQuirks()
    p = _planner(quirks=quirks)
    step = p.next_after(p.first(), e.OnlyPermanentLeasesSupportedError(725))
    assert step == MapStep("AddPortMapping", 40000, 0)
    assert quirks.permanent_only
    assert _planner(quirks=quirks).first().lease == 0


def test_725_with_lease_zero_already_is_an_error() -> None:
    p = _planner(lease=0)
    with pytest.raises(MethodError):
        p.next_after(p.first(), e.OnlyPermanentLeasesSupportedError(725))


def test_402_on_a_lease_retries_with_zero_and_learns_only_if_that_works() -> None:
    quirks = GatewayQuirks()
    p = _planner(quirks=quirks)
    step = p.next_after(p.first(), e.InvalidArgsError(402))
    assert step.lease == 0
    assert not quirks.permanent_only
    p.succeeded(step)
    assert quirks.permanent_only


def test_402_with_lease_zero_is_final() -> None:
    p = _planner(lease=0)
    with pytest.raises(MethodError, match="402"):
        p.next_after(p.first(), e.InvalidArgsError(402))


def test_726_empties_remote_host() -> None:
    quirks = GatewayQuirks()
    p = _planner(quirks=quirks)
    step = p.next_after(
        MapStep("AddPortMapping", 40000, 3600, "198.51.100.1"),
        e.RemoteHostOnlySupportsWildcardError(726),
    )
    assert step.remote_host == ""
    assert quirks.wildcard_remote_only


def test_727_switches_to_add_any_on_igd2_and_fails_on_igd1() -> None:
    quirks = GatewayQuirks()
    p = _planner(quirks=quirks)
    step = p.next_after(p.first(), e.ExternalPortOnlySupportsWildcardError(727))
    assert step.action == "AddAnyPortMapping"
    assert quirks.use_add_any
    p1 = _planner(igd2=False)
    with pytest.raises(MethodError, match="727"):
        p1.next_after(p1.first(), e.ExternalPortOnlySupportsWildcardError(727))


def test_401_on_add_any_falls_back_and_is_remembered() -> None:
    quirks = GatewayQuirks(use_add_any=True)
    p = _planner(quirks=quirks)
    first = p.first()
    assert first.action == "AddAnyPortMapping"
    step = p.next_after(first, e.InvalidActionError(401))
    assert step.action == "AddPortMapping"
    assert quirks.no_add_any and not quirks.use_add_any
    assert _planner(quirks=quirks).first().action == "AddPortMapping"


@pytest.mark.parametrize(
    "error", [e.InvalidActionError(401), e.ActionNotAuthorizedError(606)], ids=["401", "606"]
)
def test_401_and_606_on_add_port_mapping_make_the_method_unavailable(
    error: e.UpnpActionError,
) -> None:
    p = _planner()
    with pytest.raises(MethodUnavailable):
        p.next_after(p.first(), error)


def test_728_table_full_is_not_retryable() -> None:
    p = _planner()
    with pytest.raises(MethodError, match="full") as info:
        p.next_after(p.first(), e.NoPortMapsAvailableError(728))
    assert not info.value.retryable
    assert not isinstance(info.value, MethodUnavailable)


def test_501_is_retryable() -> None:
    p = _planner()
    with pytest.raises(MethodError) as info:
        p.next_after(p.first(), e.ActionFailedError(501))
    assert info.value.retryable


def test_unknown_code_is_a_plain_error_with_the_code() -> None:
    p = _planner()
    with pytest.raises(MethodError, match="799"):
        p.next_after(p.first(), e.UpnpActionError(799, "odd"))


def test_ladder_is_bounded() -> None:
    p = _planner(igd2=True)
    p.max_steps = 3
    step = p.first()
    step = p.next_after(step, e.OnlyPermanentLeasesSupportedError(725))
    step = p.next_after(step, e.ConflictInMappingEntryError(718))
    with pytest.raises(MethodError, match="gave up"):
        p.next_after(step, e.ConflictInMappingEntryError(718))


def test_quirk_book_is_per_gateway() -> None:
    book = QuirkBook()
    book.get("uuid:a").permanent_only = True
    assert book.get("uuid:a").permanent_only
    assert not book.get("uuid:b").permanent_only
    assert len(book) == 2


def test_lease_schedule_uses_the_shorter_lease_and_jitters_below_half() -> None:
    rng = random.Random(7)
    s = LeaseSchedule(3600, granted=600, verify_interval=300)
    assert s.effective == 600
    delays = [s.renew_delay(rng) for _ in range(50)]
    assert all(delay is not None and 270 <= delay <= 300 for delay in delays)
    assert len(set(delays)) > 1
    assert all(270 <= s.verify_delay(rng) <= 300 for _ in range(20))


def test_lease_schedule_turns_week_long_grant_of_lease_zero_into_renewals() -> None:
    """H7: we asked for 0 (permanent) but the router granted a week: renew within it."""
    s = LeaseSchedule(0, granted=604800)
    delay = s.renew_delay(random.Random(1))
    assert delay is not None and delay <= 302400


def test_permanent_lease_is_never_renewed() -> None:
    assert LeaseSchedule(0, granted=0).renew_delay(random.Random(1)) is None
    assert LeaseSchedule(0).renew_delay(random.Random(1)) is None
