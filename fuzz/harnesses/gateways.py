"""Route-table parsers of core (``nattrav.gateways.parse_*``): text printed by ``/proc``,
``route``, ``netstat``, Windows ``route print`` and PowerShell.

These must never raise (their contract: skip what is not understood). Input: byte 0 picks the
parser, the rest is decoded as UTF-8 (bad bytes replaced, as a tool's output would be).
Properties: the result is a list of ``Gateway`` values, each a canonical, usable unicast IP
(never unspecified, loopback or multicast) of the family it claims, with a metric >= 0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from fuzz.engine import fuzz, instrumented, pick

with instrumented("nattrav.gateways"):
    from nattrav import gateways

DESCRIPTION = "nattrav.gateways.parse_*: route tables as printed by the OS tools"
MAX_LEN = 8192


def _route_get_v6(text: str) -> list[gateways.Gateway]:
    return gateways.parse_route_get(text, 6)


PARSERS: tuple[Callable[[str], list[gateways.Gateway]], ...] = (
    gateways.parse_proc_net_route,
    gateways.parse_proc_ipv6_route,
    gateways.parse_route_get,
    _route_get_v6,
    gateways.parse_netstat,
    gateways.parse_route_print,
    gateways.parse_get_netroute_json,
)


def known_issue(exc: BaseException) -> bool:
    """Findings already reported and tolerated so a long session finds new ones (none now:
    the ones found earlier are fixed, docs/threats.md)."""
    return False


def check(data: bytes) -> bool:
    if not data:
        return False
    parser = pick(PARSERS, data[0])
    text = data[1:].decode("utf-8", "replace")
    try:
        found = parser(text)
    except (ValueError, RecursionError) as exc:
        if known_issue(exc):
            return False
        raise
    assert isinstance(found, list)
    for gateway in found:
        assert isinstance(gateway, gateways.Gateway)
        address = ipaddress.ip_address(gateway.ip)
        assert str(address) == gateway.ip and address.version == gateway.family
        assert not (address.is_unspecified or address.is_loopback or address.is_multicast)
        assert gateway.metric >= 0
    return bool(found)


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
