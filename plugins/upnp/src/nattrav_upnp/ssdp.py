"""SSDP (UDA 1.1 §1.3) M-SEARCH requests and their unicast responses, as bytes and values.

Theory of operation
-------------------
A control point multicasts ``M-SEARCH * HTTP/1.1`` with a search target (``ST``) to
239.255.255.250:1900 (IPv4), FF02::C (IPv6 link-local scope) or FF05::C (site-local), or
unicasts it to a known device; every matching device answers with an HTTP-like ``200 OK``
datagram carrying ``LOCATION`` (its description URL), ``ST`` and ``USN``.

We search for the IGD v2 and v1 device types and the WAN connection services directly instead
of ``ssdp:all``: some routers answer ``ssdp:all`` with an unrelated descriptor only
(tailscale/tailscale#3557), and the specific targets keep media renderers and printers quiet.

Parsing is strict where laxness has hurt others (hostile-inputs.md U2, U5, U7): header names are
matched exactly and case-insensitively (``Locationx:`` is not ``LOCATION``), the datagram,
the header count and every value are bounded, a response missing LOCATION, ST or USN is
refused, and ``is_igd_response`` filters out devices that are not gateways. ``parse_response``
raises only ``ParseError``; the search state machine discards and counts what it rejects.
"""

from __future__ import annotations

import re

import attrs
from nattrav.errors import ParseError

__all__ = [
    "IGD_DEVICE_TYPES",
    "IPV4_GROUP",
    "IPV6_LINK_GROUP",
    "IPV6_SITE_GROUP",
    "MAX_DATAGRAM",
    "SEARCH_TARGETS",
    "SSDP_PORT",
    "SsdpResponse",
    "build_msearch",
    "is_igd_response",
    "parse_response",
]

SSDP_PORT = 1900
IPV4_GROUP = "239.255.255.250"
IPV6_LINK_GROUP = "ff02::c"
IPV6_SITE_GROUP = "ff05::c"

IGD_V2 = "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
IGD_V1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
WANIP_V2 = "urn:schemas-upnp-org:service:WANIPConnection:2"
WANIP_V1 = "urn:schemas-upnp-org:service:WANIPConnection:1"
WANPPP_V1 = "urn:schemas-upnp-org:service:WANPPPConnection:1"

#: What we search for, most capable first.
SEARCH_TARGETS: tuple[str, ...] = (IGD_V2, IGD_V1, WANIP_V2, WANIP_V1, WANPPP_V1)
IGD_DEVICE_TYPES: tuple[str, ...] = (IGD_V2, IGD_V1)

#: Largest response datagram we look at; real ones are a few hundred bytes.
MAX_DATAGRAM = 4096
MAX_HEADERS = 40
MAX_VALUE = 1024

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS = re.compile(r"^HTTP/1\.[01] +(\d{3})(?: .*)?$", re.IGNORECASE)
_BOOTID = re.compile(r"^\d{1,10}$")
_MAX_AGE = re.compile(r"max-age *= *(\d{1,10})", re.IGNORECASE)
# ST/USN fragments that mark a gateway (IGD device or WAN connection service, any vendor URN).
_IGD_MARKERS = ("internetgatewaydevice:", "wanipconnection:", "wanpppconnection:")


def build_msearch(st: str, *, host: str, port: int = SSDP_PORT, mx: int | None = 1) -> bytes:
    """An M-SEARCH datagram for search target ``st``.

    ``host`` is the destination (the multicast group or, for a unicast search, the device);
    IPv6 literals are bracketed. ``mx`` (seconds a device may wait before answering) is sent
    for multicast searches and must be omitted (``None``) for unicast ones (UDA 1.1 §1.3.2).
    """
    if any(c in st for c in "\r\n") or not st:
        raise ValueError("search target must be a non-empty single line")
    host_field = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        "M-SEARCH * HTTP/1.1",
        f"HOST: {host_field}",
        'MAN: "ssdp:discover"',
    ]
    if mx is not None:
        lines.append(f"MX: {mx}")
    lines.append(f"ST: {st}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@attrs.frozen
class SsdpResponse:
    """The fields of one M-SEARCH response that a control point uses (values untrusted)."""

    location: str
    st: str
    usn: str
    server: str = ""
    boot_id: int | None = None
    max_age: int | None = None

    @property
    def udn(self) -> str:
        """The device's ``uuid:...`` part of the USN (case-folded), for deduplication."""
        return self.usn.split("::", 1)[0].strip().lower()


def parse_response(data: bytes) -> SsdpResponse:
    """Parse one M-SEARCH response datagram; raise ``ParseError`` for anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ParseError(f"SSDP datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if b"\x00" in data:
        raise ParseError("SSDP datagram contains NUL bytes")
    text = data.decode("latin-1")
    head, _sep, _body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = _STATUS.match(lines[0].strip())
    if status is None:
        raise ParseError("not an SSDP search response (status line)")
    if status.group(1) != "200":
        raise ParseError(f"SSDP response status {status.group(1)}")
    headers: dict[str, str] = {}
    count = 0
    for line in lines[1:]:
        if not line.strip():
            continue
        count += 1
        if count > MAX_HEADERS:
            raise ParseError(f"SSDP response has more than {MAX_HEADERS} header lines")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            continue  # not a header line (or a folded continuation): never guess a name
        key = name.lower()
        value = value.strip()
        if len(value) > MAX_VALUE:
            raise ParseError(f"SSDP header {name[:32]} longer than {MAX_VALUE} bytes")
        if key in headers and key in ("location", "st", "usn") and headers[key] != value:
            raise ParseError(f"SSDP response has two different {name[:32]} headers")
        headers.setdefault(key, value)
    missing = [h.upper() for h in ("location", "st", "usn") if not headers.get(h)]
    if missing:
        raise ParseError(f"SSDP response lacks {', '.join(missing)}")
    boot = headers.get("bootid.upnp.org", "")
    age = _MAX_AGE.search(headers.get("cache-control", ""))
    return SsdpResponse(
        location=headers["location"],
        st=headers["st"],
        usn=headers["usn"],
        server=headers.get("server", "")[:256],
        boot_id=int(boot) if _BOOTID.match(boot) else None,
        max_age=int(age.group(1)) if age else None,
    )


def is_igd_response(response: SsdpResponse) -> bool:
    """True when ST or USN names an Internet Gateway Device or a WAN connection service.

    Vendor URNs (``urn:dslforum-org:...``) count: the markers are matched case-insensitively
    anywhere in the field, which is how Wi-Fi Alliance descriptors and media renderers are
    told apart from gateways (tailscale/tailscale#3557).
    """
    fields = (response.st.lower(), response.usn.lower())
    return any(marker in f for f in fields for marker in _IGD_MARKERS)
