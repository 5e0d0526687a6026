"""``nattrav rendezvous serve`` and two ``nattrav connect`` processes across two lab sites.

The server runs on the lab's internet side, each peer in its own site's LAN host; each
peer pipes a line from its standard input to the other and prints the path as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

NATTRAV = str(Path(sys.executable).with_name("nattrav"))


def _config(lab: Any, path: Path) -> Path:
    turn = lab.turn
    host4, port = lab.stun_primary4
    path.write_text(
        f"""
state_dir = "{path.parent / "state"}"
cleanup_on_start = false
[chain]
disabled = ["upnp", "natpmp"]
[plugins.stun]
servers = ["{host4}:{port}"]
compare = 1
[plugins.relay]
servers = ["turn:{turn.host4}:{turn.port}?transport=udp"]
username = "{turn.user}"
password = "{turn.password}"
families = "ipv4"
self_test = false
[plugins.p2p]
families = [4]
"""
    )
    return path


def test_connect_through_the_rendezvous_server(lab_factory: Any, tmp_path: Path) -> None:
    lab = lab_factory("eim", second_site="eim")
    config = _config(lab, tmp_path / "nattrav.toml")
    server_ip = lab.internet_peer_ip4
    server = lab.popen(
        "internet",
        [
            NATTRAV,
            "--config",
            str(config),
            "rendezvous",
            "serve",
            "--host",
            server_ip,
            "--port",
            "8765",
            "--json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline() if server.stderr else ""
        assert json.loads(line)["event"] == "listening"
        peers = {}
        for role, site in (("a", "lan"), ("b", "site2.lan")):
            given = tmp_path / f"{role}.in"
            given.write_text(f"hello from {role}\n")
            stdin = given.open("rb")
            peers[role] = lab.popen(
                site,
                [
                    NATTRAV,
                    "--config",
                    str(config),
                    "connect",
                    "--rendezvous",
                    f"ws://{server_ip}:8765",
                    "--room",
                    "lab-room",
                    "--json",
                    "--linger",
                    "2",
                    "--family",
                    "4" if role == "a" else "both",
                ],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            stdin.close()  # the child has its own copy
            time.sleep(0.2)  # a joins first: it makes the offer
        outs = {role: proc.communicate(timeout=40) for role, proc in peers.items()}
    finally:
        server.terminate()
        server.communicate(timeout=5)  # also closes its pipe
    for role, (out, err) in outs.items():
        other = "b" if role == "a" else "a"
        events = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
        assert peers[role].returncode == 0, err.decode()
        connected = [e for e in events if e["event"] == "connected"]
        assert connected and connected[0]["path"]["kind"] == "punched", err.decode()
        assert not connected[0]["path"]["local"].startswith("["), connected  # a: --family 4
        assert out.decode() == f"hello from {other}\n"
        closed = [e for e in events if e["event"] == "closed"]
        assert closed and closed[0]["stats"]["datagrams_received"] == 1
