"""STUN transactions as sans-IO state machines (RFC 8489 §6.2, §6.3, §9, §10).

Theory of operation
-------------------
Nothing here touches a socket or a clock. A caller (the driver, or a test with a fake clock)
feeds time and datagrams in and takes datagrams and events out::

    txn.start(now)
    loop:
        send every (data, address) in txn.datagrams_to_send()
        if (event := txn.next_event()) is not None: done
        wait until txn.get_timer() or a datagram arrives:
            txn.receive_datagram(data, source, now)   # or receive_message(msg, ...)
            txn.handle_timer(now)                     # when the timer fired

``StunTransaction`` is one transaction ID. Over UDP it retransmits after RTO, 2 RTO, 4 RTO...
until Rc requests were sent, then waits Rm x RTO (§6.2.1: with RTO 500 ms, sends at 0, 0.5,
1.5, 3.5, 7.5, 15.5 and 31.5 s, timeout at 39.5 s). Over TCP/TLS it sends once and waits Ti
(§6.2.2). An optional ``timeout`` cuts the schedule short: RFC 5780 probes that expect *no*
answer use a window of a few hundred milliseconds, not 39.5 s. A response counts only if its
transaction ID matches, it comes from the address the request went to (unless the caller
widens that, as CHANGE-REQUEST tests must), it is a response of the request's method, and it
passes the integrity check of a signed request. Anything else is discarded and retransmission
goes on; if responses were discarded for integrity and nothing acceptable arrived, the end is
``IntegrityViolated``, not ``TimedOut``. The round-trip time is kept only when the request was
sent once (Karn's rule), for the per-server ``RtoCache``.

``StunRequest`` is the client procedure on top: it signs each attempt through an
``AuthSession``, starts a new transaction (new ID) after a 401/438 challenge or a 5xx (both
bounded), checks unknown comprehension-required attributes and ERROR-CODE validity, and
validates a 300 redirect (authenticated, same family, no loopback/link-local unless the server
itself is) before reporting ``Redirected``.

``RtoCache`` holds smoothed RTT estimates per server IP (RFC 6298 arithmetic, 1 ms accuracy,
forgotten after 10 idle minutes, §6.2.1). The driver owns one; there is no global state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from nattrav.addresses import AddressScope, scope_of
from nattrav.errors import LocalProtocolError, ParseError

from nattrav_stun.auth import AuthSession, IntegrityCheck, Signing, Verdict
from nattrav_stun.codec import (
    ALTERNATE_DOMAIN,
    ALTERNATE_SERVER,
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
    new_transaction_id,
)
from nattrav_stun.events import (
    AuthenticationFailed,
    ErrorResponse,
    Event,
    IntegrityViolated,
    Redirected,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)

__all__ = [
    "ANY_SOURCE",
    "RtoCache",
    "StunRequest",
    "StunTransaction",
    "Timers",
]

#: ``accept_from`` value that accepts responses from any source address.
ANY_SOURCE = None

NO_SIGNING = Signing()


@attrs.frozen
class Timers:
    """Retransmission parameters (RFC 8489 §6.2): all configurable, RFC values by default.

    ``rto``: initial retransmission timeout; ``rc``: requests sent in total over UDP; ``rm``:
    the last wait is ``rm`` x ``rto``; ``ti``: the TCP/TLS transaction timeout.
    """

    rto: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    rc: int = attrs.field(default=7, validator=attrs.validators.ge(1))
    rm: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    ti: float = attrs.field(default=39.5, validator=attrs.validators.gt(0))

    def with_rto(self, rto: float) -> Timers:
        return attrs.evolve(self, rto=rto)


class _State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    DONE = "done"


_DEFAULT_TIMERS = Timers()


def _canonical(address: tuple[str, int]) -> Address:
    host, port = address[0], address[1]
    return Address(host.split("%", 1)[0], int(port))


class StunTransaction:
    """One request, one transaction ID, its retransmissions and its outcome (sans-IO).

    ``request`` is a ``Message`` (encoded here, unsigned, no FINGERPRINT) or already-encoded
    bytes. ``accept_from``: the address responses must come from (default ``destination``;
    ``ANY_SOURCE`` for CHANGE-REQUEST probes). ``check``: the integrity rule of a signed
    request. ``accept``: an extra filter (the nonce-cookie rule of ``AuthSession.accept``).
    """

    __slots__ = (
        "_data",
        "_deadline",
        "_event",
        "_first_sent",
        "_interval",
        "_last_integrity_detail",
        "_next_send",
        "_outbox",
        "_started",
        "_state",
        "accept",
        "accept_from",
        "check",
        "destination",
        "discarded",
        "integrity_failures",
        "method",
        "rc",
        "reliable",
        "rm",
        "rto",
        "rtt",
        "sends",
        "table",
        "ti",
        "timeout",
        "transaction_id",
    )

    def __init__(
        self,
        request: Message | bytes,
        destination: tuple[str, int],
        *,
        timers: Timers | None = None,
        rto: float | None = None,
        rc: int | None = None,
        rm: int | None = None,
        reliable: bool = False,
        timeout: float | None = None,
        accept_from: tuple[str, int] | str | None = "destination",
        check: IntegrityCheck | None = None,
        accept: Callable[[Message], bool] | None = None,
        table: AttributeTable = STUN_ATTRIBUTES,
    ) -> None:
        # One is built per request: keep this lean (no validators, no copies).
        if isinstance(request, Message):
            self.method = request.method
            self.transaction_id = request.transaction_id
            self._data = encode(request, table=table)
        else:
            data = request if type(request) is bytes else bytes(request)
            if len(data) < 20:
                raise LocalProtocolError("request bytes shorter than a STUN header")
            self._data = data
            mtype = (data[0] << 8) | data[1]
            self.method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
            self.transaction_id = data[8:20]
        t = _DEFAULT_TIMERS if timers is None else timers
        self.rto = t.rto if rto is None else rto
        self.rc = t.rc if rc is None else rc
        self.rm = t.rm if rm is None else rm
        self.ti = t.ti
        if self.rto <= 0 or self.rc < 1 or self.rm < 1:
            raise LocalProtocolError("rto must be > 0, rc and rm >= 1")
        dest = destination if type(destination) is Address else _canonical(destination)
        self.destination = dest
        if accept_from == "destination":
            self.accept_from: Address | None = dest
        elif accept_from is None:
            self.accept_from = None
        elif isinstance(accept_from, tuple):
            self.accept_from = _canonical(accept_from)
        else:
            raise LocalProtocolError(f"accept_from: {accept_from!r}")
        self.reliable = reliable
        self.timeout = timeout
        self.check = check
        self.accept = accept
        self.table = table
        self.sends = 0
        self.discarded = 0  # responses dropped by checks (integrity, source, filter)
        self.integrity_failures = 0
        self.rtt: float | None = None
        self._last_integrity_detail = ""
        self._state = _State.IDLE
        self._started = 0.0
        self._next_send: float | None = None
        self._interval = self.rto
        self._deadline = 0.0
        self._outbox: list[tuple[bytes, Address]] = []
        self._event: Event | None = None
        self._first_sent = 0.0

    # ---------------------------------------------------------------- lifecycle

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def start(self, now: float) -> None:
        """Send the request (it appears in ``datagrams_to_send``) and arm the timer."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError("transaction already started")
        self._state = _State.WAITING
        self._started = now
        self._send(now)
        if self.reliable:
            self._next_send = None
            self._deadline = now + self.ti
        else:
            self._schedule_after_send(now)
        if self.timeout is not None:
            self._deadline = min(self._deadline, now + self.timeout)
            if self._next_send is not None and self._next_send >= self._deadline:
                self._next_send = None

    def _send(self, now: float) -> None:
        self.sends += 1
        if self.sends == 1:
            self._first_sent = now
        self._outbox.append((self._data, self.destination))

    def _schedule_after_send(self, now: float) -> None:
        if self.sends < self.rc:
            self._next_send = now + self._interval
            self._interval *= 2
            self._deadline = float("inf")
        else:
            self._next_send = None
            self._deadline = now + self.rm * self.rto

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Datagrams due now (the request, or a retransmission). Drains the queue."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (``None``: nothing scheduled)."""
        if self._state is not _State.WAITING:
            return None
        if self._next_send is not None:
            return min(self._next_send, self._deadline)
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit or time out, whichever is due at ``now``."""
        if self._state is not _State.WAITING:
            return
        if now >= self._deadline:
            self._finish_without_answer(now)
            return
        if self._next_send is not None and now >= self._next_send:
            self._send(now)
            self._schedule_after_send(now)
            if self.timeout is not None:
                self._deadline = min(self._deadline, self._started + self.timeout)
                if self._next_send is not None and self._next_send >= self._deadline:
                    self._next_send = None

    def _finish_without_answer(self, now: float) -> None:
        if self.integrity_failures:
            self._complete(
                IntegrityViolated(self.sends, self.integrity_failures, self._last_integrity_detail)
            )
        else:
            self._complete(TimedOut(self.sends, now - self._started))

    def transport_failed(self, reason: str) -> None:
        """The connection broke or a hard ICMP error arrived: the transaction failed."""
        if self._state is _State.WAITING:
            self._complete(TransactionFailed(reason))

    def cancel(self) -> None:
        """Stop without an event (the caller lost interest)."""
        self._state = _State.DONE

    def _complete(self, event: Event) -> None:
        self._state = _State.DONE
        self._next_send = None
        self._event = event

    def next_event(self) -> Event | None:
        """The outcome, once (then ``None``)."""
        event, self._event = self._event, None
        return event

    # ---------------------------------------------------------------- responses

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> bool:
        """Decode and process a datagram; ``False`` when it is not for this transaction."""
        try:
            msg = decode(data, self.table)
        except ParseError:
            return False
        return self.receive_message(msg, source, now)

    def receive_message(self, msg: Message, source: tuple[str, int], now: float) -> bool:
        """Process a decoded message. ``True`` when it was consumed by this transaction (an
        acceptable response, or one discarded by a check); ``False`` when it is unrelated or
        arrived after the transaction ended (a late duplicate: ignored, RFC 8489 §6.3)."""
        if msg.transaction_id != self.transaction_id or self._state is not _State.WAITING:
            return False
        if msg.cls < SUCCESS or msg.method != self.method:
            return False
        if self.accept_from is not None:
            src = source if type(source) is Address else _canonical(source)
            if src != self.accept_from:
                self.discarded += 1  # S8: not from where the request went
                return True
        authenticated = False
        if self.check is not None:
            verdict = self.check.verdict(msg)
            if verdict is Verdict.DISCARD:
                self.discarded += 1
                self.integrity_failures += 1
                self._last_integrity_detail = _integrity_detail(msg)
                if self.reliable:  # §9.1.4/§9.2.5: over TCP the transaction ends at once
                    self._complete(
                        IntegrityViolated(
                            self.sends, self.integrity_failures, self._last_integrity_detail
                        )
                    )
                return True
            authenticated = verdict is Verdict.AUTHENTICATED
        if self.accept is not None and not self.accept(msg):
            self.discarded += 1
            return True
        if self.sends == 1:
            self.rtt = max(0.0, now - self._first_sent)  # Karn: only unambiguous samples
        src_address = source if type(source) is Address else _canonical(source)
        if msg.unknown_required:
            names = ", ".join(attribute_name(t, self.table) for t in msg.unknown_required)
            self._complete(
                TransactionFailed(
                    f"response carries unknown comprehension-required "
                    f"attribute(s) {names} (RFC 8489 §6.3)"
                )
            )
            return True
        if msg.cls == SUCCESS:
            self._complete(SuccessResponse(msg, src_address, authenticated, self.rtt, self.sends))
            return True
        error = msg.get(ERROR_CODE)
        if error is None:
            self._complete(TransactionFailed("error response without ERROR-CODE (§6.3.4)"))
        elif not error.valid:
            self._complete(
                TransactionFailed(f"error response with an invalid ERROR-CODE: {error.reason}")
            )
        else:
            self._complete(ErrorResponse(error.code, error.reason, src_address, msg, authenticated))
        return True


def _integrity_detail(msg: Message) -> str:
    kind = "success" if msg.cls == SUCCESS else "error"
    error = msg.get(ERROR_CODE)
    code = f" {error.code} {error.reason}" if error is not None else ""
    if msg.has_integrity or msg.has_integrity_sha256:
        return f"{kind}{code} response with a wrong or unexpected integrity attribute"
    return f"{kind}{code} response without integrity"


# --------------------------------------------------------------------- the request procedure


class StunRequest:
    """A client request: signing, challenges, 5xx retries and redirects over transactions.

    Same driving interface as ``StunTransaction``. ``transaction_id`` is the current
    transaction's ID (it changes after a 401/438 or 5xx retry); ``transaction_ids`` lists all
    of them (responses to an earlier one are late and ignored).
    """

    __slots__ = (
        "_challengeable",
        "_deadline",
        "_earlier_sends",
        "_event",
        "_finished",
        "_new_tid",
        "_signing",
        "accept_from",
        "attributes",
        "auth",
        "auth_retries",
        "destination",
        "fingerprint",
        "max_auth_retries",
        "max_server_error_retries",
        "method",
        "reliable",
        "rto",
        "server_error_retries",
        "table",
        "timeout",
        "timers",
        "transaction_ids",
        "txn",
    )

    def __init__(
        self,
        method: int,
        attributes: Mapping[int, Any] | None,
        destination: tuple[str, int],
        *,
        auth: AuthSession | None = None,
        timers: Timers | None = None,
        rto: float | None = None,
        reliable: bool = False,
        timeout: float | None = None,
        accept_from: tuple[str, int] | str | None = "destination",
        software: str | None = None,
        fingerprint: bool = True,
        table: AttributeTable = STUN_ATTRIBUTES,
        max_auth_retries: int = 3,
        max_server_error_retries: int = 4,
        transaction_ids: Callable[[], bytes] = new_transaction_id,
    ) -> None:
        self.method = method
        self.attributes = dict(attributes) if attributes else {}
        if software and SOFTWARE not in self.attributes:
            self.attributes[SOFTWARE] = software
        self.destination = destination if type(destination) is Address else _canonical(destination)
        # Without credentials there is nothing to sign or check: skip the session entirely.
        self.auth = auth if auth is not None and auth.credentials is not None else None
        self._challengeable = auth
        self.timers = _DEFAULT_TIMERS if timers is None else timers
        self.rto = self.timers.rto if rto is None else rto
        self.reliable = reliable
        self.timeout = timeout
        self.accept_from = accept_from
        self.fingerprint = fingerprint
        self.table = table
        self.max_auth_retries = max_auth_retries
        self.max_server_error_retries = max_server_error_retries
        self._new_tid = transaction_ids
        self.transaction_ids: list[bytes] = []
        self.auth_retries = 0
        self.server_error_retries = 0
        self._earlier_sends = 0
        self.txn: StunTransaction | None = None
        self._signing = NO_SIGNING
        self._event: Event | None = None
        self._finished = False
        self._deadline: float | None = None

    @property
    def transaction_id(self) -> bytes:
        if self.txn is None:
            raise LocalProtocolError("request not started")
        return self.txn.transaction_id

    @property
    def done(self) -> bool:
        """An outcome was reached (it may still be waiting in ``next_event``)."""
        return self._finished

    @property
    def rtt(self) -> float | None:
        return None if self.txn is None else self.txn.rtt

    def build(self) -> tuple[bytes, Signing]:
        """Encode the next attempt: a fresh transaction ID, signed by the session."""
        if self.auth is not None:
            attrs_ = dict(self.attributes)
            signing = self.auth.sign(attrs_)
        else:
            attrs_, signing = self.attributes, NO_SIGNING
        msg = Message(self.method, REQUEST, self._new_tid(), attrs_)
        data = encode(
            msg,
            integrity=signing.integrity,
            integrity_sha256=signing.integrity_sha256,
            fingerprint=self.fingerprint,
            table=self.table,
        )
        return data, signing

    def start(self, now: float) -> None:
        if self.txn is not None:
            raise LocalProtocolError("request already started")
        if self.timeout is not None:
            self._deadline = now + self.timeout
        self._attempt(now)

    def _attempt(self, now: float) -> None:
        if self.txn is not None:
            self._earlier_sends += self.txn.sends
        data, self._signing = self.build()
        remaining = None if self._deadline is None else max(0.0, self._deadline - now)
        self.txn = StunTransaction(
            data,
            self.destination,
            timers=self.timers,
            rto=self.rto,
            reliable=self.reliable,
            timeout=remaining,
            accept_from=self.accept_from,
            check=self._signing.check,
            accept=self.auth.accept if self.auth is not None else None,
            table=self.table,
        )
        self.transaction_ids.append(self.txn.transaction_id)
        self.txn.start(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return [] if self.txn is None else self.txn.datagrams_to_send()

    @property
    def sends(self) -> int:
        """Requests sent over all transactions so far."""
        return self._earlier_sends + (0 if self.txn is None else self.txn.sends)

    def get_timer(self) -> float | None:
        return None if self.txn is None or self._finished else self.txn.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.txn is not None and not self._finished:
            self.txn.handle_timer(now)
            self._after(now)

    def transport_failed(self, reason: str) -> None:
        if self.txn is not None and not self._finished:
            self.txn.transport_failed(reason)
            self._after(0.0)

    def cancel(self) -> None:
        if self.txn is not None:
            self.txn.cancel()
        self._finished = True

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> bool:
        try:
            msg = decode(data, self.table)
        except ParseError:
            return False
        return self.receive_message(msg, source, now)

    def receive_message(self, msg: Message, source: tuple[str, int], now: float) -> bool:
        if self.txn is None or self._finished:
            return False
        consumed = self.txn.receive_message(msg, source, now)
        if consumed:
            self._after(now)
        return consumed

    def next_event(self) -> Event | None:
        event, self._event = self._event, None
        return event

    # ---------------------------------------------------------------- outcome handling

    def _finish(self, event: Event) -> None:
        self._finished = True
        self._event = event

    def _after(self, now: float) -> None:
        assert self.txn is not None
        event = self.txn.next_event()
        if event is None:
            return
        if isinstance(event, SuccessResponse):
            if self.auth is not None:
                self.auth.on_success(event.message, self._signing)
            self._finish(event)
            return
        if not isinstance(event, ErrorResponse):
            self._finish(event)
            return
        code = event.code
        session = self.auth or self._challengeable
        if code in (401, 438) and session is not None:
            reason = session.on_challenge(event.message, self._signing)
            if reason is not None:
                self._finish(AuthenticationFailed(reason, code))
                return
            if self.auth_retries >= self.max_auth_retries:
                self._finish(
                    AuthenticationFailed(
                        f"still challenged ({code}) after {self.auth_retries} authenticated "
                        "retries; giving up",
                        code,
                    )
                )
                return
            self.auth_retries += 1
            self._retry(now)
            return
        if 500 <= code <= 599 and self.server_error_retries < self.max_server_error_retries:
            self.server_error_retries += 1  # §6.3.4: may resend, at most 4 times
            self._retry(now)
            return
        if code == 300:
            self._finish(self._redirect(event))
            return
        self._finish(event)

    def _retry(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            assert self.txn is not None
            self._finish(TimedOut(self.sends, 0.0))
            return
        self._attempt(now)

    def _redirect(self, event: ErrorResponse) -> Event:
        if not event.authenticated:
            return TransactionFailed(
                "300 Try Alternate without valid message integrity: not followed (§14.8)"
            )
        alternate: Address | None = event.message.get(ALTERNATE_SERVER)
        if alternate is None:
            return TransactionFailed("300 Try Alternate without ALTERNATE-SERVER (§6.3.4)")
        problem = redirect_problem(self.destination, alternate)
        if problem:
            return TransactionFailed(f"refusing redirect to {alternate}: {problem}")
        return Redirected(alternate, event.message.get(ALTERNATE_DOMAIN))


def redirect_problem(server: Address, alternate: Address) -> str | None:
    """Why a redirect must not be followed (S20), or ``None``: another IP family, or a
    loopback/link-local/unspecified/multicast target unless the server itself is in that
    scope (a test server on loopback may redirect to loopback)."""
    if alternate.family != server.family:
        return "another address family"
    try:
        target = scope_of(alternate.host)
        origin = scope_of(server.host)
    except ValueError:
        return "not an IP address"
    risky = {
        AddressScope.LOOPBACK,
        AddressScope.LINK_LOCAL,
        AddressScope.UNSPECIFIED,
        AddressScope.MULTICAST,
        AddressScope.RESERVED,
    }
    if target in risky and target is not origin:
        return f"{target.value} address"
    if alternate.port == 0:
        return "port 0"
    return None


# --------------------------------------------------------------------- RTO cache


@attrs.define
class _RttEstimate:
    srtt: float
    rttvar: float
    rto: float
    used: float


@attrs.define
class RtoCache:
    """Per-server RTO estimates (RFC 8489 §6.2.1 with RFC 6298 arithmetic), sans-IO.

    ``rto_for(ip, now)`` gives the starting RTO of the next transaction to that server
    (``initial`` when nothing fresh is known); ``record(ip, rtt, now)`` feeds a Karn-clean
    sample; ``timed_out(ip)`` forgets the estimate. Entries idle for ``max_age`` seconds are
    stale. ``min_rto`` keeps a loopback-fast server from driving the RTO to microseconds.
    """

    initial: float = 0.5
    min_rto: float = 0.1
    max_rto: float = 60.0
    max_age: float = 600.0
    max_entries: int = 256
    _entries: dict[str, _RttEstimate] = attrs.field(factory=dict)

    def rto_for(self, ip: str, now: float) -> float:
        entry = self._entries.get(ip)
        if entry is None or now - entry.used > self.max_age:
            return self.initial
        return entry.rto

    def record(self, ip: str, rtt: float, now: float) -> None:
        entry = self._entries.get(ip)
        if entry is not None and now - entry.used <= self.max_age:
            rttvar = 0.75 * entry.rttvar + 0.25 * abs(entry.srtt - rtt)
            srtt = 0.875 * entry.srtt + 0.125 * rtt
        else:
            srtt, rttvar = rtt, rtt / 2
        rto = srtt + (4 * rttvar if rttvar > 0.00025 else 0.001)
        # 1 ms accuracy is enough and nothing is rounded up to whole seconds (§6.2.1)
        if rto < self.min_rto:
            rto = self.min_rto
        elif rto > self.max_rto:
            rto = self.max_rto
        if entry is not None:
            entry.srtt, entry.rttvar, entry.rto, entry.used = srtt, rttvar, rto, now
            return
        if len(self._entries) >= self.max_entries:
            oldest = min(self._entries, key=lambda k: self._entries[k].used)
            del self._entries[oldest]
        self._entries[ip] = _RttEstimate(srtt, rttvar, rto, now)

    def timed_out(self, ip: str) -> None:
        self._entries.pop(ip, None)

    def __len__(self) -> int:
        return len(self._entries)
