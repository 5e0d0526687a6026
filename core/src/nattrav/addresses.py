"""Address classification and ``HOST:PORT`` parsing shared by every plugin.

Why not ``ipaddress.is_global``: nattrav's lab uses the IETF documentation ranges
(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) as its public internet, and
``is_global`` calls them non-global. What matters for NAT traversal is narrower: is the address
one a NAT or home network hands out (private, shared/CGNAT, ULA), or one that can never be
reached from outside (loopback, link-local, unspecified, multicast)? Everything else counts as
public. The same classification drives the direct method and the double-NAT verdicts of the
port-mapping plugins, so they never disagree.
"""

from __future__ import annotations

import enum
import ipaddress

__all__ = [
    "AddressScope",
    "IPAddress",
    "format_hostport",
    "is_public",
    "parse_hostport",
    "parse_ip",
    "scope_of",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressScope(enum.Enum):
    """Where an address can be reached from, as far as NAT traversal is concerned."""

    PUBLIC = "public"
    PRIVATE = "private"  # RFC 1918, ULA fc00::/7
    SHARED = "shared"  # RFC 6598 carrier-grade NAT space 100.64.0.0/10
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    RESERVED = "reserved"  # 0.0.0.0/8, 240.0.0.0/4, broadcast


_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_SHARED_V4 = ipaddress.IPv4Network("100.64.0.0/10")
_RESERVED_V4 = tuple(ipaddress.IPv4Network(n) for n in ("0.0.0.0/8", "240.0.0.0/4"))
_ULA = ipaddress.IPv6Network("fc00::/7")
_LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")


def parse_ip(text: str) -> IPAddress:
    """Parse an IP literal (IPv6 may carry a ``%zone``, which is dropped). Raises ValueError."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def scope_of(address: str | IPAddress) -> AddressScope:
    """Classify ``address``; IPv4-mapped IPv6 addresses are classified as their IPv4 form."""
    ip = parse_ip(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return AddressScope.UNSPECIFIED
    if ip.is_loopback:
        return AddressScope.LOOPBACK
    if ip.is_multicast:
        return AddressScope.MULTICAST
    if isinstance(ip, ipaddress.IPv4Address):
        if ip.is_link_local:
            return AddressScope.LINK_LOCAL
        if any(ip in n for n in _PRIVATE_V4):
            return AddressScope.PRIVATE
        if ip in _SHARED_V4:
            return AddressScope.SHARED
        if any(ip in n for n in _RESERVED_V4) or ip == ipaddress.IPv4Address("255.255.255.255"):
            return AddressScope.RESERVED
        return AddressScope.PUBLIC
    if ip in _LINK_LOCAL_V6:
        return AddressScope.LINK_LOCAL
    if ip in _ULA:
        return AddressScope.PRIVATE
    return AddressScope.PUBLIC


def is_public(address: str | IPAddress) -> bool:
    """True when ``address`` is reachable from the internet side of any NAT (see module doc)."""
    return scope_of(address) is AddressScope.PUBLIC


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``HOST:PORT``, ``[IPv6]:PORT`` or (with ``default_port``) a bare host.

    A bare IPv6 literal without brackets is accepted only when ``default_port`` is given,
    because ``::1:3478`` is ambiguous. Raises ValueError with a message that says what is wrong.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after IPv6 address")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        parse_ip(host)  # brackets are only for IPv6 literals
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        parse_ip(text)
        host, port_text = text, None
    else:
        host, port_text = text, None
    if not host:
        raise ValueError(f"{text!r}: missing host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: missing port (use HOST:PORT or [IPv6]:PORT)")
        return host, default_port
    if not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} out of range 1-65535")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """Inverse of :func:`parse_hostport`: brackets IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
