"""``nattrav pmtu SERVER`` and ``nattrav pmtu-echo``: path MTU discovery from the command line.

``pmtu`` probes every family the server resolves to (or ``--family``) at the same time, each
over its own socket with Don't Fragment set, and prints the path MTU as an IP packet size and
as the largest UDP payload, with how it was found. Exit codes: 0 when at least one family's
PMTU was confirmed by a probe, 1 when none was (the server did not answer base-size probes),
2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio
from nattrav.addresses import format_hostport
from nattrav.errors import NatTravError

__all__ = ["configure", "configure_echo", "run", "run_echo"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "server",
        metavar="SERVER",
        help="STUN server or echo peer: HOST:PORT, [IPv6]:PORT or stun:URI",
    )
    parser.add_argument(
        "--max", type=int, default=None, metavar="BYTES",
        help="largest IP packet size to probe (default 9000; 65535 at most)",
    )  # fmt: skip
    parser.add_argument("--family", type=int, choices=(4, 6), default=None, help="only IPv4/IPv6")
    parser.add_argument(
        "--probe-timeout", type=float, default=None, metavar="S",
        help="wait this long for each probe's reply (default 1.0 s)",
    )  # fmt: skip
    parser.add_argument("--max-probes", type=int, default=None, metavar="N", help="MAX_PROBES")
    parser.add_argument(
        "--deadline", type=float, default=None, metavar="S", help="give up after S seconds"
    )
    parser.add_argument(
        "--password-env", metavar="VAR", default=None,
        help="environment variable holding the password shared with a nattrav echo peer",
    )  # fmt: skip
    parser.add_argument("--username", default=None, help="USERNAME sent with --password-env")


def configure_echo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind", default="[::]:3478", metavar="ADDR",
        help="where to answer probes (default [::]:3478, both families)",
    )  # fmt: skip
    parser.add_argument(
        "--password-env", metavar="VAR", default=None,
        help="environment variable holding the shared password (unsigned probes are ignored)",
    )  # fmt: skip
    parser.add_argument("--username", default=None, help="USERNAME probes must carry")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds"
    )


def _raw_settings(args: argparse.Namespace, cli: Any) -> dict[str, Any]:
    raw = dict(cli.config.plugin_table("pmtud"))
    for flag, key in (
        ("max", "max"),
        ("probe_timeout", "probe_timeout"),
        ("max_probes", "max_probes"),
        ("deadline", "deadline"),
        ("username", "username"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            raw[key] = value
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise NatTravError(f"--password-env: the variable {args.password_env} is not set")
        raw["password"] = value
    return raw


def run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav.cli import UsageError

    from nattrav_pmtud.config import load_config, parse_target

    cfg = load_config(_raw_settings(args, cli))
    try:
        host, port = parse_target(args.server)
    except ValueError as exc:
        raise UsageError(f"nattrav pmtu: {exc}") from None
    families = (args.family,) if args.family else cfg.families
    results: list[dict[str, Any]] = cli.run(_discover, cfg, host, port, families)
    if cli.json:
        cli.emit_json({"server": args.server, "results": results})
    else:
        _print(cli, args.server, results)
    return 0 if any(r.get("confirmed") for r in results) else 1


async def _discover(
    cfg: Any, host: str, port: int, families: tuple[int, ...]
) -> list[dict[str, Any]]:
    from nattrav_pmtud.driver import discover_pmtu, resolve

    results: list[dict[str, Any]] = []
    errors: list[str] = []

    async def one(family: int) -> None:
        addresses = await resolve(host, port, family)
        if not addresses:
            errors.append(f"{host} has no IPv{family} address")
            return
        target = addresses[0]
        try:
            result = await discover_pmtu(
                target,
                cfg.search_settings(family),
                credentials=cfg.credentials(),
                software=cfg.software,
                deadline=cfg.deadline,
            )
        except NatTravError as exc:
            results.append({"family": family, "target": format_hostport(*target),
                            "confirmed": False, "error": str(exc)})  # fmt: skip
            return
        results.append(result.to_dict())

    async with anyio.create_task_group() as tg:
        for family in families:
            tg.start_soon(one, family)
    if not results:
        raise NatTravError("; ".join(errors) or f"nothing to probe at {host}")
    return sorted(results, key=lambda r: int(r.get("family", 0)))


def _print(cli: Any, server: str, results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        if "error" in r:
            rows.append((f"IPv{r['family']}", r["target"], "-", "-", r["error"], ""))
            continue
        mtu = r["path_mtu"] if r["confirmed"] else f"unconfirmed ({r['path_mtu']})"
        probes = r["probes"]
        rows.append(
            (
                f"IPv{r['family']}",
                r["target"],
                mtu,
                r["udp_payload"] if r["confirmed"] else "-",
                (", ".join(r["how"]) + f"; limited by {r['limited_by']}")
                if r["confirmed"]
                else "no answer to base-size probes",
                f"{probes['sent']} sent, {probes['acked']} answered, {probes['lost']} lost",
            )
        )
    cli.table(["family", "server", "path MTU", "UDP payload", "how", "probes"], rows)
    for r in results:
        if not r.get("confirmed") and "error" not in r:
            hint = ""
            if r.get("port_unreachable_from"):
                hint = f": ICMP port unreachable from {r['port_unreachable_from']}"
            cli.line(
                f"IPv{r['family']}: no answer to base-size probes from {r['target']}{hint} "
                "(is it a STUN server or a nattrav echo peer, and reachable over UDP?)"
            )


def run_echo(args: argparse.Namespace, cli: Any) -> int:
    from nattrav.addresses import parse_hostport
    from nattrav.cli import UsageError

    from nattrav_pmtud.config import load_config

    raw = _raw_settings(args, cli)
    cfg = load_config({k: v for k, v in raw.items() if k in ("username", "password")})
    try:
        text = args.bind.strip()
        if text.endswith(":0"):  # any free port: parse_hostport wants 1-65535
            bind = (parse_hostport(text[:-2] + ":1")[0], 0)
        else:
            bind = parse_hostport(text, default_port=3478)
    except ValueError as exc:
        raise UsageError(f"nattrav pmtu-echo: {exc}") from None
    return int(cli.run(_serve, cli, bind, cfg.credentials(), args.duration))


async def _serve(cli: Any, bind: tuple[str, int], credentials: Any, duration: float | None) -> int:
    from nattrav_pmtud.driver import echo_server

    try:
        async with echo_server(bind, credentials=credentials) as server:
            where = format_hostport(*server.address)
            if cli.json:
                cli.emit_json(
                    {"listening": where, "integrity": credentials is not None}, indent=None
                )
            else:
                cli.line(f"answering PMTU probes on {where} (Ctrl-C to stop)")
            if duration is None:
                await anyio.sleep_forever()
            else:
                await anyio.sleep(duration)
            if cli.json:
                cli.emit_json({"answered": server.responder.answered}, indent=None)
            else:
                cli.line(f"answered {server.responder.answered} probes")
    except OSError as exc:
        where = format_hostport(*bind)
        raise NatTravError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return 0
