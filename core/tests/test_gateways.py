# ruff: noqa: E501  (recorded command output keeps its real column widths)
"""Default gateway discovery: parsers on recorded OS output, the dispatch, and real Linux routes.

The macOS and Windows outputs below were typed after real captures (English and German
Windows, a macOS host with a utun VPN); the parsers must pick the same gateways the OS uses.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from nattrav.gateways import (
    Gateway,
    GatewaySource,
    default_gateways,
    parse_gateway,
    parse_get_netroute_json,
    parse_netstat,
    parse_proc_ipv6_route,
    parse_proc_net_route,
    parse_route_get,
    parse_route_print,
)


def _kernel_hex(ip: str) -> str:
    """What the kernel prints for an IPv4 address in /proc/net/route (%08X of a __be32)."""
    return f"{int.from_bytes(ipaddress.IPv4Address(ip).packed, sys.byteorder):08X}"


PROC_ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    f"eth0\t00000000\t{_kernel_hex('192.168.1.1')}\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    f"eth0\t{_kernel_hex('192.168.1.0')}\t00000000\t0001\t0\t0\t100\t{_kernel_hex('255.255.255.0')}"
    "\t0\t0\t0\n"
    f"wlan0\t00000000\t{_kernel_hex('10.0.0.1')}\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    # A default route through a tunnel device has no gateway: not a router we can talk to.
    "tun0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0\n"
    # A reject route (flags 0x0203) must not count.
    f"eth1\t00000000\t{_kernel_hex('172.16.0.1')}\t0203\t0\t0\t10\t00000000\t0\t0\t0\n"
    "garbage line\n"
)

PROC_IPV6_ROUTE = """\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000200 00000002 00000000 00000003    wlan0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
zz
"""


def test_proc_net_route_finds_default_gateways_by_metric() -> None:
    gateways = parse_proc_net_route(PROC_ROUTE)
    assert [(g.ip, g.interface, g.metric) for g in gateways] == [
        ("192.168.1.1", "eth0", 100),
        ("10.0.0.1", "wlan0", 600),
    ]
    assert all(g.family == 4 and g.source is GatewaySource.PROC for g in gateways)


def test_proc_net_route_tolerates_empty_and_headerless_input() -> None:
    assert parse_proc_net_route("") == []
    assert parse_proc_net_route("no header here\n1 2 3\n") == []


def test_proc_ipv6_route_skips_reject_and_onlink_routes() -> None:
    gateways = parse_proc_ipv6_route(PROC_IPV6_ROUTE)
    assert [(g.ip, g.interface, g.metric) for g in gateways] == [
        ("fe80::1", "eth0", 0x400),
        ("fd00::1", "wlan0", 0x200),
    ]
    link_local = gateways[0]
    assert link_local.is_link_local
    assert link_local.host == "fe80::1%eth0"
    assert gateways[1].host == "fd00::1"


def test_linux_dispatch_reads_proc_root_and_orders_families(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(PROC_ROUTE)
    (tmp_path / "net" / "ipv6_route").write_text(PROC_IPV6_ROUTE)
    both = default_gateways(platform="linux", proc_root=tmp_path)
    assert [g.ip for g in both] == ["192.168.1.1", "10.0.0.1", "fd00::1", "fe80::1"]
    assert [g.ip for g in default_gateways(6, platform="linux", proc_root=tmp_path)] == [
        "fd00::1",
        "fe80::1",
    ]


def test_linux_without_proc_files_means_no_gateway(tmp_path: Path) -> None:
    assert default_gateways(platform="linux", proc_root=tmp_path) == []


ROUTE_GET_V4 = """\
   route to: default
destination: default
       mask: default
    gateway: 192.168.1.1
  interface: en0
      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING,GLOBAL>
 recvpipe  sendpipe  ssthresh  rtt,msec    rttvar  hopcount      mtu     expire
       0         0         0         0         0         0      1500         0
"""

ROUTE_GET_V6 = """\
   route to: ::
