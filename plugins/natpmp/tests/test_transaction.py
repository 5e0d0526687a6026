"""Transactions and negotiation under a fake clock: retransmission schedules, what is accepted
and what is discarded (P1-P5, C1, C3, C7), and the PCP-first/NAT-PMP-fallback decision."""

from __future__ import annotations

import pytest
from natpmp_testkit import (
    FixedRandom,
    natpmp_external,
    natpmp_map,
    natpmp_short_error,
    pcp_announce,
    pcp_map,
)
from nattrav.models import Transport
from nattrav_natpmp import natpmp_codec, pcp_codec
from nattrav_natpmp.errors import NatPmpError, NatPmpResult, PcpError, PcpResult
from nattrav_natpmp.events import (
    Answered,
    Negotiated,
    NoServer,
    Refused,
    TimedOut,
    Unreachable,
    VersionUnsupported,
)
from nattrav_natpmp.transaction import (
    NatPmpTiming,
    NatPmpTransaction,
    Negotiation,
    OneShot,
    PcpTiming,
    PcpTransaction,
)

GW = "192.168.1.1"
SRC = (GW, 5351)
NONCE = bytes(range(12))


def natpmp_map_txn(**kw: object) -> NatPmpTransaction:
    request = natpmp_codec.MapRequest(Transport.UDP, 5000, 0, 7200)
    return NatPmpTransaction(request, GW, **kw)  # type: ignore[arg-type]


def pcp_map_request(
    lifetime: int = 7200, options: tuple[pcp_codec.Option, ...] = ()
) -> pcp_codec.MapRequest:
    return pcp_codec.MapRequest(NONCE, 17, 5000, "192.168.1.10", lifetime, options=options)


def run_to_end(txn: NatPmpTransaction | PcpTransaction) -> tuple[list[float], object]:
    """Send times and the outcome when nothing ever answers."""
    sends: list[float] = []
    txn.start(0.0)
    now = 0.0
    while True:
        sends += [now] * len(txn.datagrams_to_send())
        event = txn.next_event()
        if event is not None:
            return sends, event
        timer = txn.get_timer()
        assert timer is not None
        now = timer
        txn.handle_timer(now)


# --------------------------------------------------------------------------- NAT-PMP schedule


def test_natpmp_retransmits_250ms_doubling_nine_times() -> None:
    sends, event = run_to_end(natpmp_map_txn())
    assert sends == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 63.75]
    assert event == TimedOut(9, 127.75)  # the ninth wait is 64 s


def test_natpmp_send_count_is_configurable() -> None:
    sends, event = run_to_end(natpmp_map_txn(timing=NatPmpTiming(max_sends=3)))
    assert sends == [0.0, 0.25, 0.75]
    assert event == TimedOut(3, 1.75)


def test_natpmp_short_probe_mode() -> None:
    sends, event = run_to_end(natpmp_map_txn(timing=NatPmpTiming(max_sends=None, max_duration=0.5)))
    assert sends == [0.0, 0.25]
    assert event == TimedOut(2, 0.5)


def test_timer_before_due_does_nothing() -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.datagrams_to_send()
    txn.handle_timer(0.1)
    assert txn.datagrams_to_send() == [] and txn.sends == 1


# --------------------------------------------------------------------------- NAT-PMP acceptance


def answered(txn: NatPmpTransaction | PcpTransaction) -> object:
    event = txn.next_event()
    assert event is not None, f"no outcome; discards: {dict(txn.discards)}"
    return event


def test_natpmp_success() -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    assert txn.datagrams_to_send() == [bytes.fromhex("000100001388000000001c20")]
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Answered) and event.sends == 1 and event.rtt == pytest.approx(0.01)
    assert event.response == natpmp_codec.MapResponse(
        natpmp_codec.Opcode.MAP_UDP, 0, 7, 5000, 5000, 7200
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [(("192.168.1.66", 5351), "wrong source"), ((GW, 5350), "wrong source")],
)
def test_p1_responses_from_elsewhere_are_discarded(source: tuple[str, int], reason: str) -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), source, 0.01)
    assert txn.next_event() is None and txn.discards[reason] == 1
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.02)
    assert isinstance(answered(txn), Answered)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x01" + natpmp_map(7, 5000, 5000, 7200)[1:], "malformed"),  # P2 version
        (natpmp_map(7, 5000, 5000, 7200, op=2), "opcode mismatch"),  # P2 TCP answer
        (natpmp_external(7), "opcode mismatch"),  # P2 another request's answer
        (natpmp_map(7, 5000, 5000, 7200)[:15], "malformed"),  # P3 length
        (natpmp_map(7, 5000, 5000, 7200) + b"\x00", "malformed"),  # P3 length
        (natpmp_map(7, 5001, 5001, 7200), "internal port mismatch"),  # P4
    ],
)
def test_p2_p3_p4_discarded_and_still_waiting(packet: bytes, reason: str) -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.receive_datagram(packet, SRC, 0.01)
    assert txn.next_event() is None
    assert sum(n for r, n in txn.discards.items() if r.startswith(reason)) == 1
    assert txn.get_timer() == 0.25  # retransmission continues
    txn.handle_timer(0.25)
    assert len(txn.datagrams_to_send()) == 2


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_p5_result_codes_are_typed_errors(code: int) -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.receive_datagram(natpmp_map(7, 5000, 0, 0, result=code), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Refused) and isinstance(event.error, NatPmpError)
    assert event.error.result is NatPmpResult(code)
    assert event.error.retryable is (code in (3, 4))
    assert txn.get_timer() is None  # the request is over


