"""The chain's ``upnp`` method: a port mapping (and an IPv6 pinhole) held for the caller.

``acquire(ctx)`` discovers the gateways (``gateway.discover``), ranks their connection
services (``selection``), refuses a gateway whose external address is not public (double NAT
is reported, never advertised), maps the caller's local port for the LAN address that reaches
the gateway, and yields the public endpoint as a ``PORT_MAPPED`` candidate with
``Reachability.claimed`` and the lease as ``lifetime``. For IPv6 requests it opens a pinhole
through WANIPv6FirewallControl (the primary candidate for an IPv6-only request, an extra one
otherwise). While the context is open ``lease.hold`` renews, re-verifies and recovers; on exit
the mapping and pinhole are deleted (shielded, bounded).

The method also implements core's ``CleansUp``: ``cleanup(entry, ctx)`` deletes what a
crashed run left in the journal, with the same ownership check as a normal release.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from typing import Any

import anyio
import attrs
from nattrav.errors import MethodError, MethodUnavailable, NatTravError
from nattrav.journal import JournalEntry
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import (
    Candidate,
    CandidateKind,
    Reachability,
    Transport,
    TransportAddress,
)
from nattrav.taskgroups import single_errors

from nattrav_upnp.config import UpnpConfig
from nattrav_upnp.control import ConnectionClient, FirewallClient
from nattrav_upnp.description import ServiceInfo, classify_service_type
from nattrav_upnp.driver import HttpTransport, SearchPlan, local_address_for
from nattrav_upnp.errors import InvalidArgsError, NoSuchEntryError, UpnpHttpError
from nattrav_upnp.gateway import Discovery, FoundDevice, discover, probe_services
from nattrav_upnp.lease import MappedPort, PinholeLease, PortMappingLease, hold, owns
from nattrav_upnp.planner import QuirkBook
from nattrav_upnp.selection import ExternalVerdict, ServiceProbe, choose_best
from nattrav_upnp.urls import STRICT, UrlPolicy, parse_http_url

__all__ = ["NAME", "PRIORITY", "GatewayChoice", "UpnpMethod"]

NAME = "upnp"
PRIORITY = 40
log = logging.getLogger("nattrav.upnp")


@attrs.frozen
class GatewayChoice:
    """What discovery found and what the method will use."""

    discovery: Discovery
    probes: tuple[ServiceProbe, ...]
    best: ServiceProbe | None
    firewall: tuple[FoundDevice, ServiceInfo] | None


class UpnpMethod:
    """Port mappings and pinholes through a UPnP IGD (see the module docstring).

    ``quirks`` is shared by every method object the plugin's factory makes, so what a gateway
    taught one run (725, 402, 727...) is remembered by the next. ``plan``, ``gateways`` and
    ``policy`` replace the host's interfaces, routes and URL policy for tests.
    """

    def __init__(
        self,
        config: UpnpConfig | None = None,
        quirks: QuirkBook | None = None,
        *,
        plan: SearchPlan | None = None,
        gateways: Sequence[str] | None = None,
        policy: UrlPolicy = STRICT,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or UpnpConfig()
        self.quirks = quirks if quirks is not None else QuirkBook()
        self.plan = plan
        self.gateways = gateways
        self.policy = policy
        self.rng = rng or random.Random()

    def transport(self) -> HttpTransport:
        return HttpTransport(timeout=self.config.http_timeout, max_body=self.config.max_body)

    # ---------------------------------------------------------------- discovery

    async def choose(
        self,
        transport: HttpTransport,
        telemetry: Any = None,
        families: frozenset[int] = frozenset({4, 6}),
    ) -> GatewayChoice:
        """Discover, probe and rank; ``MethodUnavailable`` when no IGD answered at all.

        ``families``: IPv4 for port mappings, IPv6 for pinholes (the router must be reached
        over IPv6 for those); the search waits a little for a device of each.
        """
        span = (
            telemetry.span(
                "nattrav.upnp.search",
                method=NAME,
                families=",".join(str(f) for f in sorted(families)),
            )
            if telemetry is not None
            else nullcontext()
        )
        with span as current:
            found = await discover(
                self.config,
                transport,
                plan=self.plan,
                gateways=self.gateways,
                policy=self.policy,
                families=families,
            )
            if current is not None:
                outcome = (
                    "succeeded"
                    if found.devices
                    else ("unreachable" if found.refused else "timed-out")
                )
                current.set_attribute("nattrav.outcome", outcome)
                current.set_attribute("nattrav.devices", len(found.devices))
                current.set_attribute("nattrav.retransmissions", max(0, found.rounds - 1))
                current.set_attribute("nattrav.server", ",".join(found.gateways))
        if telemetry is not None:
            counter = telemetry.counter(
                "nattrav.upnp.ssdp.discarded", description="SSDP datagrams discarded, by reason"
            )
            for reason, count in found.discarded.items():
                counter.add(count, {"reason": reason})
        if not found.devices:
            raise MethodUnavailable(NAME, found.nobody_answered())
        probes = await probe_services(found.devices, transport, telemetry=telemetry)
        best = choose_best(probes)
        return GatewayChoice(found, tuple(probes), best, _firewall_device(found, best))

    # ---------------------------------------------------------------- acquire

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        port = _local_port(ctx)
        with single_errors():
            async with self.transport() as transport, AsyncExitStack() as stack:
                yield await self._obtain(ctx, transport, stack, port)

    async def _obtain(
        self, ctx: AttemptContext, transport: HttpTransport, stack: AsyncExitStack, port: int
    ) -> Acquisition:
        """Map and/or open a pinhole (concurrently); the leases stay held in ``stack``."""
        request = ctx.request
        protocol = request.transport.value.upper()
        choice = await self.choose(transport, ctx.telemetry, self._families(request.families))
        problems: list[str] = []
        mapping: PortMappingLease | None = None
        pinhole: PinholeLease | None = None
        if 4 in request.families:
            try:
                mapping = self._mapping_lease(transport, choice, ctx, port, protocol)
            except MethodUnavailable as exc:
                problems.append(exc.reason)
        if 6 in request.families and self.config.pinholes:
            if choice.firewall is not None:
                pinhole = self._pinhole_lease(transport, choice, ctx, port, protocol)
            elif 4 not in request.families:
                problems.append("no gateway offers WANIPv6FirewallControl over IPv6")
        failures: dict[str, MethodError] = {}
        mux = ctx.sockets
        if mux is not None and (mapping is not None or pinhole is not None):
            # From now on the gateway may forward this port: other methods' filtering tests on
            # it prove nothing until the leases are gone (the stack unwinds this last).
            mux.note_mapping(NAME)
            stack.callback(mux.forget_mapping, NAME)

        async def create(name: str, lease: PortMappingLease | PinholeLease) -> None:
            try:
                await lease.create()
            except MethodError as exc:
                failures[name] = exc
                await lease.release()  # forgets the journal entry; nothing was created

        try:
            async with anyio.create_task_group() as tg:
                if mapping is not None:
                    tg.start_soon(create, "mapping", mapping)
                if pinhole is not None:
                    tg.start_soon(create, "pinhole", pinhole)
        except BaseException:
            for lease in (mapping, pinhole):
                if lease is not None:
                    await lease.release()
            raise
        candidates: list[Candidate] = []
        if mapping is not None and "mapping" not in failures:
            await stack.enter_async_context(hold(mapping, created=True))
            candidates.append(self._mapping_candidate(mapping, choice))
        if pinhole is not None and "pinhole" not in failures:
            await stack.enter_async_context(hold(pinhole, created=True))
            candidates.append(_pinhole_candidate(pinhole, choice))
        if "pinhole" in failures:
            log.info("upnp: no pinhole: %s", failures["pinhole"].reason)
        if not candidates:
            error = failures.get("mapping") or failures.get("pinhole")
            if error is not None and not isinstance(error, MethodUnavailable):
                raise error
            if error is not None:
                problems.append(error.reason)
            raise MethodUnavailable(NAME, "; ".join(problems) or "nothing to map")
        return Acquisition(candidates[0], also=tuple(candidates[1:]))

    def _families(self, requested: frozenset[int]) -> frozenset[int]:
        wanted = set(requested & {4})
        if 6 in requested and self.config.pinholes and self.config.ipv6:
            wanted.add(6)
        return frozenset(wanted or {4})

    def _mapping_lease(
        self,
        transport: HttpTransport,
        choice: GatewayChoice,
        ctx: AttemptContext,
        port: int,
        protocol: str,
    ) -> PortMappingLease:
        best = choice.best
        if best is None:
            reasons = [
                f"{d.responder.source}: {d.error}" for d in choice.discovery.devices if d.error
            ]
            detail = f" ({'; '.join(reasons)})" if reasons else ""
            raise MethodUnavailable(
                NAME,
                f"{len(choice.discovery.devices)} UPnP device(s) answered but none offers a "
                f"WANIPConnection or WANPPPConnection service{detail}",
            )
        if best.verdict is not ExternalVerdict.PUBLIC or best.external_ip is None:
            raise MethodUnavailable(NAME, best.reason)
        if best.status is not None and not best.status.connected:
            raise MethodUnavailable(
                NAME, f"the gateway's WAN connection is {best.status.status or 'not connected'}"
            )
        service = best.service

        async def reconnect() -> ConnectionClient:
            again = await self.choose(transport, ctx.telemetry, frozenset({4}))
            same = [p for p in again.probes if p.device_key == best.device_key] or [
                p for p in again.probes if p.service.control_url.host == service.control_url.host
            ]
            found = choose_best(same)
            if found is None:
                raise UpnpHttpError(f"gateway {service.control_url.host} not found again")
            return ConnectionClient(transport, found.service, ctx.telemetry)

        return PortMappingLease(
            ConnectionClient(transport, service, ctx.telemetry),
            quirks=self.quirks.get(best.device_key),
            protocol=protocol,
            internal_client=local_address_for(service.control_url.host),
            internal_port=port,
            external_ip=best.external_ip,
            lease=int(min(self.config.lease, ctx.request.lifetime)),
            description=self.config.description,
            verify_interval=self.config.verify_interval,
            release_timeout=self.config.release_timeout,
            emit=ctx.emit,
            reconnect=reconnect,
            journal=ctx.journal,
            rng=self.rng,
            gateway=service.control_url.host,
        )

    def _mapping_candidate(self, lease: PortMappingLease, choice: GatewayChoice) -> Candidate:
        best = choice.best
        assert lease.mapping is not None and best is not None
        return _mapping_candidate(lease.mapping, best, self.quirks.get(best.device_key).as_dict())

    def _pinhole_lease(
        self,
        transport: HttpTransport,
        choice: GatewayChoice,
        ctx: AttemptContext,
        port: int,
        protocol: str,
    ) -> PinholeLease:
        assert choice.firewall is not None
        _device, service = choice.firewall

        async def reconnect() -> FirewallClient:
            again = await self.choose(transport, ctx.telemetry, frozenset({6}))
            if again.firewall is None:
                raise UpnpHttpError("the IPv6 firewall service was not found again")
            return FirewallClient(transport, again.firewall[1], ctx.telemetry)

        return PinholeLease(
            FirewallClient(transport, service, ctx.telemetry),
            protocol=protocol,
            internal_client=local_address_for(service.control_url.host),
            internal_port=port,
            lease=int(min(self.config.pinhole_lease, ctx.request.lifetime)),
            verify_interval=self.config.verify_interval,
            release_timeout=self.config.release_timeout,
            emit=ctx.emit,
            reconnect=reconnect,
            journal=ctx.journal,
            rng=self.rng,
            gateway=service.control_url.host,
        )

    # ---------------------------------------------------------------- cleanup

    async def cleanup(self, entry: JournalEntry, ctx: AttemptContext) -> None:
        """Release a crashed run's mapping or pinhole described by ``entry`` (if still ours)."""
        data = entry.data
        try:
            url = parse_http_url(str(data["control_url"]), self.policy)
            service_type = str(data["service_type"])
            kinded = classify_service_type(service_type)
            if kinded is None:
                raise ValueError(f"unknown service type {service_type!r}")
            service = ServiceInfo(service_type, kinded[0], kinded[1], url)
        except (KeyError, ValueError, NatTravError) as exc:
            raise MethodError(NAME, f"journal entry {entry.id} is unusable: {exc}") from exc
        async with self.transport() as transport:
            try:
                await self._cleanup_with(service, transport, entry)
            except UpnpHttpError:
                # The control URL moved (router restart): find the gateway again, retry once.
                choice = await self.choose(transport, ctx.telemetry)
                for probe in choice.probes:
                    if probe.service.control_url.host == url.host and kinded[0].is_connection:
                        await self._cleanup_with(probe.service, transport, entry)
                        return
                if choice.firewall is not None and not kinded[0].is_connection:
                    await self._cleanup_with(choice.firewall[1], transport, entry)
                    return
                raise

    async def _cleanup_with(
        self, service: ServiceInfo, transport: HttpTransport, entry: JournalEntry
    ) -> None:
        data = entry.data
        if entry.kind == "pinhole":
            uid = data.get("unique_id")
            if uid is None:
                return
            try:
                await FirewallClient(transport, service).delete_pinhole(int(uid))
            except (NoSuchEntryError, InvalidArgsError):
                pass  # gone (miniupnpd answers 402 for an unknown UniqueID)
            return
        client = ConnectionClient(transport, service)
        mapping = MappedPort(
            external_ip="0.0.0.0",
            external_port=int(data["external_port"]),
            protocol=str(data["protocol"]),
            internal_client=str(data["internal_client"]),
            internal_port=int(data["internal_port"]),
            description=str(data["description"]),
            requested_lease=int(data.get("lease", 0)),
            granted_lease=None,
            action="",
            created_at=0.0,
        )
        try:
            row = await client.get_specific_port_mapping_entry(
                external_port=mapping.external_port, protocol=mapping.protocol
            )
        except NoSuchEntryError:
            return
        if not owns(row, mapping):
            return
        try:
            await client.delete_port_mapping(
                external_port=mapping.external_port, protocol=mapping.protocol
            )
        except NoSuchEntryError:
            pass


