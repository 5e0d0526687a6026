"""The ``[plugins.p2p]`` table: the re-check settings (the rest is in ``test_plugin.py``)."""

from __future__ import annotations

import pytest
from nattrav.errors import ConfigError
from nattrav_p2p.config import AgentConfig, load_config


def test_recheck_defaults_reach_the_agent_config() -> None:
    cfg = load_config({"recheck_interval": 2, "recheck_max_interval": 30})
    agent = cfg.agent()
    assert (agent.recheck_interval, agent.recheck_max_interval) == (2.0, 30.0)
    default = AgentConfig()
    assert (default.recheck_interval, default.recheck_max_interval) == (5.0, 60.0)


def test_recheck_problems_are_listed_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"recheck_interval": 10, "recheck_max_interval": 5, "ta": 0})
    text = str(info.value)
    assert "recheck_max_interval (5.0) must be >= recheck_interval (10.0)" in text
    assert "ta must be > 0" in text
    with pytest.raises(ConfigError) as info:
        load_config({"recheck_interval": -1, "recheck_max_interval": 0})
    text = str(info.value)
    assert "recheck_interval must be >= 0, got -1.0" in text
    assert "recheck_max_interval must be > 0, got 0.0" in text
    with pytest.raises(ConfigError, match=r"recheck_interval: invalid value"):
        load_config({"recheck_interval": "often"})
    # 0 is valid: re-checks off (tested in test_agent.py).
    assert load_config({"recheck_interval": 0}).recheck_interval == 0.0
