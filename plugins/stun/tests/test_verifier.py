"""The ``stun-inbound`` verifier on loopback (the lab tests cover NATs and port mappings)."""

from __future__ import annotations

import pytest
from nattrav.datagram import DatagramMux
from nattrav.method import AttemptContext
from nattrav.models import Candidate, CandidateKind, Inbound, TransportAddress, TraversalRequest
from nattrav_stun.config import load_config
from nattrav_stun.testing import Coturn
from nattrav_stun.verifier import StunVerifier

pytestmark = pytest.mark.anyio


def verifier(*servers: str) -> StunVerifier:
    return StunVerifier(load_config({"servers": list(servers), "probe_window": 0.3, "rto": 0.1}))


async def test_host_candidate_proven_by_change_request(coturn: Coturn) -> None:
    async with DatagramMux.open(0, families={4}, host4="127.0.0.1") as mux:
        ctx = AttemptContext(TraversalRequest(port=mux.port), "direct", sockets=mux)
        host = Candidate(CandidateKind.HOST, TransportAddress("127.0.0.1", mux.port), "direct")
        verdict = await verifier(coturn.uri).verify(host, ctx)
    assert verdict is not None and verdict.inbound is Inbound.YES and verdict.verified
    assert f"127.0.0.2:{coturn.port + 1}" in verdict.how


async def test_cannot_tell_returns_none(coturn: Coturn) -> None:
    async with DatagramMux.open(0, families={4}, host4="127.0.0.1") as mux:
        ctx = AttemptContext(TraversalRequest(port=mux.port), "x", sockets=mux)
        elsewhere = Candidate(
            CandidateKind.SERVER_REFLEXIVE, TransportAddress("192.0.2.44", 4444), "x"
        )
        assert await verifier(coturn.uri).verify(elsewhere, ctx) is None  # not what it sees
        probed = Candidate(
            CandidateKind.SERVER_REFLEXIVE,
            TransportAddress("127.0.0.1", mux.port),
            "stun",
            details={"filtering_probe": "no-answer"},
        )
        assert await verifier(coturn.uri).verify(probed, ctx) is None  # already tested
        assert await verifier().verify(elsewhere, ctx) is None  # no server
        no_mux = AttemptContext(TraversalRequest(port=mux.port), "x")
        assert await verifier(coturn.uri).verify(elsewhere, no_mux) is None
