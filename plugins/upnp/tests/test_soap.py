"""SOAP request building and response/fault parsing (hostile-inputs.md H4, X7)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError, ParseError, RemoteProtocolError
from nattrav_upnp import errors
from nattrav_upnp.soap import build_request, parse_response
from nattrav_upnp.xmlsafe import child, local, parse_xml

Read = Callable[[str], bytes]
WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"


def _fault(code: int | str, description: str = "x") -> bytes:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        "<s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
        '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
        f"<errorCode>{code}</errorCode><errorDescription>{description}</errorDescription>"
        "</UPnPError></detail></s:Fault></s:Body></s:Envelope>"
    ).encode()


def test_build_request_headers_order_and_escaping() -> None:
    req = build_request(
        WANIP2,
        "AddPortMapping",
        [
            ("NewRemoteHost", ""),
            ("NewExternalPort", 40000),
            ("NewProtocol", "UDP"),
            ("NewPortMappingDescription", 'a<b>&"c'),
        ],
    )
    headers = dict(req.headers)
    assert headers["SOAPAction"] == f'"{WANIP2}#AddPortMapping"'
    assert headers["Content-Type"] == 'text/xml; charset="utf-8"'
    root = parse_xml(req.body)
    body = child(root, "Body")
    assert body is not None
    (action,) = list(body)
    assert action.tag == "{" + WANIP2 + "}AddPortMapping"
    names = [local(e.tag) for e in action]
    assert names == ["NewRemoteHost", "NewExternalPort", "NewProtocol", "NewPortMappingDescription"]
    values = {local(e.tag): e.text or "" for e in action}
    assert values["NewProtocol"] == "UDP"
    assert values["NewPortMappingDescription"] == 'a<b>&"c'
    assert b"a&lt;b&gt;&amp;" in req.body


@pytest.mark.parametrize(
    ("service", "action", "args"),
    [
        (WANIP2, "Add Port", []),
        (WANIP2, "AddPortMapping", [("New Arg", "x")]),
        (WANIP2, "AddPortMapping", [("NewPortMappingDescription", "a\x00b")]),
        ('urn:x"evil', "AddPortMapping", []),
        ("urn:x\r\nX: y", "AddPortMapping", []),
    ],
)
def test_build_request_refuses_what_xml_or_http_cannot_carry(
    service: str, action: str, args: list[tuple[str, str]]
) -> None:
    with pytest.raises(LocalProtocolError):
        build_request(service, action, args)


def test_parse_success(fixture_bytes: Read) -> None:
    values = parse_response("GetExternalIPAddress", 200, fixture_bytes("soap_external_ip.xml"))
    assert values == {"NewExternalIPAddress": "203.0.113.5"}


def test_parse_odd_namespace_and_lower_case_response_name(fixture_bytes: Read) -> None:
    values = parse_response(
        "GetExternalIPAddress", 200, fixture_bytes("soap_external_ip_odd_ns.xml")
    )
    assert values["NewExternalIPAddress"] == "198.51.100.20"


def test_parse_without_namespaces(fixture_bytes: Read) -> None:
    values = parse_response("GetStatusInfo", 200, fixture_bytes("soap_no_namespace.xml"))
    assert values["NewConnectionStatus"] == "Connected"
    assert values["NewUptime"] == "4242"


def test_fault_725_is_typed_with_code(fixture_bytes: Read) -> None:
    with pytest.raises(errors.OnlyPermanentLeasesSupportedError) as info:
        parse_response("AddPortMapping", 500, fixture_bytes("soap_fault_725.xml"))
    assert info.value.code == 725
    assert info.value.action == "AddPortMapping"
    assert "725" in str(info.value)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (401, errors.InvalidActionError),
        (402, errors.InvalidArgsError),
        (501, errors.ActionFailedError),
        (606, errors.ActionNotAuthorizedError),
        (714, errors.NoSuchEntryError),
        (718, errors.ConflictInMappingEntryError),
        (725, errors.OnlyPermanentLeasesSupportedError),
        (726, errors.RemoteHostOnlySupportsWildcardError),
        (727, errors.ExternalPortOnlySupportsWildcardError),
        (728, errors.NoPortMapsAvailableError),
        (729, errors.ConflictWithOtherMechanismsError),
        (715, errors.UpnpActionError),
        (716, errors.UpnpActionError),
        (724, errors.UpnpActionError),
    ],
)
def test_every_port_mapping_fault_code_is_typed(code: int, cls: type[Exception]) -> None:
    """H4: UPnPError codes 402, 501, 606, 714-716, 718, 724-729 map to typed errors."""
    with pytest.raises(cls) as info:
        parse_response("AddPortMapping", 500, _fault(code))
    assert isinstance(info.value, errors.UpnpActionError)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (701, errors.PinholeSpaceExhaustedError),
        (702, errors.FirewallDisabledError),
        (703, errors.InboundPinholeNotAllowedError),
        (704, errors.NoSuchEntryError),
        (606, errors.ActionNotAuthorizedError),
    ],
)
def test_firewall_fault_codes_are_typed(code: int, cls: type[Exception]) -> None:
    with pytest.raises(cls):
        parse_response("AddPinhole", 500, _fault(code), firewall=True)


def test_fault_description_is_sanitised() -> None:
    with pytest.raises(errors.UpnpActionError) as info:
        parse_response("AddPortMapping", 500, _fault(501, "bad\u0085[31m\u202eX"))
    assert "\u202e" not in str(info.value)
    assert "\x85" not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "exc"),
    [
        (500, b"", errors.UpnpHttpError),
        (401, b"<html>login</html>", errors.UpnpHttpError),
        (500, b"<html><body>Internal error</body></html>", errors.UpnpHttpError),
        (500, b"<html><body>unterminated", errors.UpnpHttpError),
        (302, b"", errors.UpnpHttpError),
        (200, b"", ParseError),
        (200, b"<s:Envelope xmlns:s='x'><s:Body/></s:Envelope>", ParseError),
        (200, b"<Envelope><Header/></Envelope>", ParseError),
        (200, b"<html/>", ParseError),
        (200, b"\x00\x01binary\xff", ParseError),
        (
            500,
            b"<Envelope><Body><Fault><faultcode>x</faultcode></Fault></Body></Envelope>",
            ParseError,
        ),
        (500, _fault("seven"), ParseError),
        (500, _fault(""), ParseError),
        (
            404,
            b"<Envelope><Body><GetExternalIPAddressResponse/></Body></Envelope>",
            errors.UpnpHttpError,
        ),
    ],
)
def test_malformed_or_unexpected_answers_are_typed(
    status: int, body: bytes, exc: type[Exception]
) -> None:
    """H2/H4: malformed bodies, faults without detail, bad codes -> typed errors."""
    with pytest.raises(exc):
        parse_response("GetExternalIPAddress", status, body)


def test_fault_without_detail_fixture(fixture_bytes: Read) -> None:
    with pytest.raises(ParseError, match="UPnPError"):
        parse_response("AddPortMapping", 500, fixture_bytes("soap_fault_no_detail.xml"))


def test_oversized_value_is_refused() -> None:
    body = (
        b"<Envelope><Body><GetExternalIPAddressResponse><NewExternalIPAddress>"
        + b"1" * 5000
        + b"</NewExternalIPAddress></GetExternalIPAddressResponse></Body></Envelope>"
    )
    with pytest.raises(ParseError, match="longer than"):
        parse_response("GetExternalIPAddress", 200, body)


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
def test_parse_response_raises_only_remote_protocol_errors(status: int, body: bytes) -> None:
    try:
        parse_response("GetExternalIPAddress", status, body)
    except RemoteProtocolError:
        pass


@given(st.text(max_size=60), st.text(max_size=60))
def test_generated_envelopes_raise_only_remote_protocol_errors(name: str, value: str) -> None:
    from xml.sax.saxutils import escape

    tag = "".join(c for c in name if c.isalnum()) or "X"
    body = (
        f"<Envelope><Body><GetExternalIPAddressResponse><{tag}>{escape(value)}</{tag}>"
        "</GetExternalIPAddressResponse></Body></Envelope>"
    ).encode("utf-8", "surrogatepass")
    try:
        values = parse_response("GetExternalIPAddress", 200, body)
    except RemoteProtocolError:
        return
    assert isinstance(values, dict)


@given(
    st.lists(
        st.tuples(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"), st.text(max_size=40)),
        max_size=6,
    )
)
def test_build_then_parse_round_trip(arguments: list[tuple[str, str]]) -> None:
    try:
        req = build_request(WANIP2, "AddPortMapping", arguments)
    except LocalProtocolError:
        return
    root = parse_xml(req.body)
    body = child(root, "Body")
    assert body is not None
    (action,) = list(body)
    got = [(local(e.tag), e.text or "") for e in action]
    # XML normalises CR and CRLF to LF inside text.
    assert got == [(n, v.replace("\r\n", "\n").replace("\r", "\n")) for n, v in arguments]
