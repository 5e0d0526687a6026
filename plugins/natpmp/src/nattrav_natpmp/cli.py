"""``nattrav natpmp external|map|unmap [--pcp|--natpmp] [--json]``: talk to the gateway directly.

* ``external``: is there a NAT-PMP and/or PCP server on the default gateway, which version and
  epoch, and what external address does it report (with the double-NAT verdict)? PCP has no
  "external address" request: with ``--pcp`` the address comes from a short-lived mapping of a
  throwaway port that is deleted at once.
* ``map PORT``: create a mapping and hold it (renewing, recovering after a gateway reboot,
  printing each lease event) until interrupted or ``--hold`` seconds; delete it on exit unless
  ``--keep`` (then it expires at the end of its lease).
* ``unmap PORT``: delete a mapping. PCP needs the mapping's ``--nonce`` (``map`` prints it: a
  PCP server refuses deletions from anyone else); ``--all`` deletes every NAT-PMP mapping of
  this host for the protocol (internal port 0, lifetime 0).

Exit codes: 0 done, 1 the gateway did not answer or refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
from typing import Any, Literal

from nattrav.errors import MethodError, NatTravError

__all__ = ["configure", "run"]

DEFAULT_LIFETIME = 7200  # RFC 6886 §3.3's recommendation


def _common(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--pcp", dest="only", action="store_const", const="pcp", help="PCP only (RFC 6887)"
    )
    which.add_argument(
        "--natpmp",
        dest="only",
        action="store_const",
        const="natpmp",
        help="NAT-PMP only (RFC 6886)",
    )
    p.add_argument("--gateway", metavar="IP", help="gateway address (default: the OS's)")
    p.add_argument(
        "-6",
        dest="family",
        action="store_const",
        const=6,
        default=4,
        help="use the IPv6 gateway (PCP only)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default 10)",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def _transport(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--udp",
        dest="transport",
        action="store_const",
        const="udp",
        default="udp",
        help="UDP (default)",
    )
    which.add_argument("--tcp", dest="transport", action="store_const", const="tcp", help="TCP")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``external``, ``map`` and ``unmap`` actions (argparse only: runs at every start)."""
    sub = parser.add_subparsers(dest="natpmp_command", metavar="ACTION")
    sub.required = True
    ext = sub.add_parser("external", help="gateway presence, version, epoch, external address")
    _common(ext)
    mp = sub.add_parser("map", help="create a mapping and hold it until interrupted")
    mp.add_argument("port", type=int, help="local port to map")
    _transport(mp)
    mp.add_argument(
        "--lifetime",
        type=int,
        default=DEFAULT_LIFETIME,
        help=f"lease to request in seconds (default {DEFAULT_LIFETIME})",
    )
    mp.add_argument(
        "--suggest", type=int, default=0, metavar="PORT", help="external port to ask for"
    )
    mp.add_argument(
        "--hold",
        type=float,
        default=None,
        metavar="SECONDS",
        help="hold this long (default: until SIGINT/SIGTERM)",
    )
    mp.add_argument(
        "--keep", action="store_true", help="do not delete on exit; let the lease expire"
    )
    _common(mp)
    um = sub.add_parser("unmap", help="delete a mapping")
    um.add_argument("port", type=int, nargs="?", default=None, help="local port of the mapping")
    _transport(um)
    um.add_argument("--nonce", metavar="HEX", help="the PCP mapping nonce (printed by map)")
    um.add_argument(
        "--all",
        action="store_true",
        help="NAT-PMP: delete every mapping of this host for the protocol",
    )
    _common(um)


def run(args: argparse.Namespace, cli: Any) -> int:
    """Entry point called by the core CLI frame."""
    from nattrav.cli import UsageError

    command = args.natpmp_command
    if command in ("map", "unmap") and args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"port {args.port} out of range 1-65535")
    if command == "unmap":
        if args.all and args.port is not None:
            raise UsageError("give a port or --all, not both")
        if not args.all and args.port is None:
            raise UsageError("unmap needs a port (or --all)")
        if args.all and args.only == "pcp":
            raise UsageError("--all is a NAT-PMP request; PCP deletes one mapping by nonce")
    if args.family == 6 and args.only == "natpmp":
        raise UsageError("NAT-PMP is IPv4-only; use PCP for IPv6")
    return int(cli.run(_main, args, cli))


