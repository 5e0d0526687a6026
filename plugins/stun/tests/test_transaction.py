"""Transactions under a fake clock: schedule, loss, duplicates, reordering, late responses,
integrity failures, challenges, retries, redirects, the RTO cache."""

from __future__ import annotations

import pytest
from nattrav_stun import codec as c
from nattrav_stun.auth import AuthSession, LongTermCredentials, ShortTermCredentials
from nattrav_stun.events import (
    AuthenticationFailed,
    ErrorResponse,
    IntegrityViolated,
    Redirected,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)
from nattrav_stun.transaction import ANY_SOURCE, RtoCache, StunRequest, StunTransaction, Timers

SERVER = ("192.0.2.10", 3478)
TXID = bytes(range(12))


def binding_request(tid: bytes = TXID) -> c.Message:
    return c.Message(c.BINDING, c.REQUEST, tid)


def response(
    tid: bytes = TXID,
    cls: c.MessageClass = c.SUCCESS,
    attrs: dict[int, object] | None = None,
    **kw: object,
) -> bytes:
    attributes = (
        {c.XOR_MAPPED_ADDRESS: c.Address("198.51.100.7", 40000)} if cls == c.SUCCESS else {}
    )
    attributes.update(attrs or {})
    return c.encode(c.Message(c.BINDING, cls, tid, attributes), **kw)  # type: ignore[arg-type]


def error(tid: bytes, code: int, extra: dict[int, object] | None = None, **kw: object) -> bytes:
    attrs: dict[int, object] = {c.ERROR_CODE: c.ErrorCode(code, "r")}
    attrs.update(extra or {})
    return response(tid, c.ERROR, attrs, **kw)


# ----------------------------------------------------------------------------- schedule


def test_retransmits_on_rfc_schedule_then_times_out() -> None:
    """DESIGN.md §7: sends at 0, 0.5, 1.5; timeout after Rm x RTO = 8 s more."""
    txn = StunTransaction(binding_request(TXID), SERVER, rto=0.5, rc=3, rm=16)
    txn.start(now=0.0)
    assert len(txn.datagrams_to_send()) == 1
    for deadline in (0.5, 1.5, 9.5):
        assert txn.get_timer() == deadline
        txn.handle_timer(now=deadline)
    assert txn.next_event() == TimedOut(sends=3)
    assert txn.get_timer() is None


def test_default_schedule_is_39_5_seconds() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    sent_at = [0.0]
    txn.datagrams_to_send()
    while (timer := txn.get_timer()) is not None:
        txn.handle_timer(timer)
        if txn.datagrams_to_send():
            sent_at.append(timer)
    assert sent_at == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    event = txn.next_event()
    assert event == TimedOut(sends=7)
    assert isinstance(event, TimedOut) and event.elapsed == pytest.approx(39.5)


def test_probe_window_cuts_the_schedule() -> None:
    txn = StunTransaction(binding_request(), SERVER, rto=0.1, timeout=0.35)
    txn.start(0.0)
    sends = len(txn.datagrams_to_send())
    while (timer := txn.get_timer()) is not None:
        txn.handle_timer(timer)
        sends += len(txn.datagrams_to_send())
    assert sends == 3  # at 0, 0.1 and 0.3; the next (0.7) is past the 0.35 s window
    event = txn.next_event()
    assert event == TimedOut(sends=3)
    assert isinstance(event, TimedOut) and event.elapsed == pytest.approx(0.35)


def test_tcp_sends_once_and_waits_ti() -> None:
    txn = StunTransaction(binding_request(), SERVER, reliable=True, timers=Timers(ti=39.5))
    txn.start(0.0)
    assert len(txn.datagrams_to_send()) == 1
    assert txn.get_timer() == 39.5
    txn.handle_timer(39.5)
    assert txn.next_event() == TimedOut(sends=1)


# ----------------------------------------------------------------------------- loss & co


def test_loss_then_response_to_a_retransmission() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    txn.handle_timer(0.5)
    txn.handle_timer(1.5)
    assert txn.receive_datagram(response(), SERVER, 1.6)
    event = txn.next_event()
    assert isinstance(event, SuccessResponse) and event.sends == 3
    assert event.rtt is None  # Karn: ambiguous after retransmission
    assert event.mapped == c.Address("198.51.100.7", 40000)


