"""SOAP answers of a UPnP IGD (``nattrav_upnp.soap.parse_response``): out-arguments or a fault.

Input: byte 0 picks the HTTP status, byte 1 the action, the rest is the body. Allowed
outcomes: a mapping of out-argument names to bounded strings, a typed ``UpnpActionError``
(a UPnPError fault, carrying its numeric code), ``UpnpHttpError`` (a non-200 status without a
fault) or ParseError. Nothing else.
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented, pick

with instrumented("nattrav_upnp"):
    from nattrav_upnp import errors, soap

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_upnp.soap.parse_response: a SOAP response or fault body"
MAX_LEN = 16384
STATUSES = (200, 500, 400, 401, 404, 503)
ACTIONS = (
    "GetExternalIPAddress",
    "AddPortMapping",
    "GetSpecificPortMappingEntry",
    "GetStatusInfo",
    "DeletePortMapping",
    "AddAnyPortMapping",
    "GetGenericPortMappingEntry",
    "AddPinhole",
    "GetFirewallStatus",
)
_FIREWALL = frozenset({"AddPinhole", "GetFirewallStatus"})


def known_issue(exc: BaseException) -> bool:
    """Findings already reported and tolerated so a long session finds new ones (none now:
    the ones found earlier are fixed, docs/threats.md)."""
    return False


def _fault(exc: errors.UpnpActionError) -> bool:
    """A well-formed UPnPError fault is a valid answer: it carries its numeric code."""
    assert isinstance(exc.code, int) and exc.code >= 0
    return True


def check(data: bytes) -> bool:
    if len(data) < 2:
        return False
    status = pick(STATUSES, data[0])
    action = pick(ACTIONS, data[1])
    try:
        values = soap.parse_response(action, status, data[2:], firewall=action in _FIREWALL)
    except errors.UpnpActionError as exc:
        return _fault(exc)
    except (errors.UpnpHttpError, ParseError):
        return False
    except ValueError as exc:
        if known_issue(exc):
            return False
        raise
    assert status == 200
    for name, value in values.items():
        assert name and isinstance(value, str) and len(value) <= soap.MAX_VALUE
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
