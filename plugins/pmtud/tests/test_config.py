"""``[plugins.pmtud]`` validation and server parsing."""

from __future__ import annotations

import pytest
from nattrav.errors import ConfigError
from nattrav_pmtud.config import load_config, parse_target


def test_defaults() -> None:
    cfg = load_config({})
    assert cfg.max == 9000 and cfg.families == (4, 6) and cfg.credentials() is None
    s6 = cfg.search_settings(6)
    assert (s6.base, s6.minimum, s6.max_plpmtu, s6.max_probes) == (1280, 1280, 9000, 3)
    assert cfg.search_settings(4, probe_timeout=0.2).probe_timeout == 0.2


def test_a_full_table() -> None:
    cfg = load_config(
        {
            "servers": ["stun:203.0.113.1", "[2001:db8::1]:3479"],
            "families": [6],
            "max": 65535,
            "probe_timeout": 2,
            "password": "s3cret",
            "username": "alice",
        }
    )
    assert cfg.targets() == [("203.0.113.1", 3478), ("2001:db8::1", 3479)]
    creds = cfg.credentials()
    assert creds is not None and creds.username == "alice" and "s3cret" not in repr(cfg)


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "servers": ["stuns:example.net"],
                "families": [5],
                "max": 70000,
                "max_probes": 0,
                "username": "alice",
            }
        )
    text = str(info.value)
    for needle in ("stuns", "families", "max_plpmtu must be <= 65535", "max_probes", "password"):
        assert needle in text, needle


def test_type_errors_and_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"max": "big", "probe_timeout": True, "colour": "blue"})
    text = str(info.value)
    assert "max" in text and "probe_timeout" in text and "colour" in text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("203.0.113.1:3478", ("203.0.113.1", 3478)),
        ("[2001:db8::1]:3479", ("2001:db8::1", 3479)),
        ("stun:stun.example.net", ("stun.example.net", 3478)),
        ("stun:[2001:db8::1]:5000", ("2001:db8::1", 5000)),
        ("turn:relay.example.net:3478?transport=udp", ("relay.example.net", 3478)),
        ("stun.example.net", ("stun.example.net", 3478)),
    ],
)
def test_parse_target(text: str, want: tuple[str, int]) -> None:
    assert parse_target(text) == want


@pytest.mark.parametrize("text", ["stuns:example.net", "", "host:notaport", "[::1", "h:70000"])
def test_parse_target_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)