def test_s07_first_response_wins_duplicates_and_late_ones_ignored() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    assert txn.receive_datagram(response(), SERVER, 0.2)
    first = txn.next_event()
    assert isinstance(first, SuccessResponse) and first.rtt == pytest.approx(0.2)
    other = response(attrs={c.XOR_MAPPED_ADDRESS: c.Address("203.0.113.1", 1)})
    assert not txn.receive_datagram(other, SERVER, 0.3)  # S7: late duplicate
    assert txn.next_event() is None


def test_reordering_unrelated_ids_do_not_match() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    assert not txn.receive_datagram(response(tid=b"\xff" * 12), SERVER, 0.1)
    assert not txn.receive_datagram(b"garbage", SERVER, 0.1)
    assert txn.next_event() is None
    assert txn.receive_datagram(response(), SERVER, 0.2)
    assert isinstance(txn.next_event(), SuccessResponse)


def test_s08_response_from_another_address_is_discarded() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    assert txn.receive_datagram(response(), ("192.0.2.99", 3478), 0.1)
    assert txn.next_event() is None and txn.discarded == 1
    txn.receive_datagram(response(), SERVER, 0.2)
    assert isinstance(txn.next_event(), SuccessResponse)
    # CHANGE-REQUEST probes widen it: any source is accepted
    probe = StunTransaction(binding_request(), SERVER, accept_from=ANY_SOURCE)
    probe.start(0.0)
    probe.receive_datagram(response(), ("192.0.2.11", 3479), 0.1)
    event = probe.next_event()
    assert isinstance(event, SuccessResponse) and event.source == c.Address("192.0.2.11", 3479)


def test_s09_success_with_unknown_required_attribute_fails() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    txn.receive_datagram(response(attrs={0x7ABC: b"?"}), SERVER, 0.1)
    event = txn.next_event()
    assert isinstance(event, TransactionFailed) and "0x7abc" in event.reason


def test_s16_error_without_or_with_invalid_error_code_fails() -> None:
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    txn.receive_datagram(response(cls=c.ERROR), SERVER, 0.1)
    event = txn.next_event()
    assert isinstance(event, TransactionFailed) and "ERROR-CODE" in event.reason
    bad = bytearray(error(TXID, 420))
    bad[20 + 6] = 2  # class 2
    txn2 = StunTransaction(binding_request(), SERVER)
    txn2.start(0.0)
    txn2.receive_datagram(bytes(bad), SERVER, 0.1)
    assert isinstance(txn2.next_event(), TransactionFailed)


def test_transport_failure_ends_the_transaction() -> None:
    txn = StunTransaction(binding_request(), SERVER, reliable=True)
    txn.start(0.0)
    txn.transport_failed("connection reset")
    assert txn.next_event() == TransactionFailed("connection reset")


# ----------------------------------------------------------------------------- integrity


def _short_request(auth: AuthSession, **kw: object) -> StunRequest:
    return StunRequest(c.BINDING, None, SERVER, auth=auth, **kw)  # type: ignore[arg-type]


def test_s12_integrity_failure_keeps_retransmitting_then_reports_violation() -> None:
    auth = AuthSession(ShortTermCredentials("user", "right"))
    req = _short_request(auth, timers=Timers(rc=3))
    req.start(0.0)
    tid = req.transaction_id
    wrong = c.IntegrityKey(b"wrong")
    assert req.receive_datagram(response(tid, integrity=wrong), SERVER, 0.1)
    assert req.next_event() is None  # discarded, still waiting
    req.receive_datagram(response(tid), SERVER, 0.2)  # unprotected: discarded too
    while (timer := req.get_timer()) is not None:
        req.handle_timer(timer)
    event = req.next_event()
    assert isinstance(event, IntegrityViolated) and event.discarded == 2
    assert req.sends == 3


def test_s12_valid_response_after_forgeries_is_accepted() -> None:
    auth = AuthSession(ShortTermCredentials("user", "right"))
    req = _short_request(auth)
    req.start(0.0)
    tid = req.transaction_id
    req.receive_datagram(response(tid, integrity=c.IntegrityKey(b"wrong")), SERVER, 0.1)
    good = c.IntegrityKey(b"right")
    req.receive_datagram(response(tid, integrity_sha256=good), SERVER, 0.2)
    event = req.next_event()
    assert isinstance(event, SuccessResponse) and event.authenticated


def test_s12_over_tcp_integrity_failure_ends_at_once() -> None:
    auth = AuthSession(ShortTermCredentials("user", "right"))
    req = _short_request(auth, reliable=True)
    req.start(0.0)
    req.receive_datagram(response(req.transaction_id, integrity=c.IntegrityKey(b"x")), SERVER, 0.1)
    assert isinstance(req.next_event(), IntegrityViolated)


