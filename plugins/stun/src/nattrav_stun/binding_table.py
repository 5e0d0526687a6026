"""Many unauthenticated Binding transactions over UDP at once, sans-IO (RFC 8489 §6.2.1, §6.3).

Theory of operation
-------------------
``StunRequest`` (transaction.py) is the general client procedure: signing, challenges,
redirects, TCP/TLS, RFC 5780 probes. Most STUN traffic is none of that: a plain Binding
request to an IP address over UDP, answered by a success with XOR-MAPPED-ADDRESS. For that
case one object per transaction plus one shared table is enough, and the difference matters
when a client runs thousands of them (ICE gathering, keepalives, the benchmarks):

* requests come from a template: the 20-byte header (the transaction ID fresh for each, from
  the OS CSPRNG), then the fixed attributes (SOFTWARE), then FINGERPRINT when configured;
* ``pending`` maps transaction ID to transaction; the driver's socket reader looks a datagram
  up there and hands it to ``receive``, which decodes it with the full codec and applies the
  same checks as ``StunTransaction``/``StunRequest`` without credentials: a response (not a
  request or indication) of the Binding method, from the address the request went to; an
  unknown comprehension-required attribute fails the transaction; error responses end as
  the general path ends them (401/438: authentication needed; 300: not followed, since it
  cannot be authenticated; 5xx: retried with a new transaction, at most four times;
  anything else: ``ErrorResponse``). Garbage and wrong sources are counted and dropped, and
  the transaction keeps waiting;
* one timer serves the whole table: transactions sit in a queue in the order they fall due
  (starting them in time order keeps it sorted; an entry that would not be, such as one
  with a shorter RTO, goes to a small heap instead). ``next_timer()`` is the earliest due
  time, ``handle_timer(now)`` returns what to retransmit and what timed out. Finished
  transactions are left in the queue and skipped when they reach its head (and popped at
  once in the common case of answers arriving in order), so answering costs no search;
* the schedule is exactly ``StunTransaction``'s: sends at 0, RTO, 3 RTO ... until Rc
  requests, then Rm x RTO more (a caller's ``timeout`` cuts it short), each retransmission
  timed from when it was made. ``rtt`` is measured only for a transaction sent once
  (Karn's rule); the driver feeds it to its ``RtoCache``.

Nothing here reads a clock or touches a socket: ``now`` is an argument everywhere and the
caller sends ``data`` to ``destination``. The tests drive it with a fake clock.
"""

from __future__ import annotations

import heapq
import math
import secrets
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from nattrav.errors import LocalProtocolError, ParseError

from nattrav_stun.auth import AuthSession, Signing
from nattrav_stun.codec import (
    BINDING,
    ERROR_CODE,
    REQUEST,
    SOFTWARE,
    STUN_ATTRIBUTES,
    SUCCESS,
    Address,
    AttributeTable,
    Message,
    attribute_name,
    decode,
    encode,
)
from nattrav_stun.events import (
    AuthenticationFailed,
    ErrorResponse,
    Event,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)
from nattrav_stun.transaction import RtoCache, Timers

__all__ = ["BindingTable", "LeanBinding"]

_INF = math.inf
_crc32 = zlib.crc32
_NO_SIGNING = Signing()
#: The RTO cache gets one round-trip sample per table this often at most.
RTT_SAMPLE_SPACING = 0.01
#: How long ``rto_hints`` stand in for the RTO cache after a sample.
RTO_HINT_LIFE = 1.0
#: How many times a 5xx answer is retried with a new transaction (RFC 8489 §6.3.4: at most 4,
#: as ``StunRequest``).
MAX_SERVER_ERROR_RETRIES = 4


