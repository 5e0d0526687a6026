"""Two LAN hosts behind two NATs of the lab, connected for real (coturn, miniupnpd, nftables).

Each test is one connection with data both ways, and the chosen path's kind asserted. One
peer per site, each in its own thread inside its LAN host's namespace with its own event
loop (``nattrav_p2p.benchmark.connect_in_lab``). IPv4 only: in this lab IPv6 is routed
behind stateful firewalls that a simultaneous send opens in every case, so it would hide the
NAT behaviour under test.
"""

from __future__ import annotations

from typing import Any

import pytest
from nattrav_p2p.benchmark import PeerResult, connect_in_lab

pytestmark = pytest.mark.lab


def _both_ways(offer: PeerResult, answer: PeerResult) -> None:
    assert offer.error is None, offer.error
    assert answer.error is None, answer.error
    assert offer.received == b"hello from the answer" and offer.acked
    assert answer.received == b"hello from the offer" and answer.acked
    assert offer.kind == answer.kind


def test_eim_and_eim_punch_a_server_reflexive_path(lab_factory: Any) -> None:
    lab = lab_factory("eim", second_site="eim")
    offer, answer = connect_in_lab(lab)
    _both_ways(offer, answer)
    assert offer.kind == "punched"
    assert offer.path is not None and answer.path is not None
    # Each side sends to the other's NAT, where its server-reflexive address lives.
    assert offer.path["remote"].startswith(lab.site2.public_ip4 + ":")
    assert answer.path["remote"].startswith(lab.site1.public_ip4 + ":")
    assert offer.path["local_kind"] == "srflx" and offer.path["remote_kind"] == "srflx"
    # Well before the relay bound: the relay was never needed.
    assert offer.checks_seconds is not None and offer.checks_seconds < 2.0


def test_one_open_side_connects_directly(lab_factory: Any) -> None:
    lab = lab_factory("open", second_site="eim")
    offer, answer = connect_in_lab(lab)
    _both_ways(offer, answer)
    assert offer.kind == "direct"
    assert answer.path is not None
    assert answer.path["remote"].startswith(lab.site1.lan_host_ip4 + ":")  # a public host
    assert answer.path["remote_kind"] == "host"


def test_eim_and_symmetric_with_gateways_avoid_the_relay(lab_factory: Any) -> None:
    """Both NATs filter by address and port and the symmetric one maps per destination, so a
    plain punch cannot work; with the routers' miniupnpd, the gateway mappings let the first
    checks in. Which pair wins depends on the routers' conntrack state: a pair through a
    mapping (``mapped``) or a peer-reflexive pair punched through the hole a mapping opened
    (``punched``). Never the relay."""
    lab = lab_factory("eim", second_site="symmetric")
    offer, answer = connect_in_lab(lab, gateways=True)
    _both_ways(offer, answer)
    assert offer.kind in ("mapped", "punched")
    assert offer.path is not None and offer.path["route"] == "mux"


def test_eim_and_symmetric_without_gateways_fall_back_to_the_relay(lab_factory: Any) -> None:
    lab = lab_factory("eim", second_site="symmetric")
    offer, answer = connect_in_lab(lab, gateways=False, p2p={"relay_bound": 1.0})
    _both_ways(offer, answer)
    assert offer.kind == "relay"


def test_symmetric_and_symmetric_without_gateways_fall_back_to_the_relay(lab_factory: Any) -> None:
    lab = lab_factory("symmetric", second_site="symmetric")
    offer, answer = connect_in_lab(lab, gateways=False, p2p={"relay_bound": 1.0})
    _both_ways(offer, answer)
    assert offer.kind == "relay"
    assert offer.path is not None and "relay fallback" in offer.path["how"]
    # Nominated at the bound, not before (checks ran for at least relay_bound).
    assert offer.checks_seconds is not None and offer.checks_seconds >= 1.0
