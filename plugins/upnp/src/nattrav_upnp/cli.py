"""``nattrav upnp discover|map|unmap|list|pinhole [--json]``.

Each command is a thin shell over the same objects the chain uses (``UpnpMethod.choose``,
``PortMappingLease``, ``PinholeLease``), so what the CLI shows is what the method would do.
Errors are ``NatTravError`` subclasses: core prints them as one line and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any

import anyio
import attrs
from nattrav.errors import MethodUnavailable, NatTravError
from nattrav.models import LeaseEvent

from nattrav_upnp.config import UpnpConfig, load_config
from nattrav_upnp.control import ConnectionClient, PortMappingEntry
from nattrav_upnp.driver import local_address_for
from nattrav_upnp.errors import InvalidArgsError, NoSuchEntryError, UpnpActionError
from nattrav_upnp.lease import PinholeLease, PortMappingLease, hold
from nattrav_upnp.method import GatewayChoice, UpnpMethod
from nattrav_upnp.selection import ExternalVerdict, ServiceProbe

__all__ = ["run_command"]

MAX_LIST = 512
V4 = frozenset({4})


def _config(args: argparse.Namespace, cli: Any) -> UpnpConfig:
    cfg = load_config(cli.config.plugin_table("upnp"))
    changes: dict[str, Any] = {}
    if getattr(args, "window", None) is not None:
        changes["discovery_window"] = args.window
    if getattr(args, "interface", None):
        changes["interfaces"] = tuple(args.interface)
    if getattr(args, "lease", None) is not None:
        changes["lease"] = args.lease
        changes["pinhole_lease"] = max(1, args.lease)
    return attrs.evolve(cfg, **changes) if changes else cfg


def run_command(args: argparse.Namespace, cli: Any) -> int:
    """Dispatch ``nattrav upnp ACTION``; returns the exit code."""
    cfg = _config(args, cli)
    method = UpnpMethod(cfg)
    runner = {
        "discover": _discover,
        "map": _map,
        "unmap": _unmap,
        "list": _list,
        "pinhole": _pinhole,
    }[args.upnp_command]
    return int(cli.run(runner, args, cli, method))


def _probe_json(p: ServiceProbe) -> dict[str, Any]:
    return {
        "service": p.service.service_type,
        "control_url": str(p.service.control_url),
        "igd_version": p.igd_version,
        "default_gateway": p.from_gateway,
        "status": p.status.status if p.status else None,
        "connected": p.status.connected if p.status else None,
        "external_ip": p.external_ip,
        "verdict": p.verdict.value,
        "reason": p.reason,
    }


def _choice_json(choice: GatewayChoice) -> dict[str, Any]:
    d = choice.discovery
    return {
        "interfaces": list(d.interfaces),
        "gateways": list(d.gateways),
        "elapsed": round(d.elapsed, 4),
        "discarded": d.discarded,
        "errors": d.errors,
        "devices": [dev.as_dict() for dev in d.devices],
        "services": [_probe_json(p) for p in choice.probes],
        "best": _probe_json(choice.best) if choice.best else None,
        "pinhole_service": str(choice.firewall[1].control_url) if choice.firewall else None,
    }


async def _discover(args: argparse.Namespace, cli: Any, method: UpnpMethod) -> int:
    async with method.transport() as transport:
        try:
            choice = await method.choose(transport)
        except MethodUnavailable as exc:
            if cli.json:
                cli.emit_json({"devices": [], "error": exc.reason})
            else:
                cli.line(exc.reason)
            return 1
    if cli.json:
        cli.emit_json(_choice_json(choice))
        return 0
    d = choice.discovery
    cli.line(f"searched {', '.join(d.interfaces)} in {d.elapsed * 1000:.0f} ms")
    cli.table(
        ["responder", "gateway", "device", "location", "note"],
        [
            [
                dev.responder.source,
                "yes" if dev.responder.from_gateway else "",
                (dev.description.friendly_name or dev.description.model_name)
                if dev.description
                else "",
                str(dev.responder.location.url)
                + (" (re-pointed)" if dev.responder.location.repointed else ""),
                dev.error or "",
            ]
            for dev in d.devices
        ],
    )
    if choice.probes:
        cli.line()
        cli.table(
            ["service", "status", "external ip", "verdict"],
            [
                [
                    f"{p.service.label} @ {p.service.control_url}",
                    p.status.status if p.status else "?",
                    p.external_ip or "",
                    p.verdict.value,
                ]
                for p in choice.probes
            ],
        )
    if choice.best is not None:
        cli.line()
        cli.line(f"best: {choice.best.service.label} at {choice.best.service.control_url}")
        if choice.best.verdict is not ExternalVerdict.PUBLIC:
            cli.line(f"warning: {choice.best.reason}")
    if choice.firewall is not None:
        cli.line(f"IPv6 pinholes: {choice.firewall[1].control_url}")
    return 0


def _print_event(cli: Any, event: LeaseEvent) -> None:
    if cli.json:
        cli.out.write(
            json.dumps(
                {
                    "event": event.kind.value,
                    "endpoint": str(event.endpoint) if event.endpoint else None,
                    "detail": event.detail,
                }
            )
            + "\n"
        )
        cli.out.flush()
    else:
        cli.line(f"{event.kind.value}: {event.endpoint or ''} {event.detail}")


async def _wait(args: argparse.Namespace) -> None:
    if args.detach:
        return
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        with anyio.move_on_after(args.hold if args.hold is not None else float("inf")):
            async for _sig in signals:
                break


async def _best_public(method: UpnpMethod, transport: Any) -> tuple[GatewayChoice, ServiceProbe]:
    choice = await method.choose(transport, families=V4)
    best = choice.best
    if best is None:
        raise MethodUnavailable("upnp", "no gateway offers a WAN connection service")
    if best.verdict is not ExternalVerdict.PUBLIC or best.external_ip is None:
        raise MethodUnavailable("upnp", best.reason)
    return choice, best


async def _map(args: argparse.Namespace, cli: Any, method: UpnpMethod) -> int:
    if not 0 < args.port < 65536:
        raise NatTravError(f"port {args.port} out of range 1-65535")
    cfg = method.config
    async with method.transport() as transport:
        _choice, best = await _best_public(method, transport)
        service = best.service
        lease = PortMappingLease(
            ConnectionClient(transport, service),
            quirks=method.quirks.get(best.device_key),
            protocol=args.protocol,
            internal_client=local_address_for(service.control_url.host),
            internal_port=args.port,
            external_ip=best.external_ip or "",
            lease=cfg.lease,
            description=cfg.description,
            wanted_port=args.external_port,
            verify_interval=cfg.verify_interval,
            release_timeout=cfg.release_timeout,
            emit=lambda event: _print_event(cli, event),
            journal=None if args.detach else cli.runtime().journal,
            gateway=service.control_url.host,
        )
        if args.detach:
            await lease.create()
            assert lease.mapping is not None
            _report_mapping(cli, lease, detached=True)
            return 0
        async with hold(lease):
            _report_mapping(cli, lease, detached=False)
            await _wait(args)
    return 0


def _report_mapping(cli: Any, lease: PortMappingLease, *, detached: bool) -> None:
    m = lease.mapping
    assert m is not None
    data = {
        "endpoint": str(m.endpoint()),
        "protocol": m.protocol,
        "internal": f"{m.internal_client}:{m.internal_port}",
        "lease_requested": m.requested_lease,
        "lease_granted": m.granted_lease,
        "action": m.action,
        "description": m.description,
        "gateway": lease.gateway,
        "detached": detached,
    }
    if cli.json:
        cli.out.write(json.dumps({"mapping": data}) + "\n")
        cli.out.flush()
        return
    cli.line(f"mapped {m.protocol} {m.endpoint()} -> {m.internal_client}:{m.internal_port}")
    lease_text = "permanent" if m.permanent else f"{m.requested_lease} s"
    cli.line(
        f"lease {lease_text} (router reports {m.granted_lease}); description {m.description!r}"
    )
    if detached:
        cli.line(
            f"left in place; delete with: nattrav upnp unmap {m.external_port} "
            f"--protocol {m.protocol.lower()}"
        )


async def _unmap(args: argparse.Namespace, cli: Any, method: UpnpMethod) -> int:
    protocol = args.protocol.upper()
    async with method.transport() as transport:
        _choice, best = await _best_public_or_any(method, transport)
        client = ConnectionClient(transport, best.service)
        me = local_address_for(best.service.control_url.host)
        try:
            entry = await client.get_specific_port_mapping_entry(
                external_port=args.external_port, protocol=protocol
            )
        except NoSuchEntryError:
            _result(cli, args, "absent", f"no {protocol} mapping on port {args.external_port}")
            return 0
        ours = entry.internal_client == me and entry.description.startswith(
            method.config.description
        )
        if not ours and not args.force:
            raise NatTravError(
                f"port {args.external_port}/{protocol} maps to {entry.internal_client}:"
                f"{entry.internal_port} ({entry.description!r}), not to this host's "
                f"{method.config.description!r} mappings; use --force to delete it anyway"
            )
        try:
            await client.delete_port_mapping(external_port=args.external_port, protocol=protocol)
        except NoSuchEntryError:
            pass
        _result(cli, args, "deleted", f"deleted {protocol} port {args.external_port}")
    return 0


async def _best_public_or_any(
    method: UpnpMethod, transport: Any
) -> tuple[GatewayChoice, ServiceProbe]:
    choice = await method.choose(transport, families=V4)
    if choice.best is None:
        raise MethodUnavailable("upnp", "no gateway offers a WAN connection service")
    return choice, choice.best


def _result(cli: Any, args: argparse.Namespace, status: str, text: str) -> None:
    if cli.json:
        cli.emit_json(
            {"status": status, "external_port": args.external_port, "protocol": args.protocol}
        )
    else:
        cli.line(text)


async def _list(args: argparse.Namespace, cli: Any, method: UpnpMethod) -> int:
    async with method.transport() as transport:
        _choice, best = await _best_public_or_any(method, transport)
        client = ConnectionClient(transport, best.service)
        rows: list[PortMappingEntry] = []
        for index in range(MAX_LIST):
            try:
                rows.append(await client.get_generic_port_mapping_entry(index))
            except (NoSuchEntryError, InvalidArgsError):
                break
            except UpnpActionError as exc:
                if exc.code == 713:  # SpecifiedArrayIndexInvalid: the end of the table
                    break
                raise
    if cli.json:
        cli.emit_json(
            {"gateway": str(best.service.control_url), "mappings": [attrs.asdict(r) for r in rows]}
        )
        return 0
    cli.table(
        ["external", "protocol", "internal", "lease", "description"],
        [
            [
                r.external_port,
                r.protocol,
                f"{r.internal_client}:{r.internal_port}",
                r.lease or "permanent",
                r.description,
            ]
            for r in rows
        ],
    )
    return 0


async def _pinhole(args: argparse.Namespace, cli: Any, method: UpnpMethod) -> int:
    if not 0 < args.port < 65536:
        raise NatTravError(f"port {args.port} out of range 1-65535")
    cfg = method.config
    async with method.transport() as transport:
        choice = await method.choose(transport, families=frozenset({6}))
        if choice.firewall is None:
            raise MethodUnavailable("upnp", "no gateway offers WANIPv6FirewallControl over IPv6")
        _device, service = choice.firewall
        from nattrav_upnp.control import FirewallClient

        lease = PinholeLease(
            FirewallClient(transport, service),
            protocol=args.protocol,
            internal_client=local_address_for(service.control_url.host),
            internal_port=args.port,
            lease=cfg.pinhole_lease,
            verify_interval=cfg.verify_interval,
            release_timeout=cfg.release_timeout,
            emit=lambda event: _print_event(cli, event),
            journal=None if args.detach else cli.runtime().journal,
            gateway=service.control_url.host,
        )
        if args.detach:
            await lease.create()
            _report_pinhole(cli, lease, detached=True)
            return 0
        async with hold(lease):
            _report_pinhole(cli, lease, detached=False)
            await _wait(args)
    return 0


def _report_pinhole(cli: Any, lease: PinholeLease, *, detached: bool) -> None:
    p = lease.pinhole
    assert p is not None
    data = {
        "endpoint": str(p.endpoint()),
        "protocol": p.protocol,
        "unique_id": p.unique_id,
        "lease": p.lease,
        "gateway": lease.gateway,
        "detached": detached,
    }
    if cli.json:
        cli.out.write(json.dumps({"pinhole": data}) + "\n")
        cli.out.flush()
        return
    cli.line(f"pinhole {p.unique_id}: {p.protocol} {p.endpoint()} open for {p.lease} s")
