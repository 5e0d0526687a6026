"""``nattrav stun`` and ``nattrav nat-type``, and the ``stun`` section of ``nattrav probe``.

Both commands take SERVER as ``HOST:PORT``, ``[IPv6]:PORT`` or a ``stun:``/``stuns:`` URI
(RFC 7064). Credentials and timers come from ``[plugins.stun]``. Exit codes: 0 when the server
answered (``nat-type``: a report was produced, even "unknown"), 1 when it did not (the error
says why on one line), 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.errors import ConfigError

__all__ = [
    "configure_nat_type",
    "configure_stun",
    "report_section",
    "run_nat_type",
    "run_stun",
]


def _positive_window(text: str) -> float:
    value = float(text)
    if value < 0.3:
        raise argparse.ArgumentTypeError("the probe window must be at least 0.3 s")
    return value


def configure_stun(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="HOST:PORT, [IPv6]:PORT or a stun:/stuns: URI")
    parser.add_argument("--family", type=int, choices=[4, 6], help="use only IPv4 or IPv6")
    parser.add_argument(
        "--local-port",
        type=int,
        default=0,
        metavar="PORT",
        help="send from this local UDP port (default: any)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: the RFC schedule, 39.5 s)",
    )


def configure_nat_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", help="HOST:PORT, [IPv6]:PORT or a stun: URI (RFC 5780 server)")
    parser.add_argument("--family", type=int, choices=[4, 6], help="test IPv4 or IPv6")
    parser.add_argument(
        "--window",
        type=_positive_window,
        default=None,
        metavar="SECONDS",
        help="how long probes that may go unanswered wait (>= 0.3 s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long the first answer may take before 'udp-blocked'",
    )
    parser.add_argument(
        "--hairpin",
        action="store_true",
        help="also test hairpinning (RFC 5780 §4.5; some firewalls object)",
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        action="append",
        metavar="SECONDS",
        help="also check the mapping survives this long idle (repeatable)",
    )


def _config(cli: Any) -> Any:
    from nattrav_stun.config import load_config

    try:
        table = cli.config.plugin_table("stun")
    except AttributeError:
        table = {}
    return load_config(table)


def _check_server(text: str) -> Any:
    from nattrav_stun.uri import parse_server

    try:
        return parse_server(text)
    except ValueError as exc:
        raise ConfigError([f"SERVER: {exc}"]) from None


def run_stun(args: argparse.Namespace, cli: Any) -> int:
    cfg = _config(cli)
    server = _check_server(args.server)
    result = cli.run(_binding, server, cfg, args)
    if cli.json:
        cli.emit_json(result.to_json())
        return 0
    rows = [
        ("server", f"{server} -> {result.server} ({result.transport})"),
        ("mapped", str(result.mapped)),
        ("local", str(result.local) if result.local else "-"),
        ("response origin", str(result.response_origin) if result.response_origin else "-"),
        (
            "other address",
            (f"{result.other_address} (RFC 5780)" if result.other_address else "- (no RFC 5780)"),
        ),
        ("software", result.software or "-"),
        ("rtt", f"{result.rtt * 1000:.1f} ms" if result.rtt is not None else "-"),
        ("authenticated", "yes" if result.authenticated else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        cli.line(f"{key + ':':<{width + 1}} {value}")
    return 0


async def _binding(server: Any, cfg: Any, args: argparse.Namespace) -> Any:
    from nattrav_stun.driver import StunClient

    families = frozenset({args.family}) if args.family else None
    async with StunClient.open(cfg.client_settings(), local_port=args.local_port) as client:
        return await client.binding(server, families=families, timeout=args.timeout)


def run_nat_type(args: argparse.Namespace, cli: Any) -> int:
    cfg = _config(cli)
    server = _check_server(args.server)
    if server.transport != "udp":
        raise ConfigError([f"SERVER: NAT behaviour discovery needs a UDP server, not {server}"])
    window = args.window if args.window is not None else cfg.probe_window
    behaviour = cli.run(_discover, server, cfg, args, window)
    report = behaviour.to_json()
    if cli.json:
        cli.emit_json(report)
        return 0
    cli.line(f"server:    {report['server']}")
    cli.line(f"mapping:   {report['mapping']} ({report['mapping_reason']})")
    cli.line(f"filtering: {report['filtering']} ({report['filtering_reason']})")
    cli.line(f"mapped:    {report['mapped'] or '-'}   local: {report['local'] or '-'}")
    if report["hairpinning"] is not None:
        hair = report["hairpinning"]
        cli.line(f"hairpinning: {hair['supported']} ({hair['reason']})")
    if report["binding_lifetime"] is not None:
        life = report["binding_lifetime"]
        cli.line(
            f"binding lifetime: alive after {life['alive_after']} s, "
            f"expired by {life['expired_by']} s"
        )
    if not report["trusted"]:
        cli.line("note: the server could not prove RFC 5780 support; 'unknown' says why")
    return 0


async def _discover(server: Any, cfg: Any, args: argparse.Namespace, window: float) -> Any:
    from nattrav_stun.discovery import discover_nat_behaviour

    return await discover_nat_behaviour(
        server,
        settings=cfg.client_settings(),
        window=window,
        answer_timeout=args.timeout,
        family=args.family,
        hairpinning=args.hairpin,
        lifetime=tuple(args.lifetime or ()),
    )


async def report_section(ctx: Any) -> Mapping[str, Any]:
    """The ``stun`` section of ``nattrav probe`` (see ``nattrav_stun.report``)."""
    from nattrav_stun.report import report_section as run

    return await run(ctx)
