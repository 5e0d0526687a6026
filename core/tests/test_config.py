from __future__ import annotations

from pathlib import Path

import pytest
from nattrav.config import Config, env_overrides, load_config, structure_config
from nattrav.errors import ConfigError
from nattrav.models import Goal


def test_defaults() -> None:
    cfg = Config()
    assert cfg.chain.strategy == "race"
    assert cfg.chain.stagger == 0.25
    assert cfg.chain.goal is Goal.REACHABLE


def test_toml_file_env_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / "nattrav.toml"
    path.write_text(
        """
        [chain]
        strategy = "sequential"
        order = ["upnp"]
        [methods.stun]
        timeout = 2.5
        [plugins.stun]
        servers = ["192.0.2.1:3478"]
        """
    )
    env = {"NATTRAV_CHAIN__STAGGER": "0.5", "NATTRAV_BREAKER__THRESHOLD": "7", "HOME": "/x"}
    cfg = load_config(path, environ=env, overrides={"chain": {"goal": "any"}})
    assert cfg.chain.strategy == "sequential"
    assert cfg.chain.order == ("upnp",)
    assert cfg.chain.stagger == 0.5
    assert cfg.chain.goal is Goal.ANY
    assert cfg.breaker.threshold == 7
    assert cfg.methods["stun"].timeout == 2.5
    assert cfg.plugin_table("stun") == {"servers": ["192.0.2.1:3478"]}
    assert cfg.plugin_table("upnp") == {}


def test_env_values_are_toml_or_strings() -> None:
    raw = env_overrides(
        {
            "NATTRAV_CHAIN__ORDER": '["a", "b"]',
            "NATTRAV_CHAIN__DISABLED": "relay",
            "NATTRAV_CHAIN__VERIFY": "false",
            "NATTRAV_DISABLE_PLUGINS": "x",  # reserved: not a config key
            "NATTRAV_SKIP_LAB": "1",  # another tool's variable
            "OTHER": "1",
        }
    )
    assert raw == {"chain": {"order": ["a", "b"], "disabled": "relay", "verify": False}}
    cfg = structure_config(raw)
    assert cfg.chain.disabled == ("relay",)


def test_unknown_nested_env_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match="strategyy"):
        structure_config(env_overrides({"NATTRAV_CHAIN__STRATEGYY": "race"}))


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        structure_config(
            {
                "chain": {"strategy": "fastest", "stagger": -1, "colour": "blue"},
                "retry": {"attempts": "three"},
                "bogus": 1,
            }
        )
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) >= 4, problems
    assert "strategy must be 'race' or 'sequential'" in problems
    assert "stagger must be >= 0" in problems
    assert "colour" in problems
    assert "bogus" in problems
    assert "expected an integer" in problems


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"chain": {"goal": "fast"}}, "goal must be 'reachable' or 'any'"),
        ({"chain": {"order": "a,b", "verify": "yes"}}, "expected true or false"),
        ({"methods": {"stun": {"timeout": 0}}}, "timeout must be > 0"),
        ({"methods": {"stun": {"tmeout": 1}}}, "tmeout"),
        ({"plugins": {"stun": 3}}, "expected a table"),
        ({"breaker": {"cooldown": True}}, "expected a number"),
    ],
)
def test_bad_values(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        structure_config(raw)


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(bad, environ={})


def test_nattrav_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[chain]\nstrategy = "sequential"\n')
    cfg = load_config(environ={"NATTRAV_CONFIG": str(path)})
    assert cfg.chain.strategy == "sequential"
