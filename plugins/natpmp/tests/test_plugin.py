"""The plugin as installed: entry point, registrations, config errors, cheap import, CLI usage."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from nattrav.cli import main
from nattrav.config import Config
from nattrav.models import CandidateKind, Transport
from nattrav.plugins import PluginHost, PluginStatus


def test_entry_point_registers_method_command_and_report_section() -> None:
    host = PluginHost.load(Config(), disabled=())
    record = host.records["natpmp"]
    assert record.status is PluginStatus.OK, record.error
    assert record.distribution == "nattrav-natpmp"
    assert record.methods == [("natpmp", 45)]
    assert set(record.hooks) >= {
        "nattrav_register_methods",
        "nattrav_register_commands",
        "nattrav_register_report_sections",
    }
    spec = host.methods["natpmp"]
    assert spec.kind is CandidateKind.PORT_MAPPED
    assert spec.transports == frozenset({Transport.UDP, Transport.TCP})
    assert "natpmp" in host.commands and "natpmp" in host.report_sections
    from nattrav_natpmp.method import NatPmpMethod

    first, second = spec.factory(), spec.factory()
    assert isinstance(first, NatPmpMethod) and isinstance(second, NatPmpMethod)
    assert first.errors is second.errors  # PCP error lifetimes hold across a runtime's attempts


def test_bad_config_marks_the_plugin_broken_with_every_problem() -> None:
    config = Config(plugins={"natpmp": {"protocol": "upnp", "probe_window": -1}})
    record = PluginHost.load(config, disabled=()).records["natpmp"]
    assert record.status is PluginStatus.BROKEN
    assert record.error is not None
    assert "protocol must be" in record.error and "probe_window must be" in record.error


def test_importing_the_plugin_module_is_cheap() -> None:
    code = (
        "import sys, nattrav_natpmp.plugin; "
        "print([m for m in sys.modules if m.startswith('nattrav_natpmp') or m in "
        "('anyio', 'trio', 'cattrs')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.replace("'", '"'))
    assert sorted(loaded) == ["nattrav_natpmp", "nattrav_natpmp.plugin"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The CLI reads NATTRAV_* variables and ./nattrav.toml: give it neither."""
    import os

    for name in list(os.environ):
        if name.startswith("NATTRAV_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["natpmp", "unmap"], "unmap needs a port"),
        (["natpmp", "unmap", "5000", "--all"], "not both"),
        (["natpmp", "unmap", "--all", "--pcp"], "--all is a NAT-PMP request"),
        (["natpmp", "map", "70000"], "out of range"),
        (["natpmp", "external", "-6", "--natpmp"], "NAT-PMP is IPv4-only"),
        (["natpmp", "external", "--pcp", "--natpmp"], "not allowed with argument"),
        (["natpmp", "external", "--gateway", "router.local"], "router.local"),
        (["natpmp"], "required"),
    ],
)
def test_cli_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_cli_help_lists_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["natpmp", "--help"]) == 0
    out: Any = capsys.readouterr().out
    for action in ("external", "map", "unmap"):
        assert action in out
