"""URL safety for LOCATION, URLBase and controlURL (hostile-inputs.md U1, U2, X5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import ParseError
from nattrav_upnp.errors import UnsafeUrlError
from nattrav_upnp.urls import (
    HttpUrl,
    UrlPolicy,
    canonical_ip,
    check_host,
    location_url,
    resolve_control_url,
)


def test_location_on_responder_is_kept() -> None:
    loc = location_url("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1")
    assert loc.url == HttpUrl("192.168.1.1", 5000, "/rootDesc.xml")
    assert not loc.repointed
    assert str(loc.url) == "http://192.168.1.1:5000/rootDesc.xml"


@pytest.mark.parametrize(
    "location",
    [
        "http://router.lan:5000/rootDesc.xml",  # DNS name
        "http://127.0.0.1:5000/rootDesc.xml",  # loopback
        "http://[::1]:5000/rootDesc.xml",  # TP-Link's bogus LOCATION
        "http://[::ffff:127.0.0.1]:5000/rootDesc.xml",  # IPv4-mapped loopback
        "http://169.254.1.1:5000/rootDesc.xml",  # link-local
        "http://224.0.0.1:5000/rootDesc.xml",  # multicast
        "http://0.0.0.0:5000/rootDesc.xml",  # unspecified
        "http://10.0.0.2:5000/rootDesc.xml",  # CARP static address, not the responder
        "http://127.1:5000/rootDesc.xml",  # a resolver would take this as loopback
        "http://0x7f.0.0.1:5000/rootDesc.xml",
    ],
)
def test_location_elsewhere_is_repointed_to_responder_keeping_port_and_path(location: str) -> None:
    """U1/U6: never fetch it as-is; re-point to the responder, keep path and port."""
    loc = location_url(location, "192.168.1.1")
    assert loc.repointed
    assert loc.url == HttpUrl("192.168.1.1", 5000, "/rootDesc.xml")


@pytest.mark.parametrize(
    "responder",
    [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "169.254.9.9",
        "ff02::c",
        "239.255.255.250",
        "0.0.0.0",
        "::",
        "240.0.0.1",
        "router.lan",
        "fe80::1%eth0",
    ],
)
def test_unsafe_responder_is_refused(responder: str) -> None:
    with pytest.raises(UnsafeUrlError):
        location_url("http://192.168.1.1:5000/rootDesc.xml", responder)


def test_ipv4_mapped_responder_is_canonicalised() -> None:
    loc = location_url("http://192.168.1.1:5000/d.xml", "::ffff:192.168.1.1")
    assert loc.url.host == "192.168.1.1"
    assert not loc.repointed


def test_loopback_allowed_only_by_test_policy() -> None:
    loc = location_url("http://127.0.0.1:1/x", "127.0.0.1", UrlPolicy(allow_loopback=True))
    assert loc.url.host == "127.0.0.1"
    with pytest.raises(UnsafeUrlError):
        check_host("127.0.0.1")


@pytest.mark.parametrize(
    "location",
    [
        "https://192.168.1.1:5000/rootDesc.xml",  # scheme
        "ftp://192.168.1.1/rootDesc.xml",
        "192.168.1.1:5000/rootDesc.xml",  # no scheme
        "http:/192.168.1.1/x",
        "http://192.168.1.1:0/rootDesc.xml",  # port 0
        "http://192.168.1.1:65536/rootDesc.xml",
        "http://192.168.1.1:abc/rootDesc.xml",
        "http://192.168.1.1:/x",
        "http://user:pw@192.168.1.1:5000/x",  # user info
        "http://192.168.1.1:5000/a b",  # whitespace would reach the request line
        "http://192.168.1.1:5000/a\r\nHost: evil",
        "http://192.168.1.1:5000/\xe9",
        "http://[::1/x",
        "http://[192.168.1.1]:80/x",
        "http://:80/x",
        "",
        "http://192.168.1.1/" + "a" * 1100,
    ],
)
def test_unusable_location_is_refused(location: str) -> None:
    """U2: scheme other than http, port 0, unparsable URL -> ignore the response."""
    with pytest.raises(UnsafeUrlError):
        location_url(location, "192.168.1.1")


def test_default_port_and_dot_segments() -> None:
    loc = location_url("HTTP://192.168.1.1/a/../b/./desc.xml?x=1#frag", "192.168.1.1")
    assert loc.url == HttpUrl("192.168.1.1", 80, "/b/desc.xml?x=1")


def test_control_url_relative_and_absolute_path() -> None:
    loc = location_url("http://192.168.1.1:5000/dir/rootDesc.xml", "192.168.1.1")
    assert resolve_control_url("/ctl/IPConn", loc) == HttpUrl("192.168.1.1", 5000, "/ctl/IPConn")
    assert resolve_control_url("ctl/IPConn", loc) == HttpUrl("192.168.1.1", 5000, "/dir/ctl/IPConn")
    assert resolve_control_url("../../../etc", loc) == HttpUrl("192.168.1.1", 5000, "/etc")


def test_absolute_control_url_on_same_host_keeps_its_port() -> None:
    loc = location_url("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1")
    url = resolve_control_url("http://192.168.1.1:49000/ctl", loc)
    assert url == HttpUrl("192.168.1.1", 49000, "/ctl")


def test_absolute_control_url_naming_advertised_host_follows_the_repointing() -> None:
    """CARP/VRRP: LOCATION and controlURL name the static IP; we stay on the responder."""
    loc = location_url("http://10.0.0.2:5000/rootDesc.xml", "10.0.0.1")
    url = resolve_control_url("http://10.0.0.2:5000/ctl", loc)
    assert url == HttpUrl("10.0.0.1", 5000, "/ctl")


@pytest.mark.parametrize(
    "control",
    [
        "http://127.0.0.1/ctl",
        "http://[::1]/ctl",
        "http://203.0.113.66/ctl",
        "//203.0.113.66/ctl",
        "http://metadata.internal/ctl",
        "https://192.168.1.1/ctl",
        "",
        "   ",
        "/ctl with space",
    ],
)
def test_control_url_leaving_the_host_is_refused(control: str) -> None:
    """X5: a controlURL to another host, loopback or a DNS name is never used."""
    loc = location_url("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1")
    with pytest.raises(UnsafeUrlError):
        resolve_control_url(control, loc)


def test_foreign_url_base_is_ignored() -> None:
    loc = location_url("http://192.168.1.1:5000/d/rootDesc.xml", "192.168.1.1")
    url = resolve_control_url("ctl", loc, url_base="http://203.0.113.66:8080/base/")
    assert url == HttpUrl("192.168.1.1", 5000, "/d/ctl")
    same = resolve_control_url("ctl", loc, url_base="http://192.168.1.1:49152/base/")
    assert same == HttpUrl("192.168.1.1", 49152, "/base/ctl")


def test_canonical_ip() -> None:
    assert canonical_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert canonical_ip("2001:DB8::1") == "2001:db8::1"
    assert canonical_ip("010.0.0.1") is None
    assert canonical_ip("host") is None


@given(st.text(max_size=200), st.sampled_from(["192.168.1.1", "2001:db8::1", "127.0.0.1"]))
def test_location_url_returns_or_raises_parse_error(text: str, responder: str) -> None:
    try:
        loc = location_url(text, responder)
    except ParseError:
        return
    assert loc.url.host in ("192.168.1.1", "2001:db8::1")
    assert 0 < loc.url.port < 65536
    assert loc.url.path.startswith("/")
    assert all(0x21 <= ord(c) <= 0x7E for c in loc.url.path)


@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=100)))
def test_resolve_control_url_returns_or_raises_parse_error(text: str, base: str | None) -> None:
    loc = location_url("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1")
    try:
        url = resolve_control_url(text, loc, url_base=base)
    except ParseError:
        return
    assert url.host == "192.168.1.1"
    assert url.path.startswith("/")
    assert all(0x21 <= ord(c) <= 0x7E for c in url.path)
