"""The ``nattrav`` and ``nattrav-plugins`` commands.

Core owns the frame: global options, plugin loading, ``plugins list``, ``map``, output in JSON
or as a table, exit codes (0 ok, 1 traversal failed, 2 usage or config error) and turning every
``NatTravError`` into one line on stderr instead of a traceback. Plugins add subcommands
(``nattrav stun``, ``nattrav lab``...) and options on core commands (``--stun`` on ``map``)
through hooks, so core stays free of protocol knowledge.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from nattrav.config import Config, load_raw, merge, structure_config
from nattrav.errors import ChainExhausted, ConfigError, MethodError, NatTravError
from nattrav.plugins import PluginHost, PluginRecord

if TYPE_CHECKING:
    from nattrav.registry import CommandSpec, OptionSpec

__all__ = ["Cli", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main", "plugins_main", "prepare"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(NatTravError):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns every exit code.

    A subcommand's parser can be set up later (``defer``): the steps run when that parser
    parses its arguments or shows its help. Setting up a plugin's command imports the plugin's
    CLI module (and what it needs: ssl, the lab's plans...), and every CLI start would pay that
    for every installed plugin although one invocation runs one command.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, step: Callable[[argparse.ArgumentParser], None]) -> None:
        """Run ``step(self)`` before this parser is first used (steps run in order)."""
        self._deferred.append(step)

    def _set_up(self) -> None:
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._set_up()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._set_up()
        return super().format_usage()

    def format_help(self) -> str:
        self._set_up()
        return super().format_help()

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


class Cli:
    """What a command receives: parsed options, output helpers and a lazily built runtime."""

    def __init__(
        self,
        args: argparse.Namespace,
        raw_config: dict[str, Any],
        config_source: str | None,
        host: PluginHost,
        *,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        extra_plugins: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.args = args
        self.extra_plugins = tuple(extra_plugins)
        self.json: bool = bool(getattr(args, "json", False))
        self.raw_config = raw_config
        self.host_raw = copy.deepcopy(raw_config)
        self.config_source = config_source
        self.host = host
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._config: Config | None = None
        self._runtime: Any = None
        self.meter_provider: Any = None  # set when --metrics-port serves Prometheus
        self.backend: str = getattr(args, "backend", None) or os.environ.get(
            "NATTRAV_BACKEND", "asyncio"
        )

    # ---------------------------------------------------------------- config and runtime

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = structure_config(self.raw_config, source=self.config_source)
        return self._config

    def runtime(self) -> Any:
        """The runtime for this invocation, built with the final config (flags applied)."""
        if self._runtime is None:
            from nattrav.runtime import Runtime

            # Flags may have changed the config the plugins registered with: reload if so.
            same = self.raw_config == self.host_raw
            host = self.host if same else PluginHost.load(self.config, extra=self.extra_plugins)
            if not same:
                _refuse_broken_by_flags(self.host, host)
            from nattrav.telemetry import Telemetry

            self._runtime = Runtime(host, telemetry=Telemetry(meter_provider=self.meter_provider))
        return self._runtime

    def run(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run an async function on the selected anyio backend (asyncio or trio)."""
        import anyio

        backend_options: dict[str, Any] = {}
        if self.backend == "asyncio" and os.environ.get("NATTRAV_UVLOOP") == "1":
            backend_options["use_uvloop"] = True
        return anyio.run(func, *args, backend=self.backend, backend_options=backend_options)

    # ---------------------------------------------------------------- output

    def emit_json(self, value: Any, *, indent: int | None = 2) -> None:
        from nattrav.serialize import dumps

        self.out.write(dumps(value, indent=indent) + "\n")
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """A plain aligned table (no colour: it must read well in logs and pipes)."""
        data = [[str(c) for c in headers]] + [
            ["" if c is None else str(c) for c in r] for r in rows
        ]
        widths = [max(len(r[i]) for r in data) for i in range(len(headers))]
        for n, row in enumerate(data):
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                self.line("  ".join("-" * w for w in widths))


