"""Typed errors of the UPnP plugin, all inside nattrav's hierarchy.

Why typed per code: the recovery ladder (``planner``) decides by error class, never by string
matching, and a caller that catches ``UpnpActionError`` still sees the numeric ``code`` the
router sent. Everything a parser rejects is a ``ParseError`` (``UnsafeUrlError`` included), so
the drivers can discard garbage from the LAN with one ``except`` and count it.

UPnP error codes come from the IGD v1/v2 WANIPConnection and WANIPv6FirewallControl service
specifications and UDA 1.1 §3.2.2 (401 Invalid Action, 402 Invalid Args, 501 Action Failed,
606 Action not authorized).
"""

from __future__ import annotations

from nattrav.errors import ParseError, RemoteProtocolError

__all__ = [
    "ActionFailedError",
    "ActionNotAuthorizedError",
    "BodyTooLargeError",
    "ConflictInMappingEntryError",
    "ConflictWithOtherMechanismsError",
    "ExternalPortOnlySupportsWildcardError",
    "FirewallDisabledError",
    "InboundPinholeNotAllowedError",
    "InvalidActionError",
    "InvalidArgsError",
    "NoPortMapsAvailableError",
    "NoSuchEntryError",
    "OnlyPermanentLeasesSupportedError",
    "PinholeSpaceExhaustedError",
    "RemoteHostOnlySupportsWildcardError",
    "UnsafeUrlError",
    "UpnpActionError",
    "UpnpHttpError",
    "UpnpTimeoutError",
    "error_for_code",
]


class UnsafeUrlError(ParseError):
    """A LOCATION, URLBase or controlURL we must not fetch (loopback, another host...)."""


class UpnpHttpError(RemoteProtocolError):
    """The HTTP exchange with the gateway failed: refused, reset, malformed, redirect, status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class UpnpTimeoutError(UpnpHttpError):
    """The whole request (connect + headers + body) did not finish within its deadline."""


class BodyTooLargeError(UpnpHttpError):
    """The gateway sent more than the body size cap; the rest was not read."""


class UpnpActionError(RemoteProtocolError):
    """The gateway answered a SOAP action with a UPnPError fault.

    ``code`` is the numeric ``errorCode``; ``description`` the router's ``errorDescription``
    (untrusted text, truncated); ``action`` the action that failed.
    """

    code: int = 0
    name: str = "UPnPError"

    def __init__(self, code: int, description: str = "", *, action: str = "") -> None:
        self.code = code
        self.description = description
        self.action = action
        what = f"{action}: " if action else ""
        detail = f" ({description})" if description and description != self.name else ""
        super().__init__(f"{what}UPnP error {code} {self.name}{detail}")


class InvalidActionError(UpnpActionError):
    """401: the service does not implement the action (e.g. AddAnyPortMapping on IGD v1)."""

    name = "Invalid Action"


class InvalidArgsError(UpnpActionError):
    """402: some routers send it for any finite lease (tailscale/tailscale#15223)."""

    name = "Invalid Args"


class ActionFailedError(UpnpActionError):
    """501: a transient failure inside the router."""

    name = "Action Failed"


class ActionNotAuthorizedError(UpnpActionError):
    """606: the router refuses this control point (policy, secure mode)."""

    name = "Action not authorized"


class NoSuchEntryError(UpnpActionError):
    """714 (port mappings) / 704 (pinholes): the entry does not exist."""

    name = "NoSuchEntryInArray"


class ConflictInMappingEntryError(UpnpActionError):
    """718: the external port is mapped to another client."""

    name = "ConflictInMappingEntry"


class OnlyPermanentLeasesSupportedError(UpnpActionError):
    """725: the router accepts only lease 0 (tailscale/tailscale#9343)."""

    name = "OnlyPermanentLeasesSupported"


class RemoteHostOnlySupportsWildcardError(UpnpActionError):
    """726: RemoteHost must be empty."""

    name = "RemoteHostOnlySupportsWildcard"


class ExternalPortOnlySupportsWildcardError(UpnpActionError):
    """727: the external port must be chosen by the router (use AddAnyPortMapping)."""

    name = "ExternalPortOnlySupportsWildcard"


class NoPortMapsAvailableError(UpnpActionError):
    """728: the router's mapping table is full."""

    name = "NoPortMapsAvailable"


class ConflictWithOtherMechanismsError(UpnpActionError):
    """729: the port is used by another mechanism (NAT-PMP, PCP, a static rule)."""

    name = "ConflictWithOtherMechanisms"


class PinholeSpaceExhaustedError(UpnpActionError):
    """701: no room for another pinhole."""

    name = "PinholeSpaceExhausted"


class FirewallDisabledError(UpnpActionError):
    """702: the IPv6 firewall is off (so inbound traffic is not filtered at all)."""

    name = "FirewallDisabled"


class InboundPinholeNotAllowedError(UpnpActionError):
    """703: the router does not allow inbound pinholes."""

    name = "InboundPinholeNotAllowed"


_PORT_MAPPING_CODES: dict[int, type[UpnpActionError]] = {
    401: InvalidActionError,
    402: InvalidArgsError,
    501: ActionFailedError,
    606: ActionNotAuthorizedError,
    714: NoSuchEntryError,
    718: ConflictInMappingEntryError,
    725: OnlyPermanentLeasesSupportedError,
    726: RemoteHostOnlySupportsWildcardError,
    727: ExternalPortOnlySupportsWildcardError,
    728: NoPortMapsAvailableError,
    729: ConflictWithOtherMechanismsError,
}

# WANIPv6FirewallControl:1 reuses the 70x range with its own meanings.
_FIREWALL_CODES: dict[int, type[UpnpActionError]] = {
    401: InvalidActionError,
    402: InvalidArgsError,
    501: ActionFailedError,
    606: ActionNotAuthorizedError,
    701: PinholeSpaceExhaustedError,
    702: FirewallDisabledError,
    703: InboundPinholeNotAllowedError,
    704: NoSuchEntryError,
}


def error_for_code(
    code: int, description: str = "", *, action: str = "", firewall: bool = False
) -> UpnpActionError:
    """The typed error for a UPnPError ``code`` (the base class for codes without a name).

    ``firewall`` selects the WANIPv6FirewallControl meaning of the 70x codes.
    """
    table = _FIREWALL_CODES if firewall else _PORT_MAPPING_CODES
    cls = table.get(code, UpnpActionError)
    return cls(code, description, action=action)
