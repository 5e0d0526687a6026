"""The lean Binding table under a fake clock: templates, the RFC 8489 schedule (the same as
``StunTransaction``'s), Karn's rule, loss, duplicates, late answers, wrong sources, garbage,
error responses (the same outcomes as ``StunRequest`` without credentials), the memo of the
last response, and the single timer's queue."""

from __future__ import annotations

import itertools

import pytest
from nattrav.errors import LocalProtocolError
from nattrav_stun import codec as c
from nattrav_stun.auth import AuthSession
from nattrav_stun.binding_table import MAX_SERVER_ERROR_RETRIES, BindingTable, LeanBinding
from nattrav_stun.events import (
    AuthenticationFailed,
    ErrorResponse,
    Event,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)
from nattrav_stun.transaction import RtoCache, StunRequest, StunTransaction, Timers

SERVER = c.Address("192.0.2.10", 3478)
SERVER6 = c.Address("2001:db8::10", 3478)
MAPPED = c.Address("198.51.100.7", 40000)


def counting_bytes() -> object:
    """Deterministic "random" bytes: every ID distinct and predictable."""
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        return b"".join(next(counter).to_bytes(12, "big") for _ in range(n // 12))

    return random_bytes


def table(**kw: object) -> BindingTable:
    kw.setdefault("random_bytes", counting_bytes())
    return BindingTable(**kw)  # type: ignore[arg-type]


def success(tid: bytes, attrs: dict[int, object] | None = None, **kw: object) -> bytes:
    attributes: dict[int, object] = {c.XOR_MAPPED_ADDRESS: MAPPED}
    attributes.update(attrs or {})
    return c.encode(c.Message(c.BINDING, c.SUCCESS, tid, attributes), **kw)  # type: ignore[arg-type]


def error(tid: bytes, code: int | None, extra: dict[int, object] | None = None) -> bytes:
    attrs: dict[int, object] = {} if code is None else {c.ERROR_CODE: c.ErrorCode(code, "r")}
    attrs.update(extra or {})
    return c.encode(c.Message(c.BINDING, c.ERROR, tid, attrs))


def deliver(t: BindingTable, data: bytes, source: tuple[object, ...], now: float) -> object:
    """What the driver's reader does: look the ID up, hand the datagram over."""
    txn = t.pending.get(data[8:20])
    if txn is None:
        return "unmatched"
    return t.receive(txn, data, source, now)


# ----------------------------------------------------------------------------- requests


def test_requests_come_from_a_template_with_fresh_ids() -> None:
    t = table(software="nattrav", fingerprint=True)
    a = t.start(SERVER, 0.0, 0.5)
    b = t.start(SERVER, 0.0, 0.5)
    assert a.tid != b.tid and len(a.tid) == 12
    msg = c.decode(a.data)  # FINGERPRINT is checked by decode
    assert msg.method == c.BINDING and msg.cls is c.REQUEST and msg.fingerprint
    assert msg.transaction_id == a.tid and msg.attributes == {c.SOFTWARE: "nattrav"}
    assert a.data == c.encode(
        c.Message(c.BINDING, c.REQUEST, a.tid, {c.SOFTWARE: "nattrav"}), fingerprint=True
    )
    plain = table().start(SERVER, 0.0, 0.5)
    assert plain.data == c.encode(c.Message(c.BINDING, c.REQUEST, plain.tid))


def test_ids_come_from_a_csprng_in_batches() -> None:
    calls: list[int] = []

    def random_bytes(n: int) -> bytes:
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(n % 256)

    t = BindingTable(random_bytes=random_bytes)
    for _ in range(300):
        t.new_tid()
    assert calls == [12 * 256, 12 * 256]
    with pytest.raises(LocalProtocolError):
        BindingTable(random_bytes=lambda n: b"short").new_tid()
    with pytest.raises(LocalProtocolError):
        table().start(SERVER, 0.0, 0.0)


# ----------------------------------------------------------------------------- schedule


def schedule_of_transaction(timers: Timers, rto: float, timeout: float | None) -> list[float]:
    txn = StunTransaction(
        c.Message(c.BINDING, c.REQUEST), SERVER, timers=timers, rto=rto, timeout=timeout
    )
    txn.start(0.0)
    times: list[float] = []
    while (timer := txn.get_timer()) is not None:
        times.append(timer)
        txn.handle_timer(timer)
    return times


def schedule_of_table(
    timers: Timers, rto: float, timeout: float | None
) -> tuple[list[float], Event]:
    t = table(timers=timers)
    txn = t.start(SERVER, 0.0, rto, timeout)
    times: list[float] = []
    finished: list[LeanBinding] = []
    while (timer := t.next_timer()) is not None:
        times.append(timer)
        _resend, done = t.handle_timer(timer)
        finished += done
    assert finished == [txn] and txn.done and not t.pending
    return times, txn.outcome()


@pytest.mark.parametrize(
    ("timers", "rto", "timeout"),
    [
        (Timers(), 0.5, None),  # 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, then 39.5
        (Timers(rc=3, rm=4), 0.05, None),
        (Timers(rc=1, rm=2), 0.3, None),
        (Timers(), 0.5, 2.0),  # a probe window cuts the schedule
        (Timers(), 0.1, 0.25),
    ],
)
def test_schedule_is_the_transactions(timers: Timers, rto: float, timeout: float | None) -> None:
    times, event = schedule_of_table(timers, rto, timeout)
    assert times == pytest.approx(schedule_of_transaction(timers, rto, timeout))
    assert isinstance(event, TimedOut)


def test_rfc_schedule_with_default_timers() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5)
    sent = [0.0]
    for deadline in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5):
        assert t.next_timer() == pytest.approx(deadline)
        resend, finished = t.handle_timer(deadline)
        assert resend == [txn] and not finished
        sent.append(deadline)
    assert t.next_timer() == pytest.approx(39.5)
    assert t.handle_timer(39.4) == ([], [])  # not yet
    resend, finished = t.handle_timer(39.5)
    assert finished == [txn] and txn.outcome() == TimedOut(sends=7)
    assert txn.sends == len(sent) == 7
    assert deliver(t, success(txn.tid), SERVER, 40.0) == "unmatched"  # late: forgotten