def test_s14_other_algorithm_than_sent_is_discarded() -> None:
    auth = AuthSession(ShortTermCredentials("user", "pw", integrity="sha1"))
    req = _short_request(auth, timers=Timers(rc=1, rm=1))
    req.start(0.0)
    key = c.IntegrityKey(b"pw")
    req.receive_datagram(response(req.transaction_id, integrity_sha256=key), SERVER, 0.1)
    req.handle_timer(0.5)
    assert isinstance(req.next_event(), IntegrityViolated)


# ----------------------------------------------------------------------------- long-term


def _challenge(tid: bytes, code: int = 401, nonce: str = "n1", **kw: object) -> bytes:
    return error(tid, code, {c.REALM: "example.org", c.NONCE: nonce}, **kw)


def test_long_term_challenge_then_authenticated_success() -> None:
    creds = LongTermCredentials("alice", "s3cret")
    auth = AuthSession(creds)
    req = StunRequest(c.BINDING, None, SERVER, auth=auth, software="nattrav-test")
    req.start(0.0)
    first = req.datagrams_to_send()[0][0]
    first_msg = c.decode(first)
    assert first_msg.get(c.SOFTWARE) == "nattrav-test" and first_msg.fingerprint
    assert c.USERNAME not in first_msg and not first_msg.has_integrity
    req.receive_datagram(_challenge(req.transaction_id), SERVER, 0.05)
    assert req.next_event() is None and len(req.transaction_ids) == 2
    second = c.decode(req.datagrams_to_send()[0][0])
    assert second.get(c.USERNAME) == "alice" and second.get(c.NONCE) == "n1"
    assert second.transaction_id != first_msg.transaction_id
    from nattrav_stun.auth import long_term_key

    key = c.IntegrityKey(long_term_key("alice", "example.org", "s3cret"))
    assert c.verify_integrity(second, key)
    # a late response to the first transaction is ignored
    assert not req.receive_datagram(response(first_msg.transaction_id), SERVER, 0.06)
    # an unprotected success to the signed request is discarded...
    req.receive_datagram(response(req.transaction_id), SERVER, 0.07)
    assert req.next_event() is None
    # ...a protected one accepted
    req.receive_datagram(response(req.transaction_id, integrity=key), SERVER, 0.08)
    event = req.next_event()
    assert isinstance(event, SuccessResponse) and event.authenticated
    # the session is warm: the next request is signed from the start (§9.2.3.2)
    nxt = StunRequest(c.BINDING, None, SERVER, auth=auth)
    nxt.start(1.0)
    assert c.decode(nxt.datagrams_to_send()[0][0]).has_integrity


def test_stale_nonce_retries_and_bounded() -> None:
    auth = AuthSession(LongTermCredentials("alice", "s3cret"))
    req = StunRequest(c.BINDING, None, SERVER, auth=auth, max_auth_retries=2)
    req.start(0.0)
    req.receive_datagram(_challenge(req.transaction_id, 401, "n1"), SERVER, 0.01)
    req.receive_datagram(_challenge(req.transaction_id, 438, "n2"), SERVER, 0.02)
    assert req.next_event() is None
    assert c.decode(req.datagrams_to_send()[-1][0]).get(c.NONCE) == "n2"
    req.receive_datagram(_challenge(req.transaction_id, 438, "n3"), SERVER, 0.03)
    event = req.next_event()
    assert isinstance(event, AuthenticationFailed) and "giving up" in event.reason


def test_s18_bid_down_stops_the_request() -> None:
    auth = AuthSession(LongTermCredentials("alice", "s3cret"))
    req = StunRequest(c.BINDING, None, SERVER, auth=auth)
    req.start(0.0)
    req.receive_datagram(_challenge(req.transaction_id, 401, "obMatJos2AAAB-nonce"), SERVER, 0.01)
    event = req.next_event()
    assert isinstance(event, AuthenticationFailed) and "bid-down" in event.reason
    assert len(req.transaction_ids) == 1


def test_s18_wrong_password_401_is_not_retried_forever() -> None:
    auth = AuthSession(LongTermCredentials("alice", "s3cret"))
    req = StunRequest(c.BINDING, None, SERVER, auth=auth)
    req.start(0.0)
    req.receive_datagram(_challenge(req.transaction_id, 401, "n1"), SERVER, 0.01)
    req.receive_datagram(_challenge(req.transaction_id, 401, "n2"), SERVER, 0.02)
    event = req.next_event()
    assert isinstance(event, AuthenticationFailed) and "rejected" in event.reason