def _refuse_broken_by_flags(before: PluginHost, after: PluginHost) -> None:
    """A plugin that the command-line options broke (``--stun 2001:db8::1:3478``) is a usage
    error, not a plugin to skip quietly: the user asked for exactly that setting."""
    problems: list[str] = []
    for name, record in after.records.items():
        old = before.records.get(name)
        if record.status.value != "broken" or (old is not None and old.status.value == "broken"):
            continue
        if isinstance(record.exception, ConfigError):
            problems += record.exception.problems
        else:
            problems.append(f"plugin {name}: {record.error}")
    if problems:
        raise ConfigError(problems, source="the command line")


# --------------------------------------------------------------------------- plugins list


def _plugin_rows(host: PluginHost) -> list[dict[str, Any]]:
    rows = []
    for rec in sorted(host.records.values(), key=lambda r: (not r.builtin, r.name)):
        rows.append(_plugin_json(rec))
    return rows


def _plugin_json(rec: PluginRecord) -> dict[str, Any]:
    return {
        "name": rec.name,
        "distribution": rec.distribution,
        "version": rec.version,
        "status": rec.status.value,
        "builtin": rec.builtin,
        "methods": [{"name": n, "priority": p} for n, p in rec.methods],
        "hooks": rec.hooks,
        "error": rec.error,
    }