class LeanBinding:
    """One Binding transaction of a ``BindingTable``.

    The driver sends ``data`` to ``destination`` when the table says so and reads the outcome
    once ``done``: for a success ``event`` stays ``None`` and ``attributes`` (the response's
    decoded attributes: read them, do not change them) is set, so a success costs no event or
    message object unless ``outcome()`` or ``response_message()`` asks for one; ``event`` is
    the outcome otherwise. Answers come only from ``destination`` (``source`` says so).
    ``waiter`` is the driver's, untouched here. A 5xx retry replaces the transaction with a
    new one (new ID) that inherits the waiter; ``receive`` returns it.
    """

    __slots__ = (
        "answer",
        "attributes",
        "data",
        "deadline",
        "destination",
        "done",
        "due",
        "earlier_sends",
        "event",
        "first_sent",
        "interval",
        "limit",
        "next_send",
        "response",
        "retries",
        "rto",
        "rtt",
        "sends",
        "successor",
        "tid",
        "waiter",
    )

    def __init__(self, tid: bytes, data: bytes, destination: Address, rto: float) -> None:
        self.tid = tid
        self.data = data
        self.destination = destination
        self.rto = rto
        self.interval = rto
        self.sends = 0
        self.earlier_sends = 0
        self.retries = 0
        self.first_sent = 0.0
        self.next_send = _INF
        self.deadline = _INF
        self.due = _INF
        #: when the caller's timeout ends the whole Binding (retries included), or None
        self.limit: float | None = None
        self.done = False
        self.event: Event | None = None
        self.attributes: dict[int, Any] | None = None
        self.response: bytes | None = None
        #: the decoded response, or the memo that decodes it on demand
        self.answer: Message | _Memo | None = None
        self.rtt: float | None = None
        self.waiter: Any = None
        #: the transaction that replaced this one after a 5xx (``cancel`` follows the chain)
        self.successor: LeanBinding | None = None

    @property
    def total_sends(self) -> int:
        """Requests sent for this Binding, over every transaction (5xx retries included)."""
        return self.earlier_sends + self.sends

    @property
    def source(self) -> Address:
        """Where the response came from: ``receive`` accepts answers from the destination
        only."""
        return self.destination

    def response_message(self) -> Message:
        """The success response as a ``Message`` (built on demand after a memo hit)."""
        answer = self.answer
        if type(answer) is _Memo:
            assert self.response is not None
            answer = self.answer = answer.message(self.response)
        if not isinstance(answer, Message):
            raise LocalProtocolError("the Binding transaction has no success response")
        return answer

    def outcome(self) -> Event:
        """The event ``StunRequest`` would have produced (builds the ``SuccessResponse``)."""
        if self.event is not None:
            return self.event
        if not self.done:
            raise LocalProtocolError("the Binding transaction has not finished")
        return SuccessResponse(self.response_message(), self.source, False, self.rtt, self.sends)

    def __repr__(self) -> str:
        state = "done" if self.done else f"due {self.due:.3f}"
        return f"LeanBinding({self.tid.hex()} to {self.destination}, sends={self.sends}, {state})"


