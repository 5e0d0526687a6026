"""Default gateway discovery for IPv4 and IPv6, on Linux, macOS/BSD and Windows.

Why it is in core: the port-mapping plugins (NAT-PMP/PCP talk to the default gateway on UDP
5351, UPnP re-points SSDP answers to it) and the ``nattrav probe`` report all need the same
answer to "which router is in front of me?", and they must never disagree.

Theory of operation
-------------------
``default_gateways(family=None)`` returns a list of ``Gateway`` values, IPv4 first, each family
ordered by route metric. It reads what the operating system already knows and never sends a
packet:

* Linux: ``/proc/thread-self/net/route`` and ``/proc/thread-self/net/ipv6_route`` (falling back
  to ``/proc/net/...``). ``thread-self`` matters: a thread that switched network namespace with
  ``setns`` (the test lab does) sees its own namespace's routes there, while ``/proc/net`` is
  the namespace of the process's main thread. Two small reads, no subprocess.
* macOS and the BSDs: ``route -n get default`` and ``route -n get -inet6 default``; when that
  yields nothing (a VPN interface without a gateway line), ``netstat -rn``.
* Windows: ``route print``; when that yields nothing, PowerShell ``Get-NetRoute`` as JSON.
  Rows are recognised by shape, not by the (localised) headings.

Every parser is a pure function of the command's text output, unit-tested on recorded output;
a parser skips what it does not understand and never raises. A failing or missing command
gives an empty list: "no gateway" is an answer the callers handle (``MethodUnavailable``), not
an exception. Callers that know better pass ``override`` (from their config).

IPv6 default gateways are usually link-local (``fe80::1``). ``Gateway.interface`` then holds
what the OS accepts as the zone (an interface name on Linux and macOS, an interface index on
Windows) and ``Gateway.host`` gives the scoped literal (``fe80::1%eth0``) to connect to.

No global state: every call reads afresh (routes change; the call costs microseconds on Linux).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs

__all__ = [
    "CommandRunner",
    "Gateway",
    "GatewaySource",
    "default_gateways",
    "parse_gateway",
    "parse_get_netroute_json",
    "parse_netstat",
    "parse_proc_ipv6_route",
    "parse_proc_net_route",
    "parse_route_get",
    "parse_route_print",
]

#: Runs a command and returns its standard output, or ``None`` when it could not run or failed.
CommandRunner = Callable[[Sequence[str]], "str | None"]

# Linux route flags (include/uapi/linux/route.h, the same values in ipv6_route).
_RTF_UP = 0x0001
_RTF_GATEWAY = 0x0002
_RTF_REJECT = 0x0200

_COMMAND_TIMEOUT = 3.0


class GatewaySource(enum.Enum):
    """Where a gateway came from (reports show it; tests assert it)."""

    PROC = "proc"  # Linux /proc/net/route, /proc/net/ipv6_route
    ROUTE_GET = "route-get"  # macOS/BSD `route -n get default`
    NETSTAT = "netstat"  # macOS/BSD `netstat -rn`
    ROUTE_PRINT = "route-print"  # Windows `route print`
    POWERSHELL = "powershell"  # Windows `Get-NetRoute`
    CONFIG = "config"  # given by the user (override)


def _canonical(text: str) -> tuple[str, str | None] | None:
    """``'fe80::1%eth0'`` -> ``('fe80::1', 'eth0')``; ``None`` when not an IP literal."""
    text = text.strip().strip("[]")
    address, _, zone = text.partition("%")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return str(ip), (zone or None)


@attrs.frozen
class Gateway:
    """A default gateway: the router a packet to an off-link destination goes to.

    ``ip`` is the canonical literal without zone; ``interface`` the outgoing interface (name on
    Linux/macOS, index on Windows: what the OS accepts as an IPv6 zone), ``None`` when unknown;
    ``family`` 4 or 6; ``metric`` the route metric (lower is preferred; 0 when unknown);
    ``source`` how it was found.
    """

    ip: str
    interface: str | None
    family: int
    source: GatewaySource
    metric: int = 0

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """``ip`` as an ``ipaddress`` object."""
        return ipaddress.ip_address(self.ip)

    @property
    def is_link_local(self) -> bool:
        return self.address.is_link_local

    @property
    def host(self) -> str:
        """The literal to connect to: scoped (``fe80::1%eth0``) for link-local IPv6."""
        if self.family == 6 and self.interface and self.is_link_local:
            return f"{self.ip}%{self.interface}"
        return self.ip

    def as_dict(self) -> dict[str, object]:
        """JSON-able form for reports."""
        return {
            "ip": self.ip,
            "interface": self.interface,
            "family": self.family,
            "metric": self.metric,
            "source": self.source.value,
        }


def _gateway(
    text: str, interface: str | None, metric: int, source: GatewaySource
) -> Gateway | None:
    parsed = _canonical(text)
    if parsed is None:
        return None
    ip, zone = parsed
    address = ipaddress.ip_address(ip)
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        return None
    if address.version == 6 and address.is_link_local and int(address) & (2**64 - 1) == 0:
        # fe80:: (the subnet-router anycast) is what macOS shows for a tunnel: not a router.
        return None
    return Gateway(ip, interface or zone, address.version, source, max(0, metric))


def parse_gateway(text: str, interface: str | None = None) -> Gateway:
    """Parse a user-given gateway (``192.168.1.1``, ``fe80::1%eth0``, ``[fe80::1%eth0]``).

    Raises ``ValueError`` with a message naming the bad value; used for config overrides.

    >>> parse_gateway("fe80::1%eth0").host
    'fe80::1%eth0'
    """
    gateway = _gateway(text, interface, 0, GatewaySource.CONFIG)
    if gateway is None:
        raise ValueError(
            f"gateway {text!r} is not a usable IP literal (not unspecified, loopback or multicast)"
        )
    return gateway


# --------------------------------------------------------------------------- Linux


def _hex_ipv4(field: str) -> str | None:
    # The kernel prints the network-order 32-bit word with %08X in host byte order.
    try:
        raw = int(field, 16).to_bytes(4, sys.byteorder)
    except (ValueError, OverflowError):
        return None
    return str(ipaddress.IPv4Address(raw))


def parse_proc_net_route(text: str) -> list[Gateway]:
    """Default routes with a gateway from ``/proc/net/route`` (IPv4)."""
    found: list[Gateway] = []
    lines = text.splitlines()
    if not lines:
        return found
    header = lines[0].split()
    try:
        col = {name: header.index(name) for name in ("Iface", "Destination", "Gateway", "Flags")}
    except ValueError:
        return found
    metric_col = header.index("Metric") if "Metric" in header else None
    mask_col = header.index("Mask") if "Mask" in header else None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < len(header):
            continue
        try:
            flags = int(fields[col["Flags"]], 16)
            metric = int(fields[metric_col]) if metric_col is not None else 0
        except ValueError:
            continue
        if fields[col["Destination"]] != "00000000":
            continue
        if mask_col is not None and fields[mask_col] != "00000000":
            continue
        if flags & (_RTF_UP | _RTF_GATEWAY) != (_RTF_UP | _RTF_GATEWAY) or flags & _RTF_REJECT:
            continue
        interface = fields[col["Iface"]]
        ip = _hex_ipv4(fields[col["Gateway"]])
        if ip is None or interface == "lo":
            continue
        gateway = _gateway(ip, interface, metric, GatewaySource.PROC)
        if gateway is not None:
            found.append(gateway)
    return found


def parse_proc_ipv6_route(text: str) -> list[Gateway]:
    """Default routes with a next hop from ``/proc/net/ipv6_route``.

    Columns: destination, prefix length, source, source prefix length, next hop, metric,
    refcount, use, flags, interface (all numbers in hex).
    """
    found: list[Gateway] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 10:
            continue
        dest, dest_len, _src, _src_len, nexthop, metric_hex, _ref, _use, flags_hex, iface = fields
        try:
            if int(dest, 16) != 0 or int(dest_len, 16) != 0:
                continue
            flags = int(flags_hex, 16)
            metric = int(metric_hex, 16)
            hop = ipaddress.IPv6Address(bytes.fromhex(nexthop))
        except ValueError:
            continue
        if flags & (_RTF_UP | _RTF_GATEWAY) != (_RTF_UP | _RTF_GATEWAY) or flags & _RTF_REJECT:
            continue
        if iface == "lo":
            continue
        gateway = _gateway(str(hop), iface, metric, GatewaySource.PROC)
        if gateway is not None:
            found.append(gateway)
    return found


def _read_proc(proc_root: Path | None, name: str) -> str:
    candidates = (
        [proc_root / "net" / name]
        if proc_root is not None
        else [Path("/proc/thread-self/net") / name, Path("/proc/net") / name]
    )
    for path in candidates:
        try:
            return path.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
    return ""


# --------------------------------------------------------------------------- macOS / BSD


def parse_route_get(text: str, family: int | None = None) -> list[Gateway]:
    """The gateway from ``route -n get default`` (or ``route -n get -inet6 default``).

    A route through a tunnel (``utun``) has no ``gateway:`` line: no gateway, empty list.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("gateway", "interface", "destination"):
            # IPv6 literals contain colons: only the first one separates key and value.
            values.setdefault(key.strip(), value.strip())
    if "gateway" not in values:
        return []
    gateway = _gateway(values["gateway"], values.get("interface"), 0, GatewaySource.ROUTE_GET)
    if gateway is None or (family is not None and gateway.family != family):
        return []
    return [gateway]