def test_one_timer_for_many_in_due_order_with_a_heap_for_the_unsorted() -> None:
    t = table(timers=Timers(rc=2, rm=1))
    slow = t.start(SERVER, 0.0, 1.0)  # due 1.0
    fast = t.start(SERVER, 0.125, 0.25)  # due 0.375: before the queue's tail, on the heap
    later = t.start(SERVER, 0.25, 1.0)  # due 1.25
    assert t.next_timer() == 0.375
    assert t.handle_timer(0.375) == ([fast], [])
    assert t.next_timer() == 0.625  # fast's last wait: Rm x RTO
    resend, finished = t.handle_timer(1.25)
    assert resend == [slow, later] and finished == [fast]
    t.cancel(slow)
    assert slow.done and slow.tid not in t.pending
    assert t.next_timer() == 2.25  # later's last wait; slow's entry is skipped
    assert t.handle_timer(10.0) == ([], [later])
    assert t.next_timer() is None and not t.pending


# ----------------------------------------------------------------------------- answers


def test_success_karn_and_the_rto_cache() -> None:
    cache = RtoCache(initial=0.5, min_rto=0.001)
    t = table(rto_cache=cache)
    txn = t.start(SERVER, 10.0, 0.5)
    assert deliver(t, success(txn.tid), SERVER, 10.02) is txn
    assert txn.done and txn.event is None and txn.rtt == pytest.approx(0.02)
    assert txn.attributes == {c.XOR_MAPPED_ADDRESS: MAPPED}
    event = txn.outcome()
    assert isinstance(event, SuccessResponse)
    assert event == SuccessResponse(c.decode(success(txn.tid)), SERVER)
    assert event.mapped == MAPPED and event.rtt == pytest.approx(0.02) and event.sends == 1
    assert cache.rto_for(SERVER.host, 10.1) < 0.5  # the sample was recorded
    # retransmitted: no RTT (Karn), nothing recorded
    again = t.start(SERVER, 20.0, 0.5)
    t.handle_timer(20.5)
    assert deliver(t, success(again.tid), SERVER, 20.6) is again
    assert again.rtt is None and again.sends == 2 and again.outcome().sends == 2  # type: ignore[union-attr]


