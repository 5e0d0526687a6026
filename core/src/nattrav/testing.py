"""pytest plugin for plugin authors (entry point ``pytest11: nattrav``).

Fixtures:

* ``nattrav_host``: build an isolated ``PluginHost`` from in-process plugins (no entry points,
  no built-ins unless asked), so a test sees exactly the plugins it names.
* ``nattrav_plugin``: make a throwaway plugin module from hook functions.
* ``fake_method``: a factory of ``FakeMethod`` objects that succeed, fail, hang, are unavailable
  or fail a few times before succeeding, with a delay, and that record when they were released.
* ``fake_method_plugin``: register fake methods as a plugin in one call.
* ``nattrav_telemetry``: a ``Telemetry`` wired to the OpenTelemetry SDK's in-memory exporters
  (needs ``opentelemetry-sdk``), with ``spans()`` and ``metrics()`` helpers.

Test traffic stays on loopback and in the lab: at start-up this plugin sets
``NATTRAV_NO_PUBLIC_SERVERS=1`` for the whole session (subprocesses inherit it), so a plugin
never falls back to public default servers (the STUN plugin's defaults, for one) even when a
test forgets to configure servers. A test of the defaults themselves removes it with
``monkeypatch.delenv``.

Importing this module is cheap: heavy imports happen inside the fixtures.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import pytest

from nattrav.errors import MethodError, MethodUnavailable
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import (
    Candidate,
    CandidateKind,
    Inbound,
    Reachability,
    TransportAddress,
)
from nattrav.plugins import PluginHost, module_plugin

__all__ = ["FakeMethod", "fake_method", "nattrav_host", "nattrav_plugin", "prometheus_sample"]

#: Plugins read this to forbid falling back to public servers (see the module docstring).
NO_PUBLIC_SERVERS_ENV = "NATTRAV_NO_PUBLIC_SERVERS"


def pytest_configure(config: pytest.Config) -> None:
    """Tests never contact public servers: forbid every public default for the session."""
    os.environ[NO_PUBLIC_SERVERS_ENV] = "1"


Behaviour = Literal["succeed", "fail", "hang", "unavailable", "flaky", "raise"]


@attrs.define(eq=False)
class FakeMethod:
    """A traversal method whose behaviour a test chooses.

    ``behaviour``: ``succeed``; ``fail`` (non-retryable ``MethodError``); ``flaky`` (retryable
    failures for the first ``failures`` tries, then success); ``unavailable``; ``hang`` (never
    returns: for timeouts and cancellation); ``raise`` (a plain ``RuntimeError``, a plugin bug).
    ``delay`` is slept before the outcome; ``lose_after`` makes a held endpoint fail for good
    after that many seconds (a lease the method cannot recover). ``events`` records
    ``acquire``/``release``/``cancel``.
    """

    name: str
    behaviour: Behaviour = "succeed"
    delay: float = 0.0
    kind: CandidateKind = CandidateKind.SERVER_REFLEXIVE
    inbound: Inbound = Inbound.YES
    address: TransportAddress = attrs.field(factory=lambda: TransportAddress("198.51.100.7", 40000))
    lifetime: float | None = None
    failures: int = 1
    lose_after: float | None = None
    events: list[str] = attrs.field(factory=list)
    tries: int = 0

    def __call__(self) -> FakeMethod:
        """Act as its own factory, so ``registry.add(fake, ...)`` works."""
        return self

    @property
    def released(self) -> bool:
        return "release" in self.events

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        import anyio

        self.tries += 1
        self.events.append("acquire")
        try:
            if self.delay:
                await anyio.sleep(self.delay)
            if self.behaviour == "hang":
                await anyio.sleep_forever()
            if self.behaviour == "fail":
                raise MethodError(self.name, "fake failure")
            if self.behaviour == "raise":
                raise RuntimeError("fake plugin bug")
            if self.behaviour == "unavailable":
                raise MethodUnavailable(self.name, "fake: not here")
            if self.behaviour == "flaky" and self.tries <= self.failures:
                raise MethodError(self.name, f"fake transient failure {self.tries}", retryable=True)
        except anyio.get_cancelled_exc_class():
            self.events.append("cancel")
            raise
        candidate = Candidate(
            kind=self.kind,
            address=self.address,
            method=self.name,
            reachability=Reachability(self.inbound, False, "fake"),
            lifetime=self.lifetime,
        )
        try:
            if self.lose_after is None:
                yield Acquisition(candidate)
            else:
                async with anyio.create_task_group() as tg:

                    async def lose() -> None:
                        await anyio.sleep(self.lose_after or 0.0)
                        raise MethodError(self.name, "fake: lease lost and not recoverable")

                    tg.start_soon(lose)
                    yield Acquisition(candidate)
                    tg.cancel_scope.cancel()
        finally:
            self.events.append("release")


@pytest.fixture
def nattrav_plugin() -> Callable[..., Any]:
    """Return ``make(name, **hooks)`` building an in-memory plugin module from functions."""
    return module_plugin


@pytest.fixture
def nattrav_host() -> Callable[..., PluginHost]:
    """Return ``make(*(name, plugin), config=None, builtins=False)`` -> isolated PluginHost."""

    def make(
        *plugins: tuple[str, object], config: Any = None, builtins: bool = False
    ) -> PluginHost:
        return PluginHost.load(
            config, entry_points=[], disabled=(), builtins=builtins, extra=list(plugins)
        )

    return make


@pytest.fixture
def fake_method() -> Callable[..., FakeMethod]:
    """Return a ``FakeMethod`` factory: ``fake_method("stun", behaviour="hang")``."""
    return FakeMethod


@pytest.fixture
def fake_method_plugin() -> Callable[..., tuple[str, object]]:
    """Return ``make(name, *(method, priority))`` -> a ``(name, plugin)`` pair for hosts."""

    def make(plugin_name: str, *methods: tuple[FakeMethod, int]) -> tuple[str, object]:
        def nattrav_register_methods(registry: Any) -> None:
            for method, priority in methods:
                registry.add(
                    method, name=method.name, priority=priority, kind=method.kind, timeout=5.0
                )

        return plugin_name, module_plugin(
            plugin_name, nattrav_register_methods=nattrav_register_methods
        )

    return make


@attrs.define
class TelemetryProbe:
    """A ``Telemetry`` backed by in-memory SDK exporters, with read helpers."""

    telemetry: Any
    span_exporter: Any
    metric_reader: Any

    def spans(self, name: str | None = None) -> list[Any]:
        spans = list(self.span_exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> list of data points (with ``attributes`` and ``value``/``count``)."""
        data = self.metric_reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def nattrav_telemetry() -> Iterator[TelemetryProbe]:
    """Telemetry with in-memory span and metric exporters (requires opentelemetry-sdk)."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from nattrav.telemetry import Telemetry

    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield TelemetryProbe(Telemetry(tracer_provider, meter_provider), exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def prometheus_sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` in a Prometheus text exposition whose labels include
    ``labels`` (``None`` when there is none): for tests that scrape ``--metrics-port``."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