def _local_port(ctx: AttemptContext) -> int:
    request = ctx.request
    if request.transport is Transport.UDP and ctx.sockets is not None:
        return int(ctx.sockets.port)
    if request.port == 0:
        raise MethodUnavailable(NAME, "no local port to map (the request's port is 0)")
    return request.port


def _firewall_device(
    found: Discovery, best: ServiceProbe | None
) -> tuple[FoundDevice, ServiceInfo] | None:
    """The IPv6-reached device with a WANIPv6FirewallControl service; the best's own first."""
    options = [
        (d, d.description.firewall_service)
        for d in found.usable
        if d.description is not None
        and d.description.firewall_service is not None
        and d.responder.location.url.family == 6
    ]
    options.sort(
        key=lambda o: (best is None or o[0].key != best.device_key, not o[0].responder.from_gateway)
    )
    for device, service in options:
        assert service is not None
        return device, service
    return None


def _pinhole_candidate(lease: PinholeLease, choice: GatewayChoice) -> Candidate:
    assert lease.pinhole is not None and choice.firewall is not None
    device, service = choice.firewall
    address = lease.pinhole.endpoint()
    return Candidate(
        kind=CandidateKind.PORT_MAPPED,
        address=address,
        method=NAME,
        base=address,
        reachability=Reachability.claimed("gateway opened an IPv6 firewall pinhole"),
        lifetime=float(lease.lease),
        details={
            "gateway": service.control_url.host,
            "service": service.label,
            "pinhole_id": lease.pinhole.unique_id,
            "device": device.description.friendly_name if device.description else "",
        },
    )


def _mapping_candidate(
    mapping: MappedPort, best: ServiceProbe, quirks: dict[str, object]
) -> Candidate:
    lease = mapping.effective_lease
    return Candidate(
        kind=CandidateKind.PORT_MAPPED,
        address=mapping.endpoint(),
        method=NAME,
        base=TransportAddress(
            mapping.internal_client, mapping.internal_port, Transport(mapping.protocol.lower())
        ),
        reachability=Reachability.claimed("gateway created a port mapping"),
        lifetime=float(lease) if lease > 0 else None,
        details={
            "gateway": best.service.control_url.host,
            "service": best.service.label,
            "igd_version": best.igd_version,
            "action": mapping.action,
            "lease_requested": mapping.requested_lease,
            "lease_granted": mapping.granted_lease,
            "permanent": mapping.permanent,
            "external_ip_verdict": best.verdict.value,
            "quirks": quirks,
        },
    )
