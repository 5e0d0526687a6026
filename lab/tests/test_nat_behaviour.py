"""The NATs behave as their topology says, seen by coturn's own Debian clients.

``turnutils_stunclient`` and ``turnutils_natdiscovery`` are third-party RFC 5780 clients: if
they see the router's WAN address and classify the mapping as the topology promises, the lab's
NAT and coturn's two-address setup are right. The clients have no timeout of their own behind a
filtering NAT, so each runs under ``timeout``.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from nattrav_lab import Lab

both = pytest.mark.parametrize("lab", ["eim", "symmetric"], indirect=True)


@both
def test_stunclient_sees_router_wan_address_and_ipv6_is_not_natted(lab: Lab) -> None:
    # Both families at once: each client lingers until `timeout` ends it.
    procs = {
        fam: lab.popen(
            "lan",
            ["timeout", "1", "turnutils_stunclient", server[0]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for fam, server in (("4", lab.stun_primary4), ("6", lab.stun_primary6))
    }
    out = {fam: p.communicate(timeout=20)[0] for fam, p in procs.items()}
    assert re.search(rf"UDP reflexive addr: {re.escape(lab.router_wan_ip4)}:\d+", out["4"]), out
    assert lab.router_wan_ip4 == lab.public_ip4 == "198.51.100.2"
    # IPv6 is routed: coturn sees the LAN host's own address.
    assert lab.lan_host_ip6 in out["6"], out["6"]


@both
def test_natdiscovery_classifies_mapping(lab: Lab) -> None:
    expected = {
        "eim": "NAT with Endpoint Independent Mapping!",
        "symmetric": "NAT with Address and Port Dependent Mapping!",
    }[lab.topology]
    proc = lab.exec(
        "lan",
        ["timeout", "10", "turnutils_natdiscovery", "-m", lab.stun_primary4[0]],
        timeout=20,
    )
    assert expected in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("lab", ["eim"], indirect=True)
def test_turn_relays_to_a_peer(lab: Lab) -> None:
    """turnutils_uclient allocates on coturn with the lab's long-term credentials and sends
    through the relay to turnutils_peer (an echo peer) on an internet-side address."""
    peer = lab.popen(
        "internet",
        ["turnutils_peer", "-L", lab.internet_peer_ip4, "-p", "3480"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.2)
        t = lab.turn
        proc = lab.exec(
            "lan",
            [
                "timeout",
                "20",
                "turnutils_uclient",
                "-u",
                t.user,
                "-w",
                t.password,
                "-e",
                lab.internet_peer_ip4,
                "-r",
                "3480",
                "-n",
                "5",
                "-m",
                "1",
                "-l",
                "100",
                t.host4,
            ],
            timeout=30,
        )
    finally:
        peer.kill()
        peer.wait()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tot_send_msgs=10, tot_recv_msgs=10" in proc.stdout, proc.stdout[-2000:]
    assert "Total lost packets 0 " in proc.stdout
