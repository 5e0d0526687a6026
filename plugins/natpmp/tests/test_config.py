"""``[plugins.natpmp]`` validation: defaults, every problem at once, overrides."""

from __future__ import annotations

import pytest
from nattrav.errors import ConfigError
from nattrav_natpmp.config import NatPmpSettings, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == NatPmpSettings()
    assert settings.protocols() == ("pcp", "natpmp")
    assert (settings.probe_window, settings.lifetime, settings.families) == (0.5, None, (4, 6))
    assert (settings.pcp_irt, settings.pcp_mrt, settings.pcp_mrc, settings.pcp_mrd) == (
        3.0,
        1024.0,
        0,
        0.0,
    )
    assert (settings.natpmp_initial, settings.natpmp_max_sends) == (0.25, 9)


def test_values_and_forms() -> None:
    settings = load_settings(
        {
            "protocol": "natpmp",
            "gateway": "192.168.1.1, fe80::1%eth0",
            "lifetime": 7200,
            "families": 4,
            "probe_window": 1,
            "pcp_irt": 1.5,
        }
    )
    assert settings.protocols() == ("natpmp",)
    assert settings.gateway == ("192.168.1.1", "fe80::1%eth0")
    assert settings.families == (4,) and settings.probe_window == 1.0
    assert load_settings({"protocol": "pcp", "gateway": ["10.0.0.1"]}).protocols() == ("pcp",)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "protocol": "upnp",
                "gateway": ["router.local"],
                "lifetime": 0,
                "families": [5],
                "probe_window": 0,
                "pcp_irt": "fast",
                "natpmp_max_sends": 0,
                "announcements": "yes",
                "colour": "blue",
            }
        )
    problems = "\n".join(info.value.problems)
    for needle in (
        "protocol must be 'auto', 'pcp' or 'natpmp'",
        "router.local",
        "lifetime must be between 1",
        "families must be",
        "probe_window must be > 0",
        "expected a number",
        "natpmp_max_sends must be >= 1",
        "expected true or false",
        "unknown key(s): colour",
    ):
        assert needle in problems, needle
    assert all(p.startswith("[plugins.natpmp") for p in info.value.problems)
    assert len(info.value.problems) == 9


def test_none_is_an_empty_table() -> None:
    assert load_settings(None) == NatPmpSettings()