class BindingTable:
    """Outstanding unauthenticated Binding transactions of one UDP socket (sans-IO).

    ``software``/``fingerprint``/``table``: what every request carries and how responses are
    decoded (the client's settings). ``random_bytes(n)``: n bytes from a CSPRNG (the
    transaction IDs, RFC 8489 §5; drawn 256 IDs at a time: one system call per request
    measurably slows a busy client, and the bits are just as random).
    """

    def __init__(
        self,
        *,
        timers: Timers | None = None,
        software: str | None = None,
        fingerprint: bool = False,
        table: AttributeTable = STUN_ATTRIBUTES,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        rto_cache: RtoCache | None = None,
    ) -> None:
        timers = timers or Timers()
        self.rc = timers.rc
        self.rm = timers.rm
        self.table = table
        self.fingerprint = fingerprint
        self.random_bytes = random_bytes
        #: fed with round-trip samples of answered transactions (Karn's rule applies)
        self.rto_cache = rto_cache
        #: host -> (the cache's RTO just after this table's last sample, valid until): saves
        #: the driver a cache lookup per transaction while samples keep coming
        self.rto_hints: dict[str, tuple[float, float]] = {}
        self._next_sample = -math.inf
        self._ids: list[bytes] = []
        self.pending: dict[bytes, LeanBinding] = {}
        self._queue: deque[LeanBinding] = deque()
        self._heap: list[tuple[float, int, LeanBinding]] = []
        self._seq = 0
        self._anonymous = AuthSession(None)
        self._memo: _Memo | None = None
        # Counters (garbage is counted, never raised: DESIGN.md §2).
        self.garbage = 0
        self.discarded = 0
        # The template: a request's bytes are head + ID + tail (+ FINGERPRINT).
        attributes = {SOFTWARE: software} if software else {}
        sample = encode(
            Message(BINDING, REQUEST, bytes(12), attributes), fingerprint=fingerprint, table=table
        )
        self._head = sample[:8]
        self._tail = sample[20 : len(sample) - 8] if fingerprint else sample[20:]

    def __len__(self) -> int:
        return len(self.pending)

    def __iter__(self) -> Iterator[LeanBinding]:
        return iter(list(self.pending.values()))

    # ---------------------------------------------------------------- requests

    def new_tid(self) -> bytes:
        """A fresh transaction ID."""
        ids = self._ids
        if not ids:
            pool = self.random_bytes(12 * 256)
            if len(pool) != 12 * 256:
                raise LocalProtocolError("random_bytes returned the wrong number of bytes")
            ids += _SPLIT_IDS(pool)
        return ids.pop()

    def start(
        self, destination: Address, now: float, rto: float, timeout: float | None = None
    ) -> LeanBinding:
        """A new transaction, sent now: the caller sends ``txn.data`` to ``destination``."""
        # The hot path of a busy client: the fields are set here rather than through
        # LeanBinding.__init__ and _begin (two calls fewer); _retry takes the long way.
        if rto <= 0:
            raise LocalProtocolError("rto must be > 0")
        ids = self._ids
        tid = ids.pop() if ids else self.new_tid()
        data = self._head + tid + self._tail
        if self.fingerprint:
            data = encode_fingerprint(data)
        txn: LeanBinding = _new_object(LeanBinding)
        txn.tid = tid
        txn.data = data
        txn.destination = destination
        txn.rto = rto
        txn.sends = 1
        txn.earlier_sends = txn.retries = 0
        txn.first_sent = now
        txn.done = False
        txn.event = txn.attributes = txn.response = txn.answer = None
        txn.rtt = txn.waiter = txn.successor = None
        if self.rc > 1:
            txn.next_send = due = now + rto
            txn.interval = rto + rto
            txn.deadline = _INF
        else:
            txn.next_send = _INF
            txn.interval = rto
            txn.deadline = due = now + self.rm * rto
        if timeout is None:
            txn.limit = None
        else:
            txn.limit = limit = now + timeout
            if limit < txn.deadline:
                txn.deadline = limit
            if txn.next_send >= txn.deadline:
                txn.next_send = _INF
            due = txn.next_send if txn.next_send < txn.deadline else txn.deadline
        txn.due = due
        self.pending[tid] = txn
        queue = self._queue
        if not queue or due >= queue[-1].due:
            queue.append(txn)
        else:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, txn))
        return txn

    def _begin(self, txn: LeanBinding, now: float) -> None:
        txn.first_sent = now
        txn.sends = 1
        self._schedule(txn, now)

    def _schedule(self, txn: LeanBinding, now: float) -> None:
        """After send number ``txn.sends`` at ``now``: when to send again, or (after the
        last of ``rc`` sends) when to give up; ``timeout`` caps both. (``start`` inlines the
        first send's case for speed.)"""
        if txn.sends < self.rc:
            txn.next_send = now + txn.interval
            txn.interval *= 2
        else:
            txn.next_send = _INF
            txn.deadline = now + self.rm * txn.rto
        limit = txn.limit
        if limit is not None:
            if limit < txn.deadline:
                txn.deadline = limit
            if txn.next_send >= txn.deadline:
                txn.next_send = _INF
        txn.due = min(txn.next_send, txn.deadline)
        self._enqueue(txn)

    def _enqueue(self, txn: LeanBinding) -> None:
        queue = self._queue
        if not queue or txn.due >= queue[-1].due:
            queue.append(txn)
        else:
            self._seq += 1
            heapq.heappush(self._heap, (txn.due, self._seq, txn))

    def cancel(self, txn: LeanBinding) -> None:
        """The caller lost interest: forget the transaction (and any retry of it), without
        an event."""
        while txn.successor is not None:
            txn = txn.successor
        if not txn.done:
            txn.done = True
            self.pending.pop(txn.tid, None)

    def fail(self, txn: LeanBinding, reason: str) -> None:
        """A hard local error (the request could not be sent): the transaction failed."""
        if not txn.done:
            self._finish(txn, TransactionFailed(reason))

    def _finish(self, txn: LeanBinding, event: Event | None) -> None:
        txn.done = True
        txn.event = event
        self.pending.pop(txn.tid, None)
        queue = self._queue
        if queue and queue[0] is txn:  # answers mostly come in order: keep the queue short
            queue.popleft()

    # ---------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """When ``handle_timer`` must run next (``None``: nothing outstanding)."""
        queue = self._queue
        while queue and queue[0].done:
            queue.popleft()
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        if queue:
            if heap and heap[0][0] < queue[0].due:
                return heap[0][0]
            return queue[0].due
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> tuple[list[LeanBinding], list[LeanBinding]]:
        """Retransmit or time out what is due at ``now``: returns (to send again, finished)."""
        resend: list[LeanBinding] = []
        finished: list[LeanBinding] = []
        queue = self._queue
        while queue:
            txn = queue[0]
            if not txn.done and txn.due > now:
                break
            queue.popleft()
            if not txn.done:
                self._fire(txn, now, resend, finished)
        heap = self._heap
        while heap:
            due, _seq, txn = heap[0]
            if not txn.done and due > now:
                break
            heapq.heappop(heap)
            if not txn.done:
                self._fire(txn, now, resend, finished)
        return resend, finished

    def _fire(
        self, txn: LeanBinding, now: float, resend: list[LeanBinding], finished: list[LeanBinding]
    ) -> None:
        if now >= txn.deadline:
            txn.done = True
            txn.event = TimedOut(txn.sends, now - txn.first_sent)
            self.pending.pop(txn.tid, None)
            finished.append(txn)
            return
        if now >= txn.next_send:
            txn.sends += 1
            resend.append(txn)
            self._schedule(txn, now)
            return
        txn.due = min(txn.next_send, txn.deadline)
        self._enqueue(txn)

    # ---------------------------------------------------------------- responses

    def receive(
        self, txn: LeanBinding, data: bytes, source: tuple[Any, ...], now: float
    ) -> LeanBinding | None:
        """A datagram whose transaction ID is ``txn``'s (the caller looked it up in
        ``pending``). Returns ``txn`` when it finished (``done``), a *new* transaction to send
        at once when a 5xx is retried, or ``None`` when the datagram was ignored or discarded
        (the transaction goes on waiting)."""
        if txn.done:
            return None
        memo = self._memo
        if (
            memo is not None
            and data[20 : memo.end] == memo.body
            and data[:8] == memo.head
            and (not memo.fingerprint or data[-8:-4] == b"\x80\x28\x00\x04")
        ):
            # The same bytes as the last success but for the ID (see ``_Memo``): the same
            # attributes, a Binding success without unknown comprehension-required ones.
            if memo.fingerprint and int.from_bytes(data[-4:]) != (_crc32(data[:-8]) ^ 0x5354554E):
                self.garbage += 1
                return None
            if len(source) != 2:  # IPv6: (host, port, flowinfo, scope_id), maybe "%zone"
                source = (source[0].split("%", 1)[0], source[1])
            if source != txn.destination:
                self.discarded += 1  # S8: not from where the request went
                return None
            if txn.sends == 1:  # Karn: only unambiguous samples
                txn.rtt = rtt = now - txn.first_sent if now > txn.first_sent else 0.0
                if now >= self._next_sample and self.rto_cache is not None:
                    self._sample(txn.destination[0], rtt, now)
            txn.attributes = memo.attributes
            txn.response = data
            txn.answer = memo
            txn.done = True  # _finish, inline
            del self.pending[txn.tid]
            queue = self._queue
            if queue and queue[0] is txn:
                queue.popleft()
            return txn
        try:
            msg = decode(data, self.table)
        except ParseError:
            self.garbage += 1
            return None
        if msg.cls < SUCCESS or msg.method != BINDING:
            return None  # a request or indication that reuses our ID, or another method
        if msg.cls is SUCCESS:
            self._memo = _Memo.of(msg, data, self.table) or self._memo
        if len(source) != 2:
            source = (source[0].split("%", 1)[0], source[1])
        if source != txn.destination:
            self.discarded += 1  # S8: not from where the request went
            return None
        if txn.sends == 1:
            txn.rtt = rtt = max(0.0, now - txn.first_sent)  # Karn: only unambiguous samples
            if now >= self._next_sample and self.rto_cache is not None:
                self._sample(txn.destination[0], rtt, now)  # any answer times the path
        if msg.unknown_required:
            names = ", ".join(attribute_name(t, self.table) for t in msg.unknown_required)
            self._finish(
                txn,
                TransactionFailed(
                    f"response carries unknown comprehension-required "
                    f"attribute(s) {names} (RFC 8489 §6.3)"
                ),
            )
            return txn
        if msg.cls is SUCCESS:
            txn.answer = msg
            txn.attributes = msg.attributes
            txn.response = data
            self._finish(txn, None)
            return txn
        return self._error(txn, msg, now)

    def _sample(self, host: str, rtt: float, now: float) -> None:
        """Feed the RTO cache a round-trip sample, at most one per ``RTT_SAMPLE_SPACING``
        (a busy client has far more samples than an estimate needs; RFC 6298 asks for one
        per round trip)."""
        cache = self.rto_cache
        assert cache is not None
        self._next_sample = now + RTT_SAMPLE_SPACING
        cache.record(host, rtt, now)
        self.rto_hints[host] = (cache.rto_for(host, now), now + RTO_HINT_LIFE)

    def _error(self, txn: LeanBinding, msg: Message, now: float) -> LeanBinding | None:
        error = msg.get(ERROR_CODE)
        if error is None:
            self._finish(txn, TransactionFailed("error response without ERROR-CODE (§6.3.4)"))
            return txn
        if not error.valid:
            self._finish(
                txn, TransactionFailed(f"error response with an invalid ERROR-CODE: {error.reason}")
            )
            return txn
        code = error.code
        if code in (401, 438):
            reason = self._anonymous.on_challenge(msg, _NO_SIGNING)
            self._finish(txn, AuthenticationFailed(reason or "server demands authentication", code))
            return txn
        if 500 <= code <= 599 and txn.retries < MAX_SERVER_ERROR_RETRIES:
            return self._retry(txn, now)
        if code == 300:
            self._finish(
                txn,
                TransactionFailed(
                    "300 Try Alternate without valid message integrity: not followed (§14.8)"
                ),
            )
            return txn
        self._finish(txn, ErrorResponse(code, error.reason, txn.destination, msg, False))
        return txn

    def _retry(self, txn: LeanBinding, now: float) -> LeanBinding:
        """§6.3.4: a 5xx may be retried; a new transaction (new ID, fresh schedule) inherits
        the caller's time limit and the waiter."""
        if txn.limit is not None and now >= txn.limit:
            self._finish(txn, TimedOut(txn.total_sends, 0.0))
            return txn
        self._finish(txn, None)
        tid = self.new_tid()
        data = self._head + tid + self._tail
        if self.fingerprint:
            data = encode_fingerprint(data)
        new = LeanBinding(tid, data, txn.destination, txn.rto)
        new.waiter = txn.waiter
        new.retries = txn.retries + 1
        new.earlier_sends = txn.total_sends
        new.limit = txn.limit
        txn.successor = new
        self.pending[tid] = new
        self._begin(new, now)
        return new


