"""The ``natpmp`` traversal method: a port mapping on the default gateway, PCP first.

What the chain gets
-------------------
For each IP family the request allows (and ``families`` in the config), the method finds the
default gateway and, concurrently, opens a ``GatewayClient`` and creates a mapping of the
application's local port (the shared socket's port for UDP, ``request.port`` for TCP). The
IPv4 mapping (PCP or NAT-PMP) becomes the candidate; an IPv6 PCP mapping (a firewall pinhole on
most routers) goes into ``Acquisition.also``, or is the candidate when there is no IPv4 one.
The candidate says ``Reachability.claimed(...)``: the gateway created it, no packet proved it.

The mappings stay owned by the acquisition context: renewed on the RFC schedules, re-created
after a gateway reboot or announcement (reported as ``LeaseEvent`` RENEWED, LOST, RECOVERED,
CHANGED through ``ctx.emit``), deleted when the context exits, also on cancellation.

Double NAT
----------
A mapping whose external address is private (RFC 1918, ULA) or shared (100.64/10, carrier-grade
NAT) is useless from the internet: another NAT sits beyond the gateway. The method deletes it at
once and raises ``MethodUnavailable`` naming the address, so the chain records *why* and falls
through to the next method (STUN and the relay still work through both NATs). It does not yield
a refused candidate: under the ``any`` goal that would win with an address nobody outside can
reach. ``nattrav natpmp map`` still shows such a mapping, with the verdict, for diagnosis.
Documentation ranges count as public (``nattrav.addresses``), so the lab's "internet" works.

An external address the gateway does not know (0.0.0.0, P6) is never published either: the
attempt fails with a retryable ``MethodError``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from nattrav.addresses import AddressScope, scope_of
from nattrav.errors import MethodError, MethodUnavailable, NatTravError
from nattrav.gateways import Gateway, default_gateways
from nattrav.journal import JournalEntry
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import (
    Candidate,
    CandidateKind,
    LeaseEvent,
    Reachability,
    Transport,
    TransportAddress,
)
from nattrav.taskgroups import single_errors

from nattrav_natpmp.config import NatPmpSettings, ProtocolName
from nattrav_natpmp.driver import GatewayClient, PortMapping
from nattrav_natpmp.errors import METHOD
from nattrav_natpmp.lease import Change, ErrorMemory

__all__ = ["NatPmpMethod", "double_nat_reason"]

GatewayFinder = Callable[[int], list[Gateway]]


def double_nat_reason(address: str) -> str | None:
    """Why ``address`` as a gateway's external address means double NAT, or ``None``."""
    scope = scope_of(address)
    if scope is AddressScope.PUBLIC:
        return None
    if scope is AddressScope.SHARED:
        return (
            f"double NAT: the gateway's external address {address} is carrier-grade NAT space "
            "(100.64.0.0/10); a mapping there is not reachable from the internet"
        )
    if scope is AddressScope.PRIVATE:
        return (
            f"double NAT: the gateway's external address {address} is private; another NAT "
            "beyond it makes the mapping unreachable from the internet"
        )
    return f"the gateway's external address {address} is {scope.value}: not reachable"


def _journal_gateway(text: str) -> Gateway:
    from nattrav.gateways import GatewaySource

    address, _, zone = text.partition("%")
    ip = ipaddress.ip_address(address)
    return Gateway(str(ip), zone or None, ip.version, GatewaySource.CONFIG)


@attrs.define
class _Held:
    gateway: Gateway
    mapping: PortMapping | None = None
    error: BaseException | None = None
    ready: anyio.Event = attrs.field(factory=anyio.Event)
    release: anyio.Event = attrs.field(factory=anyio.Event)


