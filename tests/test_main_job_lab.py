"""The main job, proven per lab topology: ``nattrav probe`` reports what the network really is,
and ``nattrav map`` / ``open_endpoint`` give an endpoint a peer on the internet side reaches.

One lab per topology (module-scoped), real coturn and miniupnpd, nattrav running in the LAN
host: the probe as the installed CLI in a subprocess (``--json`` validated against the shipped
schema), the endpoint through the library (``open_endpoint``) with an internet-side peer that
sends to the public endpoint and gets the application's reply. Every run must leave the router
without mappings. The ``eim`` lab's WAN link has an MTU of 1400 so the path MTU the probe
reports is the lab's, not the interface's default.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from nattrav.config import structure_config
from nattrav.endpoint import open_endpoint
from nattrav.models import LeaseEvent, LeaseEventKind, TransportAddress
from nattrav.runtime import Runtime

pytestmark = [pytest.mark.lab, pytest.mark.anyio]

SCHEMA = json.loads(resources.files("nattrav").joinpath("schemas/probe.schema.json").read_text())
EIM = {"topology": "eim", "wan_mtu": 1400}
TOPOLOGIES = [EIM, "symmetric", "open", "double", "no-igd", "udp-blocked"]

APDF = "address-and-port-dependent"
EXPECT: dict[str, dict[str, Any]] = {
    # mapping / filtering (RFC 5780), gateway protocols, double NAT and CGNAT, path MTU,
    # UDP to the servers, the method the chain picks, whether port mappings can be created.
    "eim": dict(mapping="endpoint-independent", filtering=APDF, igd=True, double=False,
                cgnat=False, mtu=1400, udp=True, method="upnp", maps=True),
    "symmetric": dict(mapping=APDF, filtering=APDF, igd=True, double=False, cgnat=False,
                      mtu=1500, udp=True, method="upnp", maps=True),
    "open": dict(mapping="no-nat", filtering="endpoint-independent", igd=False, double=False,
                 cgnat=None, mtu=1500, udp=True, method="direct", maps=False),
    "double": dict(mapping="endpoint-independent", filtering=APDF, igd=True, double=True,
                   cgnat=True, mtu=1500, udp=True, method="relay", maps=False),
    "no-igd": dict(mapping="endpoint-independent", filtering=APDF, igd=False, double=False,
                   cgnat=False, mtu=1500, udp=True, method="relay", maps=False),
    "udp-blocked": dict(mapping="udp-blocked", filtering="udp-blocked", igd=False, double=None,
                        cgnat=None, mtu=None, udp=False, method="relay", maps=False),
}  # fmt: skip
# Distinct local ports per topology: miniupnpd keeps a port it mapped once for the lab's life.
PORTS = {"eim": 42010, "symmetric": 42020, "open": 42030, "double": 42040, "no-igd": 42050,
         "udp-blocked": 42060}  # fmt: skip


def server_flags(lab: Any) -> list[str]:
    """The lab's STUN (IPv4 and IPv6 primary addresses) and TURN server as CLI options."""
    host4, port4 = lab.stun_primary4
    host6, port6 = lab.stun_primary6
    turn = lab.turn
    return [
        "--stun", f"{host4}:{port4}",
        "--stun", f"[{host6}]:{port6}",
        "--turn", f"turn:{turn.host4}:{turn.port}",
        "--turn-user", turn.user,
        "--turn-password", turn.password,
    ]  # fmt: skip


