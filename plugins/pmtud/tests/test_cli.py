"""``nattrav pmtu`` and ``nattrav pmtu-echo`` through the real CLI entry point, over loopback."""

from __future__ import annotations

import io
import json
import socket

import anyio
import pytest
from nattrav.cli import main
from nattrav_pmtud.driver import echo_server

pytestmark = pytest.mark.anyio


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_pmtu_json_against_an_echo_peer() -> None:
    async with echo_server(("127.0.0.1", 0)) as server:
        argv = ["pmtu", f"127.0.0.1:{server.address[1]}", "--max", "1500", "--json",
                "--probe-timeout", "0.2"]  # fmt: skip
        code, out, _err = await anyio.to_thread.run_sync(_run, argv)
    assert code == 0
    data = json.loads(out)
    [r] = data["results"]
    assert (r["family"], r["path_mtu"], r["udp_payload"], r["confirmed"]) == (4, 1500, 1472, True)
    assert r["how"] == ["probe-confirmed"] and r["limited_by"] == "configured-maximum"


async def test_pmtu_table_and_failure_exit_code() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    argv = ["pmtu", f"stun:127.0.0.1:{port}", "--probe-timeout", "0.05", "--max-probes", "1"]
    code, out, _err = await anyio.to_thread.run_sync(_run, argv)
    assert code == 1
    assert "no answer to base-size probes" in out and "port unreachable" in out


async def test_pmtu_with_a_shared_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from nattrav_pmtud.prober import ProbeCredentials

    monkeypatch.setenv("PMTU_TEST_SECRET", "s3cret")
    async with echo_server(("127.0.0.1", 0), credentials=ProbeCredentials("s3cret")) as server:
        argv = ["pmtu", f"127.0.0.1:{server.address[1]}", "--max", "2000", "--probe-timeout",
                "0.2", "--password-env", "PMTU_TEST_SECRET"]  # fmt: skip
        code, out, _err = await anyio.to_thread.run_sync(_run, argv)
    assert code == 0 and "2000" in out and "1972" in out


def test_usage_errors_exit_2() -> None:
    code, _out, err = _run(["pmtu", "stuns:example.net"])
    assert code == 2 and "UDP" in err
    code, _out, err = _run(["pmtu", "127.0.0.1:3478", "--max", "70000"])
    assert code == 2 and "65535" in err
    code, _out, err = _run(["pmtu", "127.0.0.1:3478", "--password-env", "PMTU_NOT_SET_ANYWHERE"])
    assert code == 1 and "PMTU_NOT_SET_ANYWHERE" in err


def test_pmtu_echo_serves_for_a_while() -> None:
    code, out, _err = _run(["pmtu-echo", "--bind", "127.0.0.1:0", "--duration", "0.1", "--json"])
    assert code == 0
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert first["listening"].startswith("127.0.0.1:") and second == {"answered": 0}
