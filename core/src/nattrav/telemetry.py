"""OpenTelemetry spans and metrics, through opentelemetry-api only.

The SDK (exporters, sampling) is the application's choice: with no SDK configured every call
here is a no-op. Tests and applications that want isolation pass their own tracer and meter
providers; otherwise the API's global providers are used (the app configured them on purpose).

Names follow OpenTelemetry conventions: spans ``nattrav.chain`` and ``nattrav.attempt`` with
attributes ``nattrav.method``, ``nattrav.outcome``, ``error.type``; metrics ``nattrav.attempts``
(counter), ``nattrav.attempt.duration`` (histogram, seconds), ``nattrav.breaker.state`` (gauge:
0 closed, 1 half-open, 2 open), ``nattrav.leases.active`` and ``nattrav.lease.events``.
Plugins use ``span()`` and ``counter()`` for their own protocol transactions: a span per
transaction with ``nattrav.method``, ``nattrav.server`` (or ``nattrav.gateway``),
``nattrav.outcome`` and ``nattrav.retransmissions``, nested under the ``nattrav.attempt`` span
of the attempt that ran it (docs/observability.md lists them all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from nattrav.models import AttemptOutcome, AttemptRecord, LeaseEvent, LeaseEventKind
from nattrav.resilience import BreakerState

__all__ = ["Telemetry"]

_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
_log = logging.getLogger("nattrav")


class Telemetry:
    """Spans, metrics and structured log lines for one runtime."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("nattrav", tracer_provider=tracer_provider)
        self.meter = metrics.get_meter("nattrav", meter_provider=meter_provider)
        self.log = logger or _log
        self.attempts = self.meter.create_counter(
            "nattrav.attempts", unit="{attempt}", description="Method attempts by outcome"
        )
        self.attempt_duration = self.meter.create_histogram(
            "nattrav.attempt.duration", unit="s", description="Duration of method attempts"
        )
        self.chain_runs = self.meter.create_counter(
            "nattrav.chain.runs", unit="{run}", description="Chain runs by winning method"
        )
        self.breaker_state = self.meter.create_gauge(
            "nattrav.breaker.state", description="Circuit breaker: 0 closed, 1 half-open, 2 open"
        )
        self.leases_active = self.meter.create_up_down_counter(
            "nattrav.leases.active", unit="{lease}", description="Endpoints currently held"
        )
        self.lease_events = self.meter.create_counter(
            "nattrav.lease.events", unit="{event}", description="Lease lifecycle events"
        )
        self._counters: dict[str, metrics.Counter] = {}

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A span for a protocol transaction, current while the block runs.

        Attribute names without a dot get the ``nattrav.`` prefix (``method`` ->
        ``nattrav.method``, ``retransmissions`` -> ``nattrav.retransmissions``). Unless the
        block set ``nattrav.outcome`` itself, it is ``succeeded`` when the block ends,
        ``cancelled`` when it is cancelled, and ``failed`` when it raises; an exception also
        sets ``error.type``, an error status and an exception event.
        """
        attrs = {k if "." in k else f"nattrav.{k}": _otel_value(v) for k, v in attributes.items()}
        with self.tracer.start_as_current_span(
            name, attributes=attrs, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                if _is_cancellation(exc):
                    _set_default(span, "nattrav.outcome", "cancelled")
                else:
                    _set_default(span, "nattrav.outcome", "failed")
                    span.set_attribute("error.type", type(exc).__name__)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    span.record_exception(exc)
                raise
            _set_default(span, "nattrav.outcome", "succeeded")

    def counter(self, name: str, unit: str = "1", description: str = "") -> metrics.Counter:
        """A named counter, created once per runtime (for plugin-specific metrics)."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self.meter.create_counter(name, unit=unit, description=description)
            self._counters[name] = counter
        return counter

    def record_attempt(self, span: Span | None, record: AttemptRecord) -> None:
        labels = {"nattrav.method": record.method, "nattrav.outcome": record.outcome.value}
        self.attempts.add(1, labels)
        self.attempt_duration.record(record.duration, labels)
        if span is not None:
            span.set_attribute("nattrav.outcome", record.outcome.value)
            span.set_attribute("nattrav.tries", record.tries)
            if record.error_type:
                span.set_attribute("error.type", record.error_type)
            if record.outcome in (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT):
                span.set_status(Status(StatusCode.ERROR, record.reason))
            if record.candidate is not None:
                span.set_attribute("nattrav.endpoint", str(record.candidate.address))
        self.log.info(
            "attempt %s %s: %s",
            record.method,
            record.outcome.value,
            record.reason,
            extra={
                "nattrav.method": record.method,
                "nattrav.outcome": record.outcome.value,
                "nattrav.duration": record.duration,
            },
        )

    def record_chain(self, method: str | None) -> None:
        self.chain_runs.add(1, {"nattrav.method": method or "none"})

    def record_breaker(self, name: str, new: BreakerState) -> None:
        self.breaker_state.set(_BREAKER_VALUE[new], {"nattrav.breaker": name})
        self.log.info("breaker %s is %s", name, new.value, extra={"nattrav.breaker": name})

    def record_lease(self, event: LeaseEvent) -> None:
        labels = {"nattrav.method": event.method, "nattrav.event": event.kind.value}
        self.lease_events.add(1, labels)
        if event.kind is LeaseEventKind.ACQUIRED:
            self.leases_active.add(1, {"nattrav.method": event.method})
        elif event.kind is LeaseEventKind.RELEASED:
            self.leases_active.add(-1, {"nattrav.method": event.method})
        self.log.info(
            "lease %s %s %s",
            event.method,
            event.kind.value,
            event.endpoint,
            extra={"nattrav.method": event.method, "nattrav.event": event.kind.value},
        )


def _set_default(span: Span, key: str, value: str) -> None:
    """Set ``key`` unless the span already carries it (SDK spans can tell; others cannot, and
    record nothing anyway)."""
    current = getattr(span, "attributes", None)
    if current is not None and key in current:
        return
    span.set_attribute(key, value)


def _is_cancellation(exc: BaseException) -> bool:
    # asyncio.CancelledError or trio.Cancelled, without importing either event loop here.
    return type(exc).__name__ in ("CancelledError", "Cancelled")


def _otel_value(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return str(dict(value))
    return str(value)
