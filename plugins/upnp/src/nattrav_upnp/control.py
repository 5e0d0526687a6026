"""Typed IGD control actions: WANIPConnection:1/:2, WANPPPConnection:1, WANIPv6FirewallControl:1.

Each method encodes one action with ``soap.build_request``, posts it through a transport (the
driver's ``HttpTransport`` or anything with the same ``post``), and decodes the answer with
``soap.parse_response`` into a typed value. UPnP faults surface as the ``UpnpActionError``
subclass for their code; out-arguments that are missing or malformed are ``ParseError``.
Nothing here decides policy (which port, which lease): that is ``planner`` and ``lease``.

Argument order follows the service specifications, because some routers read arguments by
position. Protocols are sent upper case (tailscale/tailscale#7377).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import attrs
from nattrav.errors import ParseError

from nattrav_upnp.description import ServiceInfo, ServiceKind
from nattrav_upnp.soap import build_request, parse_response
from nattrav_upnp.urls import HttpUrl

__all__ = [
    "ConnectionClient",
    "FirewallClient",
    "FirewallStatus",
    "PortMappingEntry",
    "SoapTransport",
    "StatusInfo",
    "protocol_number",
]

_PROTOCOL_NUMBERS = {"UDP": 17, "TCP": 6}


class SoapTransport(Protocol):
    """What the clients need from the HTTP layer."""

    async def post(
        self, url: HttpUrl, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, bytes]: ...


@attrs.frozen
class StatusInfo:
    """GetStatusInfo: ``Connected`` (WANIPConnection) or ``Up`` counts as connected (H6)."""

    status: str
    last_error: str = ""
    uptime: int | None = None

    @property
    def connected(self) -> bool:
        return self.status.strip().lower() in ("connected", "up")


@attrs.frozen
class PortMappingEntry:
    """One row of the router's port mapping table."""

    external_port: int
    protocol: str
    internal_port: int
    internal_client: str
    enabled: bool
    description: str
    lease: int
    remote_host: str = ""


@attrs.frozen
class FirewallStatus:
    """GetFirewallStatus: whether the IPv6 firewall is on and accepts pinhole requests."""

    enabled: bool
    inbound_pinhole_allowed: bool


def protocol_number(protocol: str) -> int:
    """IANA protocol number for ``UDP``/``TCP`` (WANIPv6FirewallControl wants numbers)."""
    return _PROTOCOL_NUMBERS[protocol.upper()]


