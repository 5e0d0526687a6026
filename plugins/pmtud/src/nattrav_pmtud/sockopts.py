"""Which socket options set Don't Fragment on each platform: pure functions, recorded constants.

Why per platform (peers.md pain point 19): PMTU probing is only meaningful when a probe that is
too big is *dropped*, not fragmented (by our kernel or, for IPv4, by a router). quic-go#3802
found DF could only be set on Linux, which made its DPLPMTUD harmful elsewhere; quic-go#4723
found macOS dual-stack sockets need IPV6_DONTFRAG. So the options are chosen by a pure
function, tested against recorded constants for every platform, and a platform without a
known way to set DF refuses to probe rather than report a fragmented "success".

* Linux: ``IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`` (DF set, and the kernel neither fragments nor
  clamps to a cached PMTU, so a probe is sent at exactly its size), ``IPV6_MTU_DISCOVER =
  IPV6_PMTUDISC_PROBE`` plus ``IPV6_DONTFRAG``; ``IP_RECVERR``/``IPV6_RECVERR`` queue ICMP
  PTBs on the socket (``errqueue``), the only platform where PTB hints are read.
* macOS (Darwin): ``IP_DONTFRAG`` (28) / ``IPV6_DONTFRAG`` (62); on a dual-stack IPv6 socket
  only ``IPV6_DONTFRAG`` exists and it covers IPv4-mapped destinations too. No error queue:
  probe loss alone (EMSGSIZE still reports the local interface limit).
* FreeBSD: ``IP_DONTFRAG`` (67) / ``IPV6_DONTFRAG`` (62). No error queue.
* Windows: ``IP_DONTFRAGMENT`` (14) / ``IPV6_DONTFRAG`` (14); a dual-stack socket needs both,
  because IPv4 packets follow ``IP_DONTFRAGMENT``. No error queue (WSAEMSGSIZE 10040 locally).

Constants are recorded (not taken from ``socket``) because Python does not export most of them
and because tests must check the values for platforms other than the one running them.
"""

from __future__ import annotations

import sys

import attrs

__all__ = ["DontFragmentPlan", "SocketOption", "current_platform", "dont_fragment_plan"]

IPPROTO_IP = 0
IPPROTO_IPV6 = 41

# Linux (include/uapi/linux/in.h, in6.h)
LINUX_IP_MTU_DISCOVER = 10
LINUX_IP_RECVERR = 11
LINUX_IP_MTU = 14
LINUX_IP_PMTUDISC_PROBE = 3
LINUX_IPV6_MTU_DISCOVER = 23
LINUX_IPV6_MTU = 24
LINUX_IPV6_RECVERR = 25
LINUX_IPV6_DONTFRAG = 62
LINUX_IPV6_PMTUDISC_PROBE = 3
# Darwin (netinet/in.h, netinet6/in6.h)
DARWIN_IP_DONTFRAG = 28
DARWIN_IPV6_DONTFRAG = 62
# FreeBSD (netinet/in.h, netinet6/in6.h)
FREEBSD_IP_DONTFRAG = 67
FREEBSD_IPV6_DONTFRAG = 62
# Windows (ws2ipdef.h)
WINDOWS_IP_DONTFRAGMENT = 14
WINDOWS_IPV6_DONTFRAG = 14

#: errno of "message too long" per platform (what a send larger than the interface MTU gives)
EMSGSIZE = {"linux": 90, "darwin": 40, "freebsd": 40, "win32": 10040}


@attrs.frozen
class SocketOption:
    """One ``setsockopt(level, name, value)`` call, with its C name for messages and docs."""

    level: int
    name: int
    value: int
    label: str


@attrs.frozen
class DontFragmentPlan:
    """How to make a UDP socket of ``family`` send with DF on ``platform``.

    ``supported`` is False where no way to set DF is known: probing there would measure
    fragmentation, so the driver refuses. ``error_queue`` says whether ICMP PTBs can be read
    (Linux only). ``emsgsize`` is the errno of a local "message too long".
    """

    platform: str
    family: int
    dual_stack: bool
    options: tuple[SocketOption, ...]
    supported: bool
    error_queue: bool
    emsgsize: int | None
    notes: str = ""


