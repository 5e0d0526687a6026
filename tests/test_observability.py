"""What nattrav shows operators, checked in a real lab run: OpenTelemetry spans and metrics
(with the SDK's in-memory exporters), the Prometheus endpoint of ``nattrav --metrics-port``
scraped from the LAN host while ``map`` holds a mapping, and the JSON log lines of
``--log-json -v``. Names, attributes and units are documented in ``docs/observability.md``;
``core/tests/test_telemetry.py`` and ``core/tests/test_prometheus.py`` check the same with fake
methods, this module with the real plugins, coturn and miniupnpd.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from nattrav.config import structure_config
from nattrav.models import LeaseEvent, LeaseEventKind, TraversalRequest
from nattrav.plugins import PluginHost
from nattrav.runtime import Runtime
from nattrav.testing import TelemetryProbe, prometheus_sample

pytestmark = pytest.mark.anyio  # lab tests are marked by their `lab` fixture

V4 = frozenset({4})
#: an address in the lab's internet range where no STUN server runs (its breaker must open)
DEAD_STUN = "203.0.113.9:3478"
#: attributes every protocol transaction span carries
TRANSACTION_ATTRIBUTES = ("nattrav.method", "nattrav.outcome")
PROTOCOL_SPANS = {
    "nattrav.stun.binding": "stun",
    "nattrav.upnp.search": "upnp",
    "nattrav.upnp.soap": "upnp",
    "nattrav.natpmp.transaction": "natpmp",
    "nattrav.relay.allocate": "relay",
}


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the faults module runs on asyncio; both backends see a lab


def lab_config(lab: Any, state_dir: Path, **extra: Any) -> Any:
    host4, port4 = lab.stun_primary4
    turn = lab.turn
    raw: dict[str, Any] = {
        "state_dir": str(state_dir),
        "chain": {"stagger": 0.1},
        "breaker": {"threshold": 1},
        "plugins": {
            "stun": {"servers": [f"{host4}:{port4}", DEAD_STUN], "compare_wait": 0.05},
            "upnp": {"lease": 4, "pinholes": False},
            "natpmp": {"families": [4]},
            "relay": {
                "servers": [f"turn:{turn.host4}:{turn.port}"],
                "username": turn.user,
                "password": turn.password,
                "permit": [lab.internet_peer_ip4],
            },
        },
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return structure_config(raw)


def points(probe: TelemetryProbe, name: str, **labels: str) -> list[Any]:
    """Data points of metric ``name`` whose attributes include ``labels`` (``nattrav.`` is
    prefixed to each label name)."""
    want = {f"nattrav.{k}": v for k, v in labels.items()}
    found = probe.metrics().get(name, [])
    return [p for p in found if all(p.attributes.get(k) == v for k, v in want.items())]


def value(probe: TelemetryProbe, name: str, **labels: str) -> float:
    matching = points(probe, name, **labels)
    assert matching, f"no {name} point with {labels}: {probe.metrics().get(name)}"
    return float(sum(p.value for p in matching))


def attempt_of(span: Any, by_id: dict[int, Any]) -> Any:
    """The nearest ``nattrav.attempt`` span above ``span`` (``None`` if there is none)."""
    parent = span.parent
    while parent is not None:
        above = by_id.get(parent.span_id)
        if above is None:
            return None
        if above.name == "nattrav.attempt":
            return above
        parent = above.parent
    return None


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
async def test_spans_and_metrics_of_real_chain_runs(
    lab: Any, tmp_path: Path, nattrav_telemetry: TelemetryProbe
) -> None:
    """Three chain runs against the lab with the SDK's in-memory exporters: the whole chain
    (UPnP wins; its 4 s lease is renewed, then lost in a router reboot and recovered), then
    NAT-PMP/PCP alone and the relay alone. Every protocol transaction (STUN Binding, SSDP
    search, SOAP action, NAT-PMP/PCP request, TURN allocation) has a span with its method,
    server or gateway, outcome and retransmissions, nested under the attempt that ran it; the
    metrics count attempts by outcome, time them, count chain runs by winner, show the open
    breaker of a dead STUN server, the endpoints held, and the lease events by kind."""
    probe = nattrav_telemetry
    runtime = Runtime(PluginHost.load(lab_config(lab, tmp_path)), telemetry=probe.telemetry)
    events: list[LeaseEvent] = []
    seen = {kind: anyio.Event() for kind in LeaseEventKind}

    def on_event(event: LeaseEvent) -> None:
        events.append(event)
        seen[event.kind].set()

    with lab.inside("lan"):
        request = TraversalRequest(port=46010, families=V4)
        async with runtime.traverse(request, on_event=on_event) as (held, _mux):
            assert held.result.method == "upnp"
            assert value(probe, "nattrav.leases.active", method="upnp") == 1
            with anyio.fail_after(5):
                await seen[LeaseEventKind.RENEWED].wait()  # at half the 4 s lease
            lab.restart_miniupnpd(lose_state=True)
            with anyio.fail_after(5):
                await seen[LeaseEventKind.RECOVERED].wait()
        assert value(probe, "nattrav.leases.active", method="upnp") == 0
        for method, port in (("natpmp", 46020), ("relay", 46030)):
            request = TraversalRequest(port=port, families=V4)
            async with runtime.traverse(request, methods=[method]) as (held, _mux):
                assert held.result.method == method

    spans = probe.spans()
    by_id = {s.context.span_id: s for s in spans}
    chains = probe.spans("nattrav.chain")
    assert [c.attributes["nattrav.method"] for c in chains] == ["upnp", "natpmp", "relay"]
    assert all(c.attributes["nattrav.outcome"] == "succeeded" for c in chains)
    attempts = probe.spans("nattrav.attempt")
    outcomes = {(a.attributes["nattrav.method"], a.attributes["nattrav.outcome"]) for a in attempts}
    assert {("upnp", "succeeded"), ("natpmp", "succeeded"), ("relay", "succeeded")} <= outcomes
    # STUN's srflx is kept behind a filtering NAT (or still running when UPnP won)
    stun_outcome = next(o for m, o in outcomes if m == "stun")
    assert stun_outcome in ("insufficient", "cancelled")
    for attempt in attempts:
        parent = by_id[attempt.parent.span_id]
        assert parent.name == "nattrav.chain"

    # One span per protocol transaction, with the common attributes.
    found: dict[str, list[Any]] = {}
    for span in spans:
        if span.name in PROTOCOL_SPANS:
            found.setdefault(span.name, []).append(span)
    assert set(found) == set(PROTOCOL_SPANS), sorted(found)
    for name, group in found.items():
        for span in group:
            attributes = span.attributes
            for key in TRANSACTION_ATTRIBUTES:
                assert key in attributes, (name, dict(attributes))
            assert "nattrav.server" in attributes or "nattrav.gateway" in attributes
            if attributes["nattrav.outcome"] != "cancelled":  # cancelled: it never ended
                assert (
                    "nattrav.retransmissions" in attributes or "nattrav.retransmitted" in attributes
                ), (name, dict(attributes))
            owner = attempt_of(span, by_id)
            if owner is not None:  # spans of an attempt nest under it (verifier: the mapping's)
                assert owner.attributes["nattrav.method"] == attributes["nattrav.method"]
    stun = found["nattrav.stun.binding"]
    primary = "stun:{}:{}".format(*lab.stun_primary4)
    good = [s for s in stun if s.attributes["nattrav.server"] == primary]
    assert any(
        s.attributes["nattrav.outcome"] == "succeeded"
        and s.attributes["nattrav.purpose"] == "mapped address"
        and s.attributes["nattrav.method"] == "stun"
        for s in good
    )
    # the verifier's transactions belong to the method whose mapping they prove
    verify = [s for s in stun if s.attributes["nattrav.purpose"].startswith("verify:")]
    assert verify and {s.attributes["nattrav.method"] for s in verify} >= {"upnp", "natpmp"}
    # the silent server's Binding was given up when the other had answered (compare_wait)
    dead = [s for s in stun if s.attributes["nattrav.server"] == f"stun:{DEAD_STUN}"]
    assert dead and all(s.attributes["nattrav.outcome"] == "cancelled" for s in dead)
    search = found["nattrav.upnp.search"][0].attributes
    assert search["nattrav.outcome"] == "succeeded" and search["nattrav.devices"] >= 1
    actions = {s.attributes["nattrav.action"] for s in found["nattrav.upnp.soap"]}
    assert {"AddPortMapping", "GetSpecificPortMappingEntry", "DeletePortMapping"} <= actions
    natpmp = found["nattrav.natpmp.transaction"]
    assert any(
        s.attributes["nattrav.outcome"] == "succeeded"
        and s.attributes["nattrav.gateway"] == lab.router_lan_ip4
        for s in natpmp
    )
    # (the first run's relay attempt lost the race: its allocation span says so)
    allocate = next(
        s for s in found["nattrav.relay.allocate"] if s.attributes["nattrav.outcome"] == "succeeded"
    )
    assert allocate.attributes["nattrav.server"] == f"turn:{lab.turn.host4}:{lab.turn.port}"
    assert allocate.attributes["nattrav.transport"] == "udp"
    for span in found["nattrav.upnp.soap"] + natpmp + [allocate]:
        assert isinstance(span.attributes["nattrav.retransmissions"], int)

    # Metrics.
    assert value(probe, "nattrav.attempts", method="upnp", outcome="succeeded") == 1
    assert value(probe, "nattrav.attempts", method="stun", outcome=stun_outcome) == 1
    assert value(probe, "nattrav.chain.runs", method="upnp") == 1
    durations = points(probe, "nattrav.attempt.duration", method="upnp", outcome="succeeded")
    assert durations and durations[0].count == 1 and durations[0].sum > 0
    # (threshold 1): the silent server's breaker is open, the answering one's never changed
    assert value(probe, "nattrav.breaker.state", breaker=f"stun:{DEAD_STUN}") == 2
    assert not points(probe, "nattrav.breaker.state", breaker=primary)
    for method in ("upnp", "natpmp", "relay"):
        assert value(probe, "nattrav.leases.active", method=method) == 0  # all released
        assert value(probe, "nattrav.lease.events", method=method, event="acquired") == 1
        assert value(probe, "nattrav.lease.events", method=method, event="released") == 1
    assert value(probe, "nattrav.lease.events", method="upnp", event="renewed") >= 1
    assert value(probe, "nattrav.lease.events", method="upnp", event="lost") >= 1
    assert value(probe, "nattrav.lease.events", method="upnp", event="recovered") == 1
    kinds = [e.kind for e in events]
    assert kinds[0] is LeaseEventKind.ACQUIRED and kinds[-1] is LeaseEventKind.RELEASED
    assert lab.gateway_state().empty


# --------------------------------------------------------------------------- span rules


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_transaction_spans_say_how_they_ended(nattrav_telemetry: TelemetryProbe) -> None:
    """``Telemetry.span``, which every protocol span goes through: ``nattrav.`` prefixes,
    ``succeeded`` / ``failed`` (with ``error.type`` and an error status) / ``cancelled`` unless
    the block set its own outcome, on both event loops."""
    telemetry = nattrav_telemetry.telemetry
    with telemetry.span("t.ok", method="m", retransmissions=2):
        pass
    with telemetry.span("t.own") as span:
        span.set_attribute("nattrav.outcome", "timed-out")
    with pytest.raises(ValueError), telemetry.span("t.fail"):
        raise ValueError("boom")
    with anyio.move_on_after(0.01), telemetry.span("t.cancel"):
        await anyio.sleep(1)
    spans = {s.name: s for s in nattrav_telemetry.spans()}
    ok = spans["t.ok"].attributes
    assert (ok["nattrav.method"], ok["nattrav.retransmissions"]) == ("m", 2)
    assert ok["nattrav.outcome"] == "succeeded" and spans["t.ok"].status.is_ok
    assert spans["t.own"].attributes["nattrav.outcome"] == "timed-out"
    failed = spans["t.fail"]
    assert failed.attributes["nattrav.outcome"] == "failed"
    assert failed.attributes["error.type"] == "ValueError" and not failed.status.is_ok
    assert [e.name for e in failed.events] == ["exception"]
    cancelled = spans["t.cancel"]
    assert cancelled.attributes["nattrav.outcome"] == "cancelled"
    assert "error.type" not in cancelled.attributes


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_method_is_heard_only_once_it_won(
    nattrav_telemetry: TelemetryProbe, tmp_path: Path
) -> None:
    """Lease events an attempt emits before the chain announces it (a renewal while a better
    method is still given its grace, a loser's keep-alive) are held back: listeners, metrics
    and logs see ``acquired`` first, then the held-back events, and nothing from losers."""
    from contextlib import asynccontextmanager

    from nattrav.method import Acquisition
    from nattrav.models import Candidate, CandidateKind, Reachability, TransportAddress
    from nattrav.plugins import module_plugin
    from nattrav.testing import FakeMethod

    class Chatty:
        """Renews at once, before the chain has decided (a short lease)."""

        def __init__(self, name: str, port: int) -> None:
            self.name, self.port = name, port

        def __call__(self) -> Chatty:
            return self

        @asynccontextmanager
        async def acquire(self, ctx: Any) -> Any:
            candidate = Candidate(
                CandidateKind.RELAYED,
                TransportAddress("203.0.113.1", self.port),
                self.name,
                reachability=Reachability.proven("test"),
            )
            ctx.emit(LeaseEvent(LeaseEventKind.RENEWED, self.name, candidate.address))
            yield Acquisition(candidate)

    better = FakeMethod("mapped", "fail", delay=0.3, kind=CandidateKind.PORT_MAPPED)

    def register(registry: Any) -> None:
        registry.add(better, name="mapped", priority=1, kind=CandidateKind.PORT_MAPPED)
        for n, name in enumerate(("relay-a", "relay-b")):
            registry.add(Chatty(name, 50000 + n), name=name, priority=2 + n,
                         kind=CandidateKind.RELAYED)  # fmt: skip

    config = structure_config(
        {"state_dir": str(tmp_path), "chain": {"stagger": 0.0, "fallback_grace": 1.0}}
    )
    host = PluginHost.load(
        config, entry_points=[], builtins=False, disabled=(),
        extra=[("fakes", module_plugin("fakes", nattrav_register_methods=register))],
    )  # fmt: skip
    runtime = Runtime(host, telemetry=nattrav_telemetry.telemetry)
    heard: list[tuple[str, str]] = []
    request = TraversalRequest(port=0, families=V4)
    async with runtime.chain().run(
        request, on_event=lambda e: heard.append((e.kind.value, e.method))
    ) as held:
        assert held.result.method == "relay-a"
        records = {a.method: a for a in held.result.attempts}
        # relay-b ran too (and renewed) but lost: released, never heard
        assert records["relay-b"].outcome.value == "cancelled", records["relay-b"]
    assert heard == [("acquired", "relay-a"), ("renewed", "relay-a"), ("released", "relay-a")]
    assert not points(nattrav_telemetry, "nattrav.lease.events", method="relay-b")


# --------------------------------------------------------------------------- CLI: Prometheus


def scrape(lab: Any, port: int) -> str:
    """GET /metrics from inside the LAN host (where ``nattrav map`` serves it)."""
    with lab.inside("lan"):
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def read_until(proc: subprocess.Popen[bytes], kind: str, timeout: float) -> list[dict[str, Any]]:
    """JSON lines of ``map --json`` up to the first event of ``kind``."""
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = json.loads(raw)
            lines.append(line)
            if line.get("event", {}).get("kind") == kind:
                return lines
    raise AssertionError(f"no {kind} event within {timeout} s: {lines}")


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
def test_map_serves_prometheus_metrics_and_logs_json_lines(lab: Any, tmp_path: Path) -> None:
    """``nattrav -v --log-json --metrics-port P map PORT --json`` in the LAN host: while it
    holds the UPnP mapping, ``/metrics`` (scraped from the LAN host, where it listens) shows
    the attempts by method and outcome, the attempt duration histogram, the chain run, the
    held endpoint and the lease events; after SIGTERM the process exits 0 and stderr holds
    only JSON log lines, whose attempt records carry ``nattrav.method`` and
    ``nattrav.outcome`` and whose lease records carry ``nattrav.method`` and
    ``nattrav.event``."""
    host4, port4 = lab.stun_primary4
    metrics_port = 9464  # in the lab's LAN host: no other process there uses it
    argv = [
        sys.executable, "-m", "nattrav.cli", "-v", "--log-json",
        "--metrics-port", str(metrics_port),
        "map", "46050", "--json", "--family", "4",
        "--stun", f"{host4}:{port4}",
        "--turn", f"turn:{lab.turn.host4}:{lab.turn.port}",
        "--turn-user", lab.turn.user, "--turn-password", lab.turn.password,
    ]  # fmt: skip
    env = dict(os.environ, NATTRAV_STATE_DIR=str(tmp_path), NATTRAV_CONFIG=os.devnull)
    proc = lab.popen("lan", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        lines = read_until(proc, "acquired", 20)
        acquired = lines[-1]["event"]
        assert acquired["method"] == "upnp"
        text = scrape(lab, metrics_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    assert prometheus_sample(text, "nattrav_attempts_total", nattrav_method="upnp",
                  nattrav_outcome="succeeded") == 1  # fmt: skip
    assert prometheus_sample(text, "nattrav_attempts_total", nattrav_method="stun",
                  nattrav_outcome="insufficient") == 1  # fmt: skip
    assert prometheus_sample(text, "nattrav_chain_runs_total", nattrav_method="upnp") == 1
    assert prometheus_sample(text, "nattrav_leases_active", nattrav_method="upnp") == 1
    assert prometheus_sample(text, "nattrav_lease_events_total", nattrav_method="upnp",
                  nattrav_event="acquired") == 1  # fmt: skip
    count = prometheus_sample(text, "nattrav_attempt_duration_seconds_count", nattrav_method="upnp",
                   nattrav_outcome="succeeded")  # fmt: skip
    assert count == 1
    assert "nattrav_attempt_duration_seconds_bucket{" in text

    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records, "no log lines with -v"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    attempts = [r for r in records if r["message"].startswith("attempt ")]
    leases = [r for r in records if r["message"].startswith("lease ")]
    assert {(r["nattrav.method"], r["nattrav.outcome"]) for r in attempts} >= {
        ("upnp", "succeeded"),
        ("stun", "insufficient"),
    }
    assert all("nattrav.duration" in r for r in attempts)
    assert [(r["nattrav.method"], r["nattrav.event"]) for r in leases] == [
        ("upnp", "acquired"),
        ("upnp", "released"),
    ]
    assert lab.turn.password not in stderr
    assert lab.gateway_state().empty


# --------------------------------------------------------------------------- the docs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "observability.md"


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[1:]  # without the header


def test_the_doc_names_every_span_and_metric_and_only_tests_that_exist() -> None:
    """docs/observability.md stays true: its span table lists the spans the code opens, its
    metric table the instruments core and the plugins create, and every test its fault table
    names exists (file, and function defined in it)."""
    text = DOC.read_text()
    spans = {row[0].strip("`") for row in _table_rows(_section(text, "Spans"))}
    assert spans == {"nattrav.chain", "nattrav.attempt", *PROTOCOL_SPANS}
    sources = "\n".join(
        p.read_text()
        for p in [*ROOT.glob("core/src/nattrav/*.py"), *ROOT.glob("plugins/*/src/*/*.py")]
    )
    for name in spans:
        assert f'"{name}"' in sources, f"{name} is documented but no code opens it"
    metrics = {row[0].strip("`") for row in _table_rows(_section(text, "Metrics"))}
    # instruments: meter.create_counter("nattrav...."), telemetry.counter("nattrav....")
    created = set(re.findall(r'(?:create_\w+|counter)\(\s*"(nattrav\.[a-z_.]+)"', sources))
    assert created, "found no instruments in the sources"
    assert metrics == created, metrics ^ created
    rows = _table_rows(_section(text, "Faults: what nattrav does, and the test that proves it"))
    assert len(rows) >= 12
    for fault, _does, tests, _measured in rows:
        assert tests, f"the fault {fault!r} names no test"
        for ref in re.findall(r"`([^`]*test_[^`]*)`", tests):
            path, _, name = ref.rpartition("::")
            file = ROOT / (path or "tests/test_faults_lab.py")
            function = name.split("[")[0]
            assert file.exists(), ref
            assert f"def {function}(" in file.read_text(), f"{ref}: no such test"
