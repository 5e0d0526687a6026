"""Local interfaces and their addresses, classified for NAT traversal.

ifaddr is the one dependency that works the same on Linux, macOS and Windows. The result is a
plain list of ``InterfaceAddress`` values so reports, the direct method and the port-mapping
plugins all see the same picture.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import attrs

from nattrav.addresses import AddressScope, scope_of

__all__ = ["InterfaceAddress", "list_addresses"]


@attrs.frozen
class InterfaceAddress:
    """One address of one interface. ``ip`` is in canonical text form without zone."""

    interface: str
    ip: str
    prefix: int
    scope: AddressScope

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    def as_dict(self) -> dict[str, object]:
        return {
            "interface": self.interface,
            "ip": self.ip,
            "prefix": self.prefix,
            "family": self.family,
            "scope": self.scope.value,
        }


def _from_ifaddr() -> list[tuple[str, str, int]]:
    import ifaddr

    found: list[tuple[str, str, int]] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            # IPv6 entries are (address, flowinfo, scope_id) tuples.
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            found.append((adapter.nice_name, text, ip.network_prefix))
    return found


def list_addresses(
    *,
    families: Sequence[int] = (4, 6),
    source: Callable[[], list[tuple[str, str, int]]] | None = None,
) -> list[InterfaceAddress]:
    """Every address of every interface, sorted by interface then address.

    ``source`` replaces the OS enumeration (tests pass recorded data).
    """
    result: list[InterfaceAddress] = []
    seen: set[tuple[str, str]] = set()
    for name, text, prefix in (source or _from_ifaddr)():
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version not in families or (name, str(ip)) in seen:
            continue
        seen.add((name, str(ip)))
        result.append(InterfaceAddress(name, str(ip), prefix, scope_of(ip)))
    result.sort(key=lambda a: (a.interface, a.family, a.ip))
    return result
