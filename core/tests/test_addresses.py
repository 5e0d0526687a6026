from __future__ import annotations

import pytest
from nattrav.addresses import AddressScope, format_hostport, is_public, parse_hostport, scope_of


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("8.8.8.8", AddressScope.PUBLIC),
        ("192.0.2.1", AddressScope.PUBLIC),  # documentation ranges: the lab's internet
        ("198.51.100.7", AddressScope.PUBLIC),
        ("203.0.113.9", AddressScope.PUBLIC),
        ("2001:db8::1", AddressScope.PUBLIC),
        ("2606:4700::1111", AddressScope.PUBLIC),
        ("10.1.2.3", AddressScope.PRIVATE),
        ("172.16.0.1", AddressScope.PRIVATE),
        ("172.31.255.254", AddressScope.PRIVATE),
        ("192.168.1.1", AddressScope.PRIVATE),
        ("fd00::1", AddressScope.PRIVATE),
        ("fc12::1", AddressScope.PRIVATE),
        ("100.64.0.1", AddressScope.SHARED),
        ("100.127.255.254", AddressScope.SHARED),
        ("127.0.0.1", AddressScope.LOOPBACK),
        ("::1", AddressScope.LOOPBACK),
        ("::ffff:127.0.0.1", AddressScope.LOOPBACK),
        ("::ffff:192.168.0.1", AddressScope.PRIVATE),
        ("169.254.1.1", AddressScope.LINK_LOCAL),
        ("fe80::1", AddressScope.LINK_LOCAL),
        ("fe80::1%eth0", AddressScope.LINK_LOCAL),
        ("0.0.0.0", AddressScope.UNSPECIFIED),
        ("::", AddressScope.UNSPECIFIED),
        ("224.0.0.1", AddressScope.MULTICAST),
        ("ff02::c", AddressScope.MULTICAST),
        ("0.1.2.3", AddressScope.RESERVED),
        ("240.0.0.1", AddressScope.RESERVED),
        ("255.255.255.255", AddressScope.RESERVED),
        ("172.32.0.1", AddressScope.PUBLIC),
        ("100.128.0.1", AddressScope.PUBLIC),
    ],
)
def test_scope_of(ip: str, scope: AddressScope) -> None:
    assert scope_of(ip) is scope
    assert is_public(ip) is (scope is AddressScope.PUBLIC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:3478", ("192.0.2.1", 3478)),
        ("[2001:db8::1]:3478", ("2001:db8::1", 3478)),
        ("stun.example.org:19302", ("stun.example.org", 19302)),
        (" 192.0.2.1:1 ", ("192.0.2.1", 1)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_parse_hostport_default_port_and_bare_ipv6() -> None:
    assert parse_hostport("example.org", default_port=3478) == ("example.org", 3478)
    assert parse_hostport("2001:db8::1", default_port=3478) == ("2001:db8::1", 3478)
    assert parse_hostport("[2001:db8::1]", default_port=5) == ("2001:db8::1", 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("example.org", "missing port"),
        ("example.org:0", "out of range"),
        ("example.org:65536", "out of range"),
        ("example.org:http", "not a number"),
        ("[2001:db8::1:3478", "missing ']'"),
        ("[2001:db8::1]x", "expected ':PORT'"),
        ("[example.org]:1", "does not appear to be an IPv4 or IPv6 address"),
        (":3478", "missing host"),
        ("2001:db8::zz", "does not appear"),
    ],
)
def test_parse_hostport_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_hostport(text)


def test_format_round_trip() -> None:
    for host, port in [("192.0.2.1", 1), ("2001:db8::1", 65535)]:
        assert parse_hostport(format_hostport(host, port)) == (host, port)