class CountingCache(RtoCache):
    recorded: list[float]

    def record(self, ip: str, rtt: float, now: float) -> None:
        self.recorded.append(now)
        super().record(ip, rtt, now)


def test_rtt_samples_are_spaced() -> None:
    cache = CountingCache(initial=0.5, min_rto=0.001)
    recorded: list[float] = []
    cache.recorded = recorded
    t = table(rto_cache=cache)
    for i in range(5):
        txn = t.start(SERVER, i * 0.001, 0.5)
        deliver(t, success(txn.tid), SERVER, i * 0.001 + 0.0005)
    assert len(recorded) == 1  # five answers within 10 ms: one sample


def test_wrong_source_garbage_and_foreign_classes_are_dropped_and_it_keeps_waiting() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5)
    assert deliver(t, success(txn.tid), ("192.0.2.99", 3478), 0.01) is None
    assert deliver(t, success(txn.tid), (SERVER.host, 9999), 0.01) is None
    assert t.discarded == 2
    bad = bytearray(success(txn.tid))
    bad[-1] ^= 0xFF  # the mapped address changes: still well-formed
    assert deliver(t, bytes(bad[:21]), SERVER, 0.01) is None  # truncated: garbage
    assert deliver(t, success(txn.tid, fingerprint=True)[:-1] + b"\0", SERVER, 0.01) is None
    assert t.garbage == 2
    request = c.encode(c.Message(c.BINDING, c.REQUEST, txn.tid))
    indication = c.encode(c.Message(c.BINDING, c.INDICATION, txn.tid))
    other_method = c.encode(c.Message(0x003, c.SUCCESS, txn.tid))
    for data in (request, indication, other_method):
        assert deliver(t, data, SERVER, 0.01) is None
    assert not txn.done and txn.tid in t.pending
    assert deliver(t, success(txn.tid), SERVER, 0.02) is txn  # the real answer still counts


def test_duplicates_and_late_answers_are_ignored() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5)
    t.handle_timer(0.5)  # retransmitted: two answers may come
    assert deliver(t, success(txn.tid), SERVER, 0.6) is txn
    assert deliver(t, success(txn.tid), SERVER, 0.7) == "unmatched"
    assert t.receive(txn, success(txn.tid), SERVER, 0.7) is None  # even if handed over


def test_ipv6_sources_are_canonicalised() -> None:
    t = table()
    txn = t.start(SERVER6, 0.0, 0.5)
    data = success(txn.tid, {c.XOR_MAPPED_ADDRESS: c.Address("2001:db8::7", 1)})
    assert deliver(t, data, (SERVER6.host + "%eth0", SERVER6.port, 0, 2), 0.01) is txn
    assert txn.attributes is not None
    assert txn.attributes[c.XOR_MAPPED_ADDRESS] == c.Address("2001:db8::7", 1)
    assert txn.source == SERVER6


# ----------------------------------------------------------------------------- errors


def outcome_of_request(response: bytes) -> Event | None:
    req = StunRequest(
        c.BINDING,
        None,
        SERVER,
        auth=AuthSession(None),
        fingerprint=False,
        transaction_ids=lambda: bytes(12),
    )
    req.start(0.0)
    req.receive_datagram(response, SERVER, 0.01)
    return req.next_event()


