"""NAT-PMP responses (``nattrav_natpmp.natpmp_codec.decode_response``), and announcements.

Properties: returns a response with fields in their wire ranges (an error carries no address,
port or lifetime: hostile-inputs P5; 0.0.0.0 is "unknown": P6) or raises ParseError; the
announcement recogniser (``announce.parse_announcement``) never raises and believes only the
gateway (P9).
"""

from __future__ import annotations

import ipaddress

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_natpmp"):
    from nattrav_natpmp import announce, natpmp_codec

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_natpmp.natpmp_codec.decode_response: one NAT-PMP response (RFC 6886)"
MAX_LEN = 64
_GATEWAY = "192.168.1.1"


def check(data: bytes) -> bool:
    for source in (_GATEWAY, "192.168.1.66"):
        found, reason = announce.parse_announcement(data, source, _GATEWAY)
        assert (found is None) == bool(reason)
        if source != _GATEWAY:
            assert found is None and reason == "wrong source"
    try:
        response = natpmp_codec.decode_response(data)
    except ParseError:
        return False
    assert 0 <= response.result <= 0xFFFF and 0 <= response.epoch <= 0xFFFFFFFF
    if isinstance(response, natpmp_codec.ExternalAddressResponse):
        if response.external_address is not None:
            assert response.result == 0
            assert not ipaddress.IPv4Address(response.external_address).is_unspecified
    else:
        if response.result != 0:
            assert response.external_port == 0 and response.lifetime == 0
        assert 0 <= response.external_port <= 0xFFFF
        assert response.internal_port is None or 0 <= response.internal_port <= 0xFFFF
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
