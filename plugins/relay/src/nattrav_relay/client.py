"""The TURN client as a sans-IO state machine (RFC 8656 §7-§12): one allocation, one 5-tuple.

Theory of operation
-------------------
``TurnClient`` holds everything one allocation on one server needs and touches no socket and
no clock: the caller (``driver.py``, or a test with a fake clock) passes ``now`` in, feeds
what arrives from the server, and sends what the client asks for::

    client.allocate(now)
    loop:
        write every item of client.datagrams_to_send() to the server
        handle every client.next_event()           # Allocated, Refreshed, AllocationLost...
        wait until client.get_timer() or data arrives:
            app = client.receive(datagram, now)    # UDP; client.feed_stream(chunk, now) on TCP
            client.handle_timer(now)
    wire = client.send(peer, data, now)            # bytes to write, or None (queued)

Requests (Allocate, Refresh, CreatePermission, ChannelBind) are ``nattrav_stun.transaction.
StunRequest`` machines over the TURN attribute table: they sign with the long-term
``AuthSession`` (SHA-256 when the server offers PASSWORD-ALGORITHMS, MD5 otherwise), answer a
401 or 438 with a new transaction (bounded: ``max_auth_retries``), retransmit on the RFC 8489
schedule over UDP and wait Ti over TCP/TLS, and accept a response only when its
MESSAGE-INTEGRITY(-SHA256) verifies (T8). On top of that, a *success* response to a request
that went out unsigned (the first Allocate, before the 401) is discarded here: TURN servers
always authenticate, so an unprotected success is forged or broken. No state changes before a
response passed those checks.

Redirects (RFC 8489 §10, RFC 8656 §7.2 step 8): a 300 (Try Alternate) to an Allocate ends the
attempt with ``AllocationFailed(redirect=ALTERNATE-SERVER, redirect_domain=ALTERNATE-DOMAIN)``
when it may be followed: an authenticated 300 to a signed Allocate (§14.8: the integrity must
verify), or an unprotected 300 to the *unsigned* first Allocate. The latter is what coturn's
``--alternate-server`` sends (before any authentication) and it cannot be authenticated: no
credentials were sent yet, so the server has no key to sign with. Following it gives the
alternate nothing a configured server would not get, and it must still prove it knows our
long-term key before a success is accepted (T8). An unprotected 300 to a *signed* Allocate
is discarded like any unprotected answer to a signed request (a forgery cannot end the
transaction; it ends in ``IntegrityViolated`` if nothing better comes). Alternates of another
address family or in a loopback/link-local scope the server is not in are refused (S20).
Following is the driver's job (a new 5-tuple to the alternate, ``retarget``, loop protection
in ``redirects.py``).

Allocation lifecycle (§7, §8): IDLE -> ALLOCATING -> ALLOCATED -> DELETING -> DELETED, or
FAILED (with ``AllocationFailed.retry_at`` computed from §7.4: 437 three times with a new
5-tuple then two minutes, 486/508 one minute, 440/442/403/401 never) or LOST (437 on Refresh,
expiry, connection closed, a ChannelBind 400 that says client and server disagree, T7).
``allocate()`` refuses to run before the back-off is over. The received LIFETIME is the truth
(T2); a Refresh goes out a minute before expiry (half-way for short lifetimes) and is retried
until the allocation actually expires.

Permissions (§9) are per peer IP, installed by CreatePermission or as a side effect of
ChannelBind, live 300 s on the server and are refreshed after 240 s while in use (or forever
when *sticky*: ``permit()``). Channels (§12) are per peer transport address, numbered from
0x4000, refreshed after 540 s of their 600 s while in use. A number and a peer stay paired for
the allocation's life; a binding left to expire (idle) keeps both out of use for five more
minutes (§12: a channel or peer must not be rebound to something else within 5 minutes).

Data path: ``send(peer, data, now)`` returns ChannelData (4-byte header, padded over TCP/TLS)
when the peer has a channel, a Send indication when it has a permission, and otherwise queues
the datagram (bounded) and starts a ChannelBind or CreatePermission. ``receive`` returns
``(payload, peer)`` for application data: ChannelData on a bound channel, or a Data indication
with XOR-PEER-ADDRESS and DATA from a peer with an installed permission. Everything else is
discarded and counted by reason (T5, T6). No attribute parsing happens for ChannelData.
"""

from __future__ import annotations

import enum
import math
import secrets
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_stun.auth import AuthSession, LongTermCredentials
from nattrav_stun.codec import (
    ALTERNATE_DOMAIN,
    ALTERNATE_SERVER,
    BINDING,
    ERROR,
    ERROR_CODE,
    INDICATION,
    REQUEST,
    SUCCESS,
    UNKNOWN_ATTRIBUTES,
    XOR_MAPPED_ADDRESS,
    Address,
    Message,
    decode,
    encode,
    encode_xor_address,
    message_type,
    new_transaction_id,
)
from nattrav_stun.events import (
    AuthenticationFailed,
    ErrorResponse,
    IntegrityViolated,
    Redirected,
    SuccessResponse,
    TimedOut,
    TransactionFailed,
)
from nattrav_stun.transaction import StunRequest, Timers, redirect_problem

from nattrav_relay.attributes import (
    ADDITIONAL_ADDRESS_FAMILY,
    ADDRESS_ERROR_CODE,
    ALLOCATE,
    CHANNEL_BIND,
    CHANNEL_NUMBER,
    CREATE_PERMISSION,
    DATA,
    DATA_INDICATION,
    DONT_FRAGMENT,
    EVEN_PORT,
    ICMP,
    LEGACY_ADDITIONAL_ADDRESS_FAMILY,
    LEGACY_ADDRESS_ERROR_CODE,
    LIFETIME,
    REFRESH,
    REQUESTED_ADDRESS_FAMILY,
    REQUESTED_TRANSPORT,
    RESERVATION_TOKEN,
    SEND,
    TURN_ATTRIBUTES,
    UDP,
    XOR_PEER_ADDRESS,
    XOR_RELAYED_ADDRESS,
    AddressErrorCode,
    UnsupportedFamily,
    occurrences,
)
from nattrav_relay.events import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    ChannelBound,
    ChannelFailed,
    Deleted,
    IcmpReceived,
    PermissionCreated,
    PermissionFailed,
    Refreshed,
    TurnEvent,
)
from nattrav_relay.framing import CHANNEL_MAX, CHANNEL_MIN, TurnStreamFramer

__all__ = [
    "Channel",
    "ClientSettings",
    "Permission",
    "RelayStats",
    "State",
    "TurnClient",
    "allocate_failure",
]

#: The lifetime RFC 8656 §7.2 calls the default (10 minutes); assumed when a success response
#: carries no LIFETIME.
DEFAULT_LIFETIME = 600
#: Permission lifetime fixed by RFC 8656 §9 (the server's, not negotiable).
PERMISSION_LIFETIME = 300.0
#: Channel binding lifetime (RFC 8656 §12).
CHANNEL_LIFETIME = 600.0
#: After a binding expires, neither its number nor its peer may be rebound for 5 minutes.
CHANNEL_QUARANTINE = 300.0