def test_p5_undefined_result_code_is_fatal_for_the_request() -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.receive_datagram(natpmp_map(7, 5000, 1234, 60, result=77), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Refused) and event.error.result == 77
    assert "undefined result code" in str(event.error) and not event.error.retryable


def test_p5_short_error_form_is_accepted() -> None:
    txn = NatPmpTransaction(natpmp_codec.ExternalAddressRequest(), GW)
    txn.start(0.0)
    txn.receive_datagram(natpmp_short_error(0, 3, 7), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Refused) and event.error.result is NatPmpResult.NETWORK_FAILURE


def test_p6_external_address_zero_is_unknown() -> None:
    txn = NatPmpTransaction(natpmp_codec.ExternalAddressRequest(), GW)
    txn.start(0.0)
    txn.receive_datagram(natpmp_external(7, "0.0.0.0"), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Answered) and event.response.external_address is None  # type: ignore[union-attr]


def test_answer_to_the_first_copy_after_a_retransmission_is_accepted() -> None:
    """A slow gateway: requests are idempotent, so a late answer to an earlier copy counts."""
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.handle_timer(0.25)
    txn.handle_timer(0.75)
    assert txn.sends == 3
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.8)
    event = answered(txn)
    assert isinstance(event, Answered) and event.sends == 3 and event.rtt == pytest.approx(0.8)


def test_late_duplicates_are_discarded() -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.01)
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.02)
    assert isinstance(answered(txn), Answered) and txn.next_event() is None
    assert txn.discards["finished"] == 1


def test_deletion_ignores_a_late_answer_to_the_create() -> None:
    txn = NatPmpTransaction(natpmp_codec.MapRequest.delete(Transport.UDP, 5000), GW)
    txn.start(0.0)
    txn.receive_datagram(natpmp_map(7, 5000, 5000, 7200), SRC, 0.01)
    assert txn.next_event() is None and txn.discards["answer to another request"] == 1
    txn.receive_datagram(natpmp_map(7, 5000, 0, 0), SRC, 0.02)
    assert isinstance(answered(txn), Answered)


def test_icmp_unreachable_ends_the_transaction() -> None:
    txn = natpmp_map_txn()
    txn.start(0.0)
    txn.connection_refused(0.003)
    assert answered(txn) == Unreachable(1, 0.003)


# --------------------------------------------------------------------------- PCP schedule


def test_pcp_rfc_6887_schedule_without_jitter() -> None:
    txn = PcpTransaction(pcp_map_request(), GW, PcpTiming(mrt=20.0, mrc=6), rng=FixedRandom(0.5))
    sends, event = run_to_end(txn)
    # RAND = 0: RT = IRT, then MIN(2 RTprev, MRT): 3, 6, 12, 20, 20, 20.
    assert sends == [0.0, 3.0, 9.0, 21.0, 41.0, 61.0]
    assert event == TimedOut(6, 81.0)


def test_pcp_jitter_bounds() -> None:
    low = run_to_end(PcpTransaction(pcp_map_request(), GW, PcpTiming(mrc=3), rng=FixedRandom(0.0)))
    high = run_to_end(PcpTransaction(pcp_map_request(), GW, PcpTiming(mrc=3), rng=FixedRandom(1.0)))
    # RAND = -0.1: 2.7, then 0.9 * 5.4 = 4.86; RAND = +0.1: 3.3, then 1.1 * 6.6 = 7.26.
    assert low[0] == pytest.approx([0.0, 2.7, 7.56])
    assert high[0] == pytest.approx([0.0, 3.3, 10.56])


