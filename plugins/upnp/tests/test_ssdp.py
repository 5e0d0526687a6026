"""SSDP M-SEARCH building and response parsing (hostile-inputs.md U2, U5, U7)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import ParseError
from nattrav_upnp.ssdp import (
    IGD_V1,
    IGD_V2,
    MAX_DATAGRAM,
    build_msearch,
    is_igd_response,
    parse_response,
)


def test_msearch_multicast_ipv4() -> None:
    data = build_msearch(IGD_V2, host="239.255.255.250")
    assert data == (
        b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
        b'MAN: "ssdp:discover"\r\nMX: 1\r\n'
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n\r\n"
    )


def test_msearch_ipv6_brackets_and_unicast_omits_mx() -> None:
    data = build_msearch(IGD_V1, host="ff02::c", mx=2)
    assert b"HOST: [ff02::c]:1900\r\n" in data
    assert b"MX: 2\r\n" in data
    unicast = build_msearch(IGD_V1, host="192.168.1.1", mx=None)
    assert b"MX:" not in unicast


def test_msearch_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        build_msearch("a\r\nX: y", host="239.255.255.250")


def test_parse_miniupnpd_response(fixture_bytes: Callable[[str], bytes]) -> None:
    resp = parse_response(fixture_bytes("ssdp_miniupnpd.txt"))
    assert resp.location == "http://192.168.1.1:5000/rootDesc.xml"
    assert resp.st == IGD_V2
    assert resp.udn == "uuid:6f2d3a10-0000-4000-8000-000000000001"
    assert resp.boot_id == 1
    assert resp.max_age == 120
    assert "MiniUPnPd" in resp.server
    assert is_igd_response(resp)


def test_parse_lowercase_headers_and_bare_lf(fixture_bytes: Callable[[str], bytes]) -> None:
    resp = parse_response(fixture_bytes("ssdp_lowercase_lf.txt"))
    assert resp.location == "http://192.168.0.1:49152/gatedesc.xml"
    assert resp.st.endswith("WANPPPConnection:1")
    assert resp.max_age == 1800
    assert resp.boot_id is None
    assert is_igd_response(resp)


def test_non_igd_device_is_filtered(fixture_bytes: Callable[[str], bytes]) -> None:
    """U7: a Wi-Fi Alliance descriptor answering is not a gateway."""
    resp = parse_response(fixture_bytes("ssdp_wfa_device.txt"))
    assert not is_igd_response(resp)


def test_partial_header_names_do_not_match(fixture_bytes: Callable[[str], bytes]) -> None:
    """U5: ``Locationx:`` and ``X-LOCATION:`` are not LOCATION."""
    with pytest.raises(ParseError, match="LOCATION"):
        parse_response(fixture_bytes("ssdp_partial_header.txt"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "status line"),
        (b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n", "status line"),
        (b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n", "status line"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", "404"),
        (b"HTTP/1.1 200 OK\r\nST: a\r\nUSN: b\r\n\r\n", "LOCATION"),
        (b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4/\r\nUSN: b\r\n\r\n", "ST"),
        (b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4/\r\nST: a\r\n\r\n", "USN"),
        (b"HTTP/1.1 200 OK\r\nLOCATION:\r\nST: a\r\nUSN: b\r\n\r\n", "LOCATION"),
        (b"\x00\x01\x02HTTP/1.1 200 OK\r\n", "NUL"),
        (b"\xff" * 20, "status line"),
    ],
)
def test_malformed_responses_are_refused(data: bytes, match: str) -> None:
    """U2: missing LOCATION/ST/USN or not a response at all -> ignored."""
    with pytest.raises(ParseError, match=match):
        parse_response(data)


def test_huge_values_and_datagrams_are_refused() -> None:
    """U5: bounded sizes (libupnp CVE-2012-5958 class)."""
    big = (
        b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4/"
        + b"a" * 2000
        + b"\r\nST: a\r\nUSN: b\r\n\r\n"
    )
    with pytest.raises(ParseError, match="longer than"):
        parse_response(big)
    with pytest.raises(ParseError, match="exceeds"):
        parse_response(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_DATAGRAM // 6 + 1))
    many = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 60
    with pytest.raises(ParseError, match="header lines"):
        parse_response(many)


def test_conflicting_duplicate_location_is_refused() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4/a\r\nLocation: http://5.6.7.8/b\r\n"
        b"ST: a\r\nUSN: b\r\n\r\n"
    )
    with pytest.raises(ParseError, match="two different"):
        parse_response(data)


def test_legacy_urn_counts_as_igd() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4/a\r\n"
        b"ST: urn:dslforum-org:device:InternetGatewayDevice:1\r\nUSN: uuid:q\r\n\r\n"
    )
    assert is_igd_response(parse_response(data))


_header = st.tuples(
    st.sampled_from(
        [
            "LOCATION",
            "location",
            "ST",
            "USN",
            "SERVER",
            "BOOTID.UPNP.ORG",
            "CACHE-CONTROL",
            "X",
            "Locationx",
            " ST",
            "ST ",
        ]
    ),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=80),
)


@given(st.lists(_header, max_size=12), st.sampled_from(["\r\n", "\n"]))
def test_parse_response_returns_or_raises_parse_error(
    headers: list[tuple[str, str]], eol: str
) -> None:
    text = "HTTP/1.1 200 OK" + eol + "".join(f"{k}:{v}{eol}" for k, v in headers) + eol
    try:
        resp = parse_response(text.encode("latin-1"))
    except ParseError:
        return
    assert resp.location and resp.st and resp.usn


@given(st.binary(max_size=600))
def test_parse_random_bytes_returns_or_raises_parse_error(data: bytes) -> None:
    try:
        parse_response(data)
    except ParseError:
        pass