def parse_netstat(text: str) -> list[Gateway]:
    """Default routes from ``netstat -rn`` (macOS, BSD; also Linux net-tools output).

    Sections start at a line ``Internet:`` / ``Internet6:``; each has a header naming the
    ``Destination``, ``Gateway``, ``Flags`` and ``Netif`` (or ``Iface``) columns. Routes whose
    gateway is ``link#N`` or a MAC address, or without the ``G`` flag, are not gateways.
    """
    found: list[Gateway] = []
    columns: dict[str, int] | None = None
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "Destination":
            names = {name.lower(): i for i, name in enumerate(fields)}
            iface = names.get("netif", names.get("iface"))
            if "gateway" in names and "flags" in names and iface is not None:
                columns = {
                    "dest": names["destination"],
                    "gateway": names["gateway"],
                    "flags": names["flags"],
                    "iface": iface,
                }
            else:
                columns = None
            continue
        if columns is None or len(fields) <= max(columns.values()):
            continue
        dest = fields[columns["dest"]]
        if dest not in ("default", "0.0.0.0", "::/0", "::"):
            continue
        if "G" not in fields[columns["flags"]]:
            continue
        gateway = _gateway(
            fields[columns["gateway"]], fields[columns["iface"]], 0, GatewaySource.NETSTAT
        )
        if gateway is not None:
            found.append(gateway)
    # netstat lists the preferred default first; keep that order as the metric.
    return [attrs.evolve(g, metric=i) for i, g in enumerate(found)]


