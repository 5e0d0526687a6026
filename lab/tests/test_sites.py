"""Two sites on one internet, hole punching, and routers that drop unsolicited traffic to
themselves (issue 12's finding: otherwise conntrack remaps the LAN host's punch)."""

from __future__ import annotations

import socket

import pytest
from nattrav_lab import Lab
from nattrav_lab.measure import datagram_arrives

TWO_EIM = {"topology": "eim", "second_site": "eim"}


def _udp(lab: Lab, role: str, ip: str, port: int) -> socket.socket:
    with lab.inside(role):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    sock.settimeout(1.0)
    return sock


@pytest.mark.parametrize("lab", [TWO_EIM], indirect=True)
def test_early_unsolicited_packet_does_not_steal_the_port(lab: Lab) -> None:
    peer = _udp(lab, "internet", lab.internet_peer_ip4, 5000)
    host = _udp(lab, "lan", "0.0.0.0", 45000)
    with peer, host:
        peer.sendto(b"early", (lab.public_ip4, 45000))  # arrives first: must be dropped
        host.sendto(b"punch", (lab.internet_peer_ip4, 5000))
        data, (ip, port) = peer.recvfrom(100)
        assert (data, ip, port) == (b"punch", lab.public_ip4, 45000)
        peer.sendto(b"reply", (ip, port))
        assert host.recvfrom(100)[0] == b"reply"


@pytest.mark.parametrize("lab", [TWO_EIM], indirect=True)
def test_two_eim_sites_punch_a_hole(lab: Lab) -> None:
    site2 = lab.site2
    assert site2 is not None and site2.public_ip4 == "198.51.100.66"
    a = _udp(lab, "lan", "0.0.0.0", 46000)
    b = _udp(lab, "site2.lan", "0.0.0.0", 46001)
    with a, b:
        # both send first (each NAT opens on its own outgoing packet), then both hear
        a.sendto(b"from a", (site2.public_ip4, 46001))
        b.sendto(b"from b", (lab.public_ip4, 46000))
        a.sendto(b"from a", (site2.public_ip4, 46001))
        assert b.recvfrom(100) == (b"from a", (lab.public_ip4, 46000))
        assert a.recvfrom(100)[0] == b"from b"


@pytest.mark.parametrize("lab", [TWO_EIM], indirect=True)
def test_sites_cannot_reach_each_others_lan_unsolicited(lab: Lab) -> None:
    site2 = lab.site2
    assert site2 is not None
    assert not datagram_arrives(
        lab, (lab.public_ip4, 46002), from_role="site2.lan", from_ip="0.0.0.0"
    )
    assert not datagram_arrives(lab, (lab.lan_host_ip6, 46002), from_role="site2.lan", from_ip="::")


@pytest.mark.parametrize("lab", ["open"], indirect=True)
def test_open_lan_host_is_public_and_reachable(lab: Lab) -> None:
    assert lab.public_ip4 == lab.lan_host_ip4 == "192.0.2.10"
    assert datagram_arrives(lab, (lab.lan_host_ip4, 46003))
    assert datagram_arrives(lab, (lab.lan_host_ip6, 46003))