def test_pcp_unbounded_by_default_and_mrd_caps() -> None:
    txn = PcpTransaction(pcp_map_request(), GW, rng=FixedRandom(0.5))
    txn.start(0.0)
    now = 0.0
    for _ in range(20):  # MRC 0, MRD 0: it keeps going, RT capped at 1024 s
        now = txn.get_timer()  # type: ignore[assignment]
        txn.handle_timer(now)
    assert txn.next_event() is None and txn.sends == 21
    sends, event = run_to_end(
        PcpTransaction(pcp_map_request(), GW, PcpTiming(mrd=10.0), rng=FixedRandom(0.5))
    )
    assert sends == [0.0, 3.0, 9.0] and event == TimedOut(3, 10.0)


def test_one_shot_sends_once() -> None:
    sends, event = run_to_end(PcpTransaction(pcp_map_request(), GW, OneShot(40.0)))
    assert sends == [0.0] and event == TimedOut(1, 40.0)


# --------------------------------------------------------------------------- PCP acceptance


def pcp_txn(request: pcp_codec.Request | None = None) -> PcpTransaction:
    txn = PcpTransaction(request or pcp_map_request(), GW, rng=FixedRandom(0.5))
    txn.start(0.0)
    return txn


def test_pcp_success() -> None:
    txn = pcp_txn()
    txn.receive_datagram(pcp_map(NONCE, external=5001, lifetime=3600, epoch=99), SRC, 0.02)
    event = answered(txn)
    assert isinstance(event, Answered)
    response = event.response
    assert isinstance(response, pcp_codec.Response)
    assert (response.lifetime, response.epoch) == (3600, 99)
    assert response.map == pcp_codec.MapResult(NONCE, 17, 5000, 5001, "198.51.100.2")


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (pcp_map(bytes(12)), "nonce mismatch"),  # C3
        (pcp_map(NONCE, protocol=6), "protocol mismatch"),  # C3
        (pcp_map(NONCE, internal=5001), "internal port mismatch"),  # C3
        (pcp_map(NONCE)[:-4], "malformed"),  # C2
        (pcp_map(NONCE) + b"\x00\x00", "malformed"),  # C2
        (pcp_announce(5), "opcode mismatch"),
        (pcp_map(NONCE, options=bytes.fromhex("32000000")), "malformed"),  # C6
    ],
)
def test_c2_c3_c6_discarded_and_still_waiting(packet: bytes, reason: str) -> None:
    txn = pcp_txn()
    txn.receive_datagram(packet, SRC, 0.01)
    assert txn.next_event() is None
    assert sum(n for r, n in txn.discards.items() if r.startswith(reason)) == 1
    txn.receive_datagram(pcp_map(NONCE), SRC, 0.02)
    assert isinstance(answered(txn), Answered)


def test_third_party_must_be_echoed() -> None:
    option = pcp_codec.ThirdParty("192.168.1.55")
    txn = pcp_txn(pcp_map_request(options=(option,)))
    txn.receive_datagram(pcp_map(NONCE), SRC, 0.01)
    assert txn.discards["THIRD_PARTY option not echoed"] == 1
    echo = pcp_codec.encode_option(option)
    txn.receive_datagram(pcp_map(NONCE, options=echo), SRC, 0.02)
    assert isinstance(answered(txn), Answered)


def test_c1_natpmp_only_server_means_version_unsupported() -> None:
    txn = pcp_txn()
    txn.receive_datagram(natpmp_short_error(1, 1, 42), SRC, 0.01)
    assert answered(txn) == VersionUnsupported(0, 42, 1)


def test_c7_error_lifetime_is_carried_and_decides_retryability() -> None:
    txn = pcp_txn()
    txn.receive_datagram(pcp_map(NONCE, result=8, lifetime=30), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Refused) and isinstance(event.error, PcpError)
    assert event.error.result is PcpResult.NO_RESOURCES and event.error.lifetime == 30
    assert not event.error.retryable  # the server promised the same answer for 30 s
    assert "30 s" in str(event.error)
    quick = pcp_txn()
    quick.receive_datagram(pcp_map(NONCE, result=8, lifetime=1), SRC, 0.01)
    event = answered(quick)
    assert isinstance(event, Refused) and event.error.retryable
    refused = pcp_txn()
    refused.receive_datagram(pcp_map(NONCE, result=2, lifetime=0), SRC, 0.01)
    event = answered(refused)
    assert isinstance(event, Refused) and not event.error.retryable


def test_pcp_deletion_ignores_a_late_answer_to_the_create() -> None:
    txn = pcp_txn(pcp_map_request(lifetime=0))
    txn.receive_datagram(pcp_map(NONCE, lifetime=7200), SRC, 0.01)
    assert txn.discards["answer to another request"] == 1
    txn.receive_datagram(pcp_map(NONCE, lifetime=0), SRC, 0.02)
    assert isinstance(answered(txn), Answered)