UNKNOWN_REQUIRED: dict[int, object] = {0x0777: b"\0\0\0\0"}


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tid: error(tid, 400), ErrorResponse),
        (lambda tid: error(tid, 420, {c.UNKNOWN_ATTRIBUTES: (0x0777,)}), ErrorResponse),
        (lambda tid: error(tid, 401, {c.REALM: "r", c.NONCE: "n"}), AuthenticationFailed),
        (lambda tid: error(tid, 438), AuthenticationFailed),
        (
            lambda tid: error(tid, 300, {c.ALTERNATE_SERVER: c.Address("192.0.2.11", 1)}),
            TransactionFailed,
        ),
        (lambda tid: error(tid, None), TransactionFailed),
        (lambda tid: success(tid, UNKNOWN_REQUIRED), TransactionFailed),
        (lambda tid: error(tid, 400, UNKNOWN_REQUIRED), TransactionFailed),
    ],
)
def test_error_outcomes_are_the_requests(make: object, kind: type) -> None:
    """Same bytes, same outcome as the general ``StunRequest`` without credentials."""
    tid = bytes(12)
    t = BindingTable(random_bytes=lambda n: bytes(n))
    txn = t.start(SERVER, 0.0, 0.5)
    data = make(tid)  # type: ignore[operator]
    assert t.receive(txn, data, SERVER, 0.01) is txn
    expected = outcome_of_request(data)
    assert isinstance(txn.outcome(), kind) and txn.outcome() == expected
    assert expected is not None and txn.outcome().describe() == expected.describe()


def test_invalid_error_code_fails_the_transaction() -> None:
    t = BindingTable(random_bytes=lambda n: bytes(n))
    txn = t.start(SERVER, 0.0, 0.5)
    raw = bytearray(error(txn.tid, 400))
    raw[20 + 4 + 2] = 7  # class 7: not 3-6
    assert t.receive(txn, bytes(raw), SERVER, 0.01) is txn
    assert txn.outcome() == outcome_of_request(bytes(raw))
    assert isinstance(txn.outcome(), TransactionFailed)


def test_server_errors_are_retried_with_new_transactions_then_reported() -> None:
    t = table()
    first = t.start(SERVER, 0.0, 0.5)
    first.waiter = waiter = object()
    current = first
    for attempt in range(MAX_SERVER_ERROR_RETRIES):
        new = deliver(t, error(current.tid, 500), SERVER, 0.01 * (attempt + 1))
        assert isinstance(new, LeanBinding) and not new.done
        assert new.tid != current.tid and new.waiter is waiter and new.retries == attempt + 1
        assert current.tid not in t.pending and new.tid in t.pending
        assert c.decode(new.data).transaction_id == new.tid
        current = new
    last = deliver(t, error(current.tid, 503), SERVER, 0.1)
    assert last is current and current.done
    assert current.outcome() == ErrorResponse(503, "r", SERVER, c.decode(error(current.tid, 503)))
    assert deliver(t, success(first.tid), SERVER, 0.2) == "unmatched"  # earlier IDs are over


def test_server_error_retry_keeps_the_callers_time_limit() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5, timeout=1.0)
    new = deliver(t, error(txn.tid, 500), SERVER, 0.4)
    assert isinstance(new, LeanBinding) and new.limit == pytest.approx(1.0)
    resend, finished = t.handle_timer(0.9)
    assert resend == [new] and not finished
    resend, finished = t.handle_timer(1.0)
    assert finished == [new] and isinstance(new.outcome(), TimedOut)
    late = t.start(SERVER, 5.0, 0.5, timeout=0.1)
    assert deliver(t, error(late.tid, 500), SERVER, 5.2) is late  # past the limit: no retry
    assert isinstance(late.outcome(), TimedOut)
    chain = t.start(SERVER, 6.0, 0.5)
    retry = deliver(t, error(chain.tid, 500), SERVER, 6.1)
    t.cancel(chain)  # the caller holds the first: cancelling follows the chain
    assert isinstance(retry, LeanBinding) and retry.done and not t.pending


def test_fail_ends_a_transaction_at_once() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5)
    t.fail(txn, "cannot send: no route")
    assert txn.done and txn.outcome() == TransactionFailed("cannot send: no route")
    assert not t.pending and t.next_timer() is None
    with pytest.raises(LocalProtocolError):
        table().start(SERVER, 0.0, 0.5).outcome()


