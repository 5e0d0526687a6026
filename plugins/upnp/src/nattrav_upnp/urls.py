"""Which URLs a UPnP control point may fetch: LOCATION, URLBase and controlURL safety.

Theory of operation
-------------------
Any host on the LAN can answer an M-SEARCH, so a LOCATION header is attacker-controlled input
that we are asked to fetch: the classic control-point SSRF (libtorrent PRs #8530, #8578, #8781,
#8814; hostile-inputs.md U1, X5). Real routers also send bogus LOCATIONs (TP-Link's
``http://[::1]:1900/rootDesc.xml``; CARP/VRRP pairs answering from the static address,
tailscale/tailscale#5502). Rejecting those loses working routers; fetching them as-is is the
SSRF. So, like Tailscale's ``getUPnPRootDevice``:

* the only host we ever connect to is the *responder*: the IP address the SSDP answer came
  from. A LOCATION whose host is anything else (a DNS name, another IP, loopback) is
  *re-pointed* to the responder, keeping its port and path;
* the responder itself must be a unicast IP literal that is not loopback (including ``::1``
  and ``::ffff:127.0.0.1``), link-local, multicast, unspecified or reserved; otherwise the
  answer is discarded;
* a ``controlURL`` (and ``URLBase``) is resolved relative to the (re-pointed) LOCATION and must
  stay on its host: an absolute URL naming another host is refused;
* only ``http`` with an explicit or default port in 1..65535, no user info, no whitespace or
  control characters (which would otherwise reach the HTTP request line), at most 1024 bytes.

Everything here is pure: strings in, ``HttpUrl`` out, ``UnsafeUrlError`` (a ``ParseError``)
otherwise. ``UrlPolicy.allow_loopback`` exists only so tests can run scripted gateways on
127.0.0.1; nothing in the plugin's configuration can set it.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re

import attrs
from nattrav.addresses import AddressScope, scope_of

from nattrav_upnp.errors import UnsafeUrlError

__all__ = [
    "HttpUrl",
    "Location",
    "MAX_URL_LENGTH",
    "STRICT",
    "UrlPolicy",
    "canonical_ip",
    "check_host",
    "location_url",
    "parse_http_url",
    "resolve_control_url",
]

MAX_URL_LENGTH = 1024
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# Printable ASCII without space; everything else would need escaping in a request line.
_SAFE_CHARS = re.compile(r"^[\x21-\x7e]*$")
_FORBIDDEN_SCOPES = frozenset(
    {
        AddressScope.LINK_LOCAL,
        AddressScope.MULTICAST,
        AddressScope.UNSPECIFIED,
        AddressScope.RESERVED,
    }
)


@attrs.frozen
class UrlPolicy:
    """What hosts may be fetched. ``allow_loopback`` is for tests with scripted gateways only."""

    allow_loopback: bool = False


#: The policy every production code path uses.
STRICT = UrlPolicy()


@attrs.frozen
class HttpUrl:
    """An ``http`` URL whose host is a canonical IP literal; ``path`` includes any query."""

    host: str
    port: int
    path: str = "/"

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"http://{self.netloc}{self.path}"


@attrs.frozen
class Location:
    """A LOCATION made safe: ``url`` is what we fetch; ``advertised_host`` what the device said.

    ``repointed`` is true when the advertised host was not the responder and ``url`` was moved
    to the responder's address.
    """

    url: HttpUrl
    advertised_host: str
    repointed: bool


def canonical_ip(text: str) -> str | None:
    """The canonical form of an IP literal (IPv4-mapped IPv6 becomes IPv4), else ``None``.

    Only strict literals count: ``127.1``, ``0x7f.0.0.1`` or a zone index are not IP literals
    here (a resolver would accept some of them, which is exactly why we do not).
    """
    if "%" in text:  # a zone index is not a literal we connect to
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_host(text: str, policy: UrlPolicy = STRICT) -> str:
    """Return the canonical IP if ``text`` is a host we may connect to; raise otherwise."""
    ip = canonical_ip(text)
    if ip is None:
        raise UnsafeUrlError(f"host {text[:64]!r} is not an IP literal")
    scope = scope_of(ip)
    if scope is AddressScope.LOOPBACK and not policy.allow_loopback:
        raise UnsafeUrlError(f"host {ip} is a loopback address")
    if scope in _FORBIDDEN_SCOPES:
        raise UnsafeUrlError(f"host {ip} is a {scope.value} address")
    return ip


def _split_http(text: str) -> tuple[str, int, str]:
    """Split an absolute ``http://host[:port]/path`` URL into its raw host, port and path."""
    if len(text) > MAX_URL_LENGTH:
        raise UnsafeUrlError(f"URL longer than {MAX_URL_LENGTH} bytes")
    if not _SAFE_CHARS.match(text):
        raise UnsafeUrlError("URL contains whitespace, control or non-ASCII characters")
    match = _SCHEME.match(text)
    if match is None or match.group(1).lower() != "http":
        scheme = match.group(1) if match else ""
        raise UnsafeUrlError(f"URL scheme {scheme!r} is not http")
    rest = text[match.end() :]
    if not rest.startswith("//"):
        raise UnsafeUrlError("URL has no authority (expected http://HOST:PORT/...)")
    rest = rest[2:]
    cut = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos >= 0:
            cut = min(cut, pos)
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise UnsafeUrlError("URL carries user information")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise UnsafeUrlError("URL has an unterminated IPv6 literal")
        host, after = authority[1:end], authority[end + 1 :]
        if canonical_ip(host) is None or ":" not in host:
            raise UnsafeUrlError(f"{host[:64]!r} in brackets is not an IPv6 literal")
    else:
        host, sep, port_part = authority.partition(":")
        after = sep + port_part
    if after == "":
        port = 80
    elif after.startswith(":") and after[1:].isdigit() and len(after) <= 6:
        port = int(after[1:])
    else:
        raise UnsafeUrlError(f"URL port {after[:16]!r} is not a number")
    if not 0 < port < 65536:
        raise UnsafeUrlError(f"URL port {port} out of range 1-65535")
    if not host:
        raise UnsafeUrlError("URL has an empty host")
    return host, port, _clean_path(path)


