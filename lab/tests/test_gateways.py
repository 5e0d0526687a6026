"""miniupnpd on the eim router, driven by Debian's third-party clients ``upnpc`` and
``natpmpc``: a mapping must really carry a datagram from the internet side to the LAN host,
and stop doing so once deleted; restarts look like router reboots.

miniupnpc >= 2.2 calls an IGD whose external address is in a reserved range (the lab's
documentation ranges) "not connected", so ``upnpc`` runs with ``-i``; it is pointed at the
router's description URL (``-u``) to skip two seconds of SSDP discovery per call, except in the
test that is about discovery.
"""

from __future__ import annotations

import re
import time

import pytest
from nattrav_lab import Lab
from nattrav_lab.measure import datagram_arrives
from nattrav_lab.readiness import stun_answers


def upnpc(
    lab: Lab, *args: str, v6: bool = False, discover: bool = False, timeout: float = 10
) -> str:
    host = f"[{lab.router_lan_ip6}]" if v6 else lab.router_lan_ip4
    url = [] if discover else ["-u", f"http://{host}:{lab.upnp_http_port}/rootDesc.xml"]
    argv = ["timeout", str(timeout), "upnpc", *(["-6"] if v6 else []), "-i", *url, *args]
    proc = lab.exec("lan", argv, timeout=20)
    return proc.stdout + proc.stderr


def natpmpc(lab: Lab, *args: str, timeout: int = 10) -> str:
    argv = ["timeout", str(timeout), "natpmpc", "-g", lab.router_lan_ip4, *args]
    proc = lab.exec("lan", argv, timeout=20)
    return proc.stdout + proc.stderr


def epoch(lab: Lab) -> int:
    match = re.search(r"epoch = (\d+)", natpmpc(lab))
    assert match, "natpmpc printed no epoch"
    return int(match.group(1))


def test_upnpc_discovers_the_router_by_ssdp(lab: Lab) -> None:
    out = upnpc(lab, "-s", discover=True)
    assert f"desc: http://{lab.router_lan_ip4}:{lab.upnp_http_port}/rootDesc.xml" in out, out
    assert "Status : Connected" in out
    assert f"ExternalIPAddress = {lab.public_ip4}" in out


def test_upnpc_mapping_carries_datagrams_until_deleted(lab: Lab) -> None:
    public = (lab.public_ip4, 40100)
    assert not datagram_arrives(lab, public)
    out = upnpc(lab, "-e", "lab-test", "-a", lab.lan_host_ip4, "40100", "40100", "UDP", "120")
    assert "is redirected to internal" in out, out
    assert lab.gateway_state().leases
    assert datagram_arrives(lab, public)
    out = upnpc(lab, "-d", "40100", "UDP")
    assert "UPNP_DeletePortMapping() returned : 0" in out, out
    assert not datagram_arrives(lab, public)
    assert lab.gateway_state().empty


def test_upnpc_ipv6_pinhole_lets_datagrams_in_until_deleted(lab: Lab) -> None:
    target = (lab.lan_host_ip6, 40101)
    assert not datagram_arrives(lab, target)  # stateful firewall: unsolicited IPv6 dropped
    out = upnpc(lab, "-A", "", "0", lab.lan_host_ip6, "40101", "UDP", "120", v6=True)
    match = re.search(r"Pinhole ID = (\d+)", out)
    assert match, out
    assert datagram_arrives(lab, target)
    upnpc(lab, "-D", match.group(1), v6=True)
    assert not datagram_arrives(lab, target)
    assert lab.gateway_state().empty


def test_natpmpc_mapping_carries_datagrams_until_deleted(lab: Lab) -> None:
    public = (lab.public_ip4, 40102)
    assert not datagram_arrives(lab, public)
    out = natpmpc(lab, "-a", "40102", "40102", "udp", "120")
    assert "Mapped public port 40102 protocol UDP to local port 40102" in out, out
    assert f"Public IP address : {lab.public_ip4}" in out
    assert datagram_arrives(lab, public)
    out = natpmpc(lab, "-a", "40102", "40102", "udp", "0")
    assert "liftime 0" in out, out  # (sic: natpmpc's spelling)
    assert not datagram_arrives(lab, public)
    assert lab.gateway_state().empty


def test_restart_resets_epoch_and_keeps_leases(lab: Lab) -> None:
    before = epoch(lab)
    if before < 3:
        time.sleep(3 - before)
        before = epoch(lab)
    natpmpc(lab, "-a", "40103", "40103", "udp", "120")
    lab.restart_miniupnpd()
    after = epoch(lab)
    assert after < before, (before, after)
    # miniupnpd reloads its lease file: the mapping survives a plain restart
    assert any(":40103:" in lease for lease in lab.gateway_state().leases)
    assert datagram_arrives(lab, (lab.public_ip4, 40103))


def test_restart_losing_state_forgets_mappings(lab: Lab) -> None:
    natpmpc(lab, "-a", "40104", "40104", "udp", "120")
    assert datagram_arrives(lab, (lab.public_ip4, 40104))
    lab.restart_miniupnpd(lose_state=True)
    assert lab.gateway_state().empty
    assert not datagram_arrives(lab, (lab.public_ip4, 40104))


def test_restart_coturn(lab: Lab) -> None:
    old = lab.facts()["daemons"]["coturn"]["pid"]
    lab.restart_coturn()
    facts = lab.facts()["daemons"]["coturn"]
    assert facts["alive"] and facts["pid"] != old
    assert stun_answers(lab.netns("lan"), *lab.stun_primary4, timeout=1.0)


@pytest.mark.parametrize("lab", ["no-igd"], indirect=True)
def test_no_igd_router_answers_no_gateway_protocol(lab: Lab) -> None:
    assert not lab.has_igd()
    out = natpmpc(lab, timeout=1)
    assert "Public IP address" not in out
    # upnpc waits 2 s for SSDP answers per search target; a gateway answers in milliseconds,
    # so 2.5 s covers the first round, after which upnpc would have listed what it found.
    out = upnpc(lab, "-l", discover=True, timeout=2.5)
    assert "desc:" not in out and "ExternalIPAddress" not in out, out


@pytest.mark.parametrize("lab", ["double"], indirect=True)
def test_double_nat_gateway_refuses_useless_mappings(lab: Lab) -> None:
    """miniupnpd behind the CGNAT finds by STUN that it is behind a filtering NAT and disables
    forwarding: the mapping is refused and nothing from the internet reaches the LAN host."""
    assert lab.router_wan_ip4 == "100.64.1.2"
    assert lab.public_ip4 == lab.cgnat_wan_ip4 == "198.51.100.2"
    out = natpmpc(lab, "-a", "40105", "40105", "udp", "120")
    assert "Mapped public port" not in out, out
    assert not datagram_arrives(lab, (lab.public_ip4, 40105))
