"""Server address parsing: HOST:PORT, [IPv6]:PORT, stun:/stuns:/turn:/turns: URIs."""

from __future__ import annotations

import pytest
from nattrav_stun.uri import ServerAddress, parse_server


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun.example.org", ServerAddress("stun", "stun.example.org", 3478, "udp")),
        ("192.0.2.1:3479", ServerAddress("stun", "192.0.2.1", 3479, "udp")),
        ("[2001:DB8::1]:3478", ServerAddress("stun", "2001:db8::1", 3478, "udp")),
        ("stun:Stun.Example.org", ServerAddress("stun", "stun.example.org", 3478, "udp")),
        ("stun:stun.example.org:19302", ServerAddress("stun", "stun.example.org", 19302, "udp")),
        ("stun:[2001:db8::1]:1", ServerAddress("stun", "2001:db8::1", 1, "udp")),
        ("stuns:stun.example.org", ServerAddress("stuns", "stun.example.org", 5349, "tls")),
        ("STUNS:192.0.2.1:443", ServerAddress("stuns", "192.0.2.1", 443, "tls")),
        ("stun:host.example?transport=tcp", ServerAddress("stun", "host.example", 3478, "tcp")),
        ("turn:t.example?transport=udp", ServerAddress("turn", "t.example", 3478, "udp")),
        ("turns:t.example:5349?transport=tcp", ServerAddress("turns", "t.example", 5349, "tls")),
        ("stun://stun.example.org", ServerAddress("stun", "stun.example.org", 3478, "udp")),
        ("stun:3478", ServerAddress("stun", "stun", 3478, "udp")),
        ("localhost:3478", ServerAddress("stun", "localhost", 3478, "udp")),
    ],
)
def test_parses(text: str, expected: ServerAddress) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://stun.example.org",
        "stun:user@host",
        "stun:host:99999",
        "stun:host?transport=sctp",
        "stuns:host?transport=udp",
        "stun:host?foo=bar",
        "2001:db8::1:3478",
        "bad host:3478",
        "[2001:db8::1",
        "-bad-.example:1",
    ],
)
def test_rejects_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_server(text)


def test_str_round_trips() -> None:
    for text in (
        "stun:192.0.2.1:3478",
        "stuns:[2001:db8::1]:5349",
        "stun:h.example:1?transport=tcp",
    ):
        assert str(parse_server(text)) == text
        assert parse_server(str(parse_server(text))) == parse_server(text)