def _clean_path(path: str) -> str:
    path = path.split("#", 1)[0]
    if path.startswith("?"):
        path = "/" + path
    if not path:
        return "/"
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    # Resolve dot segments so "/../x" cannot escape anything and logs show the real path.
    normal = posixpath.normpath(path) if path not in ("", "/") else "/"
    if path.endswith("/") and not normal.endswith("/"):
        normal += "/"
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal + query


def parse_http_url(text: str, policy: UrlPolicy = STRICT) -> HttpUrl:
    """Parse an absolute ``http`` URL whose host must be a safe IP literal (stored URLs)."""
    host, port, path = _split_http(text.strip())
    return HttpUrl(check_host(host, policy), port, path)


def location_url(location: str, responder: str, policy: UrlPolicy = STRICT) -> Location:
    """Make an SSDP ``LOCATION`` safe to fetch, given the responder's source address.

    Raises ``UnsafeUrlError`` when the URL is unusable (scheme, port, syntax) or the responder
    itself is not an address we may connect to. A LOCATION naming any other host is re-pointed
    to the responder (see the module docstring).
    """
    host, port, path = _split_http(location.strip())
    target = check_host(responder, policy)
    advertised = canonical_ip(host) or host.lower()
    return Location(HttpUrl(target, port, path), advertised, advertised != target)


def resolve_control_url(
    control: str,
    location: Location,
    *,
    url_base: str | None = None,
    policy: UrlPolicy = STRICT,
) -> HttpUrl:
    """Resolve a ``controlURL`` against ``URLBase`` (if usable) or LOCATION; stay on its host.

    An absolute ``controlURL`` or ``URLBase`` is accepted only when its host is the
    LOCATION's (advertised or re-pointed) host; the result always uses the re-pointed host.
    A ``URLBase`` that names another host is ignored (UDA 1.1 deprecated it, and routers fill
    it with junk); a ``controlURL`` that does is refused.
    """
    control = control.strip()
    if not control:
        raise UnsafeUrlError("empty controlURL")
    base = location.url
    if url_base is not None and url_base.strip():
        try:
            base = _same_host(url_base.strip(), location, policy)
        except UnsafeUrlError:
            base = location.url
    if control.startswith("//"):
        control = "http:" + control
    if _SCHEME.match(control):
        return _same_host(control, location, policy)
    if len(control) > MAX_URL_LENGTH or not _SAFE_CHARS.match(control):
        raise UnsafeUrlError("controlURL contains whitespace, control or non-ASCII characters")
    if control.startswith("/"):
        joined = control
    else:
        base_path = base.path.split("?", 1)[0]
        directory = base_path if base_path.endswith("/") else posixpath.dirname(base_path) + "/"
        joined = directory + control
    return HttpUrl(base.host, base.port, _clean_path(joined))


def _same_host(text: str, location: Location, policy: UrlPolicy) -> HttpUrl:
    host, port, path = _split_http(text)
    named = canonical_ip(host) or host.lower()
    if named not in (location.advertised_host, location.url.host):
        raise UnsafeUrlError(
            f"URL {text[:96]!r} points to another host than the device's {location.url.host}"
        )
    check_host(location.url.host, policy)
    return HttpUrl(location.url.host, port, path)
