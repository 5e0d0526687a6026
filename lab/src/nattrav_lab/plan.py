"""Topologies and the address plan: pure data, no I/O.

Every lab uses the same addresses: labs are isolated from each other and from the host, so
reusing them costs nothing and lets tests and docs name fixed addresses. Public addresses come
from the documentation ranges (RFC 5737, RFC 3849), which ``nattrav.addresses.is_public``
counts as public, so a lab's "internet" looks public to nattrav while nothing in it can ever
be confused with a real host.

::

    internet namespace (forwards between sites; coturn and test peers on lo)
      coturn  203.0.113.1 (primary) 203.0.113.2 (alternate)  2001:db8::1  2001:db8::2
      peers   203.0.113.100-119                               2001:db8::100-119
      site<n> 198.51.100.<b+1>/26                             2001:db8:<n>::1/64
         |
      [double only] cgnat namespace: wan0 198.51.100.<b+2>   2001:db8:<n>::2
                                     lan0 100.64.<n>.1/24    2001:db8:<n>:ff::1/64
         |
      router namespace: wan0 198.51.100.<b+2> (or 100.64.<n>.2 behind the CGNAT)
                        lan0 (bridge) 192.168.<n>.1/24  2001:db8:<n>:1::1/64
         |                       (open: 192.0.2.<b+1>/26)
      lan   host: eth0 192.168.<n>.10   2001:db8:<n>:1::10   (open: 192.0.2.<b+10>)
      lan2  host: eth0 192.168.<n>.11   2001:db8:<n>:1::11   (open: 192.0.2.<b+11>)

``n`` is the site number (1 or 2) and ``b = (n - 1) * 64``.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = [
    "TOPOLOGIES",
    "InternetPlan",
    "SitePlan",
    "Topology",
    "internet_plan",
    "site_plan",
    "topology",
]


@attrs.frozen
class Topology:
    """What a topology's router does.

    ``nat``: ``"eim"`` (endpoint-independent mapping: plain ``masquerade``, which keeps the
    source port when it can), ``"symmetric"`` (``masquerade fully-random``: a new port per
    destination) or ``None`` (routed, public LAN addresses). Filtering is always address-and-port
    dependent where there is a firewall (conntrack lets in replies only).
    """

    name: str
    nat: str | None
    firewall: bool
    igd: bool
    cgnat: bool = False
    udp_blocked: bool = False
    description: str = ""


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology(
            "eim",
            "eim",
            firewall=True,
            igd=True,
            description="home router: endpoint-independent mapping, address-and-port-dependent "
            "filtering, UPnP IGD v2 + NAT-PMP + PCP",
        ),
        Topology(
            "symmetric",
            "symmetric",
            firewall=True,
            igd=True,
            description="home router: address-and-port-dependent mapping (masquerade "
            "fully-random), UPnP IGD v2 + NAT-PMP + PCP",
        ),
        Topology(
            "open",
            None,
            firewall=False,
            igd=False,
            description="no NAT and no firewall: the LAN host has public addresses",
        ),
        Topology(
            "double",
            "eim",
            firewall=True,
            igd=True,
            cgnat=True,
            description="eim home router (with miniupnpd) behind a carrier-grade NAT in "
            "100.64.0.0/10: gateway mappings are useless",
        ),
        Topology(
            "no-igd",
            "eim",
            firewall=True,
            igd=False,
            description="like eim, but the router speaks no UPnP, NAT-PMP or PCP",
        ),
        Topology(
            "udp-blocked",
            "eim",
            firewall=True,
            igd=False,
            udp_blocked=True,
            description="eim router that drops all forwarded UDP (TCP and TLS still pass), "
            "no gateway protocols",
        ),
    )
}


def topology(name: str) -> Topology:
    """The topology called ``name``; ``ValueError`` naming the valid ones otherwise."""
    try:
        return TOPOLOGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}"
        ) from None


@attrs.frozen
class InternetPlan:
    """The internet side: coturn's two addresses per family and free test-peer addresses."""

    stun_primary_ip4: str = "203.0.113.1"
    stun_alternate_ip4: str = "203.0.113.2"
    stun_primary_ip6: str = "2001:db8::1"
    stun_alternate_ip6: str = "2001:db8::2"
    peer_ips4: tuple[str, ...] = tuple(f"203.0.113.{100 + i}" for i in range(20))
    peer_ips6: tuple[str, ...] = tuple(f"2001:db8::{100 + i}" for i in range(20))


def internet_plan() -> InternetPlan:
    return InternetPlan()


