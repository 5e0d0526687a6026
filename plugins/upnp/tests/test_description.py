"""Device description parsing with recorded router quirks (hostile-inputs.md X1-X7)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav.errors import ParseError
from nattrav_upnp.description import (
    ServiceKind,
    classify_service_type,
    parse_description,
)
from nattrav_upnp.urls import HttpUrl, Location, location_url
from nattrav_upnp.xmlsafe import parse_xml

Read = Callable[[str], bytes]


def _loc(
    url: str = "http://192.168.1.1:5000/rootDesc.xml", responder: str = "192.168.1.1"
) -> Location:
    return location_url(url, responder)


def test_miniupnpd_igd2(fixture_bytes: Read) -> None:
    desc = parse_description(fixture_bytes("miniupnpd_igd2.xml"), _loc())
    assert desc.igd_version == 2
    assert desc.udn == "uuid:6f2d3a10-0000-4000-8000-000000000001"
    assert desc.friendly_name == "Lab router"
    (conn,) = desc.connection_services
    assert conn.kind is ServiceKind.WAN_IP
    assert conn.version == 2
    assert conn.service_type == "urn:schemas-upnp-org:service:WANIPConnection:2"
    assert conn.control_url == HttpUrl("192.168.1.1", 5000, "/ctl/IPConn")
    assert conn.udn.endswith("0003")
    fw = desc.firewall_service
    assert fw is not None
    assert fw.control_url.path == "/ctl/IP6FCtl"


def test_igd1_ppp_with_url_base_and_absolute_control(fixture_bytes: Read) -> None:
    desc = parse_description(
        fixture_bytes("igd1_ppp_absolute.xml"),
        _loc("http://192.168.0.1:49152/gatedesc.xml", "192.168.0.1"),
    )
    assert desc.igd_version == 1
    kinds = {(s.kind, s.version): s for s in desc.connection_services}
    ppp = kinds[(ServiceKind.WAN_PPP, 1)]
    assert ppp.control_url == HttpUrl("192.168.0.1", 49152, "/upnp/control/WANPPPConn1")
    ip = kinds[(ServiceKind.WAN_IP, 1)]
    assert ip.control_url == HttpUrl("192.168.0.1", 49152, "/upnp/control/WANIPConn1")
    assert desc.firewall_service is None


def test_odd_namespace_prefix(fixture_bytes: Read) -> None:
    desc = parse_description(fixture_bytes("odd_namespace.xml"), _loc())
    (conn,) = desc.connection_services
    assert conn.kind is ServiceKind.WAN_IP
    assert conn.control_url.path == "/upnp/control/WANIPConn1"
    assert desc.friendly_name == "Odd namespace router"


def test_no_namespace_flat_tree_whitespace_and_case(fixture_bytes: Read) -> None:
    desc = parse_description(fixture_bytes("no_namespace_flat.xml"), _loc())
    (conn,) = desc.connection_services
    assert conn.kind is ServiceKind.WAN_IP and conn.version == 1
    assert conn.service_type == "URN:SCHEMAS-UPNP-ORG:SERVICE:WANIPCONNECTION:1"
    assert conn.control_url.path == "/ctl/ipc"


def test_legacy_dslforum_urns(fixture_bytes: Read) -> None:
    desc = parse_description(fixture_bytes("legacy_dslforum.xml"), _loc())
    types = sorted(s.service_type for s in desc.connection_services)
    assert types == [
        "urn:dslforum-org:service:WANIPConnection:1",
        "urn:dslforum-org:service:WANPPPConnection:1",
    ]


def test_valid_igd_without_wan_services_parses_to_no_services(fixture_bytes: Read) -> None:
    """X6 / tailscale#10911: no supported service is a result, not a crash."""
    desc = parse_description(fixture_bytes("no_wan_services.xml"), _loc())
    assert desc.connection_services == ()
    assert desc.firewall_service is None


def test_mismatched_tag_is_a_parse_error(fixture_bytes: Read) -> None:
    """home-assistant/core#71138: TP-Link Archer C9 'mismatched tag'."""
    with pytest.raises(ParseError, match="malformed XML"):
        parse_description(fixture_bytes("mismatched_tag.xml"), _loc())


def test_foreign_urls_are_skipped_not_followed(fixture_bytes: Read) -> None:
    """X5: controlURLs to other hosts are refused; a foreign URLBase is ignored."""
    desc = parse_description(fixture_bytes("foreign_urls.xml"), _loc())
    assert [s.kind for s in desc.services] == [ServiceKind.WAN_PPP]
    assert desc.services[0].control_url == HttpUrl("192.168.1.1", 5000, "/ctl/ppp")
    assert len(desc.skipped) == 3
    assert all("another host" in reason for reason in desc.skipped)


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        b"<root><device>&lol2;</device></root>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<root><device>&x;</device></root>",
        b'<!DOCTYPE r SYSTEM "http://203.0.113.1/evil.dtd"><root><device/></root>',
        b'<!DOCTYPE r [<!ENTITY a "' + b"x" * 10000 + b'">]><root>' + b"&a;" * 100 + b"</root>",
    ],
    ids=["billion-laughs", "xxe", "external-dtd", "quadratic"],
)
def test_dtds_are_forbidden(data: bytes) -> None:
    """X1: any DTD is refused before entities can expand."""
    with pytest.raises(ParseError, match="forbidden"):
        parse_description(data, _loc())


