"""Owning a port mapping or a pinhole: create, keep alive, recover, release.

Theory of operation
-------------------
``PortMappingLease`` and ``PinholeLease`` are used through ``hold(lease)``, an async context
manager:

* **enter** creates the resource. For a mapping, ``planner.MappingPlanner`` walks the recovery
  ladder (718/725/402/726/727/401/606...) and the lease actually granted is read back with
  GetSpecificPortMappingEntry (routers shorten leases or turn 0 into a week: H7). A journal
  entry (core's crash journal) is written *before* the first request, so a ``kill -9`` leaves
  something ``nattrav cleanup`` can find.
* **while open** a keeper task renews at half the lease in force (with jitter) and re-verifies
  existence every ``verify_interval`` (routers purge mappings early and lose them on reboot:
  pain points 3-5). A mapping that vanished, or now belongs to someone else, is re-added and
  ``LOST`` then ``RECOVERED`` (or ``CHANGED`` when the public endpoint moved) are emitted.
  When the gateway stops answering (a restart moves miniupnpd's HTTP port: go-libp2p#3224),
  the keeper rediscovers the gateway through ``reconnect`` and re-adds. A gateway that stays
  unreachable longer than the lease in force ends the lease with ``MethodError``.
  A mapping that vanishes twice well before half its lease teaches the gateway's quirks to ask
  for a permanent lease (the DD-WRT behaviour, tailscale#18196).
* **exit** (normal, error or cancellation) deletes the resource, shielded and bounded by
  ``release_timeout``. Only what this lease created is deleted: before DeletePortMapping the
  entry is read back and must name our internal client, internal port and description (with a
  per-lease random token). A permanent lease (0) gets extra delete attempts, since nothing else
  would ever remove it.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
import attrs
from nattrav.errors import MethodError, MethodUnavailable, NatTravError, ParseError
from nattrav.journal import Journal, JournalEntry
from nattrav.models import LeaseEvent, LeaseEventKind, Transport, TransportAddress
from nattrav.taskgroups import single_errors

from nattrav_upnp.control import ConnectionClient, FirewallClient, PortMappingEntry
from nattrav_upnp.errors import (
    InvalidArgsError,
    NoSuchEntryError,
    UpnpActionError,
    UpnpHttpError,
)
from nattrav_upnp.planner import GatewayQuirks, LeaseSchedule, MappingPlanner, MapStep
from nattrav_upnp.selection import ExternalVerdict, classify_external_ip

__all__ = [
    "MappedPort",
    "OpenPinhole",
    "PinholeLease",
    "PortMappingLease",
    "hold",
    "owns",
]

METHOD = "upnp"
log = logging.getLogger("nattrav.upnp")
Emit = Callable[[LeaseEvent], None]


@attrs.frozen
class MappedPort:
    """A port mapping as it stands on the gateway."""

    external_ip: str
    external_port: int
    protocol: str
    internal_client: str
    internal_port: int
    description: str
    requested_lease: int
    granted_lease: int | None
    action: str
    created_at: float

    @property
    def permanent(self) -> bool:
        return self.requested_lease == 0

    @property
    def effective_lease(self) -> float:
        return LeaseSchedule(self.requested_lease, self.granted_lease).effective

    def endpoint(self) -> TransportAddress:
        return TransportAddress(
            self.external_ip, self.external_port, Transport(self.protocol.lower())
        )


@attrs.frozen
class OpenPinhole:
    """An IPv6 pinhole as it stands on the gateway."""

    unique_id: int
    internal_client: str
    internal_port: int
    protocol: str
    lease: int
    created_at: float

    def endpoint(self) -> TransportAddress:
        return TransportAddress(
            self.internal_client, self.internal_port, Transport(self.protocol.lower())
        )


def owns(entry: PortMappingEntry, mapping: MappedPort) -> bool:
    """Whether a gateway table row is the mapping we created.

    Internal client and port must match exactly; the description must match, or be a prefix of
    ours of at least 12 characters (some routers truncate descriptions).
    """
    if entry.internal_client.strip() != mapping.internal_client:
        return False
    if entry.internal_port != mapping.internal_port:
        return False
    theirs, ours = entry.description.strip(), mapping.description
    return theirs == ours or (len(theirs) >= min(12, len(ours)) and ours.startswith(theirs))


class _Lease(Protocol):
    async def create(self) -> None: ...
    async def keep(self) -> None: ...
    async def release(self) -> bool: ...


_L = TypeVar("_L", bound=_Lease)


@asynccontextmanager
async def hold(lease: _L, *, created: bool = False) -> AsyncIterator[_L]:
    """Create ``lease`` (unless ``created``), keep it alive while the body runs, release it on
    any exit (also when creating it failed or was cancelled)."""
    try:
        if not created:
            await lease.create()
        with single_errors():
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease.keep)
                try:
                    yield lease
                finally:
                    tg.cancel_scope.cancel()
    finally:
        await lease.release()


class PortMappingLease:
    """One port mapping this process owns (see the module docstring)."""

    kind = "port-mapping"

    def __init__(
        self,
        client: ConnectionClient,
        *,
        quirks: GatewayQuirks,
        protocol: str,
        internal_client: str,
        internal_port: int,
        external_ip: str,
        lease: int,
        description: str,
        wanted_port: int | None = None,
        verify_interval: float = 300.0,
        release_timeout: float = 3.0,
        emit: Emit | None = None,
        reconnect: Callable[[], Awaitable[ConnectionClient]] | None = None,
        journal: Journal | None = None,
        rng: random.Random | None = None,
        gateway: str = "",
    ) -> None:
        self.client = client
        self.quirks = quirks
        self.protocol = protocol.upper()
        self.internal_client = internal_client
        self.internal_port = internal_port
        self.external_ip = external_ip
        self.lease = int(lease)
        # A per-lease token makes the ownership check exact even for several mappings of one
        # host; keep it short because routers truncate descriptions.
        self.description = f"{description} {secrets.token_hex(3)}"
        self.wanted_port = wanted_port or internal_port
        self.verify_interval = verify_interval
        self.release_timeout = release_timeout
        self.emit = emit or (lambda _event: None)
        self.reconnect = reconnect
        self.journal = journal
        self.rng = rng or random.Random()
        self.gateway = gateway
        self.mapping: MappedPort | None = None
        self.entry: JournalEntry | None = None
        self.released = False

    # ---------------------------------------------------------------- create

    async def create(self) -> None:
        """Create the mapping (walks the ladder); ``MethodError`` when the gateway refuses."""
        self.entry = self._journal_record()
        try:
            self.mapping = await self._add(self.wanted_port)
        except (UpnpHttpError, ParseError) as exc:
            raise MethodError(
                METHOD, f"gateway failed while mapping: {exc}", retryable=True
            ) from exc
        self._journal_update()

    async def _free_port(self, wanted: int) -> int:
        """``wanted`` unless another mapping (even of this host) holds it: then a free port.

        miniupnpd lets a client re-point its own mappings (even through AddAnyPortMapping),
        so without this check a second application on this host would silently steal the
        first one's mapping, and their keepers would steal it back and forth.
        """
        tried = [wanted]
        tried += [self._random_port() for _ in range(4)]
        for port in tried:
            try:
                entry = await self.client.get_specific_port_mapping_entry(
                    external_port=port, protocol=self.protocol
                )
            except NoSuchEntryError:
                return port
            except NatTravError:
                return port  # cannot tell (no such action?): let the ladder deal with it
            if self._is_ours(entry):
                return port
        return wanted

    def _random_port(self) -> int:
        return self.rng.randrange(1024, 65536)

    def _is_ours(self, entry: PortMappingEntry) -> bool:
        probe = MappedPort(
            "",
            entry.external_port,
            self.protocol,
            self.internal_client,
            self.internal_port,
            self.description,
            0,
            None,
            "",
            0.0,
        )
        return owns(entry, probe)

    async def _add(self, wanted_port: int) -> MappedPort:
        wanted_port = await self._free_port(wanted_port)
        planner = MappingPlanner(
            self.quirks,
            igd2=self.client.version >= 2,
            wanted_port=wanted_port,
            lease=self.lease,
            random_port=self._random_port,
        )
        step = planner.first()
        while True:
            try:
                port = await self._send(step)
            except UpnpActionError as err:
                log.info("upnp: %s failed: %s", step.action, err)
                step = planner.next_after(step, err)
                continue
            planner.succeeded(step)
            break
        granted: int | None = None
        try:
            entry = await self.client.get_specific_port_mapping_entry(
                external_port=port, protocol=self.protocol
            )
            granted = entry.lease
        except NatTravError as exc:  # read-back is best effort: some routers lack the action
            log.info("upnp: read-back of port %d failed: %s", port, exc)
        return MappedPort(
            external_ip=self.external_ip,
            external_port=port,
            protocol=self.protocol,
            internal_client=self.internal_client,
            internal_port=self.internal_port,
            description=self.description,
            requested_lease=step.lease,
            granted_lease=granted,
            action=step.action,
            created_at=anyio.current_time(),
        )

    async def _send(self, step: MapStep) -> int:
        args: dict[str, Any] = {
            "external_port": step.external_port,
            "protocol": self.protocol,
            "internal_port": self.internal_port,
            "internal_client": self.internal_client,
            "description": self.description,
            "lease": step.lease,
            "remote_host": step.remote_host,
        }
        if step.action == "AddAnyPortMapping":
            return await self.client.add_any_port_mapping(**args)
        await self.client.add_port_mapping(**args)
        return step.external_port

    # ---------------------------------------------------------------- keep

    async def keep(self) -> None:
        """Renew, re-verify and recover until cancelled (see the module docstring)."""
        assert self.mapping is not None
        outage_since: float | None = None
        backoff = 0.5
        next_renew, next_verify = self._schedule(anyio.current_time())
        while True:
            await anyio.sleep_until(min(next_renew, next_verify))
            now = anyio.current_time()
            try:
                if outage_since is not None:
                    await self._recover("gateway unreachable", reconnect=True)
                elif now >= next_renew:
                    await self._renew()
                else:
                    await self._verify()
            except (UpnpHttpError, ParseError, UpnpActionError) as exc:
                if outage_since is None:
                    outage_since = now
                    self._emit(LeaseEventKind.LOST, f"gateway unreachable: {exc}")
                limit = max(self.mapping.effective_lease, 600.0)
                if now - outage_since > limit:
                    raise MethodError(
                        METHOD, f"gateway unreachable for {now - outage_since:.0f} s: {exc}"
                    ) from exc
                next_verify = now + min(backoff, self.verify_interval)
                next_renew = math.inf
                backoff = min(backoff * 2, 30.0)
                continue
            outage_since = None
            backoff = 0.5
            next_renew, next_verify = self._schedule(anyio.current_time())

    def _schedule(self, now: float) -> tuple[float, float]:
        assert self.mapping is not None
        schedule = LeaseSchedule(
            self.mapping.requested_lease, self.mapping.granted_lease, self.verify_interval
        )
        renew = schedule.renew_delay(self.rng)
        return (now + renew if renew is not None else math.inf), now + schedule.verify_delay(
            self.rng
        )

    async def _renew(self) -> None:
        assert self.mapping is not None
        m = self.mapping
        try:
            entry = await self.client.get_specific_port_mapping_entry(
                external_port=m.external_port, protocol=m.protocol
            )
        except NoSuchEntryError:
            self._note_loss()
            self._emit(LeaseEventKind.LOST, "the gateway no longer has the mapping")
            await self._recover("mapping vanished")
            return
        if not owns(entry, m):
            # Renewing now would take the port back from whoever holds it: move instead.
            self._emit(LeaseEventKind.LOST, f"port {m.external_port} now maps to someone else")
            await self._recover("mapping taken over")
            return
        try:
            await self.client.add_port_mapping(
                external_port=m.external_port,
                protocol=m.protocol,
                internal_port=m.internal_port,
                internal_client=m.internal_client,
                description=m.description,
                lease=m.requested_lease,
            )
        except UpnpActionError as exc:
            # The slot is gone or taken (a reboot, someone else): start over.
            self._emit(LeaseEventKind.LOST, f"renewal refused: {exc}")
            await self._recover(f"renewal refused: {exc}")
            return
        self.mapping = attrs.evolve(m, created_at=anyio.current_time())
        self._emit(LeaseEventKind.RENEWED, f"lease {m.requested_lease} s renewed")
        self._journal_update()

    async def _verify(self) -> None:
        assert self.mapping is not None
        m = self.mapping
        try:
            entry = await self.client.get_specific_port_mapping_entry(
                external_port=m.external_port, protocol=m.protocol
            )
        except NoSuchEntryError:
            self._note_loss()
            self._emit(LeaseEventKind.LOST, "the gateway no longer has the mapping")
            await self._recover("mapping vanished")
            return
        if not owns(entry, m):
            self._emit(
                LeaseEventKind.LOST,
                f"port {m.external_port} now maps to {entry.internal_client}:{entry.internal_port}",
            )
            await self._recover("mapping taken over")
            return
        self.mapping = attrs.evolve(m, granted_lease=entry.lease or m.granted_lease)

    def _note_loss(self) -> None:
        assert self.mapping is not None
        m = self.mapping
        age = anyio.current_time() - m.created_at
        if m.effective_lease > 0 and age < m.effective_lease / 2:
            self.quirks.early_losses += 1
            if self.quirks.early_losses >= 2 and not self.quirks.permanent_only:
                log.warning("upnp: gateway drops mappings early; switching to permanent leases")
                self.quirks.permanent_only = True

    async def _recover(self, why: str, *, reconnect: bool = False) -> None:
        assert self.mapping is not None
        before = self.mapping
        if reconnect and self.reconnect is not None:
            self.client = await self.reconnect()
        try:
            ip_text = await self.client.get_external_ip_address()
        except UpnpActionError:
            ip_text = before.external_ip
        ip, verdict, reason = classify_external_ip(ip_text)
        if ip is None or verdict is not ExternalVerdict.PUBLIC:
            raise MethodError(METHOD, f"cannot recover the mapping: {reason}")
        self.external_ip = ip
        self.mapping = await self._add(before.external_port)
        after = self.mapping
        self._journal_update()
        if after.endpoint() == before.endpoint():
            self._emit(LeaseEventKind.RECOVERED, f"re-added after: {why}")
        else:
            self._emit(
                LeaseEventKind.CHANGED,
                f"re-added after {why}; public endpoint {before.endpoint()} -> {after.endpoint()}",
            )

    # ---------------------------------------------------------------- release

    async def release(self) -> bool:
        """Delete the mapping if it is still ours; shielded and bounded. True when gone."""
        if self.released:
            return True
        mapping = self.mapping
        if mapping is None:
            self._journal_remove()
            self.released = True
            return True
        done = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.release_timeout):
            done = await self._delete(mapping)
        if done:
            self._journal_remove()
            self.released = True
        else:
            log.warning(
                "upnp: could not delete mapping %s within %.1f s; it expires with its lease",
                mapping.endpoint(),
                self.release_timeout,
            )
        return done

    async def _delete(self, mapping: MappedPort) -> bool:
        tries = 4 if mapping.permanent else 2
        for attempt in range(tries):
            if attempt:
                await anyio.sleep(0.1 * attempt)
            try:
                entry = await self.client.get_specific_port_mapping_entry(
                    external_port=mapping.external_port, protocol=mapping.protocol
                )
            except NoSuchEntryError:
                return True
            except NatTravError as exc:
                log.info("upnp: ownership check failed: %s", exc)
                continue
            if not owns(entry, mapping):
                log.warning(
                    "upnp: not deleting port %d: it maps to %s:%d (%r), not to us",
                    mapping.external_port,
                    entry.internal_client,
                    entry.internal_port,
                    entry.description,
                )
                return True  # nothing of ours is left there
            try:
                await self.client.delete_port_mapping(
                    external_port=mapping.external_port, protocol=mapping.protocol
                )
            except NoSuchEntryError:
                return True
            except NatTravError as exc:
                log.info("upnp: DeletePortMapping failed: %s", exc)
                continue
            return True
        return False

    # ---------------------------------------------------------------- events, journal

    def _emit(self, kind: LeaseEventKind, detail: str) -> None:
        m = self.mapping
        self.emit(
            LeaseEvent(
                kind,
                METHOD,
                m.endpoint() if m is not None else None,
                detail,
                details={"gateway": self.gateway, "kind": self.kind},
            )
        )

    def _journal_data(self) -> dict[str, Any]:
        m = self.mapping
        return {
            "control_url": str(self.client.service.control_url),
            "service_type": self.client.service.service_type,
            "protocol": self.protocol,
            "internal_client": self.internal_client,
            "internal_port": self.internal_port,
            "external_port": m.external_port if m else self.wanted_port,
            "description": self.description,
            "lease": m.requested_lease if m else self.lease,
            "gateway": self.gateway,
        }

    def _journal_record(self) -> JournalEntry | None:
        if self.journal is None:
            return None
        try:
            return self.journal.record(METHOD, self.kind, self._journal_data())
        except OSError as exc:
            log.warning("upnp: cannot write the mapping journal: %s", exc)
            return None

    def _journal_update(self) -> None:
        if self.journal is None or self.entry is None or self.mapping is None:
            return
        lease = self.mapping.effective_lease
        try:
            self.entry = self.journal.update(
                self.entry,
                data=self._journal_data(),
                expires=time.time() + lease if lease > 0 else None,
            )
        except OSError as exc:
            log.warning("upnp: cannot update the mapping journal: %s", exc)

    def _journal_remove(self) -> None:
        if self.journal is not None and self.entry is not None:
            self.journal.remove(self.entry)
            self.entry = None


#: What a gateway answers for a pinhole it does not know: 704 NoSuchEntry, or (miniupnpd 2.3,
#: also after a reboot that lost its state) 402 Invalid Args for the unknown UniqueID; the
#: arguments we send are otherwise always valid (lease 1..86400 is checked by the config).
_PINHOLE_GONE = (NoSuchEntryError, InvalidArgsError)


class PinholeLease:
    """One IPv6 pinhole (WANIPv6FirewallControl:1) this process owns.

    The SOAP requests must come from ``internal_client`` over IPv6: routers (miniupnpd's
    ``PinholeVerification``) only let a host open pinholes to itself.
    """

    kind = "pinhole"

    def __init__(
        self,
        client: FirewallClient,
        *,
        protocol: str,
        internal_client: str,
        internal_port: int,
        lease: int,
        verify_interval: float = 300.0,
        release_timeout: float = 3.0,
        emit: Emit | None = None,
        reconnect: Callable[[], Awaitable[FirewallClient]] | None = None,
        journal: Journal | None = None,
        rng: random.Random | None = None,
        gateway: str = "",
    ) -> None:
        self.client = client
        self.protocol = protocol.upper()
        self.internal_client = internal_client
        self.internal_port = internal_port
        self.lease = max(1, min(int(lease), 86400))
        self.verify_interval = verify_interval
        self.release_timeout = release_timeout
        self.emit = emit or (lambda _event: None)
        self.reconnect = reconnect
        self.journal = journal
        self.rng = rng or random.Random()
        self.gateway = gateway
        self.pinhole: OpenPinhole | None = None
        self.entry: JournalEntry | None = None
        self.released = False

    async def create(self) -> None:
        try:
            status = await self.client.get_firewall_status()
        except UpnpActionError as exc:
            raise MethodUnavailable(METHOD, f"GetFirewallStatus failed: {exc}") from exc
        except (UpnpHttpError, ParseError) as exc:
            raise MethodError(METHOD, f"gateway failed: {exc}", retryable=True) from exc
        if not status.enabled:
            raise MethodUnavailable(
                METHOD, "the gateway's IPv6 firewall is disabled: no pinhole is needed"
            )
        if not status.inbound_pinhole_allowed:
            raise MethodUnavailable(METHOD, "the gateway does not allow inbound IPv6 pinholes")
        if self.journal is not None:
            try:
                self.entry = self.journal.record(METHOD, self.kind, self._journal_data())
            except OSError as exc:
                log.warning("upnp: cannot write the mapping journal: %s", exc)
        try:
            self.pinhole = await self._add()
        except UpnpActionError as exc:
            self._journal_remove()
            raise MethodUnavailable(METHOD, f"AddPinhole refused: {exc}") from exc
        except (UpnpHttpError, ParseError) as exc:
            self._journal_remove()
            raise MethodError(METHOD, f"gateway failed: {exc}", retryable=True) from exc
        self._journal_update()

    async def _add(self) -> OpenPinhole:
        uid = await self.client.add_pinhole(
            internal_client=self.internal_client,
            internal_port=self.internal_port,
            protocol=self.protocol,
            lease=self.lease,
        )
        return OpenPinhole(
            uid,
            self.internal_client,
            self.internal_port,
            self.protocol,
            self.lease,
            anyio.current_time(),
        )

    async def keep(self) -> None:
        """UpdatePinhole at half the lease (or each verify interval): renews and verifies."""
        outage_since: float | None = None
        backoff = 0.5
        while True:
            assert self.pinhole is not None
            if outage_since is None:
                delay = min(self.lease / 2, self.verify_interval) * (1 - 0.1 * self.rng.random())
            else:
                delay = backoff
            await anyio.sleep(max(0.05, delay))
            now = anyio.current_time()
            try:
                if outage_since is not None and self.reconnect is not None:
                    self.client = await self.reconnect()
                try:
                    await self.client.update_pinhole(self.pinhole.unique_id, self.lease)
                except _PINHOLE_GONE:
                    before = self.pinhole
                    if outage_since is None:
                        self._emit(LeaseEventKind.LOST, "the gateway no longer has the pinhole")
                    self.pinhole = await self._add()
                    self._journal_update()
                    self._emit(
                        LeaseEventKind.RECOVERED,
                        f"pinhole re-added (id {before.unique_id} -> {self.pinhole.unique_id})",
                    )
                else:
                    if outage_since is not None:
                        self._emit(LeaseEventKind.RECOVERED, "gateway reachable again")
                    else:
                        self._emit(LeaseEventKind.RENEWED, f"pinhole lease {self.lease} s renewed")
            except (UpnpHttpError, ParseError, UpnpActionError) as exc:
                if outage_since is None:
                    outage_since = now
                    self._emit(LeaseEventKind.LOST, f"gateway unreachable: {exc}")
                if now - outage_since > max(self.lease, 600):
                    raise MethodError(
                        METHOD, f"gateway unreachable for {now - outage_since:.0f} s: {exc}"
                    ) from exc
                backoff = min(backoff * 2, 30.0)
                continue
            outage_since = None
            backoff = 0.5

    async def release(self) -> bool:
        if self.released:
            return True
        pinhole = self.pinhole
        if pinhole is None:
            self._journal_remove()
            self.released = True
            return True
        done = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.release_timeout):
            for attempt in range(2):
                if attempt:
                    await anyio.sleep(0.1)
                try:
                    await self.client.delete_pinhole(pinhole.unique_id)
                except _PINHOLE_GONE:
                    done = True
                    break
                except NatTravError as exc:
                    log.info("upnp: DeletePinhole failed: %s", exc)
                    continue
                done = True
                break
        if done:
            self._journal_remove()
            self.released = True
        return done

    def _emit(self, kind: LeaseEventKind, detail: str) -> None:
        p = self.pinhole
        self.emit(
            LeaseEvent(
                kind,
                METHOD,
                p.endpoint() if p is not None else None,
                detail,
                details={"gateway": self.gateway, "kind": self.kind},
            )
        )

    def _journal_data(self) -> dict[str, Any]:
        return {
            "control_url": str(self.client.service.control_url),
            "service_type": self.client.service.service_type,
            "protocol": self.protocol,
            "internal_client": self.internal_client,
            "internal_port": self.internal_port,
            "unique_id": self.pinhole.unique_id if self.pinhole else None,
            "gateway": self.gateway,
        }

    def _journal_update(self) -> None:
        if self.journal is None or self.entry is None or self.pinhole is None:
            return
        try:
            self.entry = self.journal.update(
                self.entry, data=self._journal_data(), expires=time.time() + self.lease
            )
        except OSError as exc:
            log.warning("upnp: cannot update the mapping journal: %s", exc)

    def _journal_remove(self) -> None:
        if self.journal is not None and self.entry is not None:
            self.journal.remove(self.entry)
            self.entry = None