destination: ::
       mask: default
    gateway: fe80::1%en0
  interface: en0
      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING,GLOBAL>
 recvpipe  sendpipe  ssthresh  rtt,msec    rttvar  hopcount      mtu     expire
       0         0         0         0         0         0      1500         0
"""

ROUTE_GET_UTUN = """\
   route to: default
destination: default
       mask: default
  interface: utun3
      flags: <UP,DONE,CLONING,STATIC>
"""

NETSTAT_MACOS = """\
Routing tables

Internet:
Destination        Gateway            Flags               Netif Expire
default            link#22            UCSIg               utun3
default            192.168.1.1        UGScIg                en0
127                127.0.0.1          UCS                   lo0
192.168.1          link#6             UCS                   en0      !
192.168.1.1/32     link#6             UCS                   en0      !

Internet6:
Destination                             Gateway                                 Flags               Netif Expire
default                                 fe80::%utun0                            UGcIg               utun0
default                                 fe80::1%en0                             UGcIg                 en0
::1                                     ::1                                     UHL                   lo0
"""

NETSTAT_OLD_BSD = """\
Routing tables

Internet:
Destination        Gateway            Flags        Refs      Use   Netif Expire
default            10.1.2.1           UGSc           12        0     em0
10.1.2/24          link#1             UC              2        0     em0
"""


def test_route_get_v4_and_v6() -> None:
    [v4] = parse_route_get(ROUTE_GET_V4, 4)
    assert (v4.ip, v4.interface, v4.source) == ("192.168.1.1", "en0", GatewaySource.ROUTE_GET)
    [v6] = parse_route_get(ROUTE_GET_V6, 6)
    assert (v6.ip, v6.interface, v6.host) == ("fe80::1", "en0", "fe80::1%en0")
    assert parse_route_get(ROUTE_GET_V6, 4) == []  # asked for IPv4, got an IPv6 answer


def test_route_get_through_vpn_tunnel_has_no_gateway() -> None:
    assert parse_route_get(ROUTE_GET_UTUN, 4) == []


def test_netstat_skips_link_routes_and_tunnel_pseudo_gateway() -> None:
    gateways = parse_netstat(NETSTAT_MACOS)
    assert [(g.ip, g.interface, g.family) for g in gateways] == [
        ("192.168.1.1", "en0", 4),
        ("fe80::1", "en0", 6),
    ]
    assert [g.metric for g in gateways] == [0, 1]  # the listing order is the preference


def test_netstat_with_refs_and_use_columns() -> None:
    [g] = parse_netstat(NETSTAT_OLD_BSD)
    assert (g.ip, g.interface, g.source) == ("10.1.2.1", "em0", GatewaySource.NETSTAT)


class Recorded:
    """A CommandRunner that answers from recorded output and remembers what was run."""

    def __init__(self, answers: dict[tuple[str, ...], str | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        key = tuple(argv[:2]) if argv[0] == "powershell" else tuple(argv)
        self.calls.append(key)
        return self.answers.get(key)


def test_macos_dispatch_uses_route_get_for_each_family() -> None:
    run = Recorded(
        {
            ("route", "-n", "get", "default"): ROUTE_GET_V4,
            ("route", "-n", "get", "-inet6", "default"): ROUTE_GET_V6,
        }
    )
    gateways = default_gateways(platform="darwin", runner=run)
    assert [g.host for g in gateways] == ["192.168.1.1", "fe80::1%en0"]
    assert ("netstat", "-rn") not in run.calls  # both answered: no fallback needed


def test_macos_falls_back_to_netstat_when_route_get_has_no_gateway() -> None:
    run = Recorded(
        {
            ("route", "-n", "get", "default"): ROUTE_GET_UTUN,
            ("route", "-n", "get", "-inet6", "default"): None,  # command failed
            ("netstat", "-rn"): NETSTAT_MACOS,
        }
    )
    gateways = default_gateways(platform="darwin", runner=run)
    assert [(g.ip, g.source) for g in gateways] == [
        ("192.168.1.1", GatewaySource.NETSTAT),
        ("fe80::1", GatewaySource.NETSTAT),
    ]
    assert default_gateways(6, platform="freebsd14", runner=run)[0].ip == "fe80::1"


ROUTE_PRINT_EN = """\
===========================================================================
Interface List
 12...00 15 5d 01 02 03 ......Intel(R) Ethernet Connection
  1...........................Software Loopback Interface 1
