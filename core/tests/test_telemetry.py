"""Spans and metrics checked with the OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

from typing import Any

import pytest
from nattrav.config import structure_config
from nattrav.errors import ChainExhausted
from nattrav.models import TraversalRequest
from nattrav.plugins import PluginHost, module_plugin
from nattrav.runtime import Runtime
from nattrav.testing import FakeMethod, TelemetryProbe

pytestmark = pytest.mark.anyio


def runtime(probe: TelemetryProbe, *methods: tuple[FakeMethod, int], **cfg: Any) -> Runtime:
    def register(registry: Any) -> None:
        for m, prio in methods:
            registry.add(m, name=m.name, priority=prio, kind=m.kind)

    observed: list[Any] = []

    def attempt_finished(record: Any) -> None:
        observed.append(record)

    host = PluginHost.load(
        structure_config({"retry": {"wait_initial": 0.0, "wait_jitter": 0.0}, **cfg}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[
            ("fakes", module_plugin("fakes", nattrav_register_methods=register)),
            ("obs", module_plugin("obs", nattrav_attempt_finished=attempt_finished)),
        ],
    )
    rt = Runtime(host, telemetry=probe.telemetry)
    rt.observed = observed  # type: ignore[attr-defined]
    return rt


async def test_spans_per_chain_and_attempt(nattrav_telemetry: TelemetryProbe) -> None:
    rt = runtime(nattrav_telemetry, (FakeMethod("bad", "fail"), 1), (FakeMethod("ok"), 2))
    async with rt.chain().run(TraversalRequest()):
        pass
    chain = nattrav_telemetry.spans("nattrav.chain")
    attempts = nattrav_telemetry.spans("nattrav.attempt")
    assert len(chain) == 1
    assert chain[0].attributes["nattrav.method"] == "ok"
    assert chain[0].attributes["nattrav.outcome"] == "succeeded"
    by_method = {s.attributes["nattrav.method"]: s for s in attempts}
    assert by_method["bad"].attributes["nattrav.outcome"] == "failed"
    assert by_method["bad"].attributes["error.type"] == "MethodError"
    assert not by_method["bad"].status.is_ok
    assert by_method["ok"].attributes["nattrav.outcome"] == "succeeded"
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == chain[0].context.span_id
    assert [r.method for r in rt.observed] == ["bad", "ok"]  # type: ignore[attr-defined]


async def test_metrics_attempts_duration_breaker(nattrav_telemetry: TelemetryProbe) -> None:
    rt = runtime(
        nattrav_telemetry, (FakeMethod("dead", "fail"), 1), breaker={"threshold": 1, "cooldown": 60}
    )
    with pytest.raises(ChainExhausted):
        async with rt.chain().run(TraversalRequest()):
            pass
    metrics = nattrav_telemetry.metrics()
    attempts = metrics["nattrav.attempts"]
    assert [
        (p.attributes["nattrav.method"], p.attributes["nattrav.outcome"], p.value) for p in attempts
    ] == [("dead", "failed", 1)]
    durations = metrics["nattrav.attempt.duration"]
    assert durations[0].count == 1
    breaker = metrics["nattrav.breaker.state"]
    assert [(p.attributes["nattrav.breaker"], p.value) for p in breaker] == [("dead", 2)]
    exhausted = nattrav_telemetry.spans("nattrav.chain")[0]
    assert exhausted.attributes["nattrav.outcome"] == "exhausted"


async def test_lease_metrics(nattrav_telemetry: TelemetryProbe) -> None:
    rt = runtime(nattrav_telemetry, (FakeMethod("ok"), 1))
    async with rt.chain().run(TraversalRequest()):
        active = nattrav_telemetry.metrics()["nattrav.leases.active"]
        assert [p.value for p in active] == [1]
    active = nattrav_telemetry.metrics()["nattrav.leases.active"]
    assert [p.value for p in active] == [0]
    events = nattrav_telemetry.metrics()["nattrav.lease.events"]
    assert sorted(p.attributes["nattrav.event"] for p in events) == ["acquired", "released"]
