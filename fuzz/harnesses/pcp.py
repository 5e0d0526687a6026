"""PCP responses (``nattrav_natpmp.pcp_codec.decode_response``), and announcements.

Properties: returns a ``Response`` (24..1100 bytes, a multiple of 4: hostile-inputs C2) or
``UnsupportedVersion`` (C1), or raises ParseError; a MAP result's external address is never
the unspecified address (reported as ``None``); options were well-formed (C6); the
announcement recogniser never raises.
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_natpmp"):
    from nattrav_natpmp import announce, pcp_codec

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_natpmp.pcp_codec.decode_response: one PCP response (RFC 6887)"
MAX_LEN = 1200
_GATEWAY = "fe80::1%eth0"


def check(data: bytes) -> bool:
    found, reason = announce.parse_announcement(data, "fe80::1", _GATEWAY)
    assert (found is None) == bool(reason)
    try:
        response = pcp_codec.decode_response(data)
    except ParseError:
        return False
    if isinstance(response, pcp_codec.UnsupportedVersion):
        assert response.version != pcp_codec.VERSION
        return True
    assert pcp_codec.MIN_LENGTH <= len(data) <= pcp_codec.MAX_LENGTH and len(data) % 4 == 0
    if response.map is not None:
        assert len(response.map.nonce) == pcp_codec.NONCE_LENGTH
        assert response.map.external_address not in ("0.0.0.0", "::")
    codes = [int(option.code) for option in response.options]
    assert codes.count(pcp_codec.OptionCode.THIRD_PARTY) <= 1
    assert codes.count(pcp_codec.OptionCode.PREFER_FAILURE) <= 1
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
