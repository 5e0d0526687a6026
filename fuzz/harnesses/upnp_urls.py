"""URL safety for UPnP (``nattrav_upnp.urls``): LOCATION, URLBase and controlURL from the LAN.

Input: four NUL-separated fields: LOCATION, responder address, controlURL, URLBase. The
responder is the datagram's source address, from the kernel; the other three are the
attacker's text. The properties are the SSRF guarantees (hostile-inputs U1, U2, X5): a
LOCATION is refused or made to point at the responder; a responder that is loopback,
link-local, multicast, unspecified or reserved is refused; a controlURL is refused or stays on
that host; and nothing that reaches an HTTP request line carries whitespace, control or
non-ASCII characters.
"""

from __future__ import annotations

from fuzz.engine import fields, fuzz, instrumented

with instrumented("nattrav_upnp"):
    from nattrav_upnp import urls

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_upnp.urls: LOCATION / URLBase / controlURL safety (SSRF)"
MAX_LEN = 2048


def _safe(url: urls.HttpUrl, host: str) -> None:
    assert url.host == host, (url, host)
    assert 0 < url.port < 65536
    text = str(url)
    assert text.isascii() and text.isprintable() and " " not in text, text
    assert url.path.startswith("/") and not url.path.startswith("//"), url.path
    assert urls.parse_http_url(text) == url


def check(data: bytes) -> bool:
    location_raw, responder_raw, control_raw, base_raw = (
        f.decode("utf-8", "replace") for f in fields(data, 4)
    )
    if "%" in responder_raw:
        # The responder is the datagram's source address as the kernel gave it: a zone only
        # comes with a link-local address (refused). canonical_ip passing any zone text
        # through is a known finding (docs/threats.md, "Not covered"), not the attacker's input.
        return False
    try:
        location = urls.location_url(location_raw, responder_raw)
    except ParseError:
        return False
    responder = urls.canonical_ip(responder_raw)
    assert responder is not None and urls.check_host(responder) == responder
    _safe(location.url, responder)
    try:
        control = urls.resolve_control_url(control_raw, location, url_base=base_raw or None)
    except ParseError:
        return False
    _safe(control, responder)
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
