"""End to end against the real miniupnpd in the lab (namespaces made by nattrav_lab).

One lab (eim topology, a second LAN host) is shared by the module. Everything runs in the LAN
host's namespace; "internet" peers send from the lab's documentation-range addresses. No
packet leaves the lab.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from nattrav.errors import MethodUnavailable
from nattrav.method import AttemptContext
from nattrav.models import LeaseEvent, LeaseEventKind, Transport, TraversalRequest
from nattrav_upnp.config import UpnpConfig
from nattrav_upnp.control import ConnectionClient
from nattrav_upnp.errors import ConflictInMappingEntryError, NoSuchEntryError
from nattrav_upnp.lease import PortMappingLease, hold
from nattrav_upnp.method import UpnpMethod
from nattrav_upnp.planner import GatewayQuirks

pytestmark = [pytest.mark.lab, pytest.mark.anyio]
LAB = {"topology": "eim", "second_lan_host": True}
FAST = UpnpConfig(discovery_window=1.0, settle=0.05, lease=600, verify_interval=30)


@pytest.fixture
def anyio_backend() -> str:
    # The lab tests are slow; the driver runs on both backends in every other test module,
    # and the main end-to-end test below is parametrised over both explicitly.
    return "asyncio"


def _udp(lab: Any, role: str, host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with lab.inside(role):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


async def _arrives(receiver: socket.socket, payload: bytes, timeout: float = 1.0) -> bool:
    with anyio.move_on_after(timeout):
        while True:
            await anyio.wait_readable(receiver)
            try:
                data, _addr = receiver.recvfrom(4096)
            except BlockingIOError:
                continue
            if data == payload:
                return True
    return False


async def _reaches(lab: Any, receiver: socket.socket, target: tuple[str, int], tag: str) -> bool:
    """Send from a *fresh* internet peer (a new conntrack flow) and see if it arrives."""
    host = lab.internet_peer_ip6 if ":" in target[0] else lab.internet_peer_ip4
    peer = _udp(lab, "internet", host)
    try:
        payload = f"{tag}-{os.urandom(4).hex()}".encode()
        for _ in range(3):
            peer.sendto(payload, target)
            if await _arrives(receiver, payload, 0.4):
                return True
        return False
    finally:
        peer.close()


def _ctx(events: list[LeaseEvent], port: int, **request: Any) -> AttemptContext:
    req = TraversalRequest(port=port, families=request.pop("families", frozenset({4})), **request)
    return AttemptContext(request=req, method="upnp", emit=events.append)


@contextmanager
def _in(lab: Any, role: str = "lan") -> Iterator[None]:
    with lab.inside(role):
        yield


@pytest.mark.parametrize("lab", [LAB], indirect=True)
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_map_receive_renew_delete(lab: Any, anyio_backend: str) -> None:
    """Create a mapping, a packet from the internet arrives, renew, delete, it stops."""
    port = 40000 if anyio_backend == "asyncio" else 40001
    app = _udp(lab, "lan", "0.0.0.0", port)
    events: list[LeaseEvent] = []
    cfg = UpnpConfig(discovery_window=1.0, settle=0.05, lease=4, verify_interval=30)
    try:
        with _in(lab):
            async with UpnpMethod(cfg).acquire(_ctx(events, port)) as acq:
                endpoint = acq.candidate.address
                assert endpoint.host == lab.public_ip4
                assert acq.candidate.base is not None
                assert acq.candidate.base.host == lab.lan_host_ip4
                assert acq.candidate.details["igd_version"] == 2
                # miniupnpd's read-back gives the remaining lease: a loaded machine may see
                # a second tick between AddPortMapping and GetSpecificPortMappingEntry.
                assert acq.candidate.lifetime in (3.0, 4.0)
                assert await _reaches(lab, app, (endpoint.host, endpoint.port), "mapped")
                with anyio.fail_after(6):
                    while LeaseEventKind.RENEWED not in [e.kind for e in events]:
                        await anyio.sleep(0.05)
                assert await _reaches(lab, app, (endpoint.host, endpoint.port), "renewed")
            assert lab.gateway_state().empty
            assert not await _reaches(lab, app, (endpoint.host, endpoint.port), "deleted")
    finally:
        app.close()


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_tcp_mapping_accepts_a_connection(lab: Any) -> None:
    with lab.inside("lan"):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 40100))
        listener.listen()
    listener.setblocking(False)
    try:
        with _in(lab):
            async with UpnpMethod(FAST).acquire(_ctx([], 40100, transport=Transport.TCP)) as acq:
                endpoint = acq.candidate.address
                assert endpoint.transport is Transport.TCP
                with lab.inside("internet"):
                    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    client.bind((lab.internet_peer_ip4, 0))
                client.settimeout(2)
                await anyio.to_thread.run_sync(client.connect, (endpoint.host, endpoint.port))
                with anyio.fail_after(2):
                    await anyio.wait_readable(listener)
                conn, _addr = listener.accept()
                conn.close()
                client.close()
        assert lab.gateway_state().empty
    finally:
        listener.close()


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_router_restart_loses_state_and_the_mapping_is_recreated(lab: Any) -> None:
    port = 40200
    app = _udp(lab, "lan", "0.0.0.0", port)
    events: list[LeaseEvent] = []
    cfg = UpnpConfig(discovery_window=1.0, settle=0.05, lease=600, verify_interval=0.3)
    try:
        with _in(lab):
            async with UpnpMethod(cfg).acquire(_ctx(events, port)) as acq:
                endpoint = acq.candidate.address
                assert await _reaches(lab, app, (endpoint.host, endpoint.port), "before")
                await anyio.to_thread.run_sync(lambda: lab.restart_miniupnpd(lose_state=True))
                with anyio.fail_after(15):
                    while LeaseEventKind.RECOVERED not in [e.kind for e in events]:
                        await anyio.sleep(0.05)
                kinds = [e.kind for e in events]
                assert kinds.index(LeaseEventKind.LOST) < kinds.index(LeaseEventKind.RECOVERED)
                assert await _reaches(lab, app, (endpoint.host, endpoint.port), "after")
            assert lab.gateway_state().empty
    finally:
        app.close()


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_real_miniupnpd_error_paths(lab: Any) -> None:
    """718 (port held by another LAN host), 714 and 606 as miniupnpd really sends them."""
    with lab.inside("lan2"):
        other = UpnpMethod(FAST)
        async with other.transport() as t2:
            choice2 = await other.choose(t2)
            assert choice2.best is not None
            other_client = ConnectionClient(t2, choice2.best.service)
            await other_client.add_port_mapping(
                external_port=40300,
                protocol="UDP",
                internal_port=40300,
                internal_client=lab.lan_host2_ip4,
                description="lan2 app",
                lease=60,
            )
    try:
        with _in(lab):
            method = UpnpMethod(FAST)
            async with method.transport() as t:
                choice = await method.choose(t)
                assert choice.best is not None
                client = ConnectionClient(t, choice.best.service)
                with pytest.raises(ConflictInMappingEntryError) as info:
                    await client.add_port_mapping(
                        external_port=40300,
                        protocol="UDP",
                        internal_port=40300,
                        internal_client=lab.lan_host_ip4,
                        description="x",
                        lease=60,
                    )
                assert info.value.code == 718
                with pytest.raises(NoSuchEntryError):
                    await client.get_specific_port_mapping_entry(
                        external_port=40999, protocol="UDP"
                    )
                # The lease avoids the taken port without touching it.
                lease = PortMappingLease(
                    client,
                    quirks=GatewayQuirks(),
                    protocol="udp",
                    internal_client=lab.lan_host_ip4,
                    internal_port=40300,
                    external_ip=choice.best.external_ip or "",
                    lease=60,
                    description="nattrav",
                )
                async with hold(lease):
                    assert lease.mapping is not None and lease.mapping.external_port != 40300
                entry = await client.get_specific_port_mapping_entry(
                    external_port=40300, protocol="UDP"
                )
                assert entry.internal_client == lab.lan_host2_ip4
            # 606: miniupnpd's permission rules refuse internal ports below 1024.
            with pytest.raises(MethodUnavailable, match="606"):
                async with UpnpMethod(FAST).acquire(_ctx([], 80)):
                    pass
    finally:
        with lab.inside("lan2"):
            async with other.transport() as t2:
                await ConnectionClient(t2, choice2.best.service).delete_port_mapping(
                    external_port=40300, protocol="UDP"
                )
    assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_ipv6_pinhole_end_to_end(lab: Any) -> None:
    port = 40400
    app = _udp(lab, "lan", "::", port)
    target = (lab.lan_host_ip6, port)
    events: list[LeaseEvent] = []
    try:
        assert not await _reaches(lab, app, target, "no-pinhole"), "firewall let it in already"
        with _in(lab):
            async with UpnpMethod(FAST).acquire(_ctx(events, port, families=frozenset({6}))) as acq:
                c = acq.candidate
                assert (c.address.host, c.address.port) == target
                assert c.reachability.how == "gateway opened an IPv6 firewall pinhole"
                assert await _reaches(lab, app, target, "pinhole")
        assert lab.gateway_state().empty
        assert not await _reaches(lab, app, target, "closed")
    finally:
        app.close()


def _nattrav(lab: Any, *args: str, role: str = "lan") -> Any:
    exe = os.path.join(os.path.dirname(sys.executable), "nattrav")
    env_cfg = "NATTRAV_PLUGINS__UPNP__DISCOVERY_WINDOW=1.0"
    return lab.exec(role, ["env", env_cfg, exe, *args], timeout=60)


@pytest.mark.parametrize("lab", [LAB], indirect=True)
def test_cli_discover_map_list_unmap(lab: Any) -> None:
    done = _nattrav(lab, "upnp", "discover", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["best"]["external_ip"] == lab.public_ip4
    assert report["best"]["verdict"] == "public"
    assert report["pinhole_service"] is not None

    done = _nattrav(lab, "upnp", "map", "40500", "--detach", "--lease", "60", "--json")
    assert done.returncode == 0, done.stderr
    mapping = json.loads(done.stdout.splitlines()[-1])["mapping"]
    external = int(mapping["endpoint"].rsplit(":", 1)[1])

    done = _nattrav(lab, "upnp", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["mappings"]
    assert any(r["external_port"] == external and r["internal_port"] == 40500 for r in rows)

    # Another host's view: unmap refuses what this host did not create.
    done = _nattrav(lab, "upnp", "unmap", str(external), role="lan2")
    assert done.returncode == 1
    assert "not to this host" in done.stderr

    done = _nattrav(lab, "upnp", "unmap", str(external), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "deleted"
    assert lab.gateway_state().empty

    done = _nattrav(lab, "upnp", "map", "40501", "--hold", "0.5")
    assert done.returncode == 0, done.stderr
    assert "mapped UDP" in done.stdout
    assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", ["no-igd"], indirect=True)
async def test_no_igd_is_unavailable_with_a_helpful_message(lab: Any) -> None:
    """The router answers the unicast M-SEARCH with ICMP Port Unreachable: the search ends
    a moment later (not at its 5 s deadline) and says why."""
    with _in(lab):
        with pytest.raises(MethodUnavailable) as info:
            async with UpnpMethod(UpnpConfig(discovery_window=5.0)).acquire(_ctx([], 40600)):
                pass
    reason = info.value.reason
    assert reason.startswith("no UPnP IGD answered on eth0 within ")
    assert f"the default gateway {lab.router_lan_ip4}" in reason
    assert "runs no SSDP (ICMP port unreachable); is UPnP enabled on the router?" in reason
    assert "within 5.0 s" not in reason  # it did not wait out the window


@pytest.mark.parametrize("lab", [LAB], indirect=True)
def test_killed_process_mapping_is_cleaned_up_from_the_journal(lab: Any, tmp_path: Any) -> None:
    """kill -9 runs no cleanup; the journal lets ``nattrav cleanup`` delete the leftover."""
    import signal
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "nattrav")
    env = ["env", f"NATTRAV_STATE_DIR={tmp_path}", "NATTRAV_PLUGINS__UPNP__DISCOVERY_WINDOW=1.0"]
    proc = lab.popen("lan", [*env, exe, "upnp", "map", "40700", "--hold", "60"])
    try:
        deadline = time.monotonic() + 20
        while lab.gateway_state().empty:
            assert proc.poll() is None, "the map command ended early"
            assert time.monotonic() < deadline, "no mapping appeared"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert not lab.gateway_state().empty, "the mapping must outlive the killed process"
    done = lab.exec("lan", [*env, exe, "cleanup", "--json"], timeout=60)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["entries"]
    assert [(e["method"], e["kind"], e["released"]) for e in entries] == [
        ("upnp", "port-mapping", True)
    ]
    assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_probe_report_section_with_test_mapping(lab: Any) -> None:
    from nattrav.config import Config
    from nattrav.probe import ProbeContext, ProbeOptions
    from nattrav.runtime import Runtime
    from nattrav_upnp.report import upnp_section

    runtime = Runtime.load(Config(), disabled=())
    ctx = ProbeContext(runtime, ProbeOptions(test_mapping=True, window=0.5), [], [])
    with _in(lab):
        section = await upnp_section(ctx)
    assert section["present"] and section["usable"]
    assert section["gateway_external_ips"] == [lab.public_ip4]
    assert section["pinholes"] is not None
    mapping = section["test_mapping"]
    assert mapping["created"] and mapping["released"], mapping
    assert mapping["endpoint"].startswith(lab.public_ip4 + ":")
    assert lab.gateway_state().empty


@pytest.mark.parametrize("lab", ["no-igd"], indirect=True)
async def test_probe_report_section_without_igd(lab: Any) -> None:
    from nattrav.config import Config
    from nattrav.probe import ProbeContext, ProbeOptions
    from nattrav.runtime import Runtime
    from nattrav_upnp.report import upnp_section

    runtime = Runtime.load(Config(), disabled=())
    ctx = ProbeContext(runtime, ProbeOptions(window=0.3), [], [])
    with _in(lab):
        section = await upnp_section(ctx)
    assert set(section) == {"present", "reason"} and section["present"] is False
    reason = section["reason"]
    assert reason.startswith("no UPnP IGD answered on eth0 within 0.")  # the 0.3 s window
    assert "runs no SSDP (ICMP port unreachable); is UPnP enabled on the router?" in reason


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_dual_stack_request_maps_and_opens_a_pinhole(lab: Any) -> None:
    """The default request (IPv4 and IPv6): the mapping is the candidate, the pinhole an extra."""
    port = 40800
    app4 = _udp(lab, "lan", "0.0.0.0", port)
    app6 = _udp(lab, "lan", "::", port)
    try:
        with _in(lab):
            ctx = _ctx([], port, families=frozenset({4, 6}))
            async with UpnpMethod(FAST).acquire(ctx) as acq:
                (pinhole,) = acq.also
                mapped = acq.candidate.address
                assert mapped.host == lab.public_ip4
                assert pinhole.address.host == lab.lan_host_ip6
                assert await _reaches(lab, app4, (mapped.host, mapped.port), "v4")
                assert await _reaches(lab, app6, (lab.lan_host_ip6, port), "v6")
        assert lab.gateway_state().empty
    finally:
        app4.close()
        app6.close()


@pytest.mark.parametrize("lab", [LAB], indirect=True)
async def test_chain_reaches_an_endpoint_through_upnp(lab: Any, tmp_path: Any) -> None:
    """The core chain (only ``upnp`` enabled) yields the mapped endpoint and releases it."""
    from nattrav.config import structure_config
    from nattrav.models import CandidateKind
    from nattrav.runtime import Runtime

    names = [s.name for s in Runtime.load(structure_config({})).host.method_specs()]
    config = structure_config(
        {
            "chain": {"disabled": [n for n in names if n != "upnp"], "verify": False},
            "state_dir": str(tmp_path),
            "plugins": {"upnp": {"discovery_window": 1.0}},
        }
    )
    runtime = Runtime.load(config)
    events: list[LeaseEvent] = []
    with _in(lab):
        request = TraversalRequest(port=40900, families=frozenset({4}))
        async with runtime.traverse(request, on_event=events.append) as (held, mux):
            assert mux is not None and mux.port == 40900
            assert held.result.method == "upnp"
            assert held.result.candidate.kind is CandidateKind.PORT_MAPPED
            assert held.result.endpoint.host == lab.public_ip4
            assert not lab.gateway_state().empty
    assert lab.gateway_state().empty
    assert events[0].kind is LeaseEventKind.ACQUIRED
    assert events[-1].kind is LeaseEventKind.RELEASED
