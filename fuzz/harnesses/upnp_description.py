"""UPnP device descriptions (``nattrav_upnp.description.parse_description``): XML from the LAN.

Properties: returns a ``DeviceDescription`` or raises ParseError (no DTD, size, depth and
element caps: hostile-inputs X1-X4, X7); every usable service's controlURL stays on the
device's (re-pointed) host, whatever URLBase and controlURL say (X5).
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_upnp"):
    from nattrav_upnp import description, urls

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_upnp.description.parse_description: a root device description (XML)"
MAX_LEN = 16384
# The device said 10.0.0.1 but answered from 192.168.1.1: the description is fetched from (and
# every control URL must stay on) 192.168.1.1.
_LOCATION = urls.location_url("http://10.0.0.1:5000/rootDesc.xml", "192.168.1.1")


def check(data: bytes) -> bool:
    try:
        desc = description.parse_description(data, _LOCATION)
    except ParseError:
        return False
    for service in desc.services:
        url = service.control_url
        assert url.host == "192.168.1.1", url
        assert 0 < url.port < 65536
        assert url.path.startswith("/") and " " not in url.path
        assert description.classify_service_type(service.service_type) is not None
    assert isinstance(desc.igd_version, int)
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