def cmd_plugins_list(args: argparse.Namespace, cli: Cli) -> int:
    rows = _plugin_rows(cli.host)
    if cli.json:
        cli.emit_json({"plugins": rows})
        return EXIT_OK
    cli.table(
        ["plugin", "distribution", "version", "status", "methods", "hooks"],
        [
            [
                r["name"],
                r["distribution"] or "-",
                r["version"] or "-",
                r["status"],
                ", ".join(f"{m['name']}({m['priority']})" for m in r["methods"]) or "-",
                ", ".join(h.removeprefix("nattrav_") for h in r["hooks"]) or "-",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r["error"]:
            cli.line(f"{r['name']}: {r['status']}: {r['error']}")
    return EXIT_OK


# --------------------------------------------------------------------------- map


def _configure_map(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", type=int, help="local port to make reachable (0: pick one)")
    p.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
    p.add_argument("--goal", choices=["reachable", "any"], default=None)
    p.add_argument(
        "--hold",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep the endpoint this long (default: until SIGINT/SIGTERM)",
    )
    p.add_argument("--lifetime", type=float, default=3600.0, help="lease to request (s)")
    p.add_argument("--strategy", choices=["race", "sequential"], default=None)
    p.add_argument(
        "--family",
        choices=["4", "6", "both"],
        default="both",
        help="IP families to map (default both; a reachable endpoint is IPv4 when IPv4 works)",
    )


def cmd_map(args: argparse.Namespace, cli: Cli) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"port {args.port} out of range 0-65535")
    if args.hold is not None and args.hold < 0:
        raise UsageError("--hold must be >= 0")
    if args.lifetime <= 0:
        raise UsageError("--lifetime must be positive")
    if args.strategy:
        cli.raw_config = merge(cli.raw_config, {"chain": {"strategy": args.strategy}})
    return int(cli.run(_map, args, cli))


async def _map(args: argparse.Namespace, cli: Cli) -> int:
    import json

    from nattrav.models import Goal, LeaseEvent, Transport, TraversalRequest
    from nattrav.serialize import to_jsonable

    rt = cli.runtime()
    goal = Goal(args.goal) if args.goal else rt.config.chain.goal
    families = frozenset({4, 6}) if args.family == "both" else frozenset({int(args.family)})
    request = TraversalRequest(
        port=args.port,
        transport=Transport(args.protocol),
        goal=goal,
        lifetime=args.lifetime,
        families=families,
    )

    def on_event(event: LeaseEvent) -> None:
        if cli.json:
            line = {"event": to_jsonable(event), "time": _now()}
            cli.out.write(json.dumps(line) + "\n")
            cli.out.flush()
        else:
            endpoint = f" {event.endpoint}" if event.endpoint else ""
            detail = f" ({event.detail})" if event.detail else ""
            cli.line(f"{_now()} {event.kind.value}: {event.method}{endpoint}{detail}")

    try:
        async with rt.traverse(request, on_event=on_event) as (held, mux):
            result = held.result
            if cli.json:
                line = {
                    "result": to_jsonable(result),
                    "inbound": _inbound_note(result),
                    "local_port": mux.port if mux is not None else args.port,
                }
                cli.out.write(json.dumps(line) + "\n")
                cli.out.flush()
            else:
                _print_result(cli, result, mux)
            await _hold_until_signal(args.hold)
    except ChainExhausted as exc:
        if cli.json:
            cli.out.write(
                json.dumps({"error": "exhausted", "attempts": to_jsonable(exc.failures)}) + "\n"
            )
            cli.out.flush()
        else:
            cli.err.write(f"nattrav: {exc}\n")
        return EXIT_FAILED
    except MethodError as exc:  # the held endpoint was lost beyond recovery
        if cli.json:
            line = {"error": "lost", "method": exc.method, "reason": exc.reason, "time": _now()}
            cli.out.write(json.dumps(line) + "\n")
            cli.out.flush()
        else:
            cli.err.write(f"nattrav: {exc}\n")
        return EXIT_FAILED
    return EXIT_OK


async def _hold_until_signal(hold: float | None) -> None:
    """Wait for SIGINT/SIGTERM or ``hold`` seconds (signals only reach the main thread)."""
    import threading

    import anyio

    with anyio.move_on_after(hold if hold is not None else float("inf")):
        if threading.current_thread() is not threading.main_thread():
            await anyio.sleep_forever()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _sig in signals:
                break


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _inbound_note(result: Any) -> dict[str, Any]:
    """Who can send to the endpoint: anyone, or (a relay) only the permitted peers."""
    candidate = result.candidate
    details = candidate.details
    if "permitted" in details:
        permitted = [str(p) for p in details.get("permitted") or []]
        return {
            "from": "permitted-peers",
            "permitted": permitted,
            "note": (
                "only peers with a permission can send to this relayed address: the peers "
                "listed, peers the application sends to first, and peers added with "
                "--turn-permit PEER"
            ),
        }
    return {"from": "anyone", "permitted": None, "note": candidate.reachability.how}


def _print_result(cli: Cli, result: Any, mux: Any = None) -> None:
    cli.line(f"endpoint: {result.endpoint} ({result.candidate.kind.value} via {result.method})")
    r = result.candidate.reachability
    cli.line(f"inbound:  {r.inbound.value} ({'verified' if r.verified else 'unverified'}: {r.how})")
    note = _inbound_note(result)
    if note["from"] == "permitted-peers":
        listed = ", ".join(note["permitted"]) or "none yet"
        cli.line(
            "who:      ONLY permitted peers can send to this relayed endpoint "
            f"(permitted now: {listed}); permit more with --turn-permit PEER"
        )
    if mux is not None:
        cli.line(f"local:    UDP port {mux.port} (shared with the application)")
    cli.table(
        ["method", "outcome", "time", "reason"],
        [
            [a.method, a.outcome.value, f"{a.duration * 1000:.0f} ms", a.reason]
            for a in result.attempts
        ],
    )


# --------------------------------------------------------------------------- probe


def _configure_probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deep", action="store_true", help="also hairpinning and binding lifetime")
    p.add_argument(
        "--test-mapping",
        action="store_true",
        help="create a real mapping with each gateway protocol, verify it, release it",
    )
    p.add_argument(
        "--window",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long tests that expect no answer wait (default 0.5, minimum 0.3)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="bound on the whole report (s)")
    p.add_argument("--no-chain", action="store_true", help="skip the chain verdict")


def cmd_probe(args: argparse.Namespace, cli: Cli) -> int:
    from nattrav.probe import ProbeOptions

    if args.window < 0.3:
        raise UsageError("--window must be at least 0.3 s (a few round trips)")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    options = ProbeOptions(
        deep=args.deep,
        test_mapping=args.test_mapping,
        window=args.window,
        timeout=args.timeout,
        chain=not args.no_chain,
    )
    report: dict[str, Any] = cli.run(_probe, cli, options)
    if cli.json:
        cli.emit_json(report)
    else:
        _print_report(cli, report)
    return EXIT_OK


async def _probe(cli: Cli, options: Any) -> dict[str, Any]:
    from nattrav.probe import progress_names, run_probe

    rt = cli.runtime()
    progress = _Progress(cli, progress_names(rt, options))
    with progress:
        return await run_probe(rt, options, progress=progress.update)


class _Progress:
    """A live progress line on a terminal (rich when installed); silent otherwise."""

    def __init__(self, cli: Cli, names: Sequence[str]) -> None:
        self.names = list(names)
        self.state = {n: "waiting" for n in self.names}
        self.live: Any = None
        if cli.json or not getattr(cli.err, "isatty", lambda: False)():
            return
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:
            return
        self._console = Console(file=cli.err)
        self.live = Live("", console=self._console, transient=True, refresh_per_second=8)

    def __enter__(self) -> _Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, name: str, state: str) -> None:
        self.state[name] = state
        if self.live is not None:
            marks = {"waiting": "·", "running": "…", "done": "✓", "error": "✗"}
            self.live.update(
                "probing: " + "  ".join(f"{marks.get(s, '?')} {n}" for n, s in self.state.items())
            )


def _print_report(cli: Cli, report: Mapping[str, Any]) -> None:
    """The human form of a probe report: short blocks, each readable on its own."""
    titles: dict[str, str] = {}
    renderers: dict[str, Any] = {}
    for spec in cli.runtime().host.report_sections:
        titles[spec.name] = spec.title
        renderers[spec.name] = spec.render
    cli.line(f"nattrav probe: {report['duration']:.2f} s")
    cli.line()
    cli.table(
        ["interface", "address", "scope"],
        [[a["interface"], f"{a['ip']}/{a['prefix']}", a["scope"]] for a in report["interfaces"]],
    )
    gws = report["gateways"]
    cli.line()
    cli.line(
        "default gateways: " + (", ".join(f"{g['ip']} ({g['interface']})" for g in gws) or "none")
    )
    for name, data in report["sections"].items():
        cli.line()
        took = data.get("duration")
        when = f", {took:.2f} s" if isinstance(took, int | float) else ""
        cli.line(f"{titles.get(name, name)} [{name}{when}]")
        if data.get("error"):
            cli.line(f"  error: {data['error']}")
            continue
        lines: list[str] | None = None
        render = renderers.get(name)
        if render is not None:
            try:
                lines = [str(x) for x in render(data)]
            except Exception as exc:  # a renderer's bug must not cost the report
                lines = [f"(could not render: {type(exc).__name__}: {exc})"]
        if lines is None:
            lines = _generic_lines(data)
        for text in lines:
            cli.line(f"  {text}")
    nat = report["nat"]
    cli.line()
    cli.line("NAT layout")
    yes_no = {True: "yes", False: "no", None: "unknown"}
    cli.line(f"  NAT (IPv4): {yes_no[_negate(nat['no_nat'])]}")
    cli.line(
        f"  double NAT: {yes_no[nat['double_nat']]}" + (f" ({nat['why']})" if nat["why"] else "")
    )
    cli.line(f"  carrier-grade NAT: {yes_no[nat['cgnat']]}")
    if nat.get("path_hops"):
        path = " -> ".join(h["ip"] or "*" for h in nat["path_hops"])
        cli.line(f"  path: {path}")
    tests = report.get("mapping_tests")
    if tests is not None:
        cli.line()
        cli.line("Mapping tests (--test-mapping: created, verified, released)")
        if not tests:
            cli.line("  no port-mapping method is installed")
        else:
            cli.table(
                ["method", "created", "endpoint", "inbound", "released", "note"],
                [
                    [
                        t["method"],
                        yes_no[bool(t["created"])],
                        t["endpoint"] or "-",
                        ("verified" if t["verified"] else (t["inbound"] or "-")),
                        yes_no[bool(t["released"])],
                        t["error"] or t["how"] or "",
                    ]
                    for t in tests
                ],
            )
    chain = report.get("chain")
    if chain:
        cli.line()
        if chain.get("method"):
            reach = chain.get("reachability") or {}
            proof = "verified" if reach.get("verified") else "claimed"
            cli.line(
                f"Chain verdict: {chain['method']} -> {chain['endpoint']['text']} "
                f"({chain['kind']}, inbound {proof})"
            )
        else:
            cli.line(f"Chain verdict: no method succeeded ({chain.get('error')})")
        rows = [
            [a["method"], a["outcome"], f"{a['duration'] * 1000:.0f} ms", a["reason"]]
            for a in chain.get("attempts", [])
        ]
        if rows:
            cli.table(["method", "outcome", "time", "why"], rows)


def _negate(value: bool | None) -> bool | None:
    return None if value is None else not value


def _generic_lines(data: Mapping[str, Any]) -> list[str]:
    """Scalar keys as ``key: value``; nested data summarised (a section without a renderer)."""
    lines: list[str] = []
    for key, value in data.items():
        if key == "duration":
            continue
        if isinstance(value, Mapping):
            lines.append(f"{key}: {len(value)} entries (see --json)")
        elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            lines.append(f"{key}: {len(value)} items (see --json)")
        elif isinstance(value, list):
            lines.append(f"{key}: {', '.join(str(v) for v in value) or '-'}")
        else:
            lines.append(f"{key}: {'-' if value is None else value}")
    return lines


# --------------------------------------------------------------------------- cleanup


def cmd_cleanup(args: argparse.Namespace, cli: Cli) -> int:
    outcomes = cli.run(cli.runtime().cleanup)
    kept = [o for o in outcomes if not o.released]
    if cli.json:
        cli.emit_json(
            {
                "journal": str(cli.runtime().journal.directory),
                "entries": [
                    {
                        "id": o.entry.id,
                        "method": o.entry.method,
                        "kind": o.entry.kind,
                        "pid": o.entry.pid,
                        "released": o.released,
                        "detail": o.detail,
                        "data": dict(o.entry.data),
                    }
                    for o in outcomes
                ],
            }
        )
    elif not outcomes:
        cli.line(f"nothing to clean up (journal: {cli.runtime().journal.directory})")
    else:
        cli.table(
            ["entry", "method", "kind", "pid", "result"],
            [[o.entry.id, o.entry.method, o.entry.kind, o.entry.pid, o.detail] for o in outcomes],
        )
    return EXIT_FAILED if kept else EXIT_OK


# --------------------------------------------------------------------------- the frame


CoreCommand = Callable[[argparse.Namespace, Cli], int]


def _build_parser(host: PluginHost, prog: str = "nattrav") -> _Parser:
    parser = _Parser(
        prog=prog,
        description="NAT traversal: find what the network does and get a reachable endpoint.",
    )
    _add_globals(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    plugins = sub.add_parser("plugins", help="installed plugins")
    psub = plugins.add_subparsers(dest="plugins_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    plist = psub.add_parser("list", help="list plugins, their methods, hooks and status")
    _add_json(plist)
    plist.set_defaults(handler=cmd_plugins_list)

    mp = sub.add_parser("map", help="obtain a reachable endpoint for a local port and hold it")
    _configure_map(mp)
    _add_json(mp)
    mp.set_defaults(handler=cmd_map)
    core_parsers = {"map": mp}

    pr = sub.add_parser("probe", help="one report of what the network does (all probes at once)")
    _configure_probe(pr)
    _add_json(pr)
    pr.set_defaults(handler=cmd_probe)
    core_parsers["probe"] = pr

    cp = sub.add_parser("cleanup", help="release mappings a crashed run left behind (journal)")
    _add_json(cp)
    cp.set_defaults(handler=cmd_cleanup)

    # Plugin commands are set up only when they run (or show their help): see _Parser.
    for spec in sorted(host.commands, key=lambda s: s.name):
        cp = sub.add_parser(spec.name, help=spec.help)
        _add_json(cp)
        cp.defer(functools.partial(_configure_plugin_command, spec))
        core_parsers[spec.name] = cp

    for opt in host.options:
        for name in opt.commands:
            target = core_parsers.get(name)
            if target is not None:
                target.defer(functools.partial(_add_plugin_option, opt))
    return parser


def _configure_plugin_command(spec: CommandSpec, parser: argparse.ArgumentParser) -> None:
    try:
        spec.configure(parser)
    except Exception as exc:  # a plugin's argument setup must not break the CLI
        logging.getLogger("nattrav").warning("plugin command %s: %s", spec.name, exc)
    parser.set_defaults(handler=spec.run)


def _add_plugin_option(opt: OptionSpec, parser: argparse.ArgumentParser) -> None:
    try:
        parser.add_argument(*opt.flags, **dict(opt.kwargs))
    except argparse.ArgumentError:
        pass  # the command already has this flag: its own wins


def _add_globals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config file (default: ./nattrav.toml)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    parser.add_argument(
        "--log-json", action="store_true", help="log as JSON lines with nattrav.* attributes"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default=None)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port while the command runs",
    )
    parser.add_argument(
        "--metrics-addr", default="127.0.0.1", metavar="ADDR", help="address for --metrics-port"
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    _add_globals(pre)
    known, _ = pre.parse_known_args(list(argv))
    return known


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, with the ``nattrav.*`` attributes the spans carry."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        data: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k.startswith("nattrav.")})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _setup_logging(verbosity: int, as_json: bool = False) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if as_json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("nattrav")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # stamina logs every scheduled retry; that is debug detail for a CLI user.
    logging.getLogger("stamina").setLevel(logging.INFO if verbosity >= 2 else logging.ERROR)


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "nattrav",
    extra_plugins: Sequence[tuple[str, object]] = (),
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Entry point of ``nattrav``: returns the exit code.

    ``extra_plugins`` adds in-process plugins (name, module) next to the installed ones, for
    applications that embed the CLI and for tests; ``out``/``err`` redirect output.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    err = err or sys.stderr
    try:
        pre = _preparse(argv)
        _setup_logging(pre.verbose, pre.log_json)
        cli = prepare(argv, prog=prog, extra_plugins=extra_plugins, out=out, err=err)
        args = cli.args
        handler: Callable[[argparse.Namespace, Cli], Any] = args.handler
        with contextlib.ExitStack() as stack:
            if args.metrics_port is not None:
                from nattrav.prometheus import prometheus_endpoint

                cli.meter_provider = stack.enter_context(
                    prometheus_endpoint(args.metrics_port, args.metrics_addr)
                )
            outcome = handler(args, cli)
            if inspect.isawaitable(outcome):

                async def _await() -> Any:
                    return await outcome

                outcome = cli.run(_await)
        return int(outcome or EXIT_OK)
    except ConfigError as exc:
        err.write(f"nattrav: {exc}\n")
        return EXIT_USAGE
    except UsageError as exc:
        err.write(f"{exc}\n")
        return EXIT_USAGE
    except ChainExhausted as exc:
        err.write(f"nattrav: {exc}\n")
        return EXIT_FAILED
    except NatTravError as exc:
        err.write(f"nattrav: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write("nattrav: interrupted\n")
        return 130
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK


def prepare(
    argv: Sequence[str],
    *,
    prog: str = "nattrav",
    extra_plugins: Sequence[tuple[str, object]] = (),
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> Cli:
    """Parse ``argv`` and fold plugin options (``--stun``, ``--turn``...) into the config,
    without running the command: what ``main`` does before it runs one (and what tests use to
    check how flags end up in the configuration)."""
    pre = _preparse(argv)
    raw, source = load_raw(pre.config)
    config = structure_config(raw, source=source)
    host = PluginHost.load(config, extra=extra_plugins)
    parser = _build_parser(host, prog)
    args = parser.parse_args(list(argv))
    cli = Cli(args, raw, source, host, out=out, err=err, extra_plugins=extra_plugins)
    for opt in host.options:
        dest = _dest(opt.flags, opt.kwargs)
        value = getattr(args, dest, None)
        if value is not None and value is not False and args.command in opt.commands:
            opt.apply(value, cli.raw_config)
    return cli


def _dest(flags: Sequence[str], kwargs: Mapping[str, Any]) -> str:
    if "dest" in kwargs:
        return str(kwargs["dest"])
    longest = max(flags, key=len)
    return longest.lstrip("-").replace("-", "_")


def plugins_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nattrav-plugins``: ``nattrav-plugins list [--json]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: nattrav-plugins list [--json]\n")
        return EXIT_OK if argv else EXIT_USAGE
    return main(["plugins", *argv], prog="nattrav-plugins")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
