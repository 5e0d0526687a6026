from __future__ import annotations

import pytest
from nattrav.models import (
    Candidate,
    CandidateKind,
    Goal,
    Inbound,
    Reachability,
    Transport,
    TransportAddress,
    TraversalRequest,
)
from nattrav.serialize import to_jsonable


def test_transport_address_normalises_and_formats() -> None:
    a = TransportAddress("2001:0db8:0000::0001", 3478)
    assert a.host == "2001:db8::1"
    assert str(a) == "[2001:db8::1]:3478"
    assert a.family == 6
    assert TransportAddress("192.0.2.1", 1).family == 4
    assert TransportAddress.parse("[2001:db8::1]:3478") == a
    assert TransportAddress.parse("192.0.2.1:80", Transport.TCP).transport is Transport.TCP


@pytest.mark.parametrize("host", ["example.org", "", "1.2.3"])
def test_transport_address_rejects_names(host: str) -> None:
    with pytest.raises(ValueError, match="not an IP address literal"):
        TransportAddress(host, 1)


@pytest.mark.parametrize("port", [-1, 65536])
def test_transport_address_rejects_bad_ports(port: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        TransportAddress("192.0.2.1", port)


def test_goal_accepts() -> None:
    addr = TransportAddress("192.0.2.1", 1)
    yes = Candidate(CandidateKind.PORT_MAPPED, addr, "m", reachability=Reachability.claimed("x"))
    unknown = Candidate(CandidateKind.SERVER_REFLEXIVE, addr, "s")
    no = unknown.with_reachability(Reachability.refused("filtering"))
    assert Goal.REACHABLE.accepts(yes)
    assert not Goal.REACHABLE.accepts(unknown)
    assert not Goal.REACHABLE.accepts(no)
    assert Goal.ANY.accepts(no)
    assert unknown.accepts_inbound is Inbound.UNKNOWN


def test_kind_preference_follows_the_seed_order() -> None:
    order = sorted(CandidateKind, key=lambda k: k.preference)
    assert order[0] is CandidateKind.HOST
    assert order[-1] is CandidateKind.RELAYED
    assert CandidateKind.SERVER_REFLEXIVE.preference < CandidateKind.PORT_MAPPED.preference


def test_request_validates_port() -> None:
    with pytest.raises(ValueError, match="out of range"):
        TraversalRequest(port=70000)


def test_json_form() -> None:
    c = Candidate(
        CandidateKind.RELAYED,
        TransportAddress("203.0.113.5", 50000),
        "relay",
        reachability=Reachability.proven("peer echoed"),
        lifetime=600.0,
        details={"server": "turn:203.0.113.1"},
    )
    data = to_jsonable(c)
    assert data["kind"] == "relay"
    assert data["address"] == {
        "host": "203.0.113.5",
        "port": 50000,
        "transport": "udp",
        "family": 4,
        "text": "203.0.113.5:50000",
    }
    assert data["reachability"] == {"inbound": "yes", "verified": True, "how": "peer echoed"}
    assert data["details"] == {"server": "turn:203.0.113.1"}
