"""The optional Prometheus endpoint, scraped for real over loopback."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from nattrav.cli import main
from nattrav.errors import ConfigError
from nattrav.models import CandidateKind, Inbound, TraversalRequest
from nattrav.plugins import PluginHost, module_plugin
from nattrav.prometheus import prometheus_endpoint
from nattrav.runtime import Runtime
from nattrav.telemetry import Telemetry
from nattrav.testing import FakeMethod, prometheus_sample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def plugin() -> tuple[str, object]:
    def register(registry: Any) -> None:
        registry.add(
            FakeMethod("mapped", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES),
            name="mapped",
            priority=40,
            kind=CandidateKind.PORT_MAPPED,
        )

    return "p", module_plugin("p", nattrav_register_methods=register)


def test_endpoint_exports_attempts_and_active_leases(tmp_path: Path) -> None:
    port = free_port()
    with prometheus_endpoint(port) as provider:
        host = PluginHost.load(entry_points=[], builtins=False, disabled=(), extra=[plugin()])
        rt = Runtime(host, telemetry=Telemetry(meter_provider=provider))

        async def run() -> str:
            async with rt.chain().run(TraversalRequest()):
                return await anyio.to_thread.run_sync(scrape, port)

        text = anyio.run(run)
    assert (
        prometheus_sample(
            text, "nattrav_attempts_total", nattrav_method="mapped", nattrav_outcome="succeeded"
        )
        == 1
    )
    assert prometheus_sample(text, "nattrav_leases_active", nattrav_method="mapped") == 1
    assert "nattrav_attempt_duration_seconds_bucket" in text
    with pytest.raises(OSError):
        scrape(port)  # the server stopped with the block


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with (
            pytest.raises(ConfigError, match="cannot serve metrics"),
            prometheus_endpoint(busy.getsockname()[1]),
        ):
            pass


def test_cli_map_serves_metrics_while_holding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("nattrav.plugins._installed_entry_points", list)
    monkeypatch.setenv("NATTRAV_STATE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    port = free_port()
    out = io.StringIO()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            main(
                ["--metrics-port", str(port), "map", "0", "--hold", "3", "--json"],
                extra_plugins=[plugin()],
                out=out,
                err=io.StringIO(),
            )
        )
    )
    thread.start()
    text = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "nattrav_leases_active" not in text:
        try:
            text = scrape(port)
        except OSError:
            pass
        time.sleep(0.1)
    thread.join(15)
    assert codes == [0]
    assert prometheus_sample(text, "nattrav_leases_active", nattrav_method="mapped") == 1
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0]["event"]["kind"] == "acquired"


def test_log_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("nattrav.plugins._installed_entry_points", list)
    monkeypatch.setenv("NATTRAV_STATE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert main(["-v", "--log-json", "map", "0", "--hold", "0"], extra_plugins=[plugin()]) == 0
    records = [json.loads(line) for line in err.getvalue().splitlines() if line.startswith("{")]
    attempts = [
        r for r in records if r.get("nattrav.method") == "mapped" and "nattrav.outcome" in r
    ]
    assert attempts and attempts[0]["nattrav.outcome"] == "succeeded"
    assert attempts[0]["level"] == "info"