class _Memo:
    """The last success response decoded, for the next one with the same bytes.

    A server answers every Binding from one socket with the same bytes but for the
    transaction ID (and FINGERPRINT, which covers it): XOR-MAPPED-ADDRESS of IPv4 is XORed
    with the magic cookie only. When the header (type, length, cookie) and the attributes
    before FINGERPRINT are the same bytes as last time, ``decode`` would return the same
    attributes, so they are copied instead of parsed again; FINGERPRINT is still checked.
    Only messages whose every value is independent of the transaction ID are kept (no
    IPv6 XOR address, no attribute a table decoder might read the ID for, no integrity).
    """

    __slots__ = ("attributes", "body", "end", "fingerprint", "head")

    def __init__(self, data: bytes, attributes: dict[int, Any], fingerprint: bool) -> None:
        self.head = data[:8]
        # data[20:end] is what must match: all but FINGERPRINT (equal bodies, equal lengths)
        self.end = -8 if fingerprint else None
        self.body = data[20 : self.end]
        self.attributes = attributes
        self.fingerprint = fingerprint

    @classmethod
    def of(cls, msg: Message, data: bytes, table: AttributeTable) -> _Memo | None:
        if msg.has_integrity or msg.has_integrity_sha256 or msg.unknown_required:
            return None
        inline = table.inline
        for attr_type, value in msg.attributes.items():
            kind = inline.get(attr_type, 0)
            if not 1 <= kind <= 6 or (kind == 1 and value.family != 4):
                return None  # a table decoder, or an IPv6 XOR address: may use the ID
        return cls(data, dict(msg.attributes), msg.fingerprint)

    def message(self, data: bytes) -> Message:
        """The ``Message`` ``decode(data)`` gives for ``data`` that matched this memo."""
        msg: Message = _new_object(Message)
        msg.method = BINDING
        msg.cls = SUCCESS
        msg.transaction_id = data[8:20]
        msg.attributes = self.attributes.copy()
        msg._wire = (data, -1, -1, self.fingerprint, ())
        return msg


_new_object = object.__new__
_SPLIT_IDS = struct.Struct("12s" * 256).unpack  # 256 transaction IDs out of one draw


def encode_fingerprint(data: bytes) -> bytes:
    """``data`` (a whole message without FINGERPRINT) with FINGERPRINT appended (§14.7)."""
    head = data[:2] + (len(data) - 12).to_bytes(2, "big") + data[4:]
    return head + b"\x80\x28\x00\x04" + (_crc32(head) ^ 0x5354554E).to_bytes(4, "big")
