"""Sans-IO recognition of unsolicited gateway announcements (multicast to port 5350).

A NAT-PMP gateway announces a new external address (and its restart) with an external-address
response sent to 224.0.0.1:5350 (RFC 6886 §3.2.1); a PCP server announces a restart with an
unsolicited ANNOUNCE response to 224.0.0.1:5350 and [ff02::1]:5350 (RFC 6887 §14.1.3). Anyone on
the link can send to those groups, so only packets whose source address is the gateway's are
believed (P9); everything else is discarded with a reason the listener counts.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import attrs
from nattrav.errors import ParseError

from nattrav_natpmp import natpmp_codec, pcp_codec

__all__ = ["Announcement", "parse_announcement"]


@attrs.frozen
class Announcement:
    """A believable announcement: which protocol, the server's epoch, and (NAT-PMP) the new
    external address if it has one."""

    protocol: Literal["pcp", "natpmp"]
    epoch: int
    external_address: str | None = None


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False


def parse_announcement(data: bytes, source: str, gateway: str) -> tuple[Announcement | None, str]:
    """``(announcement, "")`` when ``data`` from ``source`` is one, else ``(None, reason)``."""
    if not _same(source, gateway):
        return None, "wrong source"
    if not data:
        return None, "empty"
    try:
        if data[0] == natpmp_codec.VERSION:
            response = natpmp_codec.decode_response(data)
            if not isinstance(response, natpmp_codec.ExternalAddressResponse):
                return None, "not an address announcement"
            if response.result != 0:
                return None, "error result"
            return Announcement("natpmp", response.epoch, response.external_address), ""
        if data[0] == pcp_codec.VERSION:
            decoded = pcp_codec.decode_response(data)
            if (
                not isinstance(decoded, pcp_codec.Response)
                or decoded.opcode is not pcp_codec.Opcode.ANNOUNCE
            ):
                return None, "not an ANNOUNCE"
            if decoded.result != 0:
                return None, "error result"
            return Announcement("pcp", decoded.epoch), ""
    except ParseError as exc:
        return None, f"malformed: {exc}"
    return None, f"unknown version {data[0]}"