def test_no_credentials_and_a_challenge() -> None:
    req = StunRequest(c.BINDING, None, SERVER, auth=AuthSession(None))
    req.start(0.0)
    req.receive_datagram(_challenge(req.transaction_id), SERVER, 0.01)
    assert isinstance(req.next_event(), AuthenticationFailed)


def test_s16_server_errors_resent_at_most_four_times() -> None:
    req = StunRequest(c.BINDING, None, SERVER)
    req.start(0.0)
    for _ in range(4):
        req.receive_datagram(error(req.transaction_id, 500), SERVER, 0.01)
        assert req.next_event() is None
    req.receive_datagram(error(req.transaction_id, 500), SERVER, 0.02)
    event = req.next_event()
    assert isinstance(event, ErrorResponse) and event.code == 500
    assert len(req.transaction_ids) == 5


def test_4xx_is_a_final_error_event() -> None:
    req = StunRequest(c.BINDING, None, SERVER)
    req.start(0.0)
    req.receive_datagram(
        error(req.transaction_id, 420, {c.UNKNOWN_ATTRIBUTES: (0x7001,)}), SERVER, 0.1
    )
    event = req.next_event()
    assert isinstance(event, ErrorResponse) and event.code == 420
    assert event.message.get(c.UNKNOWN_ATTRIBUTES) == (0x7001,)


# ----------------------------------------------------------------------------- redirects


def _redirect_request() -> tuple[StunRequest, c.IntegrityKey]:
    auth = AuthSession(ShortTermCredentials("user", "pw", integrity="sha1"))
    req = StunRequest(c.BINDING, None, SERVER, auth=auth)
    req.start(0.0)
    return req, c.IntegrityKey(b"pw")


@pytest.mark.parametrize(
    ("alternate", "ok"),
    [
        (c.Address("192.0.2.20", 3478), True),
        (c.Address("127.0.0.1", 3478), False),
        (c.Address("169.254.1.1", 3478), False),
        (c.Address("2001:db8::1", 3478), False),
        (c.Address("0.0.0.0", 3478), False),
    ],
)
def test_s20_redirect_targets(alternate: c.Address, ok: bool) -> None:
    req, key = _redirect_request()
    req.receive_datagram(
        error(req.transaction_id, 300, {c.ALTERNATE_SERVER: alternate}, integrity=key), SERVER, 0.1
    )
    event = req.next_event()
    if ok:
        assert event == Redirected(alternate)
    else:
        assert isinstance(event, TransactionFailed) and "refusing redirect" in event.reason


def test_unauthenticated_redirect_is_not_followed() -> None:
    req = StunRequest(c.BINDING, None, SERVER)
    req.start(0.0)
    req.receive_datagram(
        error(req.transaction_id, 300, {c.ALTERNATE_SERVER: c.Address("192.0.2.20", 1)}),
        SERVER,
        0.1,
    )
    event = req.next_event()
    assert isinstance(event, TransactionFailed) and "integrity" in event.reason


def test_s21_mapped_address_is_not_reachability() -> None:
    """S21: an XOR-MAPPED-ADDRESS is only what the server saw; the event carries no claim
    of reachability (the method reports it as unknown unless a filtering test proves it)."""
    txn = StunTransaction(binding_request(), SERVER)
    txn.start(0.0)
    txn.receive_datagram(response(), SERVER, 0.1)
    event = txn.next_event()
    assert isinstance(event, SuccessResponse)
    assert not hasattr(event, "reachability") and not event.authenticated


# ----------------------------------------------------------------------------- RTO cache


def test_rto_cache_karn_samples_staleness_and_floor() -> None:
    cache = RtoCache(initial=0.5, min_rto=0.1)
    assert cache.rto_for("192.0.2.10", 0.0) == 0.5
    cache.record("192.0.2.10", 0.2, now=1.0)
    assert cache.rto_for("192.0.2.10", 2.0) == pytest.approx(0.6)  # R + 4 * R/2
    cache.record("192.0.2.10", 0.2, now=3.0)
    assert cache.rto_for("192.0.2.10", 3.0) == pytest.approx(0.2 + 4 * 0.075)
    cache.record("192.0.2.11", 0.0001, now=3.0)
    assert cache.rto_for("192.0.2.11", 3.0) == 0.1  # floor
    assert cache.rto_for("192.0.2.10", 3.0 + 601) == 0.5  # stale after 10 minutes
    cache.timed_out("192.0.2.11")
    assert cache.rto_for("192.0.2.11", 4.0) == 0.5