def _settings(args: argparse.Namespace, cli: Any) -> Any:
    from nattrav_natpmp.config import load_settings

    raw = dict(cli.config.plugin_table("natpmp"))
    if args.only:
        raw["protocol"] = args.only
    if args.gateway:
        raw["gateway"] = [args.gateway]
    return load_settings(raw)


def _gateway(settings: Any, family: int) -> Any:
    from nattrav.gateways import default_gateways

    found = default_gateways(family, override=settings.gateway or None)
    if not found:
        raise NatTravError(f"no IPv{family} default gateway (use --gateway)")
    return found[0]


def _out(cli: Any, value: Any) -> None:
    from nattrav.serialize import to_jsonable

    cli.out.write(json.dumps(to_jsonable(value)) + "\n")
    cli.out.flush()


async def _main(args: argparse.Namespace, cli: Any) -> int:
    import anyio

    settings = _settings(args, cli)
    gateway = _gateway(settings, args.family)
    try:
        if args.natpmp_command == "external":
            with anyio.fail_after(args.timeout):
                return await _external(args, cli, settings, gateway)
        if args.natpmp_command == "unmap":
            with anyio.fail_after(args.timeout):
                return await _unmap(args, cli, settings, gateway)
        return await _map(args, cli, settings, gateway)
    except TimeoutError:
        raise NatTravError(
            f"gateway {gateway.host} did not finish within {args.timeout:g} s (--timeout)"
        ) from None


async def _external(args: argparse.Namespace, cli: Any, settings: Any, gateway: Any) -> int:
    from nattrav_natpmp.driver import GatewayClient
    from nattrav_natpmp.method import double_nat_reason
    from nattrav_natpmp.report import summarize

    report: dict[str, Any] = {"gateway": gateway.host, "natpmp": None, "pcp": None}
    async with GatewayClient.open(gateway, settings=settings, listen=False) as client:
        protocols = settings.protocols()
        if "natpmp" in protocols and gateway.family == 4:
            try:
                found = await client.external_address_natpmp(client._probe_timing())
                report["natpmp"] = {
                    "version": 0,
                    "epoch": found.epoch,
                    "external_address": found.address,
                }
            except NatTravError as exc:
                report["natpmp"] = {"error": str(exc)}
        if "pcp" in protocols:
            try:
                found = await client.announce(client._probe_timing())
                report["pcp"] = {"version": found.version, "epoch": found.epoch}
                if args.only == "pcp" or gateway.family == 6:
                    report["pcp"]["external_address"] = await _pcp_address(client, gateway)
            except NatTravError as exc:
                report["pcp"] = {"error": str(exc)}
    report.update(summarize(report, double_nat_reason))
    if getattr(args, "json", False) or cli.json:
        _out(cli, report)
    else:
        cli.line(f"gateway:  {report['gateway']}")
        for name, key in (("NAT-PMP", "natpmp"), ("PCP", "pcp")):
            part = report[key]
            if part is None:
                continue
            if "error" in part:
                cli.line(f"{name + ':':9} {part['error']}")
            else:
                extra = (
                    f", external {part['external_address']}" if part.get("external_address") else ""
                )
                cli.line(f"{name + ':':9} version {part['version']}, epoch {part['epoch']}{extra}")
        cli.line(f"external: {report['external_address'] or 'unknown'}")
        if report["verdict"]:
            cli.line(f"verdict:  {report['verdict']}")
    return 0 if report["answered"] else 1


async def _pcp_address(client: Any, gateway: Any) -> str | None:
    """PCP cannot just report the external address: map a throwaway port briefly."""
    from nattrav.models import Transport

    family = socket.AF_INET if gateway.family == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
        mapping = await client.create(Transport.UDP, port, lifetime=120)
        try:
            return str(mapping.external.host) if mapping.external else None
        finally:
            await client.delete(mapping)


