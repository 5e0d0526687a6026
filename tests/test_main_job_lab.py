"""The main job, proven per lab topology: ``nattrav probe`` reports what the network really is,
and ``nattrav map`` / ``open_endpoint`` give an endpoint a peer on the internet side reaches.

One lab per topology (module-scoped), real coturn and miniupnpd, nattrav running in the LAN
host: the probe as the installed CLI in a subprocess (``--json`` validated against the shipped
schema), the endpoint through the library (``open_endpoint``) with an internet-side peer that
sends to the public endpoint and gets the application's reply. Every run must leave the router
without mappings. The ``eim`` lab's WAN link has an MTU of 1400 so the path MTU the probe
reports is the lab's, not the interface's default.

Behind the home router (``eim``) also:

* a mapping the router reports but that does not forward (an nft rule in the router drops new
  inbound traffic to the mapped port) is deleted, added once more, then abandoned, by UPnP and
  by NAT-PMP/PCP alike, and the chain ends at the relay;
* nattrav's own traffic on the application's port (STUN keepalive indications and rechecks)
  never reaches the application, whose datagrams leave from the public endpoint;
* ``nattrav map --json`` prints every event at once (read live from the running process),
  recovers the mapping after a router reboot that lost it, and releases it on SIGTERM;
* ``kill -9`` of a running ``nattrav map`` leaves its mapping (or allocation) behind; the
  journal lets ``nattrav cleanup``, or the next start, remove it;
* the human probe output is a readable table, and ``make demo`` runs end to end.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import jsonschema  # type: ignore[import-untyped]
import pytest
from nattrav.config import structure_config
from nattrav.endpoint import open_endpoint
from nattrav.models import (
    AttemptOutcome,
    LeaseEvent,
    LeaseEventKind,
    TransportAddress,
    TraversalRequest,
)
from nattrav.runtime import Runtime

pytestmark = [pytest.mark.lab, pytest.mark.anyio]

SCHEMA = json.loads(resources.files("nattrav").joinpath("schemas/probe.schema.json").read_text())
MAP_SCHEMA = json.loads(resources.files("nattrav").joinpath("schemas/map.schema.json").read_text())
EIM = {"topology": "eim", "wan_mtu": 1400}
TOPOLOGIES = [EIM, "symmetric", "open", "double", "no-igd", "udp-blocked"]


def topology_id(param: Any) -> str:
    return str(param["topology"] if isinstance(param, dict) else param)


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


def lab_config(
    lab: Any, state_dir: Path, *, stun: dict[str, Any] | None = None, **extra: Any
) -> Any:
    """The same servers as a config (for the library), relaying for the test peer; ``stun``
    adds keys to (or replaces ``servers`` of) ``[plugins.stun]``."""
    host4, port4 = lab.stun_primary4
    host6, port6 = lab.stun_primary6
    turn = lab.turn
    raw: dict[str, Any] = {
        "state_dir": str(state_dir),
        "plugins": {
            "stun": {"servers": [f"{host4}:{port4}", f"[{host6}]:{port6}"], **(stun or {})},
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


def explain(attempts: Any) -> str:
    """The chain's attempts, one line each (for assertion messages)."""
    return "\n".join(
        f"{a.method} {a.outcome.value} {a.duration:.2f}s: {a.reason}" for a in attempts
    )


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


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True, ids=topology_id)
def test_probe_reports_what_the_lab_really_is(lab: Any, tmp_path: Path) -> None:
    expect = EXPECT[lab.topology]
    started = time.monotonic()
    proc = run_cli(
        lab,
        # A window above the minimum: the machine running the suite is shared and busy.
        ["probe", "--json", "--test-mapping", "--window", "0.5", *server_flags(lab)],
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
    assert stun["rfc5780"] is (lab.topology != "udp-blocked"), stun["tests"]
    assert stun["hairpinning"] is None and stun["binding_lifetime"] is None  # --deep only
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


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True, ids=topology_id)
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
                assert ep.method == expect["method"], explain(ep.result.attempts)
                assert ep.address.family == 4
                assert ep.local_port == port  # the application's own socket
                if ep.channel is None:  # ... carries the data itself (not a relay channel)
                    assert ep.mux is not None and ep.mux.port == port
                if expect["method"] == "relay":
                    assert ep.result.candidate.details["permitted"] == [lab.internet_peer_ip4]
                    # the self-test proves inbound, except where UDP cannot reach the relay
                    proven = ep.result.candidate.reachability.verified
                    assert proven is (lab.topology != "udp-blocked")
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