_HEAD = struct.Struct("!HH")
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
_STUN_HEADER = struct.Struct("!HHI12s")
_SEND_INDICATION = message_type(SEND, INDICATION)
_MAGIC = 0x2112A442
_token = secrets.token_bytes


class State(enum.Enum):
    """Where the allocation is in its lifecycle."""

    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    LOST = "lost"


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _families(_inst: object, _attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value or any(f not in (4, 6) for f in value) or len(set(value)) != len(value):
        raise ValueError(f"families must be (4,), (6,) or (4, 6), got {value!r}")


@attrs.frozen
class ClientSettings:
    """Everything about the client's behaviour that is a choice, RFC values by default.

    ``lifetime``: allocation lifetime to request (the server decides; the received value is
    used). ``refresh_margin``: refresh this long before expiry (§8: "roughly 1 minute"), or
    half-way when the lifetime is shorter than two margins. ``permission_refresh`` and
    ``channel_refresh``: ages at which a permission (300 s) and a binding (600 s) are renewed.
    ``idle_timeout``: stop renewing permissions/channels unused this long (sticky permissions
    are always renewed). ``families``: relayed address families to ask for; ``(4, 6)`` asks
    for a dual allocation (ADDITIONAL-ADDRESS-FAMILY). ``use_channels``: bind a channel to
    each peer (ChannelData) instead of Send/Data indications only. ``max_queue``: datagrams
    per peer held while its permission is being created.
    """

    timers: Timers = attrs.field(factory=Timers)
    lifetime: int = attrs.field(default=600, validator=attrs.validators.ge(0))
    refresh_margin: float = attrs.field(default=60.0, validator=_positive)
    #: refresh at least this often (``None``: only as the lifetime needs). Each answered
    #: Refresh proves the server still holds the allocation; a restarted server answers 437
    #: and the allocation is made again, so this bounds how long a restart goes unnoticed.
    refresh_interval: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    permission_refresh: float = attrs.field(default=240.0, validator=_positive)
    channel_refresh: float = attrs.field(default=540.0, validator=_positive)
    idle_timeout: float = attrs.field(default=1800.0, validator=_positive)
    retry_interval: float = attrs.field(default=5.0, validator=_positive)
    #: UDP only: send a Binding indication when nothing went to the server for this long, so
    #: the NAT binding of the client-server 5-tuple (often 30 s) outlives quiet periods
    #: (``None``: off). Permission refreshes alone (every 240 s) are too rare for that.
    keepalive: float | None = 15.0
    families: tuple[int, ...] = attrs.field(default=(4,), validator=_families)
    use_channels: bool = True
    dont_fragment: bool = False
    even_port: bool | None = None
    reservation_token: bytes | None = None
    max_queue: int = attrs.field(default=64, validator=attrs.validators.ge(0))
    max_auth_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    software: str | None = "nattrav"
    #: §7.4: how many 437s on Allocate (each with a new 5-tuple) before backing off, and how long
    mismatch_tries: int = 3
    mismatch_backoff: float = 120.0
    #: §7.4: 486 Allocation Quota Reached and 508 Insufficient Capacity: wait at least a minute
    quota_backoff: float = 60.0
    #: other 5xx, integrity failures: a short pause before the next attempt
    server_error_backoff: float = 5.0

    def __attrs_post_init__(self) -> None:
        if self.permission_refresh >= PERMISSION_LIFETIME:
            raise ValueError("permission_refresh must be below the 300 s permission lifetime")
        if self.channel_refresh >= CHANNEL_LIFETIME:
            raise ValueError("channel_refresh must be below the 600 s channel lifetime")


@attrs.define
class RelayStats:
    """Counters of one client (and, summed by the driver, of an endpoint's whole life).

    ``bytes_*``/``packets_*`` count application payload, both paths; ``channel_*`` and
    ``indication_*`` split them by framing. ``discarded`` counts dropped input by reason.
    """

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    channel_packets_sent: int = 0
    indication_packets_sent: int = 0
    channel_packets_received: int = 0
    indication_packets_received: int = 0
    allocations: int = 0
    refreshes: int = 0
    permissions_created: int = 0
    permission_refreshes: int = 0
    channels_bound: int = 0
    channel_refreshes: int = 0
    queued: int = 0
    dropped: int = 0
    icmp: int = 0
    keepalives: int = 0
    auth_retries: int = 0
    #: requests sent again because no answer came (RFC 8489 §6.2.1), over finished requests
    retransmissions: int = 0
    discarded: dict[str, int] = attrs.field(factory=dict)

    def discard(self, reason: str) -> None:
        self.discarded[reason] = self.discarded.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["discarded"] = dict(self.discarded)
        return out

    def add(self, other: RelayStats) -> None:
        """Add ``other``'s counters to this one (the driver sums across re-allocations)."""
        for field in attrs.fields(RelayStats):
            if field.name == "discarded":
                for k, v in other.discarded.items():
                    self.discarded[k] = self.discarded.get(k, 0) + v
            else:
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@attrs.define(eq=False)
class Permission:
    """A permission for one peer IP (§9)."""

    ip: str
    installed: bool = False
    expires_at: float = 0.0
    refresh_at: float = math.inf
    pending: bool = False
    sticky: bool = False
    last_used: float = 0.0
    retry_at: float = 0.0
    refreshes: int = 0
    #: a ChannelBind on the way will install this permission (no CreatePermission needed)
    awaiting_channel: bool = False
    queue: list[tuple[Address, bytes]] = attrs.field(factory=list)


@attrs.define(eq=False)
class Channel:
    """A channel binding (§12): ``number`` <-> ``peer`` for the allocation's life."""

    number: int
    peer: Address
    bound: bool = False
    expires_at: float = 0.0
    refresh_at: float = math.inf
    pending: bool = False
    last_used: float = 0.0
    retry_at: float = math.inf
    quarantined_until: float = 0.0
    refreshes: int = 0


class _Kind(enum.Enum):
    ALLOCATE = "allocate"
    REFRESH = "refresh"
    DELETE = "delete"
    PERMISSION = "permission"
    CHANNEL = "channel"


@attrs.define(eq=False)
class _Pending:
    kind: _Kind
    request: StunRequest
    subject: Any = None  # Permission or Channel
    #: an error response to an Allocate that went out unsigned (a 300 there may be followed)
    unsigned_answer: Message | None = None


def allocate_failure(
    event: Any,
    now: float,
    settings: ClientSettings,
    mismatches: int,
    *,
    tweaked: bool = False,
    authenticated: bool = True,
) -> AllocationFailed:
    """RFC 8656 §7.4 as data: what an Allocate outcome means and when to try again.

    ``mismatches`` counts consecutive 437s including this one; ``tweaked`` says whether
    EVEN-PORT or RESERVATION-TOKEN was used (a 508 may then be retried at once without them);
    ``authenticated`` whether a ``Redirected`` came with verified integrity (``False``: an
    unprotected 300 to the unsigned first Allocate).
    """
    if isinstance(event, AuthenticationFailed):
        return AllocationFailed(event.reason, event.code or 401, retry_at=None)
    if isinstance(event, TimedOut):
        return AllocationFailed(
            f"no answer from the TURN server ({event.describe()})",
            retry_at=now,
            timed_out=True,
        )
    if isinstance(event, IntegrityViolated):
        return AllocationFailed(
            f"responses failed the integrity check: {event.describe()}",
            retry_at=now + settings.server_error_backoff,
        )
    if isinstance(event, Redirected):
        how = "" if authenticated else " (unprotected, to the unsigned first Allocate)"
        return AllocationFailed(
            f"300 Try Alternate: {event.describe()}{how}",
            300,
            retry_at=None,
            redirect=event.alternate,
            redirect_domain=event.domain,
            redirect_authenticated=authenticated,
        )
    if isinstance(event, TransactionFailed):
        return AllocationFailed(event.reason, retry_at=None)
    if not isinstance(event, ErrorResponse):
        return AllocationFailed(f"unexpected outcome {event!r}", retry_at=None)
    code, reason = event.code, f"{event.code} {event.reason}".strip()
    if code == 437:
        if mismatches < settings.mismatch_tries:
            return AllocationFailed(
                f"{reason}: the server sees our 5-tuple in use; retrying from a new one",
                code,
                retry_at=now,
                new_five_tuple=True,
            )
        return AllocationFailed(
            f"{reason} {mismatches} times; backing off {settings.mismatch_backoff:.0f} s",
            code,
            retry_at=now + settings.mismatch_backoff,
            new_five_tuple=True,
        )
    if code in (486, 508):
        if code == 508 and tweaked:
            return AllocationFailed(
                f"{reason}: retrying without EVEN-PORT/RESERVATION-TOKEN", code, retry_at=now
            )
        return AllocationFailed(
            f"{reason}; waiting {settings.quota_backoff:.0f} s before the next allocation",
            code,
            retry_at=now + settings.quota_backoff,
        )
    if code == 440:
        return AllocationFailed(
            f"{reason}: the server does not relay this address family (not retried)", code
        )
    if code == 442:
        return AllocationFailed(f"{reason}: the server does not relay UDP (not retried)", code)
    if code == 403:
        return AllocationFailed(f"{reason}: the server refuses us (not retried)", code)
    if code == 441:
        return AllocationFailed(f"{reason}: wrong credentials for this server", code)
    if 500 <= code <= 599:
        return AllocationFailed(reason, code, retry_at=now + settings.server_error_backoff)
    return AllocationFailed(reason, code)


class TurnClient:
    """One TURN allocation on one server over one 5-tuple (see the module docstring).

    ``server`` is the server's transport address as the transport reaches it; ``transport``
    is ``"udp"``, ``"tcp"`` or ``"tls"`` (the latter two frame ChannelData with padding).
    ``auth`` may be shared across clients for the same server (it caches realm and nonce).
    """

    def __init__(
        self,
        server: tuple[str, int],
        credentials: LongTermCredentials | None = None,
        *,
        transport: str = "udp",
        settings: ClientSettings | None = None,
        auth: AuthSession | None = None,
        transaction_ids: Callable[[], bytes] = new_transaction_id,
    ) -> None:
        if auth is None and credentials is None:
            raise LocalProtocolError("a TURN client needs long-term credentials")
        if transport not in ("udp", "tcp", "tls"):
            raise LocalProtocolError(f"transport must be udp, tcp or tls, not {transport!r}")
        self.server = Address(server[0].split("%", 1)[0], int(server[1]))
        self.transport = transport
        self.stream = transport != "udp"
        self.settings = settings or ClientSettings()
        self.auth = auth if auth is not None else AuthSession(credentials)
        self._new_tid = transaction_ids
        self.state = State.IDLE
        self.stats = RelayStats()
        self.generation = 0
        self.relayed: tuple[Address, ...] = ()
        self.mapped: Address | None = None
        self.lifetime = 0
        self.expires_at = 0.0
        self.refresh_at = math.inf
        self.not_before = 0.0  # §7.4 back-off: no Allocate before this time
        self.blocked: str | None = None  # T1: this server must not be used
        self.mismatches = 0
        self.permissions: dict[str, Permission] = {}
        self.channels: dict[Address, Channel] = {}
        self._by_number: dict[int, Channel] = {}
        self._next_number = CHANNEL_MIN
        self._requests: list[_Pending] = []
        self._outbox: list[bytes] = []
        self._events: deque[TurnEvent] = deque()
        self._framer = TurnStreamFramer() if self.stream else None
        self._peer_attr: dict[Address, bytes] = {}
        self._dont_fragment = self.settings.dont_fragment
        self._tweaked = (
            self.settings.even_port is not None or self.settings.reservation_token is not None
        )
        self._refresh_failure = ""
        self._lost_after_delete: str | None = None
        self._control_sent = 0
        self._keepalive_mark = -1
        self.keepalive_at = math.inf

    # ================================================================= driving interface

    def datagrams_to_send(self) -> list[bytes]:
        """What to write to the server now (datagrams over UDP, stream chunks over TCP/TLS)."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def has_output(self) -> bool:
        """Something to send or an event to read (after a call that may have produced it)."""
        return bool(self._outbox or self._events)

    def next_event(self) -> TurnEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (``None``: nothing scheduled)."""
        best = math.inf
        for pending in self._requests:
            t = pending.request.get_timer()
            if t is not None and t < best:
                best = t
        if self.state is State.ALLOCATED:
            best = min(best, self.expires_at, self.keepalive_at)
            if not self._outstanding(_Kind.REFRESH):
                best = min(best, self.refresh_at)
            for perm in self.permissions.values():
                if perm.pending or perm.awaiting_channel:
                    continue
                if perm.installed:
                    best = min(best, perm.refresh_at, perm.expires_at)
                elif perm.queue or perm.sticky:
                    best = min(best, perm.retry_at)
            for ch in self.channels.values():
                if ch.bound and not ch.pending:
                    best = min(best, ch.refresh_at, ch.expires_at)
                elif not ch.pending and ch.retry_at < math.inf:
                    best = min(best, ch.retry_at)
                if ch.quarantined_until:
                    best = min(best, ch.quarantined_until)
        return None if best == math.inf else best

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, refresh, expire: whatever is due at ``now``."""
        for pending in list(self._requests):
            t = pending.request.get_timer()
            if t is not None and t <= now:
                pending.request.handle_timer(now)
                self._collect(pending, now)
        if self.state is not State.ALLOCATED:
            return
        if now >= self.expires_at:
            why = self._refresh_failure or "no refresh succeeded"
            self._lose(f"the allocation expired ({why})", None)
            return
        if now >= self.refresh_at and not self._outstanding(_Kind.REFRESH):
            self._start_refresh(now)
        if now >= self.keepalive_at:
            self._keepalive(now)
        for perm in list(self.permissions.values()):
            self._permission_timer(perm, now)
        for ch in list(self.channels.values()):
            self._channel_timer(ch, now)

    # ================================================================= allocation

    def allocate(self, now: float) -> None:
        """Send an Allocate request (the first goes unsigned unless a nonce is cached)."""
        if self.state in (State.ALLOCATING, State.ALLOCATED, State.DELETING):
            raise LocalProtocolError(f"cannot allocate while {self.state.value}")
        if self.blocked is not None:
            raise LocalProtocolError(f"this server must not be used again: {self.blocked}")
        if now < self.not_before:
            raise LocalProtocolError(
                f"RFC 8656 §7.4 back-off: no allocation before t={self.not_before:.1f} "
                f"({self.not_before - now:.1f} s from now)"
            )
        self._reset_allocation_state()
        self.state = State.ALLOCATING
        attributes: dict[int, Any] = {REQUESTED_TRANSPORT: UDP}
        families = self.settings.families
        if len(families) == 2:
            attributes[ADDITIONAL_ADDRESS_FAMILY] = 6
            attributes[LEGACY_ADDITIONAL_ADDRESS_FAMILY] = 6  # coturn's draft code point
        elif families == (6,):
            attributes[REQUESTED_ADDRESS_FAMILY] = 6
        if self.settings.lifetime:
            attributes[LIFETIME] = self.settings.lifetime
        if self._dont_fragment:
            attributes[DONT_FRAGMENT] = True
        if self._tweaked:
            if self.settings.reservation_token is not None:
                attributes[RESERVATION_TOKEN] = self.settings.reservation_token
            elif self.settings.even_port is not None:
                attributes[EVEN_PORT] = self.settings.even_port
        self._request(_Kind.ALLOCATE, ALLOCATE, attributes, now)

    def refresh(self, now: float) -> None:
        """Refresh now (a liveness check, e.g. after an ICMP error); no-op unless allocated."""
        if self.state is State.ALLOCATED and not self._outstanding(_Kind.REFRESH):
            self._start_refresh(now)

    def delete(self, now: float) -> None:
        """Delete the allocation (Refresh with LIFETIME 0, §8); cancels everything else.

        Before any allocation exists (or when it is already gone) this ends at once with
        ``Deleted(confirmed=True)``. While an Allocate is in flight with a cached nonce, the
        server may have created it: the delete is sent anyway and a 437 counts as success.
        """
        in_flight = self.state is State.ALLOCATING and self.auth.ready
        if self.state not in (State.ALLOCATED, State.DELETING) and not in_flight:
            self._cancel_requests()
            if self.state is not State.DELETED:
                self.state = State.DELETED
                self._events.append(Deleted(True, "nothing allocated"))
            return
        if self.state is State.DELETING:
            return
        self._cancel_requests()
        self.state = State.DELETING
        self._drop_queues()
        self._forget_bindings()
        self._request(_Kind.DELETE, REFRESH, {LIFETIME: 0}, now)

    def delete_orphan(self, now: float) -> None:
        """Delete an allocation this client did not make but whose 5-tuple it now uses (a
        crashed run's, ``nattrav cleanup``): Refresh with LIFETIME 0, challenged and signed
        like any request; a 437 means the server has none for this 5-tuple."""
        self._cancel_requests()
        self.state = State.DELETING
        self._request(_Kind.DELETE, REFRESH, {LIFETIME: 0}, now)

    def forget_permission(self, ip: str) -> None:
        """Stop renewing the permission for ``ip``: it lapses within 300 s (TURN has no
        way to remove one)."""
        perm = self.permissions.get(ip)
        if perm is not None:
            perm.sticky = False
            perm.refresh_at = math.inf

    def connection_lost(self, reason: str, now: float) -> None:
        """The TCP/TLS connection closed: the server deletes the allocation with it."""
        self._cancel_requests()
        if self.state in (State.ALLOCATED, State.ALLOCATING):
            self._lose(f"connection to the TURN server lost: {reason}", None)
        elif self.state is State.DELETING:
            self.state = State.DELETED
            self._events.append(Deleted(True, "connection closed (the server deletes it)"))

    def abandon(self) -> None:
        """Stop an Allocate the caller gave up on (its own deadline passed): no event."""
        self._cancel_requests()
        if self.state is State.ALLOCATING:
            self.state = State.FAILED

    def reset_transport(self) -> None:
        """A new connection (a new 5-tuple) replaces the old one: nothing in flight on the old
        one counts any more, and a partial stream message is forgotten."""
        self._cancel_requests()
        if self.stream:
            self._framer = TurnStreamFramer()

    def retarget(self, server: tuple[str, int]) -> None:
        """Talk to another server from now on: a followed 300 redirect (RFC 8489 §10).

        The next ``allocate`` goes to ``server`` with the same credentials but a new
        authentication session (realm and nonce belong to the server that issued them, §9.2),
        so it starts unsigned and is challenged afresh. Nothing in flight counts any more;
        statistics, the generation counter and sticky permissions carry over. Only between
        allocations (after a failure or loss), never while one is held or being made.
        """
        if self.state in (State.ALLOCATING, State.ALLOCATED, State.DELETING):
            raise LocalProtocolError(f"cannot change servers while {self.state.value}")
        self.reset_transport()
        self.server = Address(server[0].split("%", 1)[0], int(server[1]))
        self.auth = AuthSession(self.auth.credentials)
        self.state = State.IDLE
        self.not_before = 0.0
        self.mismatches = 0
        self.blocked = None
        self._dont_fragment = self.settings.dont_fragment
        self._tweaked = (
            self.settings.even_port is not None or self.settings.reservation_token is not None
        )

    def _reset_allocation_state(self) -> None:
        # Permissions and channels belong to one allocation; sticky permissions come back.
        sticky = [ip for ip, p in self.permissions.items() if p.sticky]
        self.permissions = {ip: Permission(ip, sticky=True) for ip in sticky}
        self.channels = {}
        self._by_number = {}
        self._next_number = CHANNEL_MIN
        self.relayed = ()
        self.mapped = None
        self.refresh_at = math.inf
        self.expires_at = 0.0
        self.keepalive_at = math.inf
        self._refresh_failure = ""
        self._lost_after_delete = None

    def _start_refresh(self, now: float) -> None:
        lifetime = self.settings.lifetime or self.lifetime or DEFAULT_LIFETIME
        self._request(_Kind.REFRESH, REFRESH, {LIFETIME: lifetime}, now)

    def _keepalive(self, now: float) -> None:
        interval = self.settings.keepalive
        if interval is None or self.stream:
            self.keepalive_at = math.inf
            return
        mark = self.stats.packets_sent + self._control_sent
        if mark == self._keepalive_mark:
            # Nothing left for the server since the last check: a Binding indication (§5 of
            # RFC 8489: no response) refreshes the NAT binding without touching TURN state.
            self._outbox.append(encode(Message(BINDING, INDICATION), fingerprint=True))
            self._control_sent += 1
            self.stats.keepalives += 1
            mark += 1
        self._keepalive_mark = mark
        self.keepalive_at = now + interval

    def _schedule_refresh(self, now: float, lifetime: int) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        margin = self.settings.refresh_margin
        wait = max(lifetime - margin, lifetime / 2)
        if self.settings.refresh_interval is not None:
            wait = min(wait, self.settings.refresh_interval)
        self.refresh_at = now + wait

    def _forget_bindings(self) -> None:
        # The server's permissions and channels went with the allocation: stop framing data
        # for them (the fast path of send() looks only at ``channels``). Sticky permissions
        # are re-created by the next allocation.
        self.channels = {}
        self._by_number = {}
        self.permissions = {
            ip: Permission(ip, sticky=True) for ip, p in self.permissions.items() if p.sticky
        }

    def _lose(self, reason: str, code: int | None) -> None:
        self._cancel_requests()
        self._drop_queues()
        self._forget_bindings()
        self.state = State.LOST
        # The server may have restarted: its nonce is not ours any more. Start the next
        # Allocate with a fresh challenge instead of a signed request it would refuse.
        self.auth.forget()
        self._events.append(AllocationLost(reason, code))

    # ================================================================= permissions

    def permit(self, ip: str, now: float, *, sticky: bool = True) -> None:
        """Install (and keep) a permission for ``ip`` so that peer can send to us."""
        perm = self.permissions.get(ip)
        if perm is None:
            perm = self.permissions[ip] = Permission(ip)
        perm.sticky = perm.sticky or sticky
        perm.last_used = now
        if self.state is State.ALLOCATED and not perm.installed and not perm.pending:
            self._start_permission(perm, now)

    def _start_permission(self, perm: Permission, now: float) -> None:
        perm.pending = True
        host = perm.ip
        self._request(_Kind.PERMISSION, CREATE_PERMISSION, {XOR_PEER_ADDRESS: (host, 0)}, now, perm)

    def _permission_timer(self, perm: Permission, now: float) -> None:
        if perm.pending or perm.awaiting_channel:
            return
        if perm.installed:
            if now >= perm.expires_at:
                perm.installed = False
                perm.refresh_at = math.inf
                if not perm.sticky and not perm.queue:
                    del self.permissions[perm.ip]
                    return
            elif now >= perm.refresh_at:
                if perm.sticky or now - perm.last_used < self.settings.idle_timeout:
                    self._start_permission(perm, now)
                else:
                    perm.refresh_at = math.inf  # idle: let it expire
                return
        if not perm.installed and (perm.queue or perm.sticky) and now >= perm.retry_at:
            self._start_permission(perm, now)

    def has_permission(self, ip: str) -> bool:
        perm = self.permissions.get(ip)
        return perm is not None and perm.installed

    # ================================================================= channels

    def bind(self, peer: tuple[str, int], now: float) -> Channel | None:
        """Bind a channel to ``peer`` (or return the existing one); ``None`` when no number
        is free or the peer is in its five-minute quarantine."""
        if self.state is not State.ALLOCATED:
            raise LocalProtocolError(f"cannot bind a channel while {self.state.value}")
        key = Address(peer[0], int(peer[1]))
        ch = self.channels.get(key)
        if ch is not None:
            if ch.quarantined_until and now < ch.quarantined_until:
                return None
            if not ch.bound and not ch.pending:
                self._start_channel(ch, now)
            return ch
        number = self._free_number(now)
        if number is None:
            return None
        ch = Channel(number, key, last_used=now)
        self.channels[key] = ch
        self._by_number[number] = ch
        self._start_channel(ch, now)
        return ch

    def _free_number(self, now: float) -> int | None:
        if self._next_number <= CHANNEL_MAX:
            number = self._next_number
            self._next_number += 1
            return number
        # All numbers handed out once: reuse one whose quarantine is over.
        for number, ch in list(self._by_number.items()):
            if (
                not ch.bound
                and not ch.pending
                and ch.quarantined_until
                and (now >= ch.quarantined_until)
            ):
                del self._by_number[number]
                self.channels.pop(ch.peer, None)
                return number
        return None

    def _start_channel(self, ch: Channel, now: float) -> None:
        ch.pending = True
        ch.retry_at = math.inf
        self._request(
            _Kind.CHANNEL,
            CHANNEL_BIND,
            {CHANNEL_NUMBER: ch.number, XOR_PEER_ADDRESS: ch.peer},
            now,
            ch,
        )

    def _channel_timer(self, ch: Channel, now: float) -> None:
        if ch.pending:
            return
        if ch.quarantined_until and now >= ch.quarantined_until and not ch.bound:
            # Quarantine over: the peer may get a new binding, the number a new peer.
            ch.quarantined_until = 0.0
            self.channels.pop(ch.peer, None)
            self._by_number.pop(ch.number, None)
            return
        if ch.bound:
            if now >= ch.expires_at:
                ch.bound = False
                ch.refresh_at = math.inf
                ch.quarantined_until = ch.expires_at + CHANNEL_QUARANTINE
            elif now >= ch.refresh_at:
                if now - ch.last_used < self.settings.idle_timeout:
                    self._start_channel(ch, now)
                else:
                    ch.refresh_at = math.inf  # idle: let it expire (then quarantine)
        elif ch.retry_at <= now and not ch.quarantined_until:
            self._start_channel(ch, now)

    # ================================================================= data path

    def send(self, peer: tuple[str, int], data: bytes, now: float) -> bytes | None:
        """Frame ``data`` for ``peer``: ChannelData, a Send indication, or ``None`` when it was
        queued (a permission or channel is being created) or dropped (no allocation, queue
        full). Raises ``LocalProtocolError`` for a peer of a family we have no relay for."""
        ch = self.channels.get(peer)  # type: ignore[call-overload]
        if ch is not None and ch.bound:
            ch.last_used = now
            n = len(data)
            stats = self.stats
            stats.packets_sent += 1
            stats.bytes_sent += n
            stats.channel_packets_sent += 1
            if self.stream:
                return _pack_head(ch.number, n) + data + _PADS[n & 3]
            return _pack_head(ch.number, n) + data
        return self._send_slow(Address(peer[0], int(peer[1])), data, now)

    def _send_slow(self, peer: Address, data: bytes, now: float) -> bytes | None:
        if self.state is not State.ALLOCATED:
            self.stats.dropped += 1
            self.stats.discard("send without an allocation")
            return None
        family = 6 if ":" in peer.host else 4
        if not any(a.family == family for a in self.relayed):
            raise LocalProtocolError(
                f"no IPv{family} relayed address: cannot relay to {peer} "
                f"(relayed: {', '.join(str(a) for a in self.relayed)})"
            )
        perm = self.permissions.get(peer.host)
        if perm is None:
            perm = self.permissions[peer.host] = Permission(peer.host, last_used=now)
        perm.last_used = now
        if self.settings.use_channels:
            ch = self.channels.get(peer)
            if ch is None or (not ch.bound and not ch.pending and not ch.quarantined_until):
                ch = self.bind(peer, now)
        else:
            ch = None
        if perm.installed:
            return self._indication(peer, data)
        if ch is not None and ch.pending:
            perm.awaiting_channel = True  # the ChannelBind installs the permission too
        elif not perm.pending and now >= perm.retry_at:
            # No channel on the way (indications only, quarantine, numbers exhausted).
            self._start_permission(perm, now)
        if len(perm.queue) >= self.settings.max_queue:
            self.stats.dropped += 1
            self.stats.discard("queue full while the permission is created")
            return None
        perm.queue.append((peer, bytes(data)))
        self.stats.queued += 1
        return None

    def _indication(self, peer: Address, data: bytes) -> bytes:
        tid = _token(12)
        attr = self._peer_attr.get(peer)
        if attr is None:
            value = encode_xor_address(peer, tid)
            attr = b"\x00\x12\x00" + bytes((len(value),)) + value
            if len(value) == 8:  # IPv4 does not depend on the transaction ID: cache it
                self._peer_attr[peer] = attr
        n = len(data)
        body = [attr, _pack_head(DATA_INDICATION, n), data, _PADS[n & 3]]
        if self._dont_fragment:
            body.append(b"\x00\x1a\x00\x00")
        length = len(attr) + 4 + n + (-n & 3) + (4 if self._dont_fragment else 0)
        stats = self.stats
        stats.packets_sent += 1
        stats.bytes_sent += n
        stats.indication_packets_sent += 1
        return _STUN_HEADER.pack(_SEND_INDICATION, length, _MAGIC, tid) + b"".join(body)

    def receive(self, data: bytes, now: float) -> tuple[bytes, Address] | None:
        """One datagram (UDP) or one framed message (TCP/TLS) from the server.

        Returns ``(payload, peer)`` for application data, ``None`` for anything else
        (control messages are processed; garbage is discarded and counted).
        """
        n = len(data)
        if n >= 4 and 0x40 <= data[0] <= 0x7F:
            number, length = _unpack_head(data)
            ch = self._by_number.get(number)
            if ch is None or not ch.bound:
                self.stats.discard(
                    "ChannelData on a reserved channel number"
                    if number > CHANNEL_MAX
                    else "ChannelData on an unbound channel"
                )
                return None
            if n < 4 + length:
                self.stats.discard("ChannelData shorter than its length")
                return None
            perm = self.permissions.get(ch.peer.host)
            if perm is None or not perm.installed:
                self.stats.discard("ChannelData from a peer without permission")
                return None
            ch.last_used = now
            stats = self.stats
            stats.packets_received += 1
            stats.bytes_received += length
            stats.channel_packets_received += 1
            return data[4 : 4 + length], ch.peer
        if n < 20 or data[0] >= 0x40:
            self.stats.discard("neither STUN nor ChannelData")
            return None
        try:
            msg = decode(data, TURN_ATTRIBUTES)
        except ParseError:
            self.stats.discard("malformed STUN message")
            return None
        if msg.cls is INDICATION:
            return self._data_indication(msg, now)
        if msg.cls is REQUEST:
            self.stats.discard("request from the server")
            return None
        self._response(msg, now)
        return None

    def feed_stream(self, chunk: bytes, now: float) -> list[tuple[bytes, Address]]:
        """Bytes from a TCP/TLS connection: every application datagram they completed.

        Raises ``ParseError`` when the stream is out of sync (close the connection).
        """
        if self._framer is None:
            raise LocalProtocolError("feed_stream is for TCP/TLS clients")
        out: list[tuple[bytes, Address]] = []
        for message in self._framer.feed(chunk):
            got = self.receive(message, now)
            if got is not None:
                out.append(got)
        return out

    def _data_indication(self, msg: Message, now: float) -> tuple[bytes, Address] | None:
        if msg.method != DATA:
            self.stats.discard("indication that is not Data")
            return None
        if msg.unknown_required:
            self.stats.discard("Data indication with unknown comprehension-required attributes")
            return None
        peer: Address | None = msg.get(XOR_PEER_ADDRESS)
        if peer is None:
            self.stats.discard("Data indication without XOR-PEER-ADDRESS")
            return None
        payload: bytes | None = msg.get(DATA_INDICATION)
        icmp = msg.get(ICMP)
        perm = self.permissions.get(peer.host)
        if perm is None or not perm.installed:
            self.stats.discard("Data indication from a peer without permission")
            return None
        if icmp is not None and payload is None:
            self.stats.icmp += 1
            self._events.append(IcmpReceived(peer, icmp))
            return None
        if payload is None:
            self.stats.discard("Data indication without DATA")
            return None
        perm.last_used = now
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(payload)
        stats.indication_packets_received += 1
        return payload, peer

    # ================================================================= requests

    def _request(
        self, kind: _Kind, method: int, attributes: dict[int, Any], now: float, subject: Any = None
    ) -> None:
        request = StunRequest(
            method,
            attributes,
            self.server,
            auth=self.auth,
            timers=self.settings.timers,
            reliable=self.stream,
            software=self.settings.software,
            table=TURN_ATTRIBUTES,
            max_auth_retries=self.settings.max_auth_retries,
            max_server_error_retries=0,  # §7.4: 508 means wait, not resend
            transaction_ids=self._new_tid,
        )
        pending = _Pending(kind, request, subject)
        self._requests.append(pending)
        request.start(now)
        self._collect(pending, now)

    def _outstanding(self, kind: _Kind) -> bool:
        return any(p.kind is kind for p in self._requests)

    def _cancel_requests(self) -> None:
        for pending in self._requests:
            pending.request.cancel()
            subject = pending.subject
            if isinstance(subject, Permission | Channel):
                subject.pending = False
        self._requests.clear()

    def _drop_queues(self) -> None:
        for perm in self.permissions.values():
            if perm.queue:
                self.stats.dropped += len(perm.queue)
                perm.queue.clear()

    def _response(self, msg: Message, now: float) -> None:
        tid = msg.transaction_id
        for pending in self._requests:
            request = pending.request
            if tid not in request.transaction_ids:
                continue
            txn = request.txn
            if msg.cls is SUCCESS and txn is not None and txn.check is None:
                # T8: TURN servers authenticate every request that can succeed; a success to
                # an unsigned request is forged or broken. Drop it; retransmission goes on.
                self.stats.discard("unauthenticated success response")
                return
            unsigned = txn is not None and txn.check is None
            if not request.receive_message(msg, self.server, now):
                self.stats.discard("late or duplicate response")
                return
            if msg.cls is ERROR and pending.kind is _Kind.ALLOCATE:
                pending.unsigned_answer = msg if unsigned else None
            self._collect(pending, now)
            return
        self.stats.discard("response to no outstanding request")

    def _collect(self, pending: _Pending, now: float) -> None:
        request = pending.request
        for data, _address in request.datagrams_to_send():
            self._outbox.append(data)
            self._control_sent += 1
        event = request.next_event()
        if event is None:
            return
        if pending in self._requests:
            self._requests.remove(pending)
        self.stats.auth_retries += request.auth_retries
        self.stats.retransmissions += max(0, request.sends - len(request.transaction_ids))
        handler = {
            _Kind.ALLOCATE: self._allocate_done,
            _Kind.REFRESH: self._refresh_done,
            _Kind.DELETE: self._delete_done,
            _Kind.PERMISSION: self._permission_done,
            _Kind.CHANNEL: self._channel_done,
        }[pending.kind]
        handler(pending, event, now)

    # ---------------------------------------------------------------- outcomes

    def _allocate_done(self, pending: _Pending, event: Any, now: float) -> None:
        if isinstance(event, SuccessResponse) and event.authenticated:
            self._allocated(event.message, now)
            return
        authenticated = True
        if isinstance(event, TransactionFailed) and pending.unsigned_answer is not None:
            redirect = self._unsigned_redirect(pending.unsigned_answer)
            if redirect is not None:
                event, authenticated = redirect, False
        if isinstance(event, ErrorResponse) and event.code == 420 and self._dont_fragment:
            unknown = event.message.get(UNKNOWN_ATTRIBUTES) or ()
            if DONT_FRAGMENT in unknown:
                # §7.4: the server does not know DONT-FRAGMENT; retry without it.
                self._dont_fragment = False
                self.state = State.IDLE
                self.allocate(now)
                return
        if isinstance(event, ErrorResponse) and event.code == 437:
            self.mismatches += 1
        failure = allocate_failure(
            event,
            now,
            self.settings,
            self.mismatches,
            tweaked=self._tweaked,
            authenticated=authenticated,
        )
        if failure.code == 437 and self.mismatches >= self.settings.mismatch_tries:
            self.mismatches = 0
        if failure.code == 508 and self._tweaked:
            self._tweaked = False
        self.state = State.FAILED
        self.not_before = math.inf if failure.retry_at is None else failure.retry_at
        self._events.append(failure)

    def _unsigned_redirect(self, msg: Message) -> Redirected | TransactionFailed | None:
        """A 300 to the unsigned first Allocate (coturn's ``--alternate-server`` answer): the
        redirect to follow, why not, or ``None`` when ``msg`` is not a well-formed 300.

        ``StunRequest`` refuses every unprotected 300 (§14.8). That rule protects a client
        whose request carried credentials; this one carried none, so the answer could not
        have been signed (RFC 8489 §10: "there are use cases for ALTERNATE-SERVER where
        authentication of the response is not possible"). Following it gives the alternate
        no more than any server gets: our signed Allocate only after it challenged us, and no
        allocation unless its success verifies with our long-term key (T8). A forger needs the
        transaction ID (on-path, where it sees our signed requests anyway); over TLS the 300
        came through the verified connection. The S20 checks still apply."""
        error = msg.get(ERROR_CODE)
        if error is None or not error.valid or error.code != 300 or msg.unknown_required:
            return None
        alternate: Address | None = msg.get(ALTERNATE_SERVER)
        if alternate is None:
            return TransactionFailed("300 Try Alternate without ALTERNATE-SERVER (§6.3.4)")
        problem = redirect_problem(self.server, alternate)
        if problem:
            return TransactionFailed(f"refusing redirect to {alternate}: {problem}")
        return Redirected(alternate, msg.get(ALTERNATE_DOMAIN))

    def _allocated(self, msg: Message, now: float) -> None:
        relayed = occurrences(msg, XOR_RELAYED_ADDRESS)
        mapped = msg.get(XOR_MAPPED_ADDRESS)
        wanted = set(self.settings.families)
        problem = None
        if not relayed:
            problem = "success response without XOR-RELAYED-ADDRESS"
        elif any(isinstance(a, UnsupportedFamily) for a in relayed):
            bad = next(a for a in relayed if isinstance(a, UnsupportedFamily))
            problem = f"relayed address of unknown family {bad.family:#04x}"
        elif any(a.family not in wanted for a in relayed):
            got = ", ".join(str(a) for a in relayed)
            problem = f"relayed address {got} is not of the requested family"
        elif isinstance(mapped, UnsupportedFamily):
            problem = f"XOR-MAPPED-ADDRESS of unknown family {mapped.family:#04x}"
        if problem is not None:
            # T1 (§7.3): delete the allocation and do not use this server again until fixed.
            self.blocked = problem
            self.state = State.ALLOCATED  # so that delete() sends the Refresh(0)
            self._events.append(
                AllocationFailed(
                    f"{problem}: deleting the allocation; this server will not be used again "
                    "until it is fixed (RFC 8656 §7.3)",
                    blocked=True,
                )
            )
            self.delete(now)
            return
        granted = msg.get(LIFETIME)
        assumed = granted is None
        if granted is None:
            granted = min(self.settings.lifetime or DEFAULT_LIFETIME, DEFAULT_LIFETIME)
        errors: tuple[AddressErrorCode, ...] = tuple(
            occurrences(msg, ADDRESS_ERROR_CODE) + occurrences(msg, LEGACY_ADDRESS_ERROR_CODE)
        )
        self.relayed = tuple(relayed)
        self.mapped = mapped
        self.state = State.ALLOCATED
        self.mismatches = 0
        self.generation += 1
        self.stats.allocations += 1
        self._schedule_refresh(now, int(granted))
        if self.settings.keepalive is not None and not self.stream:
            self.keepalive_at = now + self.settings.keepalive
        if assumed:
            # T2 without a value to honour: refresh early rather than risk a lapse.
            self.refresh_at = min(self.refresh_at, now + granted / 2)
        self._events.append(
            Allocated(
                relayed=self.relayed,
                mapped=mapped,
                lifetime=int(granted),
                expires_at=self.expires_at,
                lifetime_assumed=assumed,
                address_errors=errors,
                reservation_token=msg.get(RESERVATION_TOKEN),
                generation=self.generation,
            )
        )
        for perm in self.permissions.values():
            if perm.sticky:
                self._start_permission(perm, now)

    def _refresh_done(self, pending: _Pending, event: Any, now: float) -> None:
        if self.state is not State.ALLOCATED:
            return
        if isinstance(event, SuccessResponse) and event.authenticated:
            granted = event.message.get(LIFETIME)
            if granted == 0:
                self._lose("the server answered a Refresh with LIFETIME 0", None)
                return
            lifetime = self.lifetime if granted is None else int(granted)
            self._schedule_refresh(now, lifetime)
            self._refresh_failure = ""
            self.stats.refreshes += 1
            self._events.append(Refreshed(lifetime, self.expires_at))
            return
        if isinstance(event, ErrorResponse) and event.code == 437:
            self._lose("the server no longer has the allocation (437 on Refresh)", 437)
            return
        if isinstance(event, AuthenticationFailed):
            # After a server restart the old nonce and 5-tuple mean nothing to it; the
            # allocation is gone. A real credential problem shows on the next Allocate.
            self._lose(f"Refresh not accepted: {event.reason}", event.code or None)
            return
        self._refresh_failure = _describe(event)
        retry = now + min(self.settings.retry_interval, max(0.0, (self.expires_at - now) / 2))
        self.refresh_at = max(retry, now)

    def _delete_done(self, pending: _Pending, event: Any, now: float) -> None:
        gone = isinstance(event, ErrorResponse) and event.code == 437  # T3: already gone
        confirmed = (isinstance(event, SuccessResponse) and event.authenticated) or gone
        self.state = State.DELETED
        lost = self._lost_after_delete
        if lost is not None:
            self._lost_after_delete = None
            self.state = State.LOST
            self.auth.forget()
            self._events.append(AllocationLost(lost, 400))
            return
        reason = "already gone (437)" if gone else ("" if confirmed else _describe(event))
        self._events.append(Deleted(confirmed, reason))

    def _permission_done(self, pending: _Pending, event: Any, now: float) -> None:
        perm: Permission = pending.subject
        perm.pending = False
        if self.state is not State.ALLOCATED:
            return
        if isinstance(event, SuccessResponse) and event.authenticated:
            refreshed = perm.installed
            perm.installed = True
            perm.expires_at = now + PERMISSION_LIFETIME
            perm.refresh_at = now + self.settings.permission_refresh
            if refreshed:
                perm.refreshes += 1
                self.stats.permission_refreshes += 1
            else:
                self.stats.permissions_created += 1
            if self.permissions.get(perm.ip) is not perm:
                self.permissions[perm.ip] = perm
            self._events.append(PermissionCreated(perm.ip, perm.expires_at, refreshed))
            self._flush(perm, now)
            return
        code = event.code if isinstance(event, ErrorResponse) else None
        if code == 437:
            self._lose("the server no longer has the allocation (437 on CreatePermission)", 437)
            return
        dropped = 0
        if not perm.installed or now >= perm.expires_at:
            dropped = len(perm.queue)
            self.stats.dropped += dropped
            perm.queue.clear()
        permanent = code in (403, 443)
        perm.retry_at = now + (60.0 if permanent else self.settings.retry_interval)
        if perm.installed:
            perm.refresh_at = perm.retry_at
        self._events.append(PermissionFailed(perm.ip, _describe(event), code, dropped))

    def _channel_done(self, pending: _Pending, event: Any, now: float) -> None:
        ch: Channel = pending.subject
        ch.pending = False
        waiting = self.permissions.get(ch.peer.host)
        if waiting is not None:
            waiting.awaiting_channel = False
        if self.state is not State.ALLOCATED:
            return
        if isinstance(event, SuccessResponse) and event.authenticated:
            refreshed = ch.bound
            ch.bound = True
            ch.expires_at = now + CHANNEL_LIFETIME
            ch.refresh_at = now + self.settings.channel_refresh
            ch.retry_at = math.inf
            if refreshed:
                ch.refreshes += 1
                self.stats.channel_refreshes += 1
            else:
                self.stats.channels_bound += 1
            # ChannelBind installs or refreshes the peer's permission too (§12.2).
            perm = self.permissions.get(ch.peer.host)
            if perm is None:
                perm = self.permissions[ch.peer.host] = Permission(ch.peer.host, last_used=now)
            if not perm.installed:
                self.stats.permissions_created += 1
                self._events.append(PermissionCreated(perm.ip, now + PERMISSION_LIFETIME))
            perm.installed = True
            perm.expires_at = max(perm.expires_at, now + PERMISSION_LIFETIME)
            due = now + self.settings.permission_refresh
            perm.refresh_at = due if perm.refresh_at <= now else min(perm.refresh_at, due)
            self._events.append(ChannelBound(ch.peer, ch.number, refreshed))
            self._flush(perm, now)
            return
        code = event.code if isinstance(event, ErrorResponse) else None
        if code == 437:
            self._lose("the server no longer has the allocation (437 on ChannelBind)", 437)
            return
        if code == 400:
            # T7 (§12.3): the server disagrees with our view of channels. Delete the
            # allocation and start afresh rather than guess which side is wrong.
            reason = "400 on ChannelBind: client and server channel state out of sync"
            self._events.append(ChannelFailed(ch.peer, ch.number, reason, code))
            self._lost_after_delete = reason
            self._cancel_requests()
            self._drop_queues()
            self._forget_bindings()
            self.state = State.DELETING
            self._request(_Kind.DELETE, REFRESH, {LIFETIME: 0}, now)
            return
        if isinstance(event, TimedOut | IntegrityViolated) or code is None or code >= 500:
            # Unknown outcome: the same number/peer pair may be re-sent at any time.
            ch.retry_at = now + self.settings.retry_interval
        else:
            # The server refused the binding: no state on its side; use indications.
            ch.retry_at = math.inf
            ch.quarantined_until = now + CHANNEL_QUARANTINE
        self._events.append(ChannelFailed(ch.peer, ch.number, _describe(event), code))
        perm = self.permissions.get(ch.peer.host)
        if (
            perm is not None
            and not perm.installed
            and not perm.pending
            and perm.queue
            and now >= perm.retry_at
        ):
            self._start_permission(perm, now)

    def _flush(self, perm: Permission, now: float) -> None:
        if not perm.queue:
            return
        queue, perm.queue = perm.queue, []
        for peer, data in queue:
            wire = self.send(peer, data, now)
            if wire is not None:
                self._outbox.append(wire)

    # ================================================================= introspection

    def describe(self) -> dict[str, Any]:
        """A JSON-able snapshot for reports and ``nattrav relay allocate --json``."""
        return {
            "state": self.state.value,
            "server": str(self.server),
            "transport": self.transport,
            "relayed": [str(a) for a in self.relayed],
            "mapped": None if self.mapped is None else str(self.mapped),
            "lifetime": self.lifetime,
            "generation": self.generation,
            "permissions": sorted(ip for ip, p in self.permissions.items() if p.installed),
            "channels": {
                str(ch.peer): f"{ch.number:#06x}" for ch in self.channels.values() if ch.bound
            },
        }


def _describe(event: Any) -> str:
    describe = getattr(event, "describe", None)
    if callable(describe):
        return str(describe())
    return repr(event)