class NatPmpMethod:
    """See the module doc. ``errors`` is shared by the attempts of one runtime so PCP error
    lifetimes are honoured across retries; ``gateways`` replaces discovery (tests)."""

    def __init__(
        self,
        settings: NatPmpSettings | None = None,
        errors: ErrorMemory | None = None,
        *,
        gateways: GatewayFinder | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings or NatPmpSettings()
        self.errors = errors or ErrorMemory()
        self._gateways = gateways
        self._client_options = client_options or {}

    def find_gateways(self, families: list[int]) -> list[Gateway]:
        """The first default gateway of each family (config override first)."""
        found: list[Gateway] = []
        for family in families:
            if self._gateways is not None:
                candidates = self._gateways(family)
            else:
                candidates = default_gateways(family, override=self.settings.gateway or None)
            if candidates:
                found.append(candidates[0])
        return found

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        request = ctx.request
        port = ctx.sockets.port if ctx.sockets is not None else request.port
        if not port:
            raise MethodUnavailable(METHOD, "no local port to map (a TCP request needs a port)")
        families = [f for f in self.settings.families if f in request.families]
        gateways = self.find_gateways(families)
        if not gateways:
            wanted = "/".join(f"IPv{f}" for f in families) or "no family allowed"
            raise MethodUnavailable(METHOD, f"no default gateway ({wanted})")
        lifetime = self.settings.lifetime or max(1, round(request.lifetime))
        holds = [_Held(g) for g in gateways]

        def on_change(mapping: PortMapping, change: Change) -> None:
            ctx.emit(
                LeaseEvent(
                    change.kind,
                    ctx.method,
                    mapping.external,
                    change.detail,
                    mapping.details(),
                )
            )

        async def hold(held: _Held) -> None:
            try:
                async with GatewayClient.open(
                    held.gateway,
                    settings=self.settings,
                    errors=self.errors,
                    telemetry=ctx.telemetry,
                    **self._client_options,
                ) as client:
                    mux = ctx.sockets
                    if mux is not None:
                        # The gateway may forward this port from the first request on: other
                        # methods' filtering tests on it prove nothing until it is deleted.
                        mux.note_mapping(METHOD)
                    try:
                        async with client.mapping(
                            request.transport,
                            port,
                            lifetime=lifetime,
                            on_change=on_change,
                            journal=ctx.journal,
                        ) as mapping:
                            held.mapping = mapping
                            held.ready.set()
                            await held.release.wait()
                    finally:
                        if mux is not None:
                            mux.forget_mapping(METHOD)
            except Exception as exc:
                held.error = exc
            finally:
                held.ready.set()

        with single_errors():
            async with anyio.create_task_group() as tg:
                for held in holds:
                    tg.start_soon(hold, held)
                try:
                    for held in holds:
                        await held.ready.wait()
                    candidates: list[Candidate] = []
                    reasons: list[str] = []
                    for held in holds:
                        if held.mapping is None:
                            reasons.append(self._reason(held))
                            continue
                        problem = self._unusable(held.mapping)
                        if problem is not None:
                            reasons.append(problem)
                            held.release.set()
                            continue
                        candidates.append(self._candidate(ctx, held.mapping, port))
                    if not candidates:
                        raise self._failure(holds, reasons)
                    yield Acquisition(candidates[0], also=tuple(candidates[1:]))
                finally:
                    for held in holds:
                        held.release.set()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _reason(held: _Held) -> str:
        error = held.error
        if isinstance(error, MethodError):
            return error.reason
        return f"{type(error).__name__}: {error}" if error is not None else "no result"

    @staticmethod
    def _unusable(mapping: PortMapping) -> str | None:
        external = mapping.external
        if external is None:
            return (
                f"gateway {mapping.gateway.host} does not know its external address "
                "(it answered 0.0.0.0); not publishing the mapping"
            )
        return double_nat_reason(external.host)

    @staticmethod
    def _failure(holds: list[_Held], reasons: list[str]) -> NatTravError:
        errors = [h.error for h in holds if h.error is not None]
        text = "; ".join(dict.fromkeys(reasons))
        if (
            errors
            and all(isinstance(e, MethodError) and e.retryable for e in errors)
            and len(errors) == len(holds)
        ):
            return MethodError(METHOD, text, retryable=True)
        gateway_errors = [
            e
            for e in errors
            if isinstance(e, NatTravError) and not isinstance(e, MethodUnavailable)
        ]
        if len(holds) == 1 and gateway_errors:
            return gateway_errors[0]
        if any("does not know its external address" in r for r in reasons):
            return MethodError(METHOD, text, retryable=True)
        return MethodUnavailable(METHOD, text)

    @staticmethod
    def _candidate(ctx: AttemptContext, mapping: PortMapping, port: int) -> Candidate:
        external = mapping.external
        assert external is not None
        transport = ctx.request.transport
        name = "PCP" if mapping.protocol == "pcp" else "NAT-PMP"
        return Candidate(
            kind=CandidateKind.PORT_MAPPED,
            address=TransportAddress(external.host, external.port, transport),
            method=ctx.method,
            base=TransportAddress(mapping.internal_address, port, transport),
            reachability=Reachability.claimed(f"gateway created a {name} mapping"),
            lifetime=float(mapping.lifetime),
            details=mapping.details(),
        )

    # ------------------------------------------------------------------ crash cleanup

    async def cleanup(self, entry: JournalEntry, ctx: AttemptContext) -> None:
        """Release a mapping a crashed run left behind (``nattrav cleanup``).

        Ownership: NAT-PMP deletes only affect the sender's own mappings, and a PCP server
        refuses a deletion without the mapping's nonce, which only the journal knows. If this
        host's address changed, the deletion cannot name the mapping: it is kept.
        """
        data = entry.data
        try:
            gateway = _journal_gateway(str(data["gateway"]))
            transport = Transport(str(data["transport"]))
            internal_port = int(data["internal_port"])
            nonce = bytes.fromhex(str(data["nonce"])) if data.get("nonce") else None
        except (KeyError, ValueError) as exc:
            raise NatTravError(f"journal entry {entry.id} is not a natpmp mapping: {exc}") from None
        protocol = data.get("protocol")
        async with GatewayClient.open(
            gateway,
            settings=self.settings,
            server_port=int(data.get("server_port", 5351)),
            listen=False,
            **{k: v for k, v in self._client_options.items() if k not in ("server_port", "listen")},
        ) as client:
            if data.get("internal_address") not in (None, client.client_address):
                raise NatTravError(
                    f"this host is now {client.client_address}, the mapping was made for "
                    f"{data.get('internal_address')}: cannot release it from here"
                )
            order: list[ProtocolName] = (
                ["pcp"]
                if protocol == "pcp"
                else ["natpmp"]
                if protocol == "natpmp"
                else ["pcp", "natpmp"]
            )
            last: Exception | None = None
            for proto in order:
                if proto == "natpmp" and gateway.family == 6:
                    continue
                try:
                    if await client.delete_port(
                        transport, internal_port, protocol=proto, nonce=nonce
                    ):
                        return
                except NatTravError as exc:
                    last = exc
            raise NatTravError(
                f"gateway {gateway.host} did not confirm the deletion"
                + (f": {last}" if last else "")
            )
