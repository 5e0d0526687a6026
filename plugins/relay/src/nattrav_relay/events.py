"""What the TURN client reports: frozen values, one per lifecycle step.

Protocol-allowed outcomes are events, never exceptions (DESIGN.md §2): a server that refuses
an allocation, a permission it forbids, an allocation that vanished with a server restart are
things a network does. The driver turns them into ``LeaseEvent``s for the chain and into the
endpoint's event stream for library users.

Schedules travel as data: ``AllocationFailed.retry_at`` is the earliest time (on the clock the
caller passed in as ``now``) at which RFC 8656 §7.4 lets the client try this server again;
``None`` means "not until something changes" (credentials, configuration, the server).
"""

from __future__ import annotations

import attrs
from nattrav_stun.codec import Address

from nattrav_relay.attributes import AddressErrorCode, Icmp

__all__ = [
    "AllocationFailed",
    "AllocationLost",
    "Allocated",
    "ChannelBound",
    "ChannelFailed",
    "Deleted",
    "IcmpReceived",
    "PermissionCreated",
    "PermissionFailed",
    "Refreshed",
    "TurnEvent",
]


@attrs.frozen
class Allocated:
    """The server granted an allocation (integrity verified, addresses usable).

    ``relayed`` lists the relayed transport addresses (two for a dual allocation);
    ``address_errors`` says why a requested family was not allocated. ``lifetime`` is what
    the server granted (T2: the received value, not the requested one); when the response
    lacked LIFETIME, ``lifetime_assumed`` is true and the client refreshes early.
    """

    relayed: tuple[Address, ...]
    mapped: Address | None
    lifetime: int
    expires_at: float
    lifetime_assumed: bool = False
    address_errors: tuple[AddressErrorCode, ...] = ()
    reservation_token: bytes | None = None
    generation: int = 1

    def describe(self) -> str:
        where = ", ".join(str(a) for a in self.relayed)
        return f"allocated {where} for {self.lifetime} s"


@attrs.frozen
class AllocationFailed:
    """No allocation was made. ``retry_at``: earliest retry (``None``: do not retry);
    ``new_five_tuple``: retry from another local address/port or connection (437, §7.4);
    ``blocked``: this server must not be used until it is fixed (T1);
    ``redirect``: a 300 (Try Alternate) that may be followed named another server (RFC 8489
    §10): an authenticated one, or an unprotected one to the first Allocate, which carried no
    credentials (``redirect_authenticated`` says which); ``redirect_domain`` is its
    ALTERNATE-DOMAIN (the TLS name to verify at the alternate), if any."""

    reason: str
    code: int | None = None
    retry_at: float | None = None
    new_five_tuple: bool = False
    blocked: bool = False
    timed_out: bool = False
    redirect: Address | None = None
    redirect_domain: str | None = None
    redirect_authenticated: bool = False

    def describe(self) -> str:
        code = f" ({self.code})" if self.code else ""
        return f"allocation failed{code}: {self.reason}"


@attrs.frozen
class Refreshed:
    """A Refresh succeeded; ``lifetime`` is what the server granted this time."""

    lifetime: int
    expires_at: float


@attrs.frozen
class AllocationLost:
    """The allocation is gone (437 on Refresh, expiry without a successful refresh, the
    TCP/TLS connection closed, a ChannelBind 400 that forced a restart). Re-allocate."""

    reason: str
    code: int | None = None


@attrs.frozen
class Deleted:
    """The allocation was deleted (``confirmed``: the server answered success or 437)."""

    confirmed: bool
    reason: str = ""


@attrs.frozen
class PermissionCreated:
    """A permission for ``ip`` is installed (or was refreshed) until ``expires_at``."""

    ip: str
    expires_at: float
    refreshed: bool = False


@attrs.frozen
class PermissionFailed:
    """CreatePermission for ``ip`` failed; ``dropped`` datagrams waiting for it were lost."""

    ip: str
    reason: str
    code: int | None = None
    dropped: int = 0


@attrs.frozen
class ChannelBound:
    """Channel ``number`` is bound to ``peer`` (or the binding was refreshed)."""

    peer: Address
    number: int
    refreshed: bool = False


@attrs.frozen
class ChannelFailed:
    """ChannelBind failed; traffic to ``peer`` uses Send indications meanwhile."""

    peer: Address
    number: int
    reason: str
    code: int | None = None


@attrs.frozen
class IcmpReceived:
    """The server relayed an ICMP error from ``peer`` (RFC 8656 §11.5)."""

    peer: Address
    icmp: Icmp


TurnEvent = (
    Allocated
    | AllocationFailed
    | Refreshed
    | AllocationLost
    | Deleted
    | PermissionCreated
    | PermissionFailed
    | ChannelBound
    | ChannelFailed
    | IcmpReceived
)
