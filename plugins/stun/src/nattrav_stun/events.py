"""What a STUN transaction or request ends with: frozen values, compared by their essentials.

Protocol-allowed outcomes are events, never exceptions (DESIGN.md §2): a timeout, an error
response, a server that refused our credentials are all things a network does. Each event
has an ``ok`` property so a caller can branch without ``isinstance`` ladders, and a
``describe()`` that reads well in a log line or a CLI error.

Fields that vary between otherwise equal outcomes (round-trip time, the full message) are
excluded from equality so that tests can write ``assert event == TimedOut(sends=3)``.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

from nattrav_stun.codec import (
    OTHER_ADDRESS,
    RESPONSE_ORIGIN,
    SOFTWARE,
    Address,
    ErrorCode,
    Message,
)

__all__ = [
    "AuthenticationFailed",
    "BindingResult",
    "ErrorResponse",
    "Event",
    "IntegrityViolated",
    "Redirected",
    "SuccessResponse",
    "TimedOut",
    "TransactionFailed",
]


@attrs.frozen
class SuccessResponse:
    """A success response that passed every check (and integrity, when the request was
    signed: ``authenticated``). ``rtt`` is set only when no retransmission happened (Karn)."""

    message: Message = attrs.field(eq=False, repr=False)
    source: Address
    authenticated: bool = False
    rtt: float | None = attrs.field(default=None, eq=False)
    sends: int = attrs.field(default=1, eq=False)
    #: the local address the answer arrived at, when that is not the sending socket
    #: (RESPONSE-PORT and other RFC 5780 tricks); ``None``: where it was sent from
    received_on: Address | None = attrs.field(default=None, eq=False)

    ok = True

    @property
    def mapped(self) -> Address | None:
        """XOR-MAPPED-ADDRESS of a Binding success."""
        return self.message.xor_mapped_address

    def describe(self) -> str:
        return f"success from {self.source}" + (" (authenticated)" if self.authenticated else "")


@attrs.frozen
class ErrorResponse:
    """An error response the request layer did not handle itself (anything but 401/438 that
    could be retried, 5xx within its retry budget, and a usable 300)."""

    code: int
    reason: str
    source: Address
    message: Message = attrs.field(eq=False, repr=False)
    authenticated: bool = attrs.field(default=False, eq=False)

    ok = False

    @property
    def error(self) -> ErrorCode:
        return ErrorCode(self.code, self.reason)

    def describe(self) -> str:
        return f"error response {self.code} {self.reason!r} from {self.source}"


@attrs.frozen
class TimedOut:
    """No acceptable response within the schedule (Rc sends, then Rm x RTO; or Ti)."""

    sends: int
    elapsed: float = attrs.field(default=0.0, eq=False)

    ok = False

    def describe(self) -> str:
        return f"no response after {self.sends} sends ({self.elapsed:.1f} s)"


@attrs.frozen
class IntegrityViolated:
    """Responses arrived but none passed the integrity check (RFC 8489 §9.1.4, §9.2.5):
    reported instead of a timeout so a tampering path is not mistaken for a lossy one."""

    sends: int
    discarded: int
    detail: str = attrs.field(default="", eq=False)

    ok = False

    def describe(self) -> str:
        extra = f"; last: {self.detail}" if self.detail else ""
        return f"{self.discarded} response(s) failed the integrity check{extra}"


@attrs.frozen
class TransactionFailed:
    """The transaction failed for a reason the RFC names: unknown comprehension-required
    attributes, an error response without a valid ERROR-CODE, a broken connection, a hard
    ICMP error, a redirect that must not be followed."""

    reason: str

    ok = False

    def describe(self) -> str:
        return self.reason


@attrs.frozen
class AuthenticationFailed:
    """The server wanted credentials and the exchange cannot succeed: none configured,
    rejected, no common password algorithm, a bid-down attempt, too many retries."""

    reason: str
    code: int = 0

    ok = False

    def describe(self) -> str:
        return self.reason


@attrs.frozen
class Redirected:
    """An authenticated 300 (Try Alternate) with an acceptable ALTERNATE-SERVER (§10)."""

    alternate: Address
    domain: str | None = None

    ok = False

    def describe(self) -> str:
        return f"redirected to {self.alternate}" + (f" ({self.domain})" if self.domain else "")


Event = (
    SuccessResponse
    | ErrorResponse
    | TimedOut
    | IntegrityViolated
    | TransactionFailed
    | AuthenticationFailed
    | Redirected
)


class BindingResult(NamedTuple):
    """What a Binding transaction taught: the mapped address and the server's RFC 5780 hints.

    ``server`` is where the request went, ``source`` where the response came from, ``local``
    the socket it left from (when known).

    A named tuple rather than an attrs class, like ``codec.Address``: one is built for every
    Binding an application makes, and an attrs frozen class of eleven fields costs more to
    build than the whole response takes to check (``StunClient.binding`` is benchmarked).
    Immutable, compared and hashed by value; ``_replace`` makes a modified copy.
    """

    mapped: Address
    server: Address
    source: Address
    local: Address | None = None
    response_origin: Address | None = None
    other_address: Address | None = None
    software: str | None = None
    rtt: float | None = None
    authenticated: bool = False
    transport: str = "udp"
    #: see ``SuccessResponse.received_on``
    received_on: Address | None = None

    @classmethod
    def from_event(
        cls,
        event: SuccessResponse,
        server: Address,
        local: Address | None = None,
        transport: str = "udp",
    ) -> BindingResult:
        """Build from a Binding success; ``ValueError`` when XOR-MAPPED-ADDRESS is missing
        (a failed transaction, RFC 8489 §6.3.3)."""
        msg = event.message
        mapped = msg.xor_mapped_address
        if mapped is None:
            raise ValueError("Binding success response without XOR-MAPPED-ADDRESS")
        return cls(
            mapped=mapped,
            server=server,
            source=event.source,
            local=local,
            response_origin=msg.get(RESPONSE_ORIGIN),
            other_address=msg.get(OTHER_ADDRESS),
            software=msg.get(SOFTWARE),
            rtt=event.rtt,
            authenticated=event.authenticated,
            transport=transport,
            received_on=event.received_on,
        )

    def to_json(self) -> dict[str, object]:
        def text(a: Address | None) -> str | None:
            return None if a is None else str(a)

        return {
            "mapped": str(self.mapped),
            "server": str(self.server),
            "source": str(self.source),
            "local": text(self.local),
            "response_origin": text(self.response_origin),
            "other_address": text(self.other_address),
            "software": self.software,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "authenticated": self.authenticated,
            "transport": self.transport,
        }
