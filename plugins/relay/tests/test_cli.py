"""``nattrav relay allocate`` as a user runs it (a subprocess): the relayed address printed
at once, echo, permits, JSON lines, TLS, clean errors and exit codes; and ``nattrav map
--turn`` ending at the relay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from nattrav_relay.testing import Coturn


def nattrav(*args: str, state: Path) -> list[str]:
    del state
    return [sys.executable, "-m", "nattrav.cli", *args]


@contextmanager
def running(argv: list[str], state: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "NATTRAV_STATE_DIR": str(state)}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_allocate_prints_the_relayed_address_and_echoes(coturn: Coturn, tmp_path: Path) -> None:
    argv = nattrav(
        "relay",
        "allocate",
        coturn.uri("udp"),
        "--user",
        coturn.username,
        "--password",
        coturn.password,
        "--echo",
        "--permit",
        "127.0.0.1",
        "--json",
        state=tmp_path,
    )
    with running(argv, tmp_path) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # flushed as soon as allocated
        assert first["event"] == "allocated" and first["permitted"] == ["127.0.0.1"]
        host, port = first["relayed"][0].rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.settimeout(3)
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"ping", (host, int(port)))
            data, source = peer.recvfrom(100)
            assert data == b"ping" and source == (host, int(port))
            seen = json.loads(proc.stdout.readline())
            assert seen == {
                "event": "datagram",
                "peer": f"127.0.0.1:{peer.getsockname()[1]}",
                "bytes": 4,
                "echoed": True,
            }
        proc.send_signal(signal.SIGINT)
        out, _err = proc.communicate(timeout=10)
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-2]["event"] == "released" and lines[-1]["event"] == "released"
    assert lines[-1]["stats"]["packets_received"] == 1 and lines[-1]["stats"]["packets_sent"] == 1
    assert proc.returncode == 0


def test_allocate_over_tls_in_text_mode(coturn: Coturn, tmp_path: Path) -> None:
    argv = nattrav(
        "relay",
        "allocate",
        coturn.uri("tls"),
        "-u",
        coturn.username,
        "-p",
        coturn.password,
        "--ca-file",
        str(coturn.ca_path),
        "--hold",
        "0.5",
        state=tmp_path,
    )
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NATTRAV_STATE_DIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("relayed 127.0.0.1:")
    assert "via turns:127.0.0.1" in out.stdout and "released" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "x", "--password", "wrong"], "401"),
        ([], "no credentials"),
    ],
)
def test_failures_are_one_line_and_exit_1(
    coturn: Coturn, tmp_path: Path, args: list[str], message: str
) -> None:
    argv = nattrav("relay", "allocate", coturn.uri("udp"), *args, "--timeout", "3", state=tmp_path)
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NATTRAV_STATE_DIR": str(tmp_path)},
    )
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert message in text and "Traceback" not in text


def test_bad_server_uri_is_a_clean_error(tmp_path: Path) -> None:
    argv = nattrav("relay", "allocate", "stun:127.0.0.1", "-u", "u", "-p", "p", state=tmp_path)
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NATTRAV_STATE_DIR": str(tmp_path)},
    )
    assert out.returncode == 1 and "not a turn" in out.stdout + out.stderr


def test_map_with_turn_options_ends_at_the_relay(coturn: Coturn, tmp_path: Path) -> None:
    argv = nattrav(
        "map",
        "0",
        "--turn",
        coturn.uri("udp"),
        "--turn-user",
        coturn.username,
        "--turn-password",
        coturn.password,
        "--turn-permit",
        "127.0.0.9",
        "--strategy",
        "sequential",
        "--hold",
        "0.2",
        "--json",
        state=tmp_path,
    )
    env = {
        **os.environ,
        "NATTRAV_STATE_DIR": str(tmp_path),
        "NATTRAV_DISABLE_PLUGINS": "upnp,natpmp,stun,pmtud,p2p,lab",
    }
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    result = next(r["result"] for r in records if "result" in r)
    candidate = result["candidate"]
    assert candidate["method"] == "relay" and candidate["kind"] == "relay"
    assert candidate["details"]["permitted"] == ["127.0.0.9"]
    assert candidate["reachability"]["inbound"] == "yes"