===========================================================================

IPv4 Route Table
===========================================================================
Active Routes:
Network Destination        Netmask          Gateway       Interface  Metric
          0.0.0.0          0.0.0.0      192.168.1.1    192.168.1.100     25
          0.0.0.0          0.0.0.0         10.8.0.1         10.8.0.6    281
        127.0.0.0        255.0.0.0         On-link         127.0.0.1    331
      192.168.1.0    255.255.255.0         On-link     192.168.1.100    281
===========================================================================
Persistent Routes:
  Network Address          Netmask  Gateway Address  Metric
          0.0.0.0          0.0.0.0       172.16.0.1  Default
===========================================================================

IPv6 Route Table
===========================================================================
Active Routes:
 If Metric Network Destination      Gateway
 12    281 ::/0                     fe80::1
  1    331 ::1/128                  On-link
 12    281 2001:db8:1234:5678::/64  On-link
 12    281 2001:db8:1234:5678:9abc:def0:1234:5678/128
                                    On-link
===========================================================================
Persistent Routes:
  None
"""

ROUTE_PRINT_DE = """\
IPv4-Routentabelle
===========================================================================
Aktive Routen:
     Netzwerkziel    Netzwerkmaske          Gateway    Schnittstelle Metrik
          0.0.0.0          0.0.0.0      192.168.178.1   192.168.178.20     35
        127.0.0.0        255.0.0.0   Auf Verbindung         127.0.0.1    331
===========================================================================
IPv6-Routentabelle
===========================================================================
Aktive Routen:
 If Metrik Netzwerkziel             Gateway
  7    291 ::/0
                                    fe80::3a10:d5ff:fe00:1
  1    331 ::1/128                  Auf Verbindung
