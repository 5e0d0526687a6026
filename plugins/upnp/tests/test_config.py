"""``[plugins.upnp]`` validation: every problem in one ConfigError."""

from __future__ import annotations

import pytest
from nattrav.errors import ConfigError
from nattrav_upnp.config import UpnpConfig, load_config


def test_defaults() -> None:
    cfg = load_config({})
    assert cfg == UpnpConfig()
    assert cfg.lease == 3600
    assert cfg.description == "nattrav"
    assert cfg.discovery_window == 1.0


def test_values_are_structured() -> None:
    cfg = load_config(
        {
            "lease": 600,
            "interfaces": "eth0, wlan0",
            "gateway": "192.168.1.1",
            "settle": 0,
            "discovery_window": 0.5,
            "ipv6": False,
            "pinhole_lease": 7200,
            "max_body": 65536,
        }
    )
    assert cfg.interfaces == ("eth0", "wlan0")
    assert cfg.lease == 600 and cfg.gateway == "192.168.1.1" and not cfg.ipv6


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "lease": -5,
                "description": "x" * 80,
                "discovery_window": 0,
                "gateway": "router.lan",
                "ipv6": "yes",
                "pinhole_lease": 100000,
                "max_responders": 0,
                "verify_interval": "often",
                "bogus": 1,
            }
        )
    problems = info.value.problems
    text = "\n".join(problems)
    for key in (
        "lease",
        "description",
        "discovery_window",
        "gateway",
        "ipv6",
        "pinhole_lease",
        "max_responders",
        "verify_interval",
        "bogus",
    ):
        assert key in text, key
    assert len(problems) == 9


def test_description_rejects_control_characters() -> None:
    with pytest.raises(ConfigError, match="description"):
        load_config({"description": "a\nb"})


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match="lease"):
        load_config({"lease": True})
