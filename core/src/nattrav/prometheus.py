"""An optional Prometheus scrape endpoint for nattrav's OpenTelemetry metrics.

Only for applications and commands that ask for it (``nattrav map --metrics-port 9464``); the
library itself depends on ``opentelemetry-api`` alone. Needs the ``prometheus`` extra
(``opentelemetry-sdk`` and ``opentelemetry-exporter-prometheus``). The endpoint uses its own
``CollectorRegistry`` and ``MeterProvider``, never the process-wide defaults, so embedding
nattrav does not change what the application exports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nattrav.errors import ConfigError

__all__ = ["prometheus_endpoint"]


@contextmanager
def prometheus_endpoint(port: int, host: str = "127.0.0.1") -> Iterator[Any]:
    """Serve ``/metrics`` on ``host:port`` while the block runs; yields the MeterProvider to
    give to ``Runtime`` / ``Telemetry``."""
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError as exc:
        raise ConfigError(
            [
                "the Prometheus endpoint needs the 'prometheus' extra: "
                f"pip install 'nattrav[prometheus]' ({exc.name} is missing)"
            ]
        ) from None
    registry = prometheus_client.CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        provider.shutdown()
        raise ConfigError([f"cannot serve metrics on {host}:{port}: {exc.strerror}"]) from None
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
        provider.shutdown()