NATTRAV = [sys.executable, "-m", "nattrav.cli"]


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_config(lab: Any, path: Path, *, only: str | None = None, extra: str = "") -> Path:
    """A config file with the lab's servers; ``only`` keeps that one method in the chain."""
    host4, port4 = lab.stun_primary4
    turn = lab.turn
    lines = [
        f"state_dir = {json.dumps(str(path.parent))}",
        "[chain]",
        "stagger = 0.1",
    ]
    if only is not None:
        others = [m for m in ("direct", "stun", "upnp", "natpmp", "relay") if m != only]
        lines.append(f"disabled = {_toml_list(others)}")
    lines += [
        "[plugins.stun]",
        f"servers = {_toml_list([f'{host4}:{port4}'])}",
        "probe_window = 0.3",
        "[plugins.relay]",
        f"servers = {_toml_list([f'turn:{turn.host4}:{turn.port}'])}",
        f"username = {json.dumps(turn.user)}",
        f"password = {json.dumps(turn.password)}",
        extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class LiveLines:
    """Lines of a running process's stdout, as they are printed (no buffering on our side)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._buffer = b""

    def until(self, predicate: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for seen in self.lines:
            if predicate(seen):
                return seen
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line: dict[str, Any] = json.loads(raw)
                jsonschema.validate(line, MAP_SCHEMA)  # every line, as it is printed
                self.lines.append(line)
                if predicate(line):
                    return line
        raise AssertionError(f"no such line within {timeout} s; got {self.lines}")


def _event(kind: str, family: int | None = None) -> Any:
    def match(line: dict[str, Any]) -> bool:
        event = line.get("event", {})
        endpoint = event.get("endpoint") or {}
        return bool(
            event.get("kind") == kind and (family is None or endpoint.get("family") == family)
        )

    return match


def _start_map(lab: Any, config: Path, port: int, *extra: str) -> Any:
    env = dict(os.environ, NATTRAV_STATE_DIR=str(config.parent))
    argv = [*NATTRAV, "--config", str(config), "map", str(port), "--json", *extra]
    return lab.popen("lan", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _close(proc: subprocess.Popen[bytes]) -> None:
    proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _journal(config: Path) -> list[dict[str, Any]]:
    directory = config.parent / "journal"
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@pytest.mark.parametrize("lab", [EIM], indirect=True, ids=topology_id)
async def test_a_mapping_that_does_not_forward_is_deleted_readded_once_then_abandoned(
    lab: Any, tmp_path: Path
) -> None:
    """The router creates the mapping (UPnP, then PCP) but a firewall rule in front of it drops
    what comes in for it: the verifier sees nothing arrive, the chain deletes the mapping,
    adds it once more, sees nothing again and gives up; the relay wins."""
    port = 43010
    added = lab.exec(
        "router",
        ["nft", "--echo", "--handle", "insert", "rule", "inet", "filter", "forward",
         "iifname", "wan0", "udp", "dport", str(port), "ct", "state", "new", "counter", "drop"],
        check=True,
    ).stdout  # fmt: skip
    handle = re.search(r"# handle (\d+)", added)
    assert handle is not None, added
    # One STUN server address: the verifier's answer comes from its alternate address, which
    # the application's port must never have talked to.
    stun = {"servers": [f"{lab.stun_primary4[0]}:{lab.stun_primary4[1]}"], "probe_window": 0.3}
    config = lab_config(lab, tmp_path, stun=stun, chain={"fallback_grace": 15.0, "stagger": 0.1})
    runtime = Runtime.load(config)
    try:
        with lab.inside("lan"):
            request = TraversalRequest(port=port, families=frozenset({4}))
            async with runtime.traverse(request) as (held, _mux):
                result = held.result
                assert result.method == "relay"
                assert result.candidate.reachability.verified  # the relay's self-test
                records = {a.method: a for a in result.attempts}
                for name in ("upnp", "natpmp"):
                    record = records[name]
                    assert record.outcome is AttemptOutcome.FAILED, record
                    assert record.tries == 2, record  # added, deleted, added once more
                    assert "does not forward" in record.reason and "abandoned" in record.reason
                    assert record.candidate is not None  # what the router claimed
                    assert record.candidate.address.port == port
                    assert not record.candidate.reachability.verified
        listing = lab.exec("router", ["nft", "-a", "list", "chain", "inet", "filter", "forward"])
        dropped = re.search(rf"dport {port} ct state new counter packets (\d+)", listing.stdout)
        assert dropped is not None and int(dropped.group(1)) >= 4  # 2 tries x 2 protocols
        assert lab.gateway_state().empty  # every refuted mapping was deleted
    finally:
        lab.exec(
            "router",
            ["nft", "delete", "rule", "inet", "filter", "forward", "handle", handle.group(1)],
            check=True,
        )


@pytest.mark.parametrize("lab", [EIM], indirect=True, ids=topology_id)
async def test_nattrav_traffic_on_the_shared_port_never_reaches_the_application(
    lab: Any, tmp_path: Path
) -> None:
    """Goal ``any``: the STUN method wins and keeps the NAT binding alive from the app's own
    port (Binding indications every ``keepalive`` s, rechecks every ``recheck`` s). The
    application's datagrams leave from the public endpoint, and it receives only its peer's
    datagrams, never STUN."""
    port = 43020
    config = lab_config(
        lab,
        tmp_path,
        stun={"keepalive": 0.2, "recheck": 0.5},
        chain={"goal": "any", "disabled": ["direct"]},
    )
    runtime = Runtime.load(config)
    counter = lab.exec(
        "router",
        ["nft", "--echo", "--handle", "insert", "rule", "inet", "filter", "forward",
         "iifname", "lan0", "udp", "sport", str(port), "udp", "dport", "3478", "counter"],
        check=True,
    ).stdout  # fmt: skip
    handle = re.search(r"# handle (\d+)", counter)
    assert handle is not None
    peer = peer_socket(lab, lab.internet_peer_ip4)
    peer_address = peer.getsockname()
    try:
        with lab.inside("lan"):
            async with open_endpoint(port, runtime=runtime, goal="any") as ep:
                assert ep.method == "stun" and ep.mux is not None and ep.mux.port == port
                target = TransportAddress(*peer_address)
                await ep.send_to(b"hello from the app", target)  # opens the NAT's filter
                data, origin = await receive_on(peer, 3.0)
                assert data == b"hello from the app"
                assert origin == (ep.address.host, ep.address.port)  # the srflx endpoint
                received: list[bytes] = []
                for n in range(10):
                    peer.sendto(b"peer %d" % n, origin)
                    with anyio.fail_after(3):
                        got, source = await ep.receive()
                    assert source.host == lab.internet_peer_ip4
                    received.append(got)
                    await anyio.sleep(0.15)
                assert received == [b"peer %d" % n for n in range(10)]
                # STUN answers (rechecks) arrived on the port too, but were not the app's.
                assert ep.mux.received > len(received)
                assert ep.mux.app_dropped == 0
    finally:
        peer.close()
        listing = lab.exec("router", ["nft", "-a", "list", "chain", "inet", "filter", "forward"])
        lab.exec(
            "router",
            ["nft", "delete", "rule", "inet", "filter", "forward", "handle", handle.group(1)],
            check=True,
        )
    sent = re.search(rf"sport {port} udp dport 3478 counter packets (\d+)", listing.stdout)
    assert sent is not None
    # about 1.5 s at 0.2 s keepalive and 0.5 s recheck: a dozen datagrams to the server
    assert int(sent.group(1)) >= 6, listing.stdout


@pytest.mark.parametrize("lab", [EIM], indirect=True, ids=topology_id)
def test_map_cli_prints_events_at_once_recovers_after_a_reboot_and_releases(
    lab: Any, tmp_path: Path
) -> None:
    port = 43030
    config = write_config(
        lab, tmp_path / "nattrav.toml", only="upnp", extra="[plugins.upnp]\nverify_interval = 0.5"
    )
    proc = _start_map(lab, config, port)
    lines = LiveLines(proc)
    try:
        acquired = lines.until(_event("acquired"), 20)["event"]
        assert acquired["method"] == "upnp"
        assert acquired["endpoint"]["text"] == f"{lab.public_ip4}:{port}"
        assert acquired["details"]["kind"] == "mapped"
        result = lines.until(lambda line: "result" in line, 5)
        assert result["local_port"] == port and result["inbound"]["from"] == "anyone"
        assert not lab.gateway_state().empty
        lab.restart_miniupnpd(lose_state=True)  # a reboot that forgot every mapping
        assert lab.gateway_state().empty
        # The IPv4 mapping (the endpoint) and the IPv6 pinhole both come back.
        lost = lines.until(_event("lost", 4), 15)["event"]
        recovered = lines.until(_event("recovered", 4), 15)["event"]
        lines.until(_event("recovered", 6), 15)
        assert lost["method"] == recovered["method"] == "upnp"
        assert recovered["endpoint"]["text"] == f"{lab.public_ip4}:{port}"
        assert not lab.gateway_state().empty  # re-created
        proc.send_signal(signal.SIGTERM)
        released = lines.until(_event("released"), 10)["event"]
        assert released["endpoint"]["text"] == f"{lab.public_ip4}:{port}"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _close(proc)
    assert all("time" in line for line in lines.lines if "event" in line)
    assert lab.gateway_state().empty
    assert _journal(config) == []


@pytest.mark.parametrize("lab", [EIM], indirect=True, ids=topology_id)
@pytest.mark.parametrize("method", ["upnp", "natpmp", "relay"])
def test_kill_9_then_a_new_start_or_cleanup_leaves_nothing_behind(
    lab: Any, tmp_path: Path, method: str
) -> None:
    port = {"upnp": 43040, "natpmp": 43050, "relay": 43060}[method]
    config = write_config(lab, tmp_path / "nattrav.toml", only=method)
    proc = _start_map(lab, config, port)
    try:
        acquired = LiveLines(proc).until(_event("acquired"), 20)["event"]
        assert acquired["method"] == method
        entries = _journal(config)  # recorded while held (UPnP: the mapping and the pinhole)
        assert entries and {e["method"] for e in entries} == {method}, entries
        if method != "relay":
            assert not lab.gateway_state().empty
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _close(proc)
    assert proc.returncode == -signal.SIGKILL
    assert _journal(config) == entries  # nothing released them
    if method != "relay":
        assert not lab.gateway_state().empty  # the crash left the mapping on the router
    if method == "natpmp":
        # The next start releases what the crashed run left, then does its own work.
        again = run_cli(
            lab, ["--config", str(config), "map", str(port + 1), "--hold", "0"], config.parent
        )
        assert again.returncode == 0, again.stderr
    else:
        cleanup = run_cli(lab, ["--config", str(config), "cleanup", "--json"], config.parent)
        assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
        done = json.loads(cleanup.stdout)["entries"]
        assert sorted(e["id"] for e in done) == sorted(e["id"] for e in entries)
        for entry in done:
            assert entry["method"] == method and entry["released"] is True, entry
            # deleted on the router or the TURN server (a Refresh with lifetime 0)
            assert entry["detail"] == "released", entry
    assert _journal(config) == []
    assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", [EIM], indirect=True, ids=topology_id)
def test_probe_deep_human_output_is_a_readable_table(lab: Any, tmp_path: Path) -> None:
    """``--deep`` adds hairpinning and the binding lifetime (5 s fits in a 9 s timeout)."""
    argv = ["probe", "--deep", "--timeout", "9", "--window", "0.3", *server_flags(lab)]
    proc = run_cli(lab, argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # masquerade does not hairpin; conntrack keeps an unreplied UDP binding for 30 s
    assert "hairpinning: no (" in text
    assert "binding lifetime: alive after 5.0 s (no expiry seen)" in text
    for heading in (
        "STUN / NAT behaviour [stun",
        "UPnP IGD [upnp",
        "NAT-PMP / PCP [natpmp",
        "Path MTU (RFC 8899) [pmtu",
        "TURN relay [relay",
        "NAT layout",
        "Chain verdict: upnp -> 198.51.100.2:",
    ):
        assert heading in text, text
    assert "NAT filtering: address-and-port-dependent" in text
    assert "double NAT: no" in text
    assert "{" not in text  # no raw JSON in the human form
    assert lab.turn.password not in text + proc.stderr


def test_the_demo_runs_end_to_end() -> None:
    """``make demo``: its own lab, probe and a short map from the LAN host, router clean."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "nattrav_lab.demo"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "=== probe: nattrav probe --stun 203.0.113.1:3478" in out
    assert "--turn turn:203.0.113.1:3478 --turn-user nattrav --turn-password '<secret>'" in out
    assert "Chain verdict: upnp" in out and "acquired: upnp" in out and "released: upnp" in out
    assert "no mapping or pinhole left behind" in out
    assert "demo: all steps succeeded" in out
    assert "lab-secret" not in out
    print(f"\ndemo: {took:.1f} s")
