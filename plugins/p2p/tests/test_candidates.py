"""Priorities, foundations and path kinds (RFC 8445 §5.1.2, §5.1.1.3, §6.1.2.3)."""

from __future__ import annotations

import pytest
from nattrav.models import Candidate, CandidateKind, Reachability, Transport, TransportAddress
from nattrav_p2p.candidates import (
    MUX_ROUTE,
    candidate_priority,
    foundation_of,
    from_gathered,
    host_candidates,
    pair_priority,
    path_kind,
    relay_route,
)


def test_priority_formula() -> None:
    # 2^24 * 126 + 2^8 * 65535 + (256 - 1): the best host candidate of component 1.
    assert candidate_priority(CandidateKind.HOST, 65535) == 2130706431
    assert candidate_priority(CandidateKind.RELAYED, 0, 1) == 255
    assert candidate_priority(CandidateKind.SERVER_REFLEXIVE, 10) == (100 << 24) + (10 << 8) + 255
    with pytest.raises(ValueError):
        candidate_priority(CandidateKind.HOST, 70000)


def test_type_order_is_the_chains() -> None:
    order = [
        CandidateKind.HOST,
        CandidateKind.PEER_REFLEXIVE,
        CandidateKind.SERVER_REFLEXIVE,
        CandidateKind.PORT_MAPPED,
        CandidateKind.RELAYED,
    ]
    prios = [candidate_priority(k, 0) for k in order]
    assert prios == sorted(prios, reverse=True)


def test_pair_priority_is_the_same_on_both_sides() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(5, 5) == (5 << 32) + 10


def test_foundation_groups_by_type_base_and_server() -> None:
    a = foundation_of(CandidateKind.SERVER_REFLEXIVE, "192.168.1.10", "s1", Transport.UDP)
    assert a == foundation_of(CandidateKind.SERVER_REFLEXIVE, "192.168.1.10", "s1", Transport.UDP)
    assert a != foundation_of(CandidateKind.SERVER_REFLEXIVE, "192.168.1.10", "s2", Transport.UDP)
    assert a != foundation_of(CandidateKind.HOST, "192.168.1.10", "s1", Transport.UDP)
    assert len(a) == 8


def test_host_candidates_skip_loopback_and_link_local() -> None:
    got = host_candidates(["127.0.0.1", "fe80::1", "192.168.1.10", "2001:db8::5"], 4000)
    assert [str(c.address) for c in got] == ["192.168.1.10:4000", "[2001:db8::5]:4000"]
    assert all(c.route == MUX_ROUTE and c.base == c.address for c in got)
    # IPv6 first among hosts (RFC 8421 spirit).
    assert got[1].priority > got[0].priority
    loop = host_candidates(["127.0.0.1"], 4000, include_loopback=True)
    assert [str(c.address) for c in loop] == ["127.0.0.1:4000"]


def test_from_gathered_maps_kinds_and_routes() -> None:
    base = TransportAddress("192.168.1.10", 4000)
    relayed = TransportAddress("203.0.113.1", 50000)
    cands = [
        Candidate(
            CandidateKind.SERVER_REFLEXIVE,
            TransportAddress("198.51.100.2", 4000),
            "stun",
            base=base,
            reachability=Reachability.unknown("x"),
        ),
        Candidate(
            CandidateKind.PORT_MAPPED, TransportAddress("198.51.100.2", 4001), "upnp", base=base
        ),
        Candidate(CandidateKind.RELAYED, relayed, "relay", base=base),
        Candidate(CandidateKind.RELAYED, TransportAddress("203.0.113.1", 50001), "relay"),
        Candidate(CandidateKind.HOST, TransportAddress("198.51.100.2", 80, Transport.TCP), "x"),
    ]
    got = from_gathered(cands, 4000, {relayed: relay_route(relayed)})
    assert [c.kind for c in got] == [
        CandidateKind.SERVER_REFLEXIVE,
        CandidateKind.PORT_MAPPED,
        CandidateKind.RELAYED,
    ]
    assert got[0].base == base and got[0].route == MUX_ROUTE
    assert got[2].route == relay_route(relayed) and got[2].base == relayed


@pytest.mark.parametrize(
    ("local", "remote", "kind"),
    [
        (CandidateKind.HOST, CandidateKind.HOST, "direct"),
        (CandidateKind.SERVER_REFLEXIVE, CandidateKind.HOST, "direct"),
        (CandidateKind.SERVER_REFLEXIVE, CandidateKind.PEER_REFLEXIVE, "punched"),
        (CandidateKind.PORT_MAPPED, CandidateKind.SERVER_REFLEXIVE, "mapped"),
        (CandidateKind.HOST, CandidateKind.RELAYED, "relay"),
    ],
)
def test_path_kind(local: CandidateKind, remote: CandidateKind, kind: str) -> None:
    assert path_kind(local, remote) == kind
