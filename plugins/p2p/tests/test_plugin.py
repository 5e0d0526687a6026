"""The plugin registers its connector, signalers and commands, and validates its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nattrav.errors import ConfigError
from nattrav.registry import CommandRegistry, ConnectorRegistry, SignalerRegistry
from nattrav_p2p import plugin
from nattrav_p2p.config import load_config


def test_registers_ice_connector_and_signalers() -> None:
    connectors = ConnectorRegistry()
    plugin.nattrav_register_connectors(connectors, {})
    spec = connectors.best()
    assert spec is not None and spec.name == "ice"
    connector = spec.factory()
    assert hasattr(connector, "connect")
    signalers = SignalerRegistry()
    plugin.nattrav_register_signalers(signalers, {})
    assert {s.name for s in signalers} == {"paste", "rendezvous"}
    commands = CommandRegistry()
    plugin.nattrav_register_commands(commands)
    assert {c.name for c in commands} == {"connect", "rendezvous"}


def test_the_table_reaches_the_connector_and_no_table_means_the_defaults() -> None:
    connectors = ConnectorRegistry()
    plugin.nattrav_register_connectors(connectors, {"check_sends": 3})
    spec = connectors.best()
    assert spec is not None and spec.factory().settings == load_config({"check_sends": 3})
    connectors = ConnectorRegistry()
    plugin.nattrav_register_connectors(connectors, {})
    spec = connectors.best()
    assert spec is not None and spec.factory().settings == load_config(None)
    with pytest.raises(ConfigError, match="ta must be > 0"):
        plugin.nattrav_register_connectors(ConnectorRegistry(), {"ta": -1})


def test_config_problems_are_listed_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"ta": -1, "families": [5], "consent_timeout": 1, "consent_interval": 2})
    text = str(info.value)
    assert "ta must be > 0" in text
    assert "families" in text
    assert "consent_timeout" in text
    with pytest.raises(ConfigError, match="nonsense"):
        load_config({"nonsense": 1})
    assert load_config({"families": 4}).families == (4,)


def test_plugin_module_imports_cheaply() -> None:
    code = (
        "import sys, nattrav_p2p.plugin; "
        "heavy = [m for m in ('wsproto', 'nattrav_p2p.agent', 'nattrav_p2p.driver', "
        "'nattrav_stun.codec') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_usage_errors() -> None:
    nattrav = str(Path(sys.executable).with_name("nattrav"))
    res = subprocess.run([nattrav, "connect"], capture_output=True, text=True)
    assert res.returncode == 2 and "--rendezvous" in res.stderr
    res = subprocess.run([nattrav, "connect", "--paste"], capture_output=True, text=True)
    assert res.returncode == 2 and "--role" in res.stderr
