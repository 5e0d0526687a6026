"""Judging what gateways say: is the external address public, which service is best?

Pure functions over values the driver collected, so the rules are tested without a network.

External address (hostile-inputs.md H5, peers.md pain point 11): a router behind another NAT
happily creates mappings on its private WAN address, which nobody on the internet can reach.
``classify_external_ip`` uses ``nattrav.addresses.scope_of`` (the documentation ranges count
as public: the lab's internet lives there): public -> usable; RFC 1918, ULA or 100.64/10 ->
*double NAT*; 0.0.0.0, loopback, link-local, multicast, reserved or garbage -> *no usable
address* (WAN down, or a broken router: miniupnp#567).

Choosing among several services (X6, H6; Tailscale's ``selectBestService``, miniupnpc's
``UPNP_GetValidIGD``): connected beats unknown beats disconnected; then the default gateway's
device; then a public external address; then IGD v2; then WANIPConnection over
WANPPPConnection; ties keep discovery order.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs
from nattrav.addresses import AddressScope, scope_of

from nattrav_upnp.control import StatusInfo
from nattrav_upnp.description import ServiceInfo, ServiceKind
from nattrav_upnp.urls import canonical_ip

__all__ = ["ExternalVerdict", "ServiceProbe", "choose_best", "classify_external_ip"]


class ExternalVerdict(enum.Enum):
    """What a router's external address is good for."""

    PUBLIC = "public"
    DOUBLE_NAT = "double-nat"
    NO_ADDRESS = "no-address"
    UNKNOWN = "unknown"  # the router did not say (the call failed)


def classify_external_ip(text: str | None) -> tuple[str | None, ExternalVerdict, str]:
    """``(canonical ip or None, verdict, human reason)`` for a ``NewExternalIPAddress``."""
    if text is None:
        return None, ExternalVerdict.UNKNOWN, "the router did not report an external address"
    ip = canonical_ip(text.strip())
    if ip is None:
        shown = text.strip()[:40] or "an empty value"
        return None, ExternalVerdict.NO_ADDRESS, f"the router reported {shown!r} as its address"
    scope = scope_of(ip)
    if scope is AddressScope.PUBLIC:
        return ip, ExternalVerdict.PUBLIC, f"external address {ip} is public"
    if scope in (AddressScope.PRIVATE, AddressScope.SHARED):
        kind = "carrier-grade NAT (100.64/10)" if scope is AddressScope.SHARED else "private"
        return (
            ip,
            ExternalVerdict.DOUBLE_NAT,
            f"external address {ip} is {kind}: double NAT, a mapping here is not reachable "
            "from the internet",
        )
    return (
        ip,
        ExternalVerdict.NO_ADDRESS,
        f"external address {ip} is {scope.value}: the WAN link is down or the router is broken",
    )


@attrs.frozen
class ServiceProbe:
    """One connection service and what asking it revealed."""

    service: ServiceInfo
    igd_version: int
    from_gateway: bool
    status: StatusInfo | None
    external_ip: str | None
    verdict: ExternalVerdict
    reason: str
    order: int = 0
    device_key: str = ""

    def score(self) -> tuple[int, int, int, int, int, int]:
        """Larger is better (see the module docstring for the order of the criteria)."""
        connected = 1 if self.status is None else 2 if self.status.connected else 0
        return (
            connected,
            int(self.from_gateway),
            int(self.verdict is ExternalVerdict.PUBLIC),
            max(
                self.igd_version,
                self.service.version if self.service.kind is ServiceKind.WAN_IP else 1,
            ),
            int(self.service.kind is ServiceKind.WAN_IP),
            -self.order,
        )


def choose_best(probes: Sequence[ServiceProbe]) -> ServiceProbe | None:
    """The best service, or ``None`` when there is none."""
    return max(probes, key=lambda p: p.score(), default=None)
