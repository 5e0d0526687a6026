"""The probe frame: concurrent sections, failure isolation, double-NAT verdict, JSON schema."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from nattrav.cli import main
from nattrav.config import structure_config
from nattrav.models import CandidateKind, Inbound
from nattrav.plugins import PluginHost, module_plugin
from nattrav.probe import ProbeOptions, double_nat_verdict, run_probe
from nattrav.runtime import Runtime
from nattrav.testing import FakeMethod

SCHEMA = json.loads(resources.files("nattrav").joinpath("schemas/probe.schema.json").read_text())


def sections_plugin() -> tuple[str, object]:
    async def gateway(ctx: Any) -> dict[str, Any]:
        await anyio.sleep(0.2)
        return {"present": True, "gateway_external_ips": ["100.64.0.5"]}

    async def server(ctx: Any) -> dict[str, Any]:
        await anyio.sleep(0.2)
        return {"mapped_ips": ["203.0.113.9"], "window": ctx.options.window}

    async def broken(ctx: Any) -> dict[str, Any]:
        raise RuntimeError("section bug")

    async def slow(ctx: Any) -> dict[str, Any]:
        await anyio.sleep(60)
        return {}

    def render_gateway(data: Any) -> list[str]:
        return [f"gateway present: {'yes' if data['present'] else 'no'}"]

    def render_broken(data: Any) -> list[str]:
        raise KeyError("nope")

    def register(registry: Any) -> None:
        registry.add(gateway, name="gw", title="Gateway", order=40, render=render_gateway)
        registry.add(server, name="srv", order=20, render=render_broken)
        registry.add(broken, name="broken")
        registry.add(slow, name="slow")

    def methods(registry: Any) -> None:
        registry.add(
            FakeMethod("fake", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES),
            name="fake",
            priority=40,
            kind=CandidateKind.PORT_MAPPED,
        )

    return "sections", module_plugin(
        "sections", nattrav_register_report_sections=register, nattrav_register_methods=methods
    )


@pytest.mark.anyio
async def test_report_runs_sections_concurrently_and_isolates_failures(tmp_path: Path) -> None:
    host = PluginHost.load(
        structure_config({"state_dir": str(tmp_path)}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[sections_plugin()],
    )
    seen: list[tuple[str, str]] = []
    t0 = anyio.current_time()
    report = await run_probe(
        Runtime(host),
        ProbeOptions(window=0.4, timeout=1.0),
        progress=lambda name, state: seen.append((name, state)),
    )
    elapsed = anyio.current_time() - t0
    assert elapsed < 3.0  # concurrent: about the slowest section's bound, not the sum
    jsonschema.validate(report, SCHEMA)
    sections = report["sections"]
    assert list(sections) == ["srv", "gw", "broken", "slow"]  # by order, then name
    assert sections["srv"]["window"] == 0.4
    assert sections["broken"]["error"] == "plugin bug: RuntimeError: section bug"
    assert sections["slow"]["error"] == "no result within 1.0 s"
    assert report["nat"]["double_nat"] is True
    assert report["nat"]["cgnat"] is True
    assert "100.64.0.5" in report["nat"]["why"]
    assert report["chain"]["method"] == "fake"
    assert report["chain"]["attempts"][0]["outcome"] == "succeeded"
    assert ("gw", "running") in seen and ("gw", "done") in seen and ("broken", "error") in seen


@pytest.mark.parametrize(
    ("sections", "local", "expected"),
    [
        ({"s": {"mapped_ips": ["192.0.2.2"]}}, {"192.0.2.2"}, (False, None, True)),
        ({"u": {"gateway_external_ips": ["192.168.1.2"]}}, set(), (True, False, None)),
        (
            {"u": {"gateway_external_ips": ["203.0.113.1"]}, "s": {"mapped_ips": ["198.51.100.3"]}},
            set(),
            (True, False, False),
        ),
        (
            {"u": {"gateway_external_ips": ["203.0.113.1"]}, "s": {"mapped_ips": ["203.0.113.1"]}},
            set(),
            (False, False, False),
        ),
        ({"x": {"error": "boom"}}, set(), (None, None, None)),
        # IPv6 seen unchanged says nothing about the IPv4 NAT.
        (
            {"s": {"mapped_ips": ["2001:db8:1:1::10", "198.51.100.2"]}},
            {"2001:db8:1:1::10", "192.168.1.10"},
            (None, None, False),
        ),
    ],
)
def test_double_nat_verdict(
    sections: dict[str, Any], local: set[str], expected: tuple[bool | None, ...]
) -> None:
    v = double_nat_verdict(sections, local)
    assert (v["double_nat"], v["cgnat"], v["no_nat"]) == expected
    if any(":" in ip for d in sections.values() for ip in d.get("mapped_ips", [])):
        assert v["no_nat6"] is True
    assert v["why"]


def test_cli_probe_json_and_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import io

    monkeypatch.setattr("nattrav.plugins._installed_entry_points", list)
    monkeypatch.setenv("NATTRAV_STATE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    code = main(
        ["probe", "--json", "--timeout", "1", "--window", "0.3"],
        extra_plugins=[sections_plugin()],
        out=out,
        err=io.StringIO(),
    )
    assert code == 0
    report = json.loads(out.getvalue())
    jsonschema.validate(report, SCHEMA)
    out = io.StringIO()
    code = main(["probe", "--timeout", "1"], extra_plugins=[sections_plugin()], out=out)
    text = out.getvalue()
    assert code == 0
    assert "Gateway [gw, 0.2" in text and "  gateway present: yes" in text
    assert "(could not render: KeyError" in text  # a renderer's bug costs only its lines
    assert "double NAT: yes" in text and "Chain verdict: fake -> 198.51.100.7:40000" in text
    assert "error: no result within 1.0 s" in text  # the slow section
    assert main(["probe", "--window", "0.1"], extra_plugins=[sections_plugin()]) == 2


def _hops(*ips: str | None, reached_last: bool = False) -> list[dict[str, Any]]:
    out = [{"ttl": n, "ip": ip, "reached": False} for n, ip in enumerate(ips, 1)]
    if reached_last:
        out[-1]["reached"] = True
    return out


@pytest.mark.parametrize(
    ("sections", "expected", "why"),
    [
        # miniupnpd learned the CGNAT's address by STUN: only the path shows the CGNAT.
        (
            {
                "u": {"gateway_external_ips": ["198.51.100.2"]},
                "s": {
                    "mapped_ips": ["198.51.100.2"],
                    "path_hops": _hops(
                        "192.168.1.1", "100.64.1.1", "203.0.113.1", reached_last=True
                    ),
                },
            },
            (True, True),
            "hop 2 (100.64.1.1)",
        ),
        # No gateway information; the first router after it is public.
        (
            {
                "s": {
                    "mapped_ips": ["198.51.100.2"],
                    "path_hops": _hops("192.168.1.1", "203.0.113.1"),
                }
            },
            (False, False),
            "hop 2, 203.0.113.1",
        ),
        # A private hop could be another NAT or a provider's routing: undecided, and said so.
        (
            {"s": {"mapped_ips": ["198.51.100.2"], "path_hops": _hops("192.168.1.1", "10.0.0.1")}},
            (None, None),
            "hop 2 (10.0.0.1) is private",
        ),
        # Silence past the gateway (UDP blocked) decides nothing.
        (
            {"s": {"path_hops": _hops("192.168.1.1", None, None)}},
            (None, None),
            "no gateway reported",
        ),
    ],
)
def test_double_nat_verdict_from_path_hops(
    sections: dict[str, Any], expected: tuple[bool | None, bool | None], why: str
) -> None:
    v = double_nat_verdict(sections, {"192.168.1.10"})
    assert (v["double_nat"], v["cgnat"]) == expected
    assert why in v["why"]
    assert v["path_hops"] and v["path_hops"][0]["ip"] == "192.168.1.1"


class _Refuting:
    """A verifier that refutes every candidate: the gateway "maps" but nothing arrives."""

    async def verify(self, candidate: Any, ctx: Any) -> Any:
        from nattrav.models import Reachability

        return Reachability.refused("nothing arrived")


class _Proving:
    async def verify(self, candidate: Any, ctx: Any) -> Any:
        from nattrav.models import Reachability

        return Reachability.proven("a packet arrived")


@pytest.mark.parametrize("verifier", ["proving", "refuting"])
@pytest.mark.anyio
async def test_test_mapping_creates_verifies_and_releases_each_port_mapper(
    tmp_path: Path, verifier: str
) -> None:
    from nattrav.models import CandidateKind as Kind

    mapper = FakeMethod("mapper", kind=Kind.PORT_MAPPED, inbound=Inbound.YES)
    other = FakeMethod("reflexive", kind=Kind.SERVER_REFLEXIVE)

    def methods(registry: Any) -> None:
        registry.add(mapper, name="mapper", priority=40, kind=Kind.PORT_MAPPED, timeout=2.0)
        registry.add(other, name="reflexive", priority=20, kind=Kind.SERVER_REFLEXIVE)

    def verifiers(registry: Any) -> None:
        registry.add(_Proving if verifier == "proving" else _Refuting, name="v")

    host = PluginHost.load(
        structure_config({"state_dir": str(tmp_path), "retry": {"wait_initial": 0.0}}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[
            ("m", module_plugin("m", nattrav_register_methods=methods)),
            ("v", module_plugin("v", nattrav_register_verifiers=verifiers)),
        ],
    )
    report = await run_probe(
        Runtime(host), ProbeOptions(window=0.3, timeout=3.0, test_mapping=True, chain=False)
    )
    jsonschema.validate(report, SCHEMA)
    (test,) = report["mapping_tests"]  # only the port mapper is tested
    assert test["method"] == "mapper" and test["created"] is True
    assert test["endpoint"] == "198.51.100.7:40000"
    assert test["released"] is True and mapper.released
    if verifier == "proving":
        assert test["verified"] is True and test["how"] == "a packet arrived"
        assert test["error"] is None and test["tries"] == 1
    else:
        assert test["verified"] is False and test["inbound"] == "no"
        assert test["tries"] == 2 and "abandoned" in test["error"]  # deleted, re-added, given up
        assert mapper.events.count("acquire") == 2 and mapper.events.count("release") == 2
    assert report["chain"] is None
