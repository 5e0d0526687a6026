"""Don't Fragment socket options per platform, against recorded header constants."""

from __future__ import annotations

import socket
import sys

import pytest
from nattrav_pmtud.sockopts import current_platform, dont_fragment_plan


def _calls(platform: str, family: int, dual: bool = False) -> list[tuple[int, int, int]]:
    plan = dont_fragment_plan(platform, family, dual_stack=dual)
    return [(o.level, o.name, o.value) for o in plan.options]


def test_linux_uses_pmtudisc_probe_and_recverr() -> None:
    # IP_MTU_DISCOVER=10 := IP_PMTUDISC_PROBE=3, IP_RECVERR=11
    assert _calls("linux", 4) == [(0, 10, 3), (0, 11, 1)]
    # IPV6_MTU_DISCOVER=23 := IPV6_PMTUDISC_PROBE=3, IPV6_DONTFRAG=62, IPV6_RECVERR=25
    assert _calls("linux", 6) == [(41, 23, 3), (41, 62, 1), (41, 25, 1)]
    assert _calls("linux", 6, dual=True) == [
        (41, 23, 3),
        (41, 62, 1),
        (41, 25, 1),
        (0, 10, 3),
        (0, 11, 1),
    ]
    plan = dont_fragment_plan("linux", 4)
    assert plan.supported and plan.error_queue and plan.emsgsize == 90


def test_darwin_uses_dontfrag_and_has_no_error_queue() -> None:
    assert _calls("darwin", 4) == [(0, 28, 1)]  # IP_DONTFRAG
    assert _calls("darwin", 6) == [(41, 62, 1)]  # IPV6_DONTFRAG
    # A dual-stack socket has only IPV6_DONTFRAG, which also covers IPv4-mapped sends.
    assert _calls("darwin", 6, dual=True) == [(41, 62, 1)]
    plan = dont_fragment_plan("darwin", 4)
    assert plan.supported and not plan.error_queue and plan.emsgsize == 40


def test_freebsd_ip_dontfrag_differs_from_darwin() -> None:
    assert _calls("freebsd", 4) == [(0, 67, 1)]
    assert _calls("freebsd", 6) == [(41, 62, 1)]
    assert not dont_fragment_plan("freebsd", 6, dual_stack=True).supported


def test_windows_needs_both_options_on_dual_stack_sockets() -> None:
    assert _calls("win32", 4) == [(0, 14, 1)]  # IP_DONTFRAGMENT
    assert _calls("win32", 6) == [(41, 14, 1)]  # IPV6_DONTFRAG
    assert _calls("win32", 6, dual=True) == [(41, 14, 1), (0, 14, 1)]
    assert dont_fragment_plan("win32", 4).emsgsize == 10040


def test_unknown_platforms_refuse_to_probe() -> None:
    plan = dont_fragment_plan("plan9", 4)
    assert not plan.supported and plan.options == () and "refused" in plan.notes


def test_bad_family() -> None:
    with pytest.raises(ValueError, match="family"):
        dont_fragment_plan("linux", 5)


def test_recorded_linux_constants_match_this_host() -> None:
    if current_platform() != "linux":
        pytest.skip("only a Linux host can check Linux's constants")  # CI runs on Linux
    assert socket.IPPROTO_IPV6 == 41
    for name, value in (
        ("IP_MTU_DISCOVER", 10),
        ("IPV6_MTU_DISCOVER", 23),
        ("IPV6_DONTFRAG", 62),
        ("IP_PMTUDISC_PROBE", 3),
        ("IPV6_RECVERR", 25),
        ("IP_RECVERR", 11),
    ):
        if hasattr(socket, name):
            assert getattr(socket, name) == value, name
    # and the kernel accepts them
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        for o in dont_fragment_plan("linux", 6).options:
            s.setsockopt(o.level, o.name, o.value)
            assert s.getsockopt(o.level, o.name) == o.value
    assert sys.platform.startswith("linux")