def _int(values: Mapping[str, str], name: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    text = values.get(name, "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not lo <= int(text) <= hi:
        raise ParseError(f"{name} {text[:16]!r} is not a number in {lo}-{hi}")
    return int(text)


def _bool(values: Mapping[str, str], name: str, default: bool = False) -> bool:
    text = values.get(name, "").strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    if not text:
        return default
    raise ParseError(f"{name} {text[:16]!r} is not a boolean")


class _Client:
    def __init__(self, transport: SoapTransport, service: ServiceInfo, telemetry: Any = None):
        self.transport = transport
        self.service = service
        self.telemetry = telemetry

    async def call(
        self, action: str, arguments: Sequence[tuple[str, str | int]] = ()
    ) -> Mapping[str, str]:
        """Invoke ``action``; the out-arguments, or the typed error of the fault."""
        request = build_request(self.service.service_type, action, arguments)
        span = (
            self.telemetry.span(
                "nattrav.upnp.soap",
                method="upnp",
                action=action,
                service=self.service.label,
                gateway=self.service.control_url.host,
                server=str(self.service.control_url),
                # HTTP over TCP: the kernel retransmits, the client sends each request once
                retransmissions=0,
            )
            if self.telemetry is not None
            else nullcontext()
        )
        with span:
            status, body = await self.transport.post(
                self.service.control_url, request.headers, request.body
            )
            return parse_response(
                action, status, body, firewall=self.service.kind is ServiceKind.FIREWALL6
            )


class ConnectionClient(_Client):
    """Port mappings through a WANIPConnection (v1/v2) or WANPPPConnection:1 service."""

    @property
    def version(self) -> int:
        return self.service.version if self.service.kind is ServiceKind.WAN_IP else 1

    async def get_external_ip_address(self) -> str:
        """The raw ``NewExternalIPAddress`` text (classify it before trusting it: H5)."""
        values = await self.call("GetExternalIPAddress")
        return values.get("NewExternalIPAddress", "").strip()

    async def get_status_info(self) -> StatusInfo:
        values = await self.call("GetStatusInfo")
        uptime = values.get("NewUptime", "").strip()
        return StatusInfo(
            status=values.get("NewConnectionStatus", "")[:64],
            last_error=values.get("NewLastConnectionError", "")[:64],
            uptime=(
                int(uptime) if uptime.isascii() and uptime.isdigit() and len(uptime) <= 10 else None
            ),
        )

    async def add_port_mapping(
        self,
        *,
        external_port: int,
        protocol: str,
        internal_port: int,
        internal_client: str,
        description: str,
        lease: int,
        remote_host: str = "",
    ) -> None:
        await self.call(
            "AddPortMapping",
            self._mapping_args(
                remote_host,
                external_port,
                protocol,
                internal_port,
                internal_client,
                description,
                lease,
            ),
        )

    async def add_any_port_mapping(
        self,
        *,
        external_port: int,
        protocol: str,
        internal_port: int,
        internal_client: str,
        description: str,
        lease: int,
        remote_host: str = "",
    ) -> int:
        """IGD:2 only: the router picks the external port (near ``external_port``)."""
        values = await self.call(
            "AddAnyPortMapping",
            self._mapping_args(
                remote_host,
                external_port,
                protocol,
                internal_port,
                internal_client,
                description,
                lease,
            ),
        )
        return _int(values, "NewReservedPort", 1, 65535)

    async def delete_port_mapping(
        self, *, external_port: int, protocol: str, remote_host: str = ""
    ) -> None:
        await self.call(
            "DeletePortMapping",
            [
                ("NewRemoteHost", remote_host),
                ("NewExternalPort", external_port),
                ("NewProtocol", protocol.upper()),
            ],
        )

    async def get_specific_port_mapping_entry(
        self, *, external_port: int, protocol: str, remote_host: str = ""
    ) -> PortMappingEntry:
        values = await self.call(
            "GetSpecificPortMappingEntry",
            [
                ("NewRemoteHost", remote_host),
                ("NewExternalPort", external_port),
                ("NewProtocol", protocol.upper()),
            ],
        )
        return PortMappingEntry(
            external_port=external_port,
            protocol=protocol.upper(),
            internal_port=_int(values, "NewInternalPort", 1, 65535),
            internal_client=values.get("NewInternalClient", "")[:64],
            enabled=_bool(values, "NewEnabled", True),
            description=values.get("NewPortMappingDescription", "")[:256],
            lease=_int(values, "NewLeaseDuration") if values.get("NewLeaseDuration") else 0,
            remote_host=remote_host,
        )

    async def get_generic_port_mapping_entry(self, index: int) -> PortMappingEntry:
        values = await self.call("GetGenericPortMappingEntry", [("NewPortMappingIndex", index)])
        return PortMappingEntry(
            external_port=_int(values, "NewExternalPort", 0, 65535),
            protocol=values.get("NewProtocol", "").upper()[:8],
            internal_port=_int(values, "NewInternalPort", 0, 65535),
            internal_client=values.get("NewInternalClient", "")[:64],
            enabled=_bool(values, "NewEnabled", True),
            description=values.get("NewPortMappingDescription", "")[:256],
            lease=_int(values, "NewLeaseDuration") if values.get("NewLeaseDuration") else 0,
            remote_host=values.get("NewRemoteHost", "")[:64],
        )

    @staticmethod
    def _mapping_args(
        remote_host: str,
        external_port: int,
        protocol: str,
        internal_port: int,
        internal_client: str,
        description: str,
        lease: int,
    ) -> list[tuple[str, str | int]]:
        return [
            ("NewRemoteHost", remote_host),
            ("NewExternalPort", external_port),
            ("NewProtocol", protocol.upper()),
            ("NewInternalPort", internal_port),
            ("NewInternalClient", internal_client),
            ("NewEnabled", 1),
            ("NewPortMappingDescription", description),
            ("NewLeaseDuration", int(lease)),
        ]


class FirewallClient(_Client):
    """IPv6 pinholes through WANIPv6FirewallControl:1 (lease 1..86400 s; no "New" prefix)."""

    async def get_firewall_status(self) -> FirewallStatus:
        values = await self.call("GetFirewallStatus")
        return FirewallStatus(
            enabled=_bool(values, "FirewallEnabled"),
            inbound_pinhole_allowed=_bool(values, "InboundPinholeAllowed"),
        )

    async def add_pinhole(
        self,
        *,
        internal_client: str,
        internal_port: int,
        protocol: str,
        lease: int,
        remote_host: str = "",
        remote_port: int = 0,
    ) -> int:
        """Open a pinhole; returns its ``UniqueID``."""
        values = await self.call(
            "AddPinhole",
            [
                ("RemoteHost", remote_host),
                ("RemotePort", remote_port),
                ("InternalClient", internal_client),
                ("InternalPort", internal_port),
                ("Protocol", protocol_number(protocol)),
                ("LeaseTime", int(lease)),
            ],
        )
        return _int(values, "UniqueID", 0, 65535)

    async def update_pinhole(self, unique_id: int, lease: int) -> None:
        await self.call("UpdatePinhole", [("UniqueID", unique_id), ("NewLeaseTime", int(lease))])

    async def delete_pinhole(self, unique_id: int) -> None:
        await self.call("DeletePinhole", [("UniqueID", unique_id)])

    async def check_pinhole_working(self, unique_id: int) -> bool:
        values = await self.call("CheckPinholeWorking", [("UniqueID", unique_id)])
        return _bool(values, "IsWorking")