def lab_config(lab: Any, state_dir: Path, **extra: Any) -> Any:
    """The same servers as a config (for the library), relaying for the test peer."""
    host4, port4 = lab.stun_primary4
    host6, port6 = lab.stun_primary6
    turn = lab.turn
    raw: dict[str, Any] = {
        "state_dir": str(state_dir),
        "plugins": {
            "stun": {"servers": [f"{host4}:{port4}", f"[{host6}]:{port6}"]},
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


def run_cli(lab: Any, argv: list[str], state_dir: Path, timeout: float = 60) -> Any:
    env = dict(os.environ, NATTRAV_STATE_DIR=str(state_dir))
    return lab.exec("lan", [sys.executable, "-m", "nattrav.cli", *argv], timeout=timeout, env=env)


def peer_socket(lab: Any, host: str) -> socket.socket:
    """A UDP socket of a peer on the internet side (made in the ``internet`` namespace)."""
    with lab.inside("internet"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def receive_on(sock: socket.socket, timeout: float) -> tuple[bytes, tuple[str, int]]:
    with anyio.fail_after(timeout):
        while True:
            await anyio.wait_readable(sock)
            try:
                data, addr = sock.recvfrom(4096)
            except BlockingIOError:
                continue
            return data, (str(addr[0]), int(addr[1]))


@pytest.fixture
def anyio_backend(lab: Any) -> str:
    # Both backends end to end, without doubling the lab time: trio on two topologies.
    return "trio" if lab.topology in ("eim", "double") else "asyncio"


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_probe_reports_what_the_lab_really_is(lab: Any, tmp_path: Path) -> None:
    expect = EXPECT[lab.topology]
    started = time.monotonic()
    proc = run_cli(
        lab,
        ["probe", "--json", "--test-mapping", "--window", "0.3", *server_flags(lab)],
        tmp_path,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    jsonschema.validate(report, SCHEMA)
    print(f"\nprobe {lab.topology}: report {report['duration']:.2f} s, CLI {took:.2f} s")
    sections = report["sections"]
    assert not any("error" in s for s in sections.values()), sections

    # Interfaces and gateways: the LAN host and its router.
    ips = {a["ip"] for a in report["interfaces"]}
    assert lab.lan_host_ip4 in ips and lab.lan_host_ip6 in ips
    assert {g["ip"] for g in report["gateways"]} == {lab.router_lan_ip4, lab.router_lan_ip6}

    # STUN: per server over UDP and TCP, mapped addresses, NAT behaviour.
    stun = sections["stun"]
    assert (stun["mapping"], stun["filtering"]) == (expect["mapping"], expect["filtering"])
    assert stun["rfc5780"] is (lab.topology != "udp-blocked")
    for entry in stun["servers"]:
        assert entry["udp"]["reachable"] is expect["udp"], entry
        assert entry["tcp"]["reachable"] is True, entry
    public4 = lab.public_ip4
    if expect["udp"]:
        assert {m.rsplit(":", 1)[0] for m in stun["mapped_v4"]} == {public4}
        assert [m.rsplit(":", 1)[0].strip("[]") for m in stun["mapped_v6"]] == [lab.lan_host_ip6]
        assert stun["mapping_varies_by_destination"] is (expect["mapping"] == APDF)
    else:
        assert stun["mapped_v4"] == [] and stun["mapping_varies_by_destination"] is None
    assert public4 in stun["mapped_ips"]  # over TCP when UDP is blocked

    # Port-mapping protocols: present where the router runs miniupnpd.
    assert sections["upnp"]["present"] is expect["igd"]
    assert sections["natpmp"]["present"] is expect["igd"]
    if expect["igd"]:
        v4 = next(g for g in sections["natpmp"]["gateways"] if g["family"] == 4)
        assert v4["natpmp"]["version"] == 0 and v4["pcp"]["version"] == 2
        assert sections["upnp"]["services"][0]["igd_version"] == 2

    # NAT layout: double NAT and CGNAT only in `double` (the gateway hides it; the path shows).
    nat = report["nat"]
    assert nat["double_nat"] is expect["double"], nat["why"]
    assert nat["cgnat"] is expect["cgnat"], nat["why"]
    assert nat["no_nat"] is (lab.topology == "open")
    if lab.topology == "double":
        assert [h["ip"] for h in nat["path_hops"][:2]] == [lab.router_lan_ip4, "100.64.1.1"]

    # Path MTU per path.
    pmtu = sections["pmtu"]
    if expect["mtu"] is None:
        assert not any(p.get("confirmed") for p in pmtu["paths"])
    else:
        assert pmtu["ipv4_path_mtu"] == expect["mtu"]
        assert pmtu["ipv6_path_mtu"] == expect["mtu"]

    # Relay per transport, allocation works (and is deleted).
    relay = sections["relay"]["reachable"][f"turn:{lab.turn.host4}:{lab.turn.port}"]
    assert relay == {"udp": expect["udp"], "tcp": True}
    assert all(s["deleted"] for s in sections["relay"]["servers"] if s["ok"])

    # --test-mapping: created, verified end to end, released, per protocol.
    tests = {t["method"]: t for t in report["mapping_tests"]}
    assert set(tests) == {"upnp", "natpmp"}
    for test in tests.values():
        assert test["created"] is expect["maps"], test
        assert test["verified"] is expect["maps"], test
        assert test["released"] is True, test

    # The chain verdict, with why the better methods did not win.
    chain = report["chain"]
    assert chain["method"] == expect["method"], chain["attempts"]
    attempts = {a["method"]: a for a in chain["attempts"]}
    winner = attempts[expect["method"]]
    assert winner["outcome"] == "succeeded"
    for a in chain["attempts"]:
        if a["priority"] < winner["priority"]:
            assert a["outcome"] != "succeeded" and a["reason"], a
    if lab.has_igd():
        assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
async def test_open_endpoint_is_reachable_from_the_internet(lab: Any, tmp_path: Path) -> None:
    """A peer on the internet side sends to the public endpoint; the datagram arrives on
    ``ep.receive()``; the application's reply from ``ep.send_to`` reaches the peer from that
    same public endpoint. Through a mapping the local port is the one asked for (one socket);
    through the relay, only because the peer is permitted."""
    expect = EXPECT[lab.topology]
    port = PORTS[lab.topology]
    runtime = Runtime.load(lab_config(lab, tmp_path, chain={"stagger": 0.1}))
    events: list[LeaseEvent] = []
    peer = peer_socket(lab, lab.internet_peer_ip4)
    try:
        with lab.inside("lan"):
            started = anyio.current_time()
            async with open_endpoint(port, runtime=runtime, on_event=events.append) as ep:
                took = anyio.current_time() - started
                print(f"\nmap {lab.topology}: {ep.method} {ep.address} in {took:.2f} s")
                assert ep.method == expect["method"], ep.result.attempts
                assert ep.address.family == 4
                if ep.channel is None:  # the application's own socket carries the data
                    assert ep.mux is not None and ep.mux.port == port
                if expect["method"] == "relay":
                    assert ep.result.candidate.details["permitted"] == [lab.internet_peer_ip4]
                if lab.has_igd() and expect["maps"]:
                    assert not lab.gateway_state().empty
                payload = f"hello {lab.topology} {os.urandom(4).hex()}".encode()
                target = (ep.address.host, ep.address.port)
                got: tuple[bytes, TransportAddress] | None = None
                for _ in range(3):  # UDP: a lost datagram is no failure of the endpoint
                    peer.sendto(payload, target)
                    with anyio.move_on_after(1.0):
                        got = await ep.receive()
                    if got is not None:
                        break
                assert got is not None, f"nothing from the peer arrived at {ep.address}"
                data, source = got
                assert data == payload  # the application sees exactly the peer's datagram
                assert source.host == lab.internet_peer_ip4
                await ep.send_to(b"reply " + payload, source)
                reply, origin = await receive_on(peer, 3.0)
                assert reply == b"reply " + payload
                assert origin == target  # the reply leaves from the public endpoint
    finally:
        peer.close()
    kinds = [e.kind for e in events]
    assert kinds[0] is LeaseEventKind.ACQUIRED and kinds[-1] is LeaseEventKind.RELEASED
    assert all(e.method == expect["method"] and e.endpoint is not None for e in events)
    if lab.has_igd():
        assert lab.gateway_state().empty
