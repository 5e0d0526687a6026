"""``nattrav relay allocate SERVER``: hold a TURN allocation from the command line.

Prints the relayed address as soon as it is allocated (flushed, so a script or a test can
read it from a pipe), then every lease event (renewed, lost, changed...) and every datagram a
peer sends; ``--echo`` sends each datagram back to its sender through the relay. Ends on
SIGINT/SIGTERM or after ``--hold`` seconds, deleting the allocation. ``--json`` prints one JSON
object per line: ``{"event": "allocated", ...}``, ``{"event": "datagram", ...}``,
``{"event": "released", "stats": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
from typing import Any

import anyio
from nattrav.errors import NatTravError

__all__ = ["configure_relay", "run_relay"]


def configure_relay(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nattrav relay`` (cheap: runs at every CLI start)."""
    sub = parser.add_subparsers(dest="relay_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("allocate", help="allocate a relayed address and hold it")
    p.add_argument("server", metavar="SERVER", help="turn:/turns: URI (?transport=udp|tcp)")
    p.add_argument("--user", "-u", metavar="U", help="TURN username (default: config/hook)")
    p.add_argument("--password", "-p", metavar="P", help="TURN password (default: config/hook)")
    p.add_argument("--realm", metavar="R", help="refuse any realm but this one")
    p.add_argument(
        "--permit",
        action="append",
        default=[],
        metavar="PEER",
        help="peer IP (or IP:PORT) allowed to send first (repeatable)",
    )
    p.add_argument("--echo", action="store_true", help="send every datagram back to its sender")
    p.add_argument("--lifetime", type=int, default=600, metavar="S", help="lifetime to ask for")
    p.add_argument(
        "--family",
        choices=["4", "6", "dual"],
        default="4",
        help="relayed address family (dual: RFC 8656 dual allocation)",
    )
    p.add_argument("--no-channels", action="store_true", help="Send/Data indications only")
    p.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify a turns: server")
    p.add_argument("--server-name", metavar="NAME", help="TLS name to verify (turns:)")
    p.add_argument("--hold", type=float, metavar="S", help="hold this long (default: until ^C)")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="allocation timeout (default 10 s)"
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per line"
    )


def run_relay(args: argparse.Namespace, cli: Any) -> int:
    """Dispatch ``nattrav relay ACTION``."""
    if args.relay_command == "allocate":
        return int(cli.run(_allocate, args, cli))
    raise NatTravError(f"unknown relay action {args.relay_command!r}")


def _write(cli: Any, record: dict[str, Any], text: str) -> None:
    if getattr(cli, "json", False) or getattr(cli.args, "json", False):
        cli.out.write(json.dumps(record, sort_keys=True) + "\n")
        cli.out.flush()
    else:
        cli.line(text)


async def _credentials(args: argparse.Namespace, cli: Any) -> Any:
    from nattrav_relay.config import ServerConfig, load_config
    from nattrav_relay.credentials import CredentialSource, RelayCredentials, hook_provider

    if args.user and args.password:
        return RelayCredentials(args.user, args.password, args.realm)
    config = load_config(cli.config.plugin_table("relay"))
    known = next((s for s in config.servers if s.uri == args.server), None)
    server = known or ServerConfig(args.server, username=args.user, realm=args.realm)
    source = CredentialSource(config, [hook_provider(cli.host.pm)])
    found = await source.get(server)
    if found is None:
        raise NatTravError(
            f"no credentials for {args.server}: give --user and --password, or set them in "
            "[plugins.relay], or install a plugin implementing nattrav_relay_credentials"
        )
    if args.user and found.username != args.user:
        raise NatTravError(f"no password for user {args.user!r} (give --password)")
    return found


async def _allocate(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_stun.auth import LongTermCredentials

    from nattrav_relay.client import ClientSettings
    from nattrav_relay.driver import RelayError, allocate

    creds = await _credentials(args, cli)
    families = {"4": (4,), "6": (6,), "dual": (4, 6)}[args.family]
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None

    def on_event(event: Any) -> None:
        if event.kind.value in ("acquired",):
            return  # the allocation line below says it with more detail
        record = {
            "event": event.kind.value,
            "endpoint": None if event.endpoint is None else str(event.endpoint),
            "detail": event.detail,
        }
        _write(cli, record, f"{event.kind.value}: {event.endpoint or ''} {event.detail}".strip())

    try:
        async with allocate(
            args.server,
            credentials=LongTermCredentials(creds.username, creds.password, realm=creds.realm),
            settings=ClientSettings(
                lifetime=args.lifetime, families=families, use_channels=not args.no_channels
            ),
            permit=args.permit,
            ssl_context=context,
            server_name=args.server_name,
            on_event=on_event,
            allocate_timeout=args.timeout,
            journal=cli.runtime().journal,  # a crash leaves an entry `nattrav cleanup` handles
        ) as ep:
            relayed = [str(a) for a in ep.relayed_addresses]
            _write(
                cli,
                {
                    "event": "allocated",
                    "relayed": relayed,
                    "mapped": None if ep.mapped is None else str(ep.mapped),
                    "local": None if ep.local is None else str(ep.local),
                    "server": str(ep.server),
                    "server_address": str(ep.server_address),
                    "redirected_from": [str(a) for a in ep.redirected_from],
                    "transport": ep.transport,
                    "lifetime": ep.lifetime,
                    "permitted": ep.permitted,
                },
                f"relayed {', '.join(relayed)} via {ep.server}"
                + (f" (redirected to {ep.server_address})" if ep.redirected_from else "")
                + f" (mapped {ep.mapped}, lifetime {ep.lifetime} s)",
            )
            for ip, why in ep.permit_failures.items():
                _write(
                    cli,
                    {"event": "permission-failed", "peer": ip, "detail": why},
                    f"permission for {ip} failed: {why}",
                )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve, ep, args, cli)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    with anyio.move_on_after(args.hold if args.hold is not None else float("inf")):
                        async for _sig in signals:
                            break
                tg.cancel_scope.cancel()
            stats = ep.stats.as_dict()
        _write(
            cli,
            {"event": "released", "stats": stats},
            f"released; sent {stats['packets_sent']}, received {stats['packets_received']} "
            f"datagrams, {stats['refreshes']} refreshes",
        )
    except RelayError as exc:
        _write(cli, {"event": "error", "error": str(exc)}, f"nattrav relay: {exc}")
        return 1
    return 0


async def _serve(ep: Any, args: argparse.Namespace, cli: Any) -> None:
    async for data, peer in ep:
        _write(
            cli,
            {"event": "datagram", "peer": str(peer), "bytes": len(data), "echoed": bool(args.echo)},
            f"{len(data)} bytes from {peer}" + (" (echoed)" if args.echo else ""),
        )
        if args.echo:
            await ep.send_to(data, peer)