# --------------------------------------------------------------------------- Windows


def _is_int(text: str) -> bool:
    # ASCII only ("²".isdigit() is true but int() refuses it) and bounded (int() refuses
    # more than 4300 digits): this parser must never raise.
    return text.isascii() and text.isdigit() and len(text) <= 18


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_route_print(text: str) -> list[Gateway]:
    """Default routes from Windows ``route print``.

    Rows are recognised by shape so localised headings do not matter:
    IPv4 active routes are ``dest mask gateway interface-address metric`` (persistent routes
    have four columns and are skipped: they may not be active); IPv6 active routes are
    ``if-index metric prefix gateway``, where a long prefix pushes the gateway onto the next
    line. ``On-link`` (in any language) is not an IP literal and so never a gateway.
    """
    found: list[Gateway] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fields = lines[i].split()
        i += 1
        if (
            len(fields) == 5
            and fields[0] == "0.0.0.0"
            and fields[1] == "0.0.0.0"
            and _is_ipv4(fields[3])
            and _is_int(fields[4])
        ):
            gateway = _gateway(fields[2], fields[3], int(fields[4]), GatewaySource.ROUTE_PRINT)
            if gateway is not None and gateway.family == 4:
                found.append(gateway)
            continue
        if len(fields) in (3, 4) and _is_int(fields[0]) and _is_int(fields[1]):
            if fields[2] != "::/0":
                continue
            if len(fields) == 4:
                hop = fields[3]
            elif i < len(lines) and len(lines[i].split()) == 1:
                hop = lines[i].split()[0]
                i += 1
            else:
                continue
            gateway = _gateway(hop, fields[0], int(fields[1]), GatewaySource.ROUTE_PRINT)
            if gateway is not None and gateway.family == 6:
                found.append(gateway)
    return found


def parse_get_netroute_json(text: str) -> list[Gateway]:
    """Default routes from ``Get-NetRoute ... | ConvertTo-Json`` (one object or a list).

    A ``NextHop`` of ``0.0.0.0`` or ``::`` means on-link: not a gateway. The interface is
    reported as its index (what Windows accepts as an IPv6 zone).
    """
    try:
        data = json.loads(text) if text.strip() else []
    except (ValueError, RecursionError):  # deeply nested junk must not escape either
        return []
    rows = data if isinstance(data, list) else [data]
    found: list[Gateway] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        prefix = row.get("DestinationPrefix")
        hop = row.get("NextHop")
        if prefix not in ("0.0.0.0/0", "::/0") or not isinstance(hop, str):
            continue
        index = row.get("InterfaceIndex")
        interface = str(index) if isinstance(index, int) else row.get("InterfaceAlias")
        metric = 0
        for key in ("RouteMetric", "InterfaceMetric"):
            value = row.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                metric += value
        gateway = _gateway(
            hop, interface if isinstance(interface, str) else None, metric, GatewaySource.POWERSHELL
        )
        if gateway is not None and gateway.family == (4 if prefix == "0.0.0.0/0" else 6):
            found.append(gateway)
    return found