===========================================================================
"""

NETROUTE_JSON = (
    '[{"DestinationPrefix":"0.0.0.0/0","NextHop":"192.168.1.1","InterfaceAlias":"Ethernet",'
    '"InterfaceIndex":12,"RouteMetric":0,"InterfaceMetric":25},'
    '{"DestinationPrefix":"::/0","NextHop":"fe80::1","InterfaceAlias":"Ethernet",'
    '"InterfaceIndex":12,"RouteMetric":256,"InterfaceMetric":25},'
    '{"DestinationPrefix":"0.0.0.0/0","NextHop":"0.0.0.0","InterfaceAlias":"VPN",'
    '"InterfaceIndex":30,"RouteMetric":1,"InterfaceMetric":1}]'
)


def test_route_print_english() -> None:
    gateways = parse_route_print(ROUTE_PRINT_EN)
    assert [(g.ip, g.interface, g.metric, g.family) for g in gateways] == [
        ("192.168.1.1", "192.168.1.100", 25, 4),
        ("10.8.0.1", "10.8.0.6", 281, 4),
        ("fe80::1", "12", 281, 6),
    ]
    assert gateways[2].host == "fe80::1%12"  # Windows zones are interface indexes


def test_route_print_german_with_wrapped_gateway() -> None:
    gateways = parse_route_print(ROUTE_PRINT_DE)
    assert [(g.ip, g.interface) for g in gateways] == [
        ("192.168.178.1", "192.168.178.20"),
        ("fe80::3a10:d5ff:fe00:1", "7"),
    ]


def test_get_netroute_json_single_object_and_list() -> None:
    gateways = parse_get_netroute_json(NETROUTE_JSON)
    assert [(g.ip, g.interface, g.metric) for g in gateways] == [
        ("192.168.1.1", "12", 25),
        ("fe80::1", "12", 281),
    ]
    one = parse_get_netroute_json(NETROUTE_JSON[1:].split("},")[0] + "}")
    assert [g.ip for g in one] == ["192.168.1.1"]
    assert parse_get_netroute_json("not json") == []
    assert parse_get_netroute_json("") == []


def test_windows_dispatch_prefers_route_print_then_powershell() -> None:
    run = Recorded({("route", "print"): ROUTE_PRINT_EN})
    assert default_gateways(4, platform="win32", runner=run)[0].ip == "192.168.1.1"
    assert run.calls == [("route", "print")]
    run = Recorded({("route", "print"): None, ("powershell", "-NoProfile"): NETROUTE_JSON})
    gateways = default_gateways(platform="win32", runner=run)
    assert [(g.ip, g.source) for g in gateways] == [
        ("192.168.1.1", GatewaySource.POWERSHELL),
        ("fe80::1", GatewaySource.POWERSHELL),
    ]


def test_unknown_platform_tries_netstat_and_survives_failures() -> None:
    assert default_gateways(platform="sunos5", runner=Recorded({})) == []
    run = Recorded({("netstat", "-rn"): NETSTAT_OLD_BSD})
    assert [g.ip for g in default_gateways(platform="sunos5", runner=run)] == ["10.1.2.1"]


def test_override_replaces_discovery_and_validates() -> None:
    gateways = default_gateways(override=["fe80::1%eth0", "192.0.2.1"])
    assert [(g.host, g.source) for g in gateways] == [
        ("192.0.2.1", GatewaySource.CONFIG),
        ("fe80::1%eth0", GatewaySource.CONFIG),
    ]
    assert default_gateways(6, override="192.0.2.1") == []
    with pytest.raises(ValueError, match="not a usable IP literal"):
        default_gateways(override="router.local")
    with pytest.raises(ValueError, match="family"):
        default_gateways(5)


def test_parse_gateway_forms() -> None:
    assert parse_gateway("[fe80::1%eth0]") == Gateway("fe80::1", "eth0", 6, GatewaySource.CONFIG)
    assert parse_gateway("fe80::1", interface="en1").host == "fe80::1%en1"
    assert parse_gateway(" 192.0.2.1 ").as_dict() == {
        "ip": "192.0.2.1",
        "interface": None,
        "family": 4,
        "metric": 0,
        "source": "config",
    }
    for bad in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "::", "fe80::"):
        with pytest.raises(ValueError):
            parse_gateway(bad)


# --------------------------------------------------------------------------- real Linux routes

_CLONE_NEWNET = 0x40000000


def _can_make_namespaces() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture
def route_namespace() -> Iterator[str]:
    """A network namespace of our own with known default routes (removed afterwards)."""
    if not _can_make_namespaces():
        pytest.skip("needs Linux, root and iproute2 to build a namespace")
    name = f"ntgw-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        ip("link", "add", "gw0", "type", "veth", "peer", "name", "gw1")
        ip("link", "set", "gw0", "up")
        ip("link", "set", "gw1", "up")
        ip("addr", "add", "198.51.100.2/24", "dev", "gw0")
        ip("-6", "addr", "add", "2001:db8:5::2/64", "dev", "gw0", "nodad")
        ip("route", "add", "default", "via", "198.51.100.1", "dev", "gw0", "metric", "7")
        ip("-6", "route", "add", "default", "via", "fe80::77", "dev", "gw0", "metric", "9")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_reads_the_calling_threads_namespace(route_namespace: str) -> None:
    """A thread that entered a namespace with setns sees that namespace's routes."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[Gateway] = []
    errors: list[str] = []

    def in_namespace() -> None:
        with open(f"/run/netns/{route_namespace}") as f:
            if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                errors.append(os.strerror(ctypes.get_errno()))
                return
        result.extend(default_gateways())

    thread = threading.Thread(target=in_namespace)
    thread.start()
    thread.join()
    assert not errors
    assert [(g.ip, g.interface, g.metric, g.family) for g in result] == [
        ("198.51.100.1", "gw0", 7, 4),
        ("fe80::77", "gw0", 9, 6),
    ]
    # The main thread is still in the original namespace and does not see gw0.
    assert all(g.interface != "gw0" for g in default_gateways())
