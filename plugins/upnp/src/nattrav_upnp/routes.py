"""Default gateways from Linux's routing tables (``/proc/net/route``, ``/proc/net/ipv6_route``).

Why: the unicast M-SEARCH goes to the default gateway (Eero-style routers aside, it is the
fastest and most reliable way to find the IGD that actually carries our traffic), and the
gateway's device wins when several IGDs answer. The parsers here are pure (text in, values
out); ``driver.read_default_gateways`` reads the files. Reading them from
``/proc/thread-self/net`` matters: ``/proc/net`` is the network namespace of the *process's main
thread*, which is not the namespace a thread switched into with ``setns`` (the lab does that).

This module is the plugin's stop-gap until ``nattrav.gateways`` (written for NAT-PMP) exists;
the driver prefers that module when it is importable.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["DefaultGateway", "parse_ipv4_routes", "parse_ipv6_routes"]

_RTF_UP = 0x1
_RTF_GATEWAY = 0x2


@attrs.frozen(order=True)
class DefaultGateway:
    """A default route: the next hop's address and the interface it is reached through."""

    metric: int
    address: str
    interface: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


def parse_ipv4_routes(text: str) -> list[DefaultGateway]:
    """Default IPv4 gateways in ``/proc/net/route`` text, lowest metric first.

    Each line is ``Iface Destination Gateway Flags RefCnt Use Metric Mask ...`` with addresses
    as little-endian hex. Malformed lines are skipped.
    """
    found: list[DefaultGateway] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
            metric, mask = int(fields[6]), int(fields[7], 16)
        except ValueError:
            continue
        if dest != 0 or mask != 0 or gateway == 0:
            continue
        if flags & (_RTF_UP | _RTF_GATEWAY) != (_RTF_UP | _RTF_GATEWAY):
            continue
        address = ipaddress.IPv4Address(gateway.to_bytes(4, "little"))
        found.append(DefaultGateway(metric, str(address), fields[0]))
    return sorted(found)


def parse_ipv6_routes(text: str) -> list[DefaultGateway]:
    """Default IPv6 gateways in ``/proc/net/ipv6_route`` text, lowest metric first.

    Each line is ``dest plen src plen next_hop metric refcnt use flags iface`` in big-endian
    hex. Only ``::/0`` routes with a non-zero next hop and the gateway flag count.
    """
    found: list[DefaultGateway] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            dest = int(fields[0], 16)
            plen = int(fields[1], 16)
            next_hop = int(fields[4], 16)
            metric = int(fields[5], 16)
            flags = int(fields[8], 16)
        except ValueError:
            continue
        if dest != 0 or plen != 0 or next_hop == 0 or len(fields[4]) != 32:
            continue
        if flags & (_RTF_UP | _RTF_GATEWAY) != (_RTF_UP | _RTF_GATEWAY):
            continue
        address = ipaddress.IPv6Address(next_hop)
        found.append(DefaultGateway(metric, str(address), fields[9]))
    return sorted(found)
