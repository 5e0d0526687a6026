"""Through the lab's real NATs (kernel nftables, coturn with RFC 5780, miniupnpd).

Module-scoped labs, few tests: ``nattrav nat-type`` run on the LAN host must report what the
router really does, and the method and verifier must prove or refute inbound reachability.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from nattrav.datagram import DatagramMux
from nattrav.method import AttemptContext
from nattrav.models import Candidate, CandidateKind, Inbound, TransportAddress, TraversalRequest
from nattrav_stun.config import load_config
from nattrav_stun.method import StunMethod
from nattrav_stun.verifier import StunVerifier

NATTRAV = str(Path(sys.executable).with_name("nattrav"))

EXPECTED = {
    "eim": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
    "open": ("no-nat", "endpoint-independent"),
    "udp-blocked": ("udp-blocked", "udp-blocked"),
}


def server(lab: Any) -> str:
    host, port = lab.stun_primary4
    return f"{host}:{port}"


@pytest.mark.parametrize("lab", list(EXPECTED), indirect=True)
def test_nat_type_from_the_lan_host(lab: Any) -> None:
    proc = lab.exec(
        "lan",
        [NATTRAV, "nat-type", server(lab), "--json", "--window", "0.4", "--timeout", "1.5"],
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    mapping, filtering = EXPECTED[lab.topology]
    assert (report["mapping"], report["filtering"]) == (mapping, filtering), report
    if lab.topology == "udp-blocked":
        return
    assert report["trusted"] is True and report["rfc5780"] is True
    assert report["mapped"].startswith(f"{lab.public_ip4}:")
    assert report["other_address"] == "{}:{}".format(*lab.stun_alternate4)


def run_in_lan(lab: Any, func: Callable[[], Any], backend: str = "asyncio") -> Any:
    """Run ``func`` (async) with every socket it opens living in the LAN host."""
    with lab.inside("lan"):
        return anyio.run(func, backend=backend)


def settings(lab: Any) -> Any:
    return load_config({"servers": [server(lab)], "probe_window": 0.4, "rto": 0.2})


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_eim_method_and_verifier(lab: Any, backend: str) -> None:
    cfg = settings(lab)

    async def scenario() -> tuple[Candidate, Any, Any]:
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            async with StunMethod(cfg).acquire(ctx) as acquisition:
                candidate = acquisition.candidate
            bare = Candidate(CandidateKind.SERVER_REFLEXIVE, candidate.address, "test")
            srflx = await StunVerifier(cfg).verify(bare, ctx)
            # a UPnP mapping of this very port, made by a third-party client (miniupnpc)
            proc = await anyio.to_thread.run_sync(
                lambda: lab.exec(
                    "lan",
                    [
                        "upnpc",
                        "-i",
                        "-e",
                        "nattrav-stun-test",
                        "-a",
                        lab.lan_host_ip4,
                        str(mux.port),
                        str(mux.port),
                        "UDP",
                        "120",
                    ],
                    timeout=15,
                )
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            mapped = Candidate(
                CandidateKind.PORT_MAPPED, TransportAddress(lab.public_ip4, mux.port), "upnp"
            )
            try:
                forwarded = await StunVerifier(cfg).verify(mapped, ctx)
            finally:
                await anyio.to_thread.run_sync(
                    lambda: lab.exec("lan", ["upnpc", "-i", "-d", str(mux.port), "UDP"], timeout=15)
                )
            gone = await StunVerifier(cfg).verify(mapped, ctx)
        return candidate, srflx, (forwarded, gone)

    candidate, srflx, (forwarded, gone) = run_in_lan(lab, scenario, backend)
    assert candidate.address.host == lab.public_ip4
    assert candidate.reachability.inbound is Inbound.UNKNOWN  # APDF: nothing proven
    assert candidate.details["filtering_probe"] == "no-answer"
    assert candidate.details["nat"] is True
    assert srflx is not None and srflx.inbound is Inbound.NO, srflx
    assert forwarded is not None and forwarded.inbound is Inbound.YES and forwarded.verified
    assert gone is not None and gone.inbound is Inbound.NO, gone


@pytest.mark.parametrize("lab", ["open"], indirect=True)
def test_open_host_is_proven_reachable(lab: Any) -> None:
    cfg = settings(lab)

    async def scenario() -> Candidate:
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            async with StunMethod(cfg).acquire(ctx) as acquisition:
                return acquisition.candidate

    candidate = run_in_lan(lab, scenario)
    assert candidate.reachability.inbound is Inbound.YES and candidate.reachability.verified
    assert candidate.details["nat"] is False


@pytest.mark.parametrize("lab", ["symmetric"], indirect=True)
def test_symmetric_mapping_varies_by_destination(lab: Any) -> None:
    primary = server(lab)
    alternate = "{}:{}".format(*lab.stun_alternate4)
    cfg = load_config({"servers": [primary, alternate], "probe_window": 0.4, "compare_wait": 1.0})

    async def scenario() -> Candidate:
        async with DatagramMux.open(0, families={4}) as mux:
            ctx = AttemptContext(TraversalRequest(port=mux.port), "stun", sockets=mux)
            async with StunMethod(cfg).acquire(ctx) as acquisition:
                return acquisition.candidate

    candidate = run_in_lan(lab, scenario)
    assert candidate.details["mapping_varies_by_destination"] is True
    assert len({s["mapped"] for s in candidate.details["servers"]}) == 2


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
def test_nattrav_map_with_stun_from_the_lan_host(lab: Any) -> None:
    """The chain picks up ``--stun``; with the other methods disabled the endpoint is the
    router's public address, found from the port ``map`` holds."""
    env = {**os.environ, "NATTRAV_CHAIN__DISABLED": '["direct", "upnp", "natpmp", "relay"]'}
    proc = lab.exec(
        "lan",
        [NATTRAV, "map", "0", "--stun", server(lab), "--goal", "any", "--hold", "0", "--json"],
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    result = next(line["result"] for line in lines if "result" in line)
    assert result["candidate"]["method"] == "stun"
    assert result["candidate"]["address"]["host"] == lab.public_ip4


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
def test_ipv6_is_routed_behind_a_stateful_firewall(lab: Any) -> None:
    host, port = lab.stun_primary6
    proc = lab.exec(
        "lan", [NATTRAV, "nat-type", f"[{host}]:{port}", "--json", "--window", "0.4"], timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mapping"] == "no-nat"  # no NAT66 in the lab
    assert report["filtering"] == "address-and-port-dependent"  # but a stateful firewall
    assert report["mapped"].startswith(f"[{lab.lan_host_ip6}]:")


@pytest.mark.parametrize("lab", ["udp-blocked"], indirect=True)
def test_stun_over_tls_and_tcp_when_udp_is_blocked(lab: Any) -> None:
    """TLS verifies the lab's certificate (issued for coturn's IPs) with the lab's CA."""
    env = {**os.environ, "NATTRAV_PLUGINS__STUN__CA_FILE": str(lab.turn.ca_path)}
    for uri, transport in (
        (f"stuns:{lab.turn.host4}:{lab.turn.tls_port}", "tls"),
        (f"stun:{lab.turn.host4}:{lab.turn.port}?transport=tcp", "tcp"),
    ):
        proc = lab.exec("lan", [NATTRAV, "stun", uri, "--json"], env=env, timeout=30)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["transport"] == transport
        assert result["mapped"].startswith(f"{lab.public_ip4}:")
    proc = lab.exec("lan", [NATTRAV, "stun", server(lab), "--timeout", "0.5"], timeout=30)
    assert proc.returncode == 1 and "no response" in proc.stderr
