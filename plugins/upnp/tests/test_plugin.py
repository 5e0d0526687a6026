"""Registration through the entry point, config errors, and the CLI's shape."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import nattrav_upnp.plugin as plugin
import pytest
from nattrav.config import Config
from nattrav.models import CandidateKind
from nattrav.plugins import PluginHost, PluginStatus


def test_entry_point_registers_the_method_and_command() -> None:
    host = PluginHost.load(Config(), disabled=())
    record = host.records["upnp"]
    assert record.status is PluginStatus.OK, record.error
    spec = host.methods["upnp"]
    assert spec.priority == 40
    assert spec.kind is CandidateKind.PORT_MAPPED
    assert spec.timeout == pytest.approx(1.0 + 4 * 2.0)
    assert spec.group == "gateway"
    assert "upnp" in host.commands
    method = spec.factory()
    assert type(method).__name__ == "UpnpMethod"
    # Every factory call shares one quirk book: what a gateway taught is remembered.
    assert spec.factory().quirks is method.quirks


def test_bad_config_marks_the_plugin_broken_with_every_problem() -> None:
    config = Config(plugins={"upnp": {"lease": -1, "description": "", "nope": 1}})
    host = PluginHost.load(config, disabled=())
    record = host.records["upnp"]
    assert record.status is PluginStatus.BROKEN
    assert record.error is not None
    for key in ("lease", "description", "nope"):
        assert key in record.error
    assert "upnp" not in host.methods


def test_plugin_module_imports_cheaply() -> None:
    code = (
        "import sys, nattrav_upnp.plugin; "
        "heavy = [m for m in ('httpx', 'defusedxml', 'nattrav_upnp.method', 'nattrav_upnp.driver') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["upnp", "discover", "--json"],
        ["upnp", "map", "4000", "--protocol", "tcp", "--lease", "60", "--hold", "1"],
        ["upnp", "map", "4000", "--detach", "--external-port", "5000"],
        ["upnp", "unmap", "5000", "--force"],
        ["upnp", "list", "--window", "0.5", "--interface", "eth0"],
        ["upnp", "pinhole", "4000", "--json"],
        ["upnp", "--json", "list"],
    ],
)
def test_cli_parses(argv: list[str]) -> None:
    from nattrav.cli import _build_parser

    host = PluginHost.load(Config(), disabled=())
    args = _build_parser(host).parse_args(argv)
    assert args.command == "upnp"
    assert args.upnp_command == argv[1] if argv[1] != "--json" else args.upnp_command == "list"
    if "--json" in argv:
        assert args.json is True


def test_cli_rejects_hold_with_detach() -> None:
    from nattrav.cli import main

    err = io.StringIO()
    code = main(["upnp", "map", "4000", "--hold", "1", "--detach"], out=io.StringIO(), err=err)
    assert code == 2
    assert "not allowed" in err.getvalue()


def test_hooks_have_docstrings() -> None:
    for name in ("nattrav_register_methods", "nattrav_register_commands"):
        func: Any = getattr(plugin, name)
        assert func.__doc__
