"""SSDP M-SEARCH responses (``nattrav_upnp.ssdp.parse_response``): any host on the LAN may send one.

Properties: returns an ``SsdpResponse`` with non-empty, bounded LOCATION/ST/USN or raises
ParseError; the LOCATION, made safe for a responder, is either refused (ParseError) or
points at that responder and nowhere else (the control-point SSRF, hostile-inputs U1).
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_upnp"):
    from nattrav_upnp import ssdp, urls

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_upnp.ssdp.parse_response: one SSDP search response datagram"
MAX_LEN = 4200
_RESPONDER = "192.168.1.1"


def check(data: bytes) -> bool:
    try:
        response = ssdp.parse_response(data)
    except ParseError:
        return False
    for value in (response.location, response.st, response.usn):
        assert value and len(value) <= ssdp.MAX_VALUE
    assert len(response.server) <= 256
    assert ssdp.is_igd_response(response) in (True, False)
    assert isinstance(response.udn, str)
    try:
        location = urls.location_url(response.location, _RESPONDER)
    except ParseError:
        return True
    assert location.url.host == _RESPONDER
    assert 0 < location.url.port < 65536
    assert location.url.path.startswith("/")
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