def test_oversized_document_is_refused_before_parsing() -> None:
    """X2: size cap before parsing."""
    data = b"<root><device><friendlyName>" + b"A" * 300_000 + b"</friendlyName></device></root>"
    with pytest.raises(ParseError, match="exceeds"):
        parse_description(data, _loc())


def test_oversized_field_is_refused() -> None:
    """X2: text caps on the fields we keep."""
    data = b"<root><device><deviceType>" + b"x" * 300 + b"</deviceType></device></root>"
    with pytest.raises(ParseError, match="deviceType"):
        parse_description(data, _loc())


@pytest.mark.parametrize(
    "data",
    [
        b"<root><device a=",  # ends inside attr= (CVE-2026-110655 class)
        b"<root><device><ns:",  # ends in 'ns:' (CVE-2026-110656 class)
        b"<root><device><![CDATA[abc",
        b"<a:",  # miniupnpc testreplyparse/invalid.xml
        b"<root>",
        b"",
        b"   ",
        b"\xff\xfe<\x00r\x00",
        b"<root><device></root>",
    ],
)
def test_truncated_xml_is_a_parse_error(data: bytes) -> None:
    """X3: truncated input ends in ParseError, no crash, no hang."""
    with pytest.raises(ParseError):
        parse_description(data, _loc())


def test_deep_nesting_is_refused_during_parsing() -> None:
    """X4: 200 000 nested elements are refused at the depth cap, not walked recursively."""
    deep = b"<root>" + b"<a>" * 20_000 + b"</a>" * 20_000 + b"</root>"
    with pytest.raises(ParseError, match="deeper"):
        parse_description(deep, _loc())
    depth = 200_000
    deeper = b"<root>" + b"<a>" * depth + b"</a>" * depth + b"</root>"
    with pytest.raises(ParseError, match="deeper"):
        parse_xml(deeper, max_bytes=len(deeper))


def test_too_many_elements_is_refused() -> None:
    data = b"<root><device>" + b"<x/>" * 25_000 + b"</device></root>"
    with pytest.raises(ParseError, match="more than"):
        parse_description(data, _loc())


@pytest.mark.parametrize(
    "data",
    [
        b'<root xmlns:a="urn:a"><a:device a:b="1" xmlns:c=""><c:x/></a:device></root>',
        b"<root><device><serviceList><service/></serviceList></device></root>",
        b"<root><device><serviceList><service><serviceType/></service></serviceList></device></root>",
        b"<notroot><device/></notroot>",
        b"<root/>",
        b'<root xmlns="urn:schemas-upnp-org:device-1-0"><?pi x?><!-- c --><device/></root>',
    ],
)
def test_odd_or_namespace_less_documents_do_not_crash(data: bytes) -> None:
    """X7: odd attributes / missing namespaces: a value or a ParseError, nothing else."""
    try:
        desc = parse_description(data, _loc())
    except ParseError:
        return
    assert desc.services == ()


def test_classify_service_type() -> None:
    assert classify_service_type("urn:schemas-upnp-org:service:WANIPConnection:2") == (
        ServiceKind.WAN_IP,
        2,
    )
    assert classify_service_type(" urn:dslforum-org:service:WANPPPConnection:1 ") == (
        ServiceKind.WAN_PPP,
        1,
    )
    assert classify_service_type("urn:schemas-upnp-org:service:WANIPConnection:0") is None
    assert classify_service_type("urn:schemas-upnp-org:service:Layer3Forwarding:1") is None


_SERVICE_TYPES = st.sampled_from(
    [
        "urn:schemas-upnp-org:service:WANIPConnection:1",
        "urn:schemas-upnp-org:service:WANIPConnection:2",
        "urn:schemas-upnp-org:service:WANPPPConnection:1",
        "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
        "junk",
    ]
)
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.lists(st.tuples(_SERVICE_TYPES, _TEXT), max_size=5), _TEXT)
@settings(max_examples=150)
def test_generated_descriptions_return_or_raise_parse_error(
    services: list[tuple[str, str]], name: str
) -> None:
    from xml.sax.saxutils import escape

    body = "".join(
        f"<service><serviceType>{escape(t)}</serviceType><controlURL>{escape(c)}</controlURL></service>"
        for t, c in services
    )
    doc = (
        f"<root><device><friendlyName>{escape(name)}</friendlyName>"
        f"<serviceList>{body}</serviceList></device></root>"
    ).encode("utf-8", "surrogatepass")
    try:
        desc = parse_description(doc, _loc())
    except ParseError:
        return
    for service in desc.services:
        assert service.control_url.host == "192.168.1.1"


@given(st.binary(max_size=400))
def test_random_bytes_return_or_raise_parse_error(data: bytes) -> None:
    try:
        parse_description(data, _loc())
    except ParseError:
        pass


@given(st.text(max_size=300))
def test_random_text_return_or_raise_parse_error(text: str) -> None:
    try:
        parse_description(text.encode("utf-8", "surrogatepass"), _loc())
    except ParseError:
        pass