def test_announce_transaction() -> None:
    txn = pcp_txn(pcp_codec.AnnounceRequest("192.168.1.10"))
    txn.receive_datagram(pcp_map(NONCE), SRC, 0.01)
    assert txn.discards["opcode mismatch"] == 1
    txn.receive_datagram(pcp_announce(1234), SRC, 0.01)
    event = answered(txn)
    assert isinstance(event, Answered) and event.response.epoch == 1234


# --------------------------------------------------------------------------- negotiation


def negotiation(pcp: bool = True, natpmp: bool = True, window: float = 0.5) -> Negotiation:
    timing = NatPmpTiming(max_sends=None, max_duration=window)
    neg = Negotiation(
        PcpTransaction(pcp_map_request(), GW, timing) if pcp else None,
        NatPmpTransaction(natpmp_codec.ExternalAddressRequest(), GW, timing) if natpmp else None,
    )
    neg.start(0.0)
    assert len(neg.datagrams_to_send()) == int(pcp) + int(natpmp)
    return neg


def test_pcp_answer_wins() -> None:
    neg = negotiation()
    neg.receive_datagram(natpmp_external(7), SRC, 0.010)
    assert neg.next_event() is None  # PCP may still answer within the grace period
    neg.receive_datagram(pcp_map(NONCE, epoch=8), SRC, 0.012)
    outcome = neg.next_event()
    assert isinstance(outcome, Negotiated) and outcome.protocol == "pcp"
    assert isinstance(outcome.event, Answered) and neg.next_event() is None


def test_natpmp_only_server_falls_back_at_once() -> None:
    neg = negotiation()
    neg.receive_datagram(natpmp_short_error(1, 1, 7), SRC, 0.010)  # answer to the PCP request
    assert neg.next_event() is None
    neg.receive_datagram(natpmp_external(7), SRC, 0.011)
    outcome = neg.next_event()
    assert isinstance(outcome, Negotiated) and outcome.protocol == "natpmp"
    assert outcome.pcp_version == 0
    assert isinstance(outcome.event, Answered)


def test_silent_pcp_gets_a_grace_period_after_natpmp_answers() -> None:
    neg = negotiation()
    neg.receive_datagram(natpmp_external(7), SRC, 0.010)
    timer = neg.get_timer()
    assert timer is not None and timer == pytest.approx(0.060)  # max(50 ms, 2 x 10 ms RTT)
    neg.handle_timer(timer)
    outcome = neg.next_event()
    assert isinstance(outcome, Negotiated) and outcome.protocol == "natpmp"
    assert outcome.pcp_version is None


def test_nothing_answers_costs_one_window() -> None:
    neg = negotiation(window=0.5)
    now = 0.0
    while (timer := neg.get_timer()) is not None:
        now = timer
        neg.handle_timer(now)
    outcome = neg.next_event()
    assert outcome == NoServer(sends=4, waited=0.5, refused=False)
    assert now == 0.5


def test_icmp_ends_negotiation_at_once() -> None:
    neg = negotiation()
    neg.connection_refused(0.002)
    assert neg.next_event() == NoServer(sends=2, waited=0.002, refused=True)


def test_pcp_only_reports_version_unsupported() -> None:
    neg = negotiation(natpmp=False)
    neg.receive_datagram(natpmp_short_error(1, 1, 7), SRC, 0.01)
    outcome = neg.next_event()
    assert isinstance(outcome, Negotiated) and isinstance(outcome.event, VersionUnsupported)


def test_pcp_error_is_final() -> None:
    neg = negotiation()
    neg.receive_datagram(pcp_map(NONCE, result=2, lifetime=1800), SRC, 0.01)
    outcome = neg.next_event()
    assert isinstance(outcome, Negotiated) and outcome.protocol == "pcp"
    assert isinstance(outcome.event, Refused)


def test_negotiation_discards_garbage_and_wrong_sources() -> None:
    neg = negotiation()
    neg.receive_datagram(b"\x02garbage!", SRC, 0.01)
    neg.receive_datagram(pcp_map(NONCE), ("192.168.1.99", 5351), 0.01)
    assert neg.next_event() is None
    # Version 2 goes to the PCP transaction only; its garbage is malformed, not NAT-PMP's.
    assert neg.discards["wrong source"] == 1
    assert sum(n for r, n in neg.discards.items() if r.startswith("malformed")) == 1
    neg.receive_datagram(pcp_map(NONCE), SRC, 0.02)
    assert isinstance(neg.next_event(), Negotiated)
