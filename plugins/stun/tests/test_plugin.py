"""Plugin wiring: registration, config validation, the --stun option, the CLI commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from nattrav.cli import main
from nattrav.errors import ConfigError
from nattrav.models import CandidateKind, Transport
from nattrav_stun import plugin
from nattrav_stun.config import load_config
from nattrav_stun.testing import Coturn


def test_registers_method_verifier_option_commands_and_section(nattrav_host) -> None:  # type: ignore[no-untyped-def]
    host = nattrav_host(("stun", plugin))
    spec = host.methods["stun"]
    assert (spec.priority, spec.kind) == (20, CandidateKind.SERVER_REFLEXIVE)
    assert spec.transports == frozenset({Transport.UDP})
    assert "stun-inbound" in host.verifiers
    assert {"stun", "nat-type"} <= {c.name for c in host.commands}
    assert "stun" in host.report_sections
    option = next(iter(host.options))
    assert option.flags == ("--stun",) and option.commands == {"probe", "map", "connect"}


def test_option_appends_to_servers() -> None:
    raw: dict[str, object] = {"plugins": {"stun": {"servers": ["a.example:3478"]}}}
    plugin._add_servers(["b.example:1", "a.example:3478"], raw)  # type: ignore[arg-type]
    assert raw["plugins"]["stun"]["servers"] == ["a.example:3478", "b.example:1"]  # type: ignore[index]
    fresh: dict[str, object] = {}
    plugin._add_servers(["stun:c.example"], fresh)  # type: ignore[arg-type]
    assert fresh == {"plugins": {"stun": {"servers": ["stun:c.example"]}}}


def test_config_errors_list_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "servers": ["good.example:3478", "bad host", "http://x"],
                "rto": -1,
                "rc": 0,
                "probe_window": 0.1,
                "credentials": {"username": "u", "password": "tab\there"},
            }
        )
    text = str(info.value)
    assert len(info.value.problems) == 6
    for needle in ("bad host", "http://x", "rto", "rc", "probe_window", "OpaqueString"):
        assert needle in text
    with pytest.raises(ConfigError) as info:
        load_config({"servrs": [], "rto": "fast", "credentials": {"username": "u"}})
    assert len(info.value.problems) == 3


def test_broken_config_marks_the_plugin_broken(nattrav_host) -> None:  # type: ignore[no-untyped-def]
    from nattrav.config import structure_config
    from nattrav.plugins import PluginStatus

    config = structure_config({"plugins": {"stun": {"rc": 0}}})
    host = nattrav_host(("stun", plugin), config=config)
    record = host.records["stun"]
    assert record.status is PluginStatus.BROKEN and "rc must be >= 1" in (record.error or "")
    assert "stun" not in host.methods


def test_cli_stun_and_nat_type(coturn: Coturn, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stun", coturn.uri, "--json"]) == 0
    binding = json.loads(capsys.readouterr().out)
    assert binding["mapped"].startswith("127.0.0.1:") and binding["transport"] == "udp"
    assert binding["other_address"] == f"127.0.0.2:{coturn.port + 1}"
    assert main(["nat-type", f"127.0.0.1:{coturn.port}", "--json", "--window", "0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mapping"] == "no-nat" and report["filtering"] == "endpoint-independent"
    assert main(["nat-type", coturn.uri]) == 0
    text = capsys.readouterr().out
    assert "mapping:   no-nat" in text and "filtering: endpoint-independent" in text


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stun", "not a server"]) == 2
    assert "SERVER" in capsys.readouterr().err
    assert main(["nat-type", "stuns:example.org"]) == 2
    assert main(["nat-type", "127.0.0.1:9", "--window", "0.1"]) == 2
    assert main(["stun", "127.0.0.1:9", "--timeout", "0.3"]) == 1
    assert "no response" in capsys.readouterr().err


def test_plugin_module_imports_cheaply() -> None:
    code = (
        "import sys, nattrav_stun.plugin; "
        "heavy = [m for m in ('nattrav_stun.codec', 'nattrav_stun.driver', 'precis_i18n', "
        "'nattrav_stun.method') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _ProbeCtx:
    """What ``nattrav probe`` hands a section: settings per plugin and the probe options."""

    def __init__(self, table: dict[str, object]) -> None:
        from nattrav.probe import ProbeOptions

        self.options = ProbeOptions(window=0.3, timeout=6.0)
        self.table = table
        self.steps: list[str] = []

    def settings(self, plugin_name: str) -> dict[str, object]:
        assert plugin_name == "stun"
        return self.table

    def progress(self, section: str, text: str) -> None:
        self.steps.append(f"{section}: {text}")


@pytest.mark.anyio
async def test_probe_section(coturn: Coturn) -> None:
    from nattrav_stun.cli import report_section

    ctx = _ProbeCtx({"servers": [coturn.uri]})
    report = await report_section(ctx)
    assert report["mapping"] == "no-nat" and report["filtering"] == "endpoint-independent"
    assert report["mapped_ips"] == ["127.0.0.1"]  # read by core's double-NAT verdict
    assert ctx.steps and "RFC 5780" in ctx.steps[0]
    skipped = await report_section(_ProbeCtx({}))
    assert "--stun" in skipped["skipped"]