async def _map(args: argparse.Namespace, cli: Any, settings: Any, gateway: Any) -> int:
    import anyio
    from nattrav.models import Transport

    from nattrav_natpmp.driver import GatewayClient
    from nattrav_natpmp.method import double_nat_reason

    as_json = getattr(args, "json", False) or cli.json

    def on_change(mapping: Any, change: Any) -> None:
        event = {
            "kind": change.kind.value,
            "detail": change.detail,
            "external": str(mapping.external) if mapping.external else None,
            "lifetime": mapping.lifetime,
            "epoch": mapping.epoch,
        }
        if as_json:
            _out(cli, {"event": event})
        else:
            cli.line(f"{event['kind']}: {event['external'] or '?'} {event['detail']}")

    journal = None
    try:
        journal = cli.runtime().journal
    except Exception:  # the journal is a safety net, never a reason to fail the command
        journal = None
    async with GatewayClient.open(gateway, settings=settings) as client:
        with anyio.fail_after(args.timeout):
            entered = client.mapping(
                Transport(args.transport),
                args.port,
                lifetime=args.lifetime,
                suggested_port=args.suggest,
                on_change=on_change,
                journal=journal,
                keep=args.keep,
            )
            mapping = await entered.__aenter__()
        try:
            external = mapping.external
            verdict = (
                double_nat_reason(external.host)
                if external
                else ("the gateway does not know its external address")
            )
            info = {
                **mapping.details(),
                "external": str(external) if external else None,
                "verdict": verdict,
            }
            if as_json:
                _out(cli, {"mapping": info})
            else:
                cli.line(
                    f"mapped:   {info['external'] or '?'} -> {info['internal']} "
                    f"({info['protocol']} v{info['version']}, {info['lifetime']} s)"
                )
                cli.line(f"gateway:  {info['gateway']}, epoch {info['epoch']}")
                if info["nonce"]:
                    cli.line(
                        f"nonce:    {info['nonce']} (for: nattrav natpmp unmap "
                        f"{args.port} --nonce {info['nonce']})"
                    )
                if verdict:
                    cli.line(f"warning:  {verdict}")
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                with anyio.move_on_after(args.hold if args.hold is not None else float("inf")):
                    async for _sig in signals:
                        break
        finally:
            with anyio.CancelScope(shield=True):
                await entered.__aexit__(None, None, None)
        if not as_json:
            cli.line("kept (expires with its lease)" if args.keep else "deleted")
    return 0


async def _unmap(args: argparse.Namespace, cli: Any, settings: Any, gateway: Any) -> int:
    from nattrav.models import Transport

    from nattrav_natpmp.driver import GatewayClient

    nonce = None
    if args.nonce:
        try:
            nonce = bytes.fromhex(args.nonce)
        except ValueError:
            from nattrav.cli import UsageError

            raise UsageError(f"--nonce must be hex, got {args.nonce!r}") from None
        if len(nonce) != 12:
            from nattrav.cli import UsageError

            raise UsageError("--nonce must be 12 bytes (24 hex digits)")
    protocols = settings.protocols()
    protocol: Literal["pcp", "natpmp"]
    if nonce is not None and "pcp" in protocols:
        protocol = "pcp"
    elif "natpmp" in protocols and gateway.family == 4:
        protocol = "natpmp"
    else:
        raise MethodError("natpmp", "a PCP deletion needs the mapping's --nonce")
    async with GatewayClient.open(gateway, settings=settings, listen=False) as client:
        ok = await client.delete_port(
            Transport(args.transport), args.port or 0, protocol=protocol, nonce=nonce
        )
    what = "every mapping" if args.all else f"port {args.port}"
    if getattr(args, "json", False) or cli.json:
        _out(cli, {"deleted": ok, "protocol": protocol, "port": args.port or 0})
    else:
        cli.line(f"{'deleted' if ok else 'no confirmation for deleting'} {what} ({protocol})")
    return 0 if ok else 1
