"""Find the Internet Gateway Devices on the LAN and pick the service to use.

``discover`` runs the SSDP search on every suitable interface (``driver``), then fetches every
responder's description concurrently, each bounded by the transport's whole-request deadline.
``probe_services`` asks every WAN connection service for GetStatusInfo and
GetExternalIPAddress concurrently and ``selection.choose_best`` ranks them. A device whose
description is malformed or unreachable is kept with its error, so reports can say why it was
not used (a valid Huawei reply with no services is a result, not a crash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
from nattrav.errors import NatTravError
from nattrav.gateways import default_gateways
from nattrav.interfaces import list_addresses
from nattrav.taskgroups import single_errors

from nattrav_upnp.config import UpnpConfig
from nattrav_upnp.control import ConnectionClient, SoapTransport, StatusInfo
from nattrav_upnp.description import DeviceDescription, ServiceInfo, parse_description
from nattrav_upnp.driver import (
    HttpTransport,
    SearchPlan,
    open_search_sockets,
    plan_search,
    run_search,
)
from nattrav_upnp.search import Responder, SsdpSearch
from nattrav_upnp.selection import ExternalVerdict, ServiceProbe, classify_external_ip
from nattrav_upnp.urls import STRICT, UrlPolicy

__all__ = ["Discovery", "FoundDevice", "discover", "probe_services", "search_plan"]


@attrs.frozen
class FoundDevice:
    """A responder and its parsed description (or why there is none)."""

    responder: Responder
    description: DeviceDescription | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        """What quirks are remembered by: the device UDN, else its description URL."""
        if self.description is not None and self.description.udn:
            return self.description.udn.lower()
        return str(self.responder.location.url)

    def as_dict(self) -> dict[str, Any]:
        desc = self.description
        return {
            "location": str(self.responder.location.url),
            "advertised_location": self.responder.response.location,
            "repointed": self.responder.location.repointed,
            "responder": self.responder.source,
            "interface": self.responder.key.split("/", 1)[0],
            "default_gateway": self.responder.from_gateway,
            "server": self.responder.response.server,
            "boot_id": self.responder.response.boot_id,
            "error": self.error,
            "device_type": desc.device_type if desc else None,
            "udn": desc.udn if desc else None,
            "friendly_name": desc.friendly_name if desc else None,
            "manufacturer": desc.manufacturer if desc else None,
            "model": desc.model_name if desc else None,
            "services": [
                {"type": s.service_type, "control_url": str(s.control_url)}
                for s in (desc.services if desc else ())
            ],
            "skipped": list(desc.skipped) if desc else [],
        }


@attrs.frozen
class Discovery:
    """What one discovery run found, and enough context to explain an empty result."""

    devices: tuple[FoundDevice, ...]
    interfaces: tuple[str, ...]
    gateways: tuple[str, ...]
    window: float
    elapsed: float
    discarded: dict[str, int] = attrs.field(factory=dict)
    errors: dict[str, int] = attrs.field(factory=dict)
    #: default gateways whose unicast M-SEARCH drew an ICMP Port Unreachable
    refused: tuple[str, ...] = ()
    #: rounds of M-SEARCHes sent (the first and the resends: UDP gets lost)
    rounds: int = 1

    @property
    def usable(self) -> list[FoundDevice]:
        return [d for d in self.devices if d.description is not None]

    def nobody_answered(self) -> str:
        where = ", ".join(self.interfaces) or "no usable interface"
        if self.refused:
            return (
                f"no UPnP IGD answered on {where} within {self.elapsed:.1f} s: the default "
                f"gateway {', '.join(self.refused)} runs no SSDP (ICMP port unreachable); "
                "is UPnP enabled on the router?"
            )
        return (
            f"no UPnP IGD answered on {where} within {self.window:.1f} s; "
            "is UPnP enabled on the router?"
        )


def search_plan(
    config: UpnpConfig, families: frozenset[int] = frozenset({4, 6})
) -> tuple[SearchPlan, tuple[str, ...]]:
    """The search plan for this host (interfaces and default gateways read now)."""
    if config.gateway is not None:
        gws = [(g.ip, g.interface) for g in default_gateways(override=config.gateway)]
    else:
        gws = [(g.ip, g.interface) for g in default_gateways()]
    ipv6 = config.ipv6 and 6 in families
    plan = plan_search(
        list_addresses(families=[4, 6] if ipv6 else [4]),
        gws,
        interfaces=config.interfaces,
        ipv4=4 in families or not ipv6,
        ipv6=ipv6,
    )
    return plan, tuple(ip for ip, _ in gws)


async def discover(
    config: UpnpConfig,
    transport: HttpTransport,
    *,
    plan: SearchPlan | None = None,
    gateways: Sequence[str] | None = None,
    policy: UrlPolicy = STRICT,
    families: frozenset[int] = frozenset({4, 6}),
) -> Discovery:
    """Search, then fetch and parse every responder's description.

    ``families`` are the IP families a device must be found over before the search may end
    early (and the only ones searched). ``plan`` and ``gateways`` replace the host's
    interfaces and routes (tests, explicit targets); ``policy`` is for tests with scripted
    gateways on loopback only.
    """
    if plan is None:
        plan, found_gateways = search_plan(config, families)
        gateways = found_gateways if gateways is None else gateways
    gateways = tuple(gateways or ())
    errors: Counter[str] = Counter()
    wanted = frozenset(families) & {s.family for s in plan.sockets}
    search = SsdpSearch(
        plan.targets,
        families=wanted or frozenset({4}),
        window=config.discovery_window,
        settle=config.settle,
        settle_other=config.settle_other,
        max_responders=config.max_responders,
        gateways=frozenset(gateways),
        policy=policy,
    )
    started = anyio.current_time()
    fetched: dict[str, FoundDevice] = {}

    async def fetch(responder: Responder) -> None:
        key = str(responder.location.url)
        try:
            body = await transport.get(responder.location.url)
            desc = parse_description(body, responder.location, policy=policy)
        except NatTravError as exc:
            fetched[key] = FoundDevice(responder, None, str(exc))
            return
        fetched[key] = FoundDevice(responder, desc)

    # Each description is fetched as soon as its device answers, while the search goes on.
    with single_errors():
        async with anyio.create_task_group() as tg:
            async with open_search_sockets(plan.sockets, errors) as sockets:
                await run_search(
                    search, sockets, errors, on_responder=lambda r: tg.start_soon(fetch, r)
                )
    results = [fetched.get(str(r.location.url)) for r in search.responders]
    devices = tuple(d for d in results if d is not None)
    return Discovery(
        devices=devices,
        interfaces=tuple(plan.interfaces),
        gateways=gateways,
        window=config.discovery_window,
        elapsed=anyio.current_time() - started,
        discarded=dict(search.discarded),
        errors=dict(errors),
        refused=tuple(sorted(search.refused)),
        rounds=search.rounds,
    )


async def probe_services(
    devices: Sequence[FoundDevice], transport: SoapTransport, *, telemetry: Any = None
) -> list[ServiceProbe]:
    """GetStatusInfo and GetExternalIPAddress for every connection service, concurrently.

    Only devices reached over IPv4 are probed for port mapping: IPv4 mappings are what the
    connection services manage, and the same router answering over IPv6 would be asked twice.
    """
    jobs: list[tuple[int, FoundDevice, ServiceInfo]] = []
    for device in devices:
        if device.description is None or device.responder.location.url.family != 4:
            continue
        for service in device.description.connection_services:
            jobs.append((len(jobs), device, service))
    probes: list[ServiceProbe | None] = [None] * len(jobs)

    async def probe(i: int, device: FoundDevice, service: ServiceInfo) -> None:
        client = ConnectionClient(transport, service, telemetry)
        status: StatusInfo | None = None
        ip_text: str | None = None
        notes: list[str] = []

        async def get_status() -> None:
            nonlocal status
            try:
                status = await client.get_status_info()
            except NatTravError as exc:
                notes.append(f"GetStatusInfo: {exc}")

        async def get_ip() -> None:
            nonlocal ip_text
            try:
                ip_text = await client.get_external_ip_address()
            except NatTravError as exc:
                notes.append(f"GetExternalIPAddress: {exc}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(get_status)
            tg.start_soon(get_ip)
        ip, verdict, reason = classify_external_ip(ip_text)
        if notes and verdict is ExternalVerdict.UNKNOWN:
            reason = "; ".join(notes)
        assert device.description is not None
        probes[i] = ServiceProbe(
            service=service,
            igd_version=device.description.igd_version,
            from_gateway=device.responder.from_gateway,
            status=status,
            external_ip=ip,
            verdict=verdict,
            reason=reason,
            order=i,
            device_key=device.key,
        )

    async with anyio.create_task_group() as tg:
        for i, device, service in jobs:
            tg.start_soon(probe, i, device, service)
    return [p for p in probes if p is not None]