def current_platform() -> str:
    """``linux``, ``darwin``, ``freebsd``, ``win32`` or the raw ``sys.platform``."""
    p = sys.platform
    if p.startswith("linux"):
        return "linux"
    if p.startswith("freebsd"):
        return "freebsd"
    return p


def _linux(family: int, dual: bool) -> tuple[tuple[SocketOption, ...], str]:
    v4 = (
        SocketOption(
            IPPROTO_IP,
            LINUX_IP_MTU_DISCOVER,
            LINUX_IP_PMTUDISC_PROBE,
            "IP_MTU_DISCOVER=IP_PMTUDISC_PROBE",
        ),
        SocketOption(IPPROTO_IP, LINUX_IP_RECVERR, 1, "IP_RECVERR"),
    )
    v6 = (
        SocketOption(
            IPPROTO_IPV6,
            LINUX_IPV6_MTU_DISCOVER,
            LINUX_IPV6_PMTUDISC_PROBE,
            "IPV6_MTU_DISCOVER=IPV6_PMTUDISC_PROBE",
        ),
        SocketOption(IPPROTO_IPV6, LINUX_IPV6_DONTFRAG, 1, "IPV6_DONTFRAG"),
        SocketOption(IPPROTO_IPV6, LINUX_IPV6_RECVERR, 1, "IPV6_RECVERR"),
    )
    if family == 4:
        return v4, "DF set; the kernel neither fragments nor clamps probes; ICMP read as hints"
    if dual:
        return v6 + v4, "both families' options apply independently on a dual-stack socket"
    return v6, "no fragmentation by this host; ICMPv6 Packet Too Big read as hints"


def dont_fragment_plan(platform: str, family: int, *, dual_stack: bool = False) -> DontFragmentPlan:
    """The socket options that make probes leave unfragmented on ``platform``.

    ``family`` is the socket's family; ``dual_stack`` means an IPv6 socket with IPV6_V6ONLY
    off that also sends to IPv4-mapped addresses.
    """
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {family!r}")
    dual = dual_stack and family == 6
    emsgsize = EMSGSIZE.get(platform)
    if platform == "linux":
        options, notes = _linux(family, dual)
        return DontFragmentPlan(platform, family, dual, options, True, True, emsgsize, notes)
    if platform in ("darwin", "freebsd"):
        ip_df = DARWIN_IP_DONTFRAG if platform == "darwin" else FREEBSD_IP_DONTFRAG
        v6 = SocketOption(IPPROTO_IPV6, DARWIN_IPV6_DONTFRAG, 1, "IPV6_DONTFRAG")
        if family == 4:
            opts: tuple[SocketOption, ...] = (SocketOption(IPPROTO_IP, ip_df, 1, "IP_DONTFRAG"),)
        else:  # on Darwin also the only DF option of a dual-stack socket: covers IPv4 too
            opts = (v6,)
        notes = "no ICMP error queue: the search relies on probe loss (and local EMSGSIZE)"
        if dual and platform == "freebsd":
            return DontFragmentPlan(
                platform, family, dual, opts, False, False, emsgsize,
                "FreeBSD has no dual-stack sockets by default (net.inet6.ip6.v6only): use one "
                "socket per family",
            )  # fmt: skip
        return DontFragmentPlan(platform, family, dual, opts, True, False, emsgsize, notes)
    if platform == "win32":
        v4w = SocketOption(IPPROTO_IP, WINDOWS_IP_DONTFRAGMENT, 1, "IP_DONTFRAGMENT")
        v6w = SocketOption(IPPROTO_IPV6, WINDOWS_IPV6_DONTFRAG, 1, "IPV6_DONTFRAG")
        opts = (v4w,) if family == 4 else (v6w, v4w) if dual else (v6w,)
        notes = "no ICMP error queue: the search relies on probe loss (and WSAEMSGSIZE)"
        return DontFragmentPlan(platform, family, dual, opts, True, False, emsgsize, notes)
    return DontFragmentPlan(
        platform, family, dual, (), False, False, emsgsize,
        f"no known way to set Don't Fragment on {platform!r}: probes could be fragmented and "
        "the result would be wrong, so PMTU discovery is refused",
    )  # fmt: skip
