"""The plugin's hooks: registration, the path probe and the probe-report section."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from nattrav.errors import ConfigError
from nattrav.method import AttemptContext
from nattrav.models import (
    AttemptOutcome,
    AttemptRecord,
    Candidate,
    CandidateKind,
    Goal,
    TransportAddress,
    TraversalRequest,
    TraversalResult,
)
from nattrav.registry import CommandRegistry, PathProbeRegistry, ReportRegistry
from nattrav_pmtud import plugin
from nattrav_pmtud.config import load_config
from nattrav_pmtud.driver import echo_server
from nattrav_pmtud.pathprobe import PmtuPathProbe


def test_hooks_register_the_probe_the_section_and_the_commands() -> None:
    probes, sections, commands = PathProbeRegistry(), ReportRegistry(), CommandRegistry()
    plugin.nattrav_register_path_probes(probes, {})
    plugin.nattrav_register_report_sections(sections, {})
    plugin.nattrav_register_commands(commands)
    assert "pmtu" in probes and "pmtu" in sections
    assert {c.name for c in commands} == {"pmtu", "pmtu-echo"}
    assert isinstance(probes["pmtu"].factory(), PmtuPathProbe)


def test_the_table_reaches_the_probe_and_no_table_means_the_defaults() -> None:
    probes = PathProbeRegistry()
    plugin.nattrav_register_path_probes(probes, {"max": 3000})
    probe = probes["pmtu"].factory()
    assert isinstance(probe, PmtuPathProbe) and probe.config == load_config({"max": 3000})
    probes = PathProbeRegistry()
    plugin.nattrav_register_path_probes(probes, {})  # nothing to validate
    probe = probes["pmtu"].factory()
    assert isinstance(probe, PmtuPathProbe) and probe.config == load_config(None)
    with pytest.raises(ConfigError, match="max"):
        plugin.nattrav_register_path_probes(PathProbeRegistry(), {"max": 1})


def test_the_plugin_loads_in_a_host(nattrav_host: Any) -> None:
    host = nattrav_host(("pmtud", plugin))
    assert host.records["pmtud"].status.value == "ok"
    assert "pmtu" in host.path_probes and "pmtu" in host.report_sections
    assert "pmtu" in host.commands and "pmtu-echo" in host.commands


def test_a_bad_table_breaks_only_this_plugin(nattrav_host: Any) -> None:
    from nattrav.config import structure_config

    config = structure_config({"plugins": {"pmtud": {"max": 1}}})
    host = nattrav_host(("pmtud", plugin), config=config)
    assert host.records["pmtud"].status.value != "ok" and "pmtu" not in host.path_probes


def _result(
    kind: CandidateKind, details: dict[str, object], base: str = "127.0.0.1"
) -> TraversalResult:
    cand = Candidate(
        kind, TransportAddress("198.51.100.2", 40000), "stun",
        base=TransportAddress(base, 40000), details=details,
    )  # fmt: skip
    record = AttemptRecord("stun", AttemptOutcome.SUCCEEDED, candidate=cand)
    return TraversalResult(Goal.ANY, cand, (record,))


def _ctx() -> AttemptContext:
    return AttemptContext(TraversalRequest(), "pmtu")


@pytest.mark.anyio
async def test_path_probe_measures_towards_the_candidates_server() -> None:
    cfg = load_config({"probe_timeout": 0.2, "max": 3000})
    async with echo_server(("127.0.0.1", 0)) as server:
        server_text = f"127.0.0.1:{server.address[1]}"
        prop = await PmtuPathProbe(cfg).probe(
            _result(CandidateKind.SERVER_REFLEXIVE, {"server": server_text}), _ctx()
        )
    assert prop is not None and prop.name == "pmtu" and prop.value == 3000
    assert prop.details["udp_payload"] == 2972 and prop.details["leg"] == "to-server"
    assert "probe-confirmed" in prop.how


@pytest.mark.anyio
async def test_path_probe_uses_configured_servers_for_mapped_candidates() -> None:
    async with echo_server(("127.0.0.1", 0)) as server:
        cfg = load_config(
            {"probe_timeout": 0.2, "max": 2000, "servers": [f"127.0.0.1:{server.address[1]}"]}
        )
        prop = await PmtuPathProbe(cfg).probe(_result(CandidateKind.PORT_MAPPED, {}), _ctx())
    assert prop is not None and prop.value == 2000
    assert prop.details["leg"] == "to-configured-server"


@pytest.mark.anyio
async def test_path_probe_limits() -> None:
    cfg = load_config({"probe_timeout": 0.05, "max_probes": 1})
    probe = PmtuPathProbe(cfg)
    # Nothing to probe towards: not measurable.
    assert await probe.probe(_result(CandidateKind.PORT_MAPPED, {}), _ctx()) is None
    relayed = await probe.probe(_result(CandidateKind.RELAYED, {}), _ctx())
    assert relayed is not None and relayed.value is None and "relay server unknown" in relayed.how
    assert probe.target_for(_result(CandidateKind.RELAYED, {"server": "203.0.113.1:3478"})) == (
        ("203.0.113.1", 3478),
        "client-to-relay",
    )
    silent = await probe.probe(
        _result(CandidateKind.SERVER_REFLEXIVE, {"server": "127.0.0.1:9"}), _ctx()
    )
    assert silent is not None and silent.value is None and "unconfirmed" in silent.how


@attrs.define
class _ProbeCtx:
    tables: dict[str, dict[str, Any]]
    options: Any

    def settings(self, plugin: str) -> dict[str, Any]:
        return self.tables.get(plugin, {})


@pytest.mark.anyio
async def test_report_section_per_server_and_family() -> None:
    from nattrav.probe import ProbeOptions
    from nattrav_pmtud.report import run_section

    async with echo_server(("127.0.0.1", 0)) as server:
        ctx = _ProbeCtx(
            {"stun": {"servers": [f"127.0.0.1:{server.address[1]}"]}, "pmtud": {"max": 1500}},
            ProbeOptions(window=0.2, timeout=5.0),
        )
        out = await run_section(ctx)
    [path] = out["paths"]
    assert path["family"] == 4 and path["path_mtu"] == 1500 and out["ipv4_path_mtu"] == 1500
    assert out["mapped_ips"] == ["127.0.0.1"]
    empty = await run_section(_ProbeCtx({}, ProbeOptions()))
    assert empty["paths"] == [] and "no server" in empty["note"]
    bad = await run_section(_ProbeCtx({"pmtud": {"max": "x"}}, ProbeOptions()))
    assert "error" in bad