_POWERSHELL_ROUTES = (
    "Get-NetRoute -DestinationPrefix 0.0.0.0/0,::/0 -ErrorAction SilentlyContinue | "
    "Select-Object DestinationPrefix,NextHop,InterfaceAlias,InterfaceIndex,RouteMetric,"
    "InterfaceMetric | ConvertTo-Json -Compress"
)


# --------------------------------------------------------------------------- the entry point


def run_command(argv: Sequence[str]) -> str | None:
    """The default ``CommandRunner``: stdout of ``argv``, ``None`` if it cannot run or fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def _from_linux(proc_root: Path | None) -> list[Gateway]:
    return parse_proc_net_route(_read_proc(proc_root, "route")) + parse_proc_ipv6_route(
        _read_proc(proc_root, "ipv6_route")
    )


def _from_bsd(run: CommandRunner, families: Sequence[int]) -> list[Gateway]:
    found: list[Gateway] = []
    for fam in families:
        argv = (
            ["route", "-n", "get", "default"]
            if fam == 4
            else ["route", "-n", "get", "-inet6", "default"]
        )
        out = run(argv)
        if out:
            found.extend(parse_route_get(out, fam))
    missing = [f for f in families if not any(g.family == f for g in found)]
    if missing:
        out = run(["netstat", "-rn"])
        if out:
            found.extend(g for g in parse_netstat(out) if g.family in missing)
    return found


def _from_windows(run: CommandRunner) -> list[Gateway]:
    out = run(["route", "print"])
    found = parse_route_print(out) if out else []
    if not found:
        out = run(["powershell", "-NoProfile", "-NonInteractive", "-Command", _POWERSHELL_ROUTES])
        found = parse_get_netroute_json(out) if out else []
    return found


def _ordered(gateways: Iterable[Gateway], family: int | None) -> list[Gateway]:
    seen: set[tuple[str, str | None]] = set()
    result: list[Gateway] = []
    for g in sorted(gateways, key=lambda g: (g.family, g.metric, g.ip, g.interface or "")):
        if family is not None and g.family != family:
            continue
        if (g.ip, g.interface) in seen:
            continue
        seen.add((g.ip, g.interface))
        result.append(g)
    return result


def default_gateways(
    family: int | None = None,
    *,
    override: str | Sequence[str] | None = None,
    platform: str | None = None,
    runner: CommandRunner | None = None,
    proc_root: str | os.PathLike[str] | None = None,
) -> list[Gateway]:
    """The default gateways of this host, IPv4 first, each family by metric.

    ``family`` (4 or 6) limits the answer to one family. ``override`` (one literal or a list,
    e.g. from a plugin's ``gateway`` setting) replaces discovery; a bad literal raises
    ``ValueError``. ``platform`` (a ``sys.platform`` value), ``runner`` and ``proc_root`` (a
    directory holding ``net/route`` and ``net/ipv6_route``) replace the OS for tests.

    Returns an empty list when there is no default route or the OS cannot be asked; never
    raises for that.

    >>> [g.ip for g in default_gateways(override="192.0.2.1")]
    ['192.0.2.1']
    """
    if family not in (None, 4, 6):
        raise ValueError(f"family must be 4, 6 or None, got {family!r}")
    if override is not None:
        texts = [override] if isinstance(override, str) else list(override)
        return _ordered((parse_gateway(t) for t in texts), family)
    system = platform or sys.platform
    families = [family] if family is not None else [4, 6]
    run = runner or run_command
    if system.startswith("linux"):
        found = _from_linux(Path(proc_root) if proc_root is not None else None)
    elif system == "darwin" or "bsd" in system or system.startswith("dragonfly"):
        found = _from_bsd(run, families)
    elif system in ("win32", "cygwin"):
        found = _from_windows(run)
    else:
        out = run(["netstat", "-rn"])
        found = parse_netstat(out) if out else []
    return _ordered(found, family)
