"""Result codes of NAT-PMP (RFC 6886 §3.5) and PCP (RFC 6887 §7.4) as typed errors.

A gateway's error answer is an outcome the protocol allows, so the state machines report it as
an event carrying one of these exceptions; the method and the CLI raise it. They are
``MethodError`` subclasses so the chain records the reason and decides on retries from
``retryable`` alone: only the "try again later" class of codes is retryable, and for PCP only
when the server's error lifetime (how long it promises to give the same answer, RFC 6887 §7.2)
is short enough that an immediate retry can succeed.
"""

from __future__ import annotations

import enum

from nattrav.errors import MethodError

__all__ = [
    "GatewayError",
    "NatPmpError",
    "NatPmpResult",
    "PcpError",
    "PcpResult",
]

METHOD = "natpmp"

#: A PCP error whose lifetime is at most this many seconds may be retried at once.
_PCP_RETRY_NOW = 2


class NatPmpResult(enum.IntEnum):
    """NAT-PMP result codes (RFC 6886 §3.5)."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2  # "Not Authorized/Refused": e.g. the box has NAT-PMP disabled
    NETWORK_FAILURE = 3  # e.g. the NAT box has no DHCP lease yet
    OUT_OF_RESOURCES = 4  # no more ports or mappings
    UNSUPPORTED_OPCODE = 5


class PcpResult(enum.IntEnum):
    """PCP result codes (RFC 6887 §7.4)."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


_NATPMP_TEXT = {
    NatPmpResult.UNSUPPORTED_VERSION: "unsupported version",
    NatPmpResult.NOT_AUTHORIZED: "not authorized / refused (is NAT-PMP enabled on the router?)",
    NatPmpResult.NETWORK_FAILURE: "network failure (the gateway has no external address yet)",
    NatPmpResult.OUT_OF_RESOURCES: "out of resources (no free ports or mappings)",
    NatPmpResult.UNSUPPORTED_OPCODE: "unsupported opcode",
}

_PCP_TEXT = {
    PcpResult.UNSUPP_VERSION: "unsupported version",
    PcpResult.NOT_AUTHORIZED: "not authorized (PCP disabled, or the mapping belongs to another "
    "nonce)",
    PcpResult.MALFORMED_REQUEST: "malformed request",
    PcpResult.UNSUPP_OPCODE: "unsupported opcode",
    PcpResult.UNSUPP_OPTION: "unsupported mandatory option",
    PcpResult.MALFORMED_OPTION: "malformed option",
    PcpResult.NETWORK_FAILURE: "network failure (the gateway has no external address yet)",
    PcpResult.NO_RESOURCES: "no resources (no free ports or mappings)",
    PcpResult.UNSUPP_PROTOCOL: "unsupported protocol",
    PcpResult.USER_EX_QUOTA: "user exceeded quota",
    PcpResult.CANNOT_PROVIDE_EXTERNAL: "cannot provide the suggested external address/port",
    PcpResult.ADDRESS_MISMATCH: "address mismatch (a NAT between us and the PCP server?)",
    PcpResult.EXCESSIVE_REMOTE_PEERS: "excessive remote peers",
}

_NATPMP_TRANSIENT = frozenset({NatPmpResult.NETWORK_FAILURE, NatPmpResult.OUT_OF_RESOURCES})
# RFC 6887 §7.4 calls these the short-lifetime errors: the condition may clear soon.
_PCP_TRANSIENT = frozenset(
    {PcpResult.NETWORK_FAILURE, PcpResult.NO_RESOURCES, PcpResult.USER_EX_QUOTA}
)


class GatewayError(MethodError):
    """A NAT-PMP or PCP gateway answered a request with a non-zero result code."""

    protocol: str = ""
    #: The result code as the protocol's enum, or the raw number when it is undefined.
    result: int

    def __init__(self, code: int, reason: str, *, retryable: bool) -> None:
        self.code = code
        super().__init__(METHOD, reason, retryable=retryable)


class NatPmpError(GatewayError):
    """A NAT-PMP error result. ``code`` is a ``NatPmpResult`` or, for a code RFC 6886 does not
    define, the raw number (such a code is fatal for that request, RFC 6886 §3.5)."""

    protocol = "NAT-PMP"

    def __init__(self, code: int) -> None:
        known: NatPmpResult | int
        try:
            known = NatPmpResult(code)
        except ValueError:
            known = code
        text = (
            _NATPMP_TEXT.get(known, "error")
            if isinstance(known, NatPmpResult)
            else "undefined result code"
        )
        self.result = known
        super().__init__(
            code,
            f"NAT-PMP gateway answered result {code} ({text})",
            retryable=known in _NATPMP_TRANSIENT,
        )


class PcpError(GatewayError):
    """A PCP error result. ``lifetime`` is the error lifetime: how long (s) the server will keep
    answering the same request with the same error (RFC 6887 §7.2); do not ask sooner."""

    protocol = "PCP"

    def __init__(self, code: int, lifetime: int = 0) -> None:
        known: PcpResult | int
        try:
            known = PcpResult(code)
        except ValueError:
            known = code
        text = (
            _PCP_TEXT.get(known, "error")
            if isinstance(known, PcpResult)
            else "undefined result code"
        )
        self.result = known
        self.lifetime = lifetime
        suffix = f"; same answer for the next {lifetime} s" if lifetime else ""
        super().__init__(
            code,
            f"PCP server answered result {code} ({text}){suffix}",
            retryable=known in _PCP_TRANSIENT and lifetime <= _PCP_RETRY_NOW,
        )