# ----------------------------------------------------------------------------- memo


def test_identical_responses_reuse_the_decoded_attributes() -> None:
    t = table()
    coturn_like: dict[int, object] = {
        c.MAPPED_ADDRESS: MAPPED,
        c.RESPONSE_ORIGIN: SERVER,
        c.SOFTWARE: "Coturn-4.6.1 'Gorst'",
    }
    answers = []
    for i in range(3):
        txn = t.start(SERVER, float(i), 0.5)
        assert deliver(t, success(txn.tid, coturn_like, fingerprint=True), SERVER, i + 0.01) is txn
        answers.append(txn)
    _first, second, third = answers
    assert second.attributes is third.attributes  # the memo's (read-only) dict
    for txn in answers:
        full = c.decode(success(txn.tid, coturn_like, fingerprint=True))
        msg = txn.response_message()
        assert msg == full and msg.fingerprint and msg.transaction_id == txn.tid
        assert msg.has_integrity is False and msg.unknown_required == ()
    # memo hits build a message with its own copy, for the caller to keep
    assert second.response_message().attributes is not second.attributes
    # a corrupted FINGERPRINT is caught on the memo path too
    txn = t.start(SERVER, 9.0, 0.5)
    bad = bytearray(success(txn.tid, coturn_like, fingerprint=True))
    bad[-1] ^= 1
    assert deliver(t, bytes(bad), SERVER, 9.01) is None and t.garbage == 1
    # something else where FINGERPRINT was: parsed properly (and rejected: unknown attribute)
    other = bytearray(success(txn.tid, coturn_like, fingerprint=True))
    other[-8:-4] = b"\x80\x55\x00\x04"  # an unknown comprehension-optional attribute
    assert deliver(t, bytes(other), SERVER, 9.02) is txn
    assert txn.attributes is not None and txn.attributes[0x8055] == bytes(other[-4:])


def test_ipv6_xor_addresses_are_never_memoised() -> None:
    """XOR-MAPPED-ADDRESS of IPv6 is XORed with the transaction ID: equal bytes under two IDs
    are two different addresses."""
    t = table()
    a = t.start(SERVER6, 0.0, 0.5)
    b = t.start(SERVER6, 0.0, 0.5)
    mapped6 = c.Address("2001:db8::7", 1)
    data_a = success(a.tid, {c.XOR_MAPPED_ADDRESS: mapped6})
    data_b = data_a[:8] + b.tid + data_a[20:]  # the same attribute bytes under b's ID
    assert deliver(t, data_a, SERVER6, 0.1) is a
    assert deliver(t, data_b, SERVER6, 0.1) is b
    assert a.attributes is not None and b.attributes is not None
    assert a.attributes[c.XOR_MAPPED_ADDRESS] == mapped6
    assert b.attributes[c.XOR_MAPPED_ADDRESS] == c.decode(data_b).xor_mapped_address
    assert b.attributes[c.XOR_MAPPED_ADDRESS] != mapped6


def test_len_iter_and_repr() -> None:
    t = table()
    txn = t.start(SERVER, 0.0, 0.5)
    assert len(t) == 1 and list(t) == [txn]
    assert txn.tid.hex() in repr(txn) and "due" in repr(txn)
    t.cancel(txn)
    assert "done" in repr(txn) and len(t) == 0


def test_rto_hints_follow_the_samples() -> None:
    cache = RtoCache(initial=0.5, min_rto=0.001)
    t = table(rto_cache=cache)
    assert t.rto_hints == {}
    txn = t.start(SERVER, 10.0, 0.5)
    deliver(t, success(txn.tid), SERVER, 10.02)
    rto, until = t.rto_hints[SERVER.host]
    assert rto == cache.rto_for(SERVER.host, 10.02) < 0.5
    assert until == pytest.approx(11.02)  # trusted for a second after the sample