@attrs.frozen
class SitePlan:
    """Addresses of one site (router, optional CGNAT, LAN hosts). See the module docstring."""

    index: int
    topology: Topology
    # the link between the internet namespace and the site's outermost router
    inet_link_ip4: str
    inet_link_ip6: str
    inet_link_prefix4: int
    # the home router
    router_wan_ip4: str
    router_wan_ip6: str
    router_wan_gateway4: str
    router_wan_gateway6: str
    router_wan_prefix4: int
    router_lan_ip4: str
    router_lan_ip6: str
    lan_subnet4: str
    lan_subnet6: str
    lan_host_ip4: str
    lan_host_ip6: str
    lan_host2_ip4: str
    lan_host2_ip6: str
    # what the internet sees as the site's IPv4 source address (NAT or not)
    public_ip4: str
    # the carrier-grade NAT (double only)
    cgnat_wan_ip4: str | None
    cgnat_wan_ip6: str | None
    cgnat_lan_ip4: str | None
    cgnat_lan_ip6: str | None
    cgnat_subnet4: str | None

    @property
    def site_prefix6(self) -> str:
        """The /48 the internet routes to this site."""
        return f"2001:db8:{self.index}::/48"

    @property
    def lan_prefix4(self) -> int:
        return ipaddress.ip_network(self.lan_subnet4).prefixlen


def site_plan(index: int, topo: Topology) -> SitePlan:
    """The address plan of site ``index`` (1 or 2) for topology ``topo``."""
    if index not in (1, 2):
        raise ValueError(f"site index must be 1 or 2, not {index}")
    b = (index - 1) * 64
    n = index
    inet_link_ip4 = f"198.51.100.{b + 1}"
    outer_wan_ip4 = f"198.51.100.{b + 2}"
    inet_link_ip6 = f"2001:db8:{n}::1"
    outer_wan_ip6 = f"2001:db8:{n}::2"
    if topo.nat is None:
        lan_subnet4 = f"192.0.2.{b}/26"
        router_lan_ip4, host4, host24 = (f"192.0.2.{b + k}" for k in (1, 10, 11))
    else:
        lan_subnet4 = f"192.168.{n}.0/24"
        router_lan_ip4, host4, host24 = (f"192.168.{n}.{k}" for k in (1, 10, 11))
    cg: dict[str, str | None]
    if topo.cgnat:
        cg = dict(
            cgnat_wan_ip4=outer_wan_ip4,
            cgnat_wan_ip6=outer_wan_ip6,
            cgnat_lan_ip4=f"100.64.{n}.1",
            cgnat_lan_ip6=f"2001:db8:{n}:ff::1",
            cgnat_subnet4=f"100.64.{n}.0/24",
        )
        router_wan_ip4, router_wan_ip6 = f"100.64.{n}.2", f"2001:db8:{n}:ff::2"
        gw4, gw6, wan_prefix4 = f"100.64.{n}.1", f"2001:db8:{n}:ff::1", 24
    else:
        cg = dict(
            cgnat_wan_ip4=None,
            cgnat_wan_ip6=None,
            cgnat_lan_ip4=None,
            cgnat_lan_ip6=None,
            cgnat_subnet4=None,
        )
        router_wan_ip4, router_wan_ip6 = outer_wan_ip4, outer_wan_ip6
        gw4, gw6, wan_prefix4 = inet_link_ip4, inet_link_ip6, 26
    return SitePlan(
        index=n,
        topology=topo,
        inet_link_ip4=inet_link_ip4,
        inet_link_ip6=inet_link_ip6,
        inet_link_prefix4=26,
        router_wan_ip4=router_wan_ip4,
        router_wan_ip6=router_wan_ip6,
        router_wan_gateway4=gw4,
        router_wan_gateway6=gw6,
        router_wan_prefix4=wan_prefix4,
        router_lan_ip4=router_lan_ip4,
        router_lan_ip6=f"2001:db8:{n}:1::1",
        lan_subnet4=lan_subnet4,
        lan_subnet6=f"2001:db8:{n}:1::/64",
        lan_host_ip4=host4,
        lan_host_ip6=f"2001:db8:{n}:1::10",
        lan_host2_ip4=host24,
        lan_host2_ip6=f"2001:db8:{n}:1::11",
        public_ip4=outer_wan_ip4 if topo.nat is not None else host4,
        cgnat_wan_ip4=cg["cgnat_wan_ip4"],
        cgnat_wan_ip6=cg["cgnat_wan_ip6"],
        cgnat_lan_ip4=cg["cgnat_lan_ip4"],
        cgnat_lan_ip6=cg["cgnat_lan_ip6"],
        cgnat_subnet4=cg["cgnat_subnet4"],
    )
