"""Default gateway parsing from /proc/net/route and /proc/net/ipv6_route text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nattrav_upnp.routes import DefaultGateway, parse_ipv4_routes, parse_ipv6_routes

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0202A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wg0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
down0\t00000000\t0303A8C0\t0002\t0\t0\t10\t00000000\t0\t0\t0
garbage line
"""

IPV6_ROUTE = (
    "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "20010db8000000000000000000000001 00000200 00000001 00000000 00000003 eth1\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
)


def test_ipv4_default_routes_lowest_metric_first() -> None:
    assert parse_ipv4_routes(ROUTE) == [
        DefaultGateway(100, "192.168.1.1", "eth0"),
        DefaultGateway(200, "192.168.2.2", "eth1"),
    ]


def test_ipv6_default_routes() -> None:
    gws = parse_ipv6_routes(IPV6_ROUTE)
    assert gws == [
        DefaultGateway(0x200, "2001:db8::1", "eth1"),
        DefaultGateway(0x400, "fe80::1", "eth0"),
    ]
    assert gws[0].family == 6


@given(st.text(max_size=500))
def test_parsers_never_raise(text: str) -> None:
    assert isinstance(parse_ipv4_routes(text), list)
    assert isinstance(parse_ipv6_routes(text), list)
