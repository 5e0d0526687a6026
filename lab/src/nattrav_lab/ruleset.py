"""nftables rulesets for the lab's routers, as text for ``nft -f``.

A home router here is what RFC 4787 / RFC 6092 describe: NAT with a stateful firewall that lets
in replies only (address-and-port-dependent filtering), IPv6 routed without NAT66 behind the same
stateful firewall, and miniupnpd adding port mappings and pinholes to chains of its own.

miniupnpd's nftables backend expects ``table inet filter`` with the chains ``miniupnpd``
(jumped from forward), ``prerouting_miniupnpd`` and ``postrouting_miniupnpd`` (jumped from the
nat chains); Debian's ``nft_init.sh`` for that is broken, so we create them here.

The router must also drop *new* inbound traffic addressed to itself unless a local socket owns
the port: if it accepted an unsolicited packet from a peer, conntrack would record that flow and
a LAN host's later outgoing packet on the same ports would be NATed to another port, which
breaks hole punching (real home routers drop such packets). A blanket drop would break
miniupnpd's own STUN check, whose CHANGE-REQUEST answers arrive as new flows; nft's ``socket``
expression tells the two apart.

Impairments (loss, ICMP blocking) live in a table of their own, ``inet nattrav_impair``, which is
replaced whole on every change so knobs never leave stray rules behind.
"""

from __future__ import annotations

from nattrav_lab.plan import SitePlan

__all__ = [
    "ICMP6_ERROR_TYPES",
    "cgnat_ruleset",
    "impair_ruleset",
    "internet_ruleset",
    "router_ruleset",
]

WAN = "wan0"
LAN = "lan0"

# ICMPv6 that a "block ICMP" knob drops: errors (PMTUD needs packet-too-big) and echo. Neighbour
# discovery is left alone or the link itself stops working.
ICMP6_ERROR_TYPES = (
    "destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
    "echo-request, echo-reply"
)

# The mark of duplicated inbound packets (nattrav_lab.impair.DUP_MARK): no conntrack for them.
DUP_MARK = 0x4E54

_INPUT_GUARD = f"""
table inet nattrav {{
    chain output_raw {{
        type filter hook output priority raw; policy accept;
        meta mark {DUP_MARK:#x} notrack
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname != "{WAN}" accept
        ct state established,related accept
        meta l4proto {{ icmp, ipv6-icmp }} accept
        ct state new socket transparent 0 accept
        counter drop
    }}
}}
"""


def router_ruleset(site: SitePlan) -> str:
    """The home router: NAT (per topology), stateful firewall, miniupnpd's chains."""
    topo = site.topology
    forward_policy = "drop" if topo.firewall else "accept"
    udp_block = "        meta l4proto udp counter drop\n" if topo.udp_blocked else ""
    if topo.nat is None:
        masquerade = ""
    else:
        flags = " fully-random" if topo.nat == "symmetric" else ""
        # Only LAN-sourced traffic: the router's own packets (miniupnpd's STUN check) must
        # keep their ports, or the check misjudges the NAT.
        masquerade = f'        ip saddr {site.lan_subnet4} oifname "{WAN}" masquerade{flags}\n'
    return f"""
table inet filter {{
    chain forward {{
        type filter hook forward priority filter; policy {forward_policy};
{udp_block}        ct state established,related accept
        ct state invalid drop
        iifname "{LAN}" oifname "{WAN}" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
{masquerade}    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
{_INPUT_GUARD}"""


def cgnat_ruleset(site: SitePlan) -> str:
    """The carrier-grade NAT of ``double``: endpoint-independent NAT44, IPv6 routed openly."""
    return f"""
table inet cgnat {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        meta nfproto ipv4 ct state established,related accept
        meta nfproto ipv4 iifname "{LAN}" oifname "{WAN}" accept
        meta nfproto ipv4 drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {site.cgnat_subnet4} oifname "{WAN}" masquerade
    }}
}}
{_INPUT_GUARD}"""


def internet_ruleset() -> str:
    """The internet namespace routes freely; nothing to add beyond an empty table."""
    return "table inet nattrav {\n}\n"


def impair_ruleset(
    *,
    loss_in: int = 0,
    loss_out: int = 0,
    block_icmp: bool = False,
) -> str:
    """Replace ``inet nattrav_impair`` with rules for the given knobs (none: empty table)."""
    forward: list[str] = []
    local: list[str] = []

    def loss(match: str, percent: int) -> str:
        # numgen's range is 0-99: 100 % is a plain drop
        chance = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
        return f"{match} {chance}counter drop"

    if loss_in:
        forward.append(loss(f'iifname "{WAN}"', loss_in))
    if loss_out:
        forward.append(loss(f'oifname "{WAN}"', loss_out))
    if block_icmp:
        icmp = [
            "meta l4proto icmp counter drop",
            f"icmpv6 type {{ {ICMP6_ERROR_TYPES} }} counter drop",
        ]
        forward += icmp
        local += icmp
    body_f = "".join(f"        {r}\n" for r in forward)
    body_l = "".join(f"        {r}\n" for r in local)
    return f"""
table inet nattrav_impair {{
}}
delete table inet nattrav_impair
table inet nattrav_impair {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
{body_f}    }}
    chain output {{
        type filter hook output priority -10; policy accept;
{body_l}    }}
    chain input {{
        type filter hook input priority -10; policy accept;
{body_l}    }}
}}
"""
