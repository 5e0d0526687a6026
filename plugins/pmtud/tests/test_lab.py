"""End to end in the network lab: from the LAN host to the lab's coturn (and to a nattrav echo
peer on the internet side), through the NAT router whose WAN link MTU the tests change.

One lab for the module, with 9000-byte links everywhere (jumbo); each test sets the WAN MTU it
needs and flushes every namespace's PMTU cache first, so no test sees another's learned MTUs.
Probe windows are 0.1 s (a few hundred lab RTTs), not RFC 8899's 1 s floor.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from nattrav.models import (
    AttemptOutcome,
    AttemptRecord,
    Candidate,
    CandidateKind,
    Goal,
    TransportAddress,
    TraversalRequest,
    TraversalResult,
)
from nattrav_pmtud.config import load_config
from nattrav_pmtud.driver import discover_pmtu, echo_server
from nattrav_pmtud.prober import ProbeCredentials
from nattrav_pmtud.search import PmtuResult, SearchSettings

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize(
        "lab", [{"topology": "eim", "lan_mtu": 9000, "wan_mtu": 9000}], indirect=True
    ),
]

WINDOW = {"probe_timeout": 0.1, "rtt_floor": 0.001}


@pytest.fixture
def clean(lab: Any) -> Iterator[Any]:
    """Forget learned PMTUs before and after each test; restore the jumbo WAN link."""
    lab.block_icmp(False)
    lab.flush_pmtu_cache()
    yield lab
    lab.block_icmp(False)
    lab.set_wan_mtu(9000)
    lab.flush_pmtu_cache()


def _lan_socket(lab: Any, family: int) -> socket.socket:
    with lab.inside("lan"):
        return socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)


async def _discover(lab: Any, family: int, **settings: Any) -> PmtuResult:
    target = lab.stun_primary4 if family == 4 else lab.stun_primary6
    sock = _lan_socket(lab, family)
    try:
        return await discover_pmtu(
            target, SearchSettings(family=family, **{**WINDOW, **settings}), sock=sock
        )
    finally:
        sock.close()


@pytest.mark.parametrize("family", [4, 6])
async def test_jumbo_links_find_9000(clean: Any, family: int) -> None:
    result = await _discover(clean, family, max_plpmtu=65535)
    assert result.confirmed and result.path_mtu == 9000
    assert result.max_udp_payload == (8972 if family == 4 else 8952)
    # The LAN interface refused the 65535-byte probe and said its MTU: 9000.
    assert result.limited_by == "local-interface" and result.local_mtu == 9000


@pytest.mark.parametrize("mtu", [1400, 1280])
@pytest.mark.parametrize("family", [4, 6])
async def test_lowered_wan_mtu_is_found_to_the_byte(clean: Any, family: int, mtu: int) -> None:
    clean.set_wan_mtu(mtu)
    result = await _discover(clean, family)
    assert result.confirmed and result.path_mtu == mtu
    assert result.max_udp_payload == mtu - (28 if family == 4 else 48)
    assert result.limited_by == "path" and "probe-confirmed" in result.how
    assert "ptb-hint" in result.how and result.ptb_used >= 1  # the router's ICMP, validated
    assert result.details["server_rejected_padding"] is False  # coturn takes PADDING


@pytest.mark.parametrize("family", [4, 6])
async def test_icmp_black_hole_converges_by_probe_loss(clean: Any, family: int) -> None:
    clean.set_wan_mtu(1400)
    clean.block_icmp(True)
    result = await _discover(clean, family)
    assert result.confirmed and result.path_mtu == 1400
    assert result.max_udp_payload == (1372 if family == 4 else 1352)
    assert result.ptb_used == 0 and "silent-loss" in result.how
    assert result.upper_bound == 1404  # 1404 was lost MAX_PROBES times
    assert result.probes_lost % 3 == 0


@pytest.mark.parametrize("family", [4, 6])
async def test_two_nattrav_peers_probe_each_other(clean: Any, family: int) -> None:
    """An echo peer on the internet side with a shared password; the LAN host probes it."""
    clean.set_wan_mtu(1400)
    creds = ProbeCredentials("lab-shared-secret", "lan")
    host = clean.internet_peer_ip4 if family == 4 else clean.internet_peer_ip6
    with clean.inside("internet"):
        peer_sock = socket.socket(
            socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
        )
        peer_sock.bind((host, 0))
    async with echo_server(sock=peer_sock, credentials=creds) as server:
        sock = _lan_socket(clean, family)
        try:
            result = await discover_pmtu(
                server.address,
                SearchSettings(family=family, **WINDOW),
                sock=sock,
                credentials=creds,
            )
        finally:
            sock.close()
        assert server.responder.answered == result.probes_acked
    assert result.confirmed and result.path_mtu == 1400 and result.details["integrity"] is True


async def test_path_probe_reports_the_chosen_paths_plpmtu(clean: Any) -> None:
    from nattrav.method import AttemptContext
    from nattrav_pmtud.pathprobe import PmtuPathProbe

    clean.set_wan_mtu(1400)
    server = "{}:{}".format(*clean.stun_primary4)
    cand = Candidate(
        CandidateKind.SERVER_REFLEXIVE,
        TransportAddress(clean.public_ip4, 40000),
        "stun",
        base=TransportAddress(clean.lan_host_ip4, 40000),
        details={"server": server},
    )
    result = TraversalResult(
        Goal.ANY, cand, (AttemptRecord("stun", AttemptOutcome.SUCCEEDED, candidate=cand),)
    )
    probe = PmtuPathProbe(load_config({"probe_timeout": 0.1}))
    with clean.inside("lan"):  # the probe's own socket must live in the LAN host
        prop = await probe.probe(result, AttemptContext(TraversalRequest(), "pmtu"))
    assert prop is not None and prop.value == 1400
    assert prop.details["udp_payload"] == 1372 and prop.details["leg"] == "to-server"
    assert prop.details["mapped_address"].startswith(clean.public_ip4 + ":")


async def test_probe_report_section_per_family(clean: Any) -> None:
    import attrs
    from nattrav.probe import ProbeOptions
    from nattrav_pmtud.report import run_section

    @attrs.define
    class Ctx:
        options: ProbeOptions

        def settings(self, plugin: str) -> dict[str, Any]:
            servers = ["{}:{}".format(*clean.stun_primary4), "[{}]:{}".format(*clean.stun_primary6)]
            return {"servers": servers} if plugin == "pmtud" else {}

    clean.set_wan_mtu(1280)
    with clean.inside("lan"):
        out = await run_section(Ctx(ProbeOptions(window=0.1, timeout=10.0)))
    assert out["ipv4_path_mtu"] == 1280 and out["ipv6_path_mtu"] == 1280
    assert len(out["paths"]) == 2  # each literal server is probed in its own family only
    assert {p["udp_payload"] for p in out["paths"] if p.get("confirmed")} == {1252, 1232}
    assert out["mapped_ips"] == [clean.public_ip4]  # IPv4 only (see report.py)
