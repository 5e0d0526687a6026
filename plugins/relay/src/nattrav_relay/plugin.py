"""Hook implementations of the ``relay`` plugin. Imports only what registration needs.

The config module is imported when a registration hook runs; the client, driver, method,
CLI and probe section when they are used, so ``nattrav`` starts fast with the plugin
installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.enums import CandidateKind, Transport
from nattrav.hookspecs import hookimpl
from nattrav.registry import CommandRegistry, MethodRegistry, OptionRegistry, ReportRegistry

__all__ = [
    "nattrav_add_hookspecs",
    "nattrav_register_commands",
    "nattrav_register_methods",
    "nattrav_register_options",
    "nattrav_register_report_sections",
]

NAME = "relay"
PRIORITY = 90


@hookimpl
def nattrav_add_hookspecs(pluginmanager: Any) -> None:
    """Add ``nattrav_relay_credentials`` so credential plugins reach the chain method too."""
    from nattrav_relay.hookspecs import add_hookspecs

    add_hookspecs(pluginmanager)


@hookimpl
def nattrav_register_methods(registry: MethodRegistry, config: Mapping[str, Any]) -> None:
    """Register ``relay`` (priority 90, RELAYED): a TURN allocation, the chain's last resort.
    The ``[plugins.relay]`` table is validated here."""
    from nattrav_relay.config import load_config

    cfg = load_config(config)
    shared: dict[str, Any] = {}  # one ServerBook for every method object of this runtime

    def factory() -> Any:
        from nattrav_relay.method import RelayMethod, ServerBook

        book = shared.setdefault("book", ServerBook())
        return RelayMethod(cfg, book)

    registry.add(
        factory,
        name=NAME,
        priority=PRIORITY,
        kind=CandidateKind.RELAYED,
        description="TURN relay (RFC 8656) over UDP/TCP/TLS: reachable by permitted peers",
        transports=frozenset({Transport.UDP}),
        timeout=_budget(cfg),
    )


def _budget(cfg: Any) -> float:
    """The chain's per-try deadline: every server (and its TCP fallback) may take
    ``timeout``, then the self-test its window."""
    from nattrav_relay.config import fallback_uri

    tries = 0
    for server in cfg.servers:
        tries += 2 if cfg.transport_fallback and fallback_uri(server.uri) else 1
    window = cfg.self_test_window if cfg.self_test else 0.0
    return float(cfg.timeout * max(1, tries) + window + 2.0)


def _table(raw: dict[str, Any]) -> dict[str, Any]:
    plugins = raw.setdefault("plugins", {})
    table: dict[str, Any] = plugins.setdefault(NAME, {})
    return table


def _append(key: str) -> Any:
    def apply(value: Any, raw: dict[str, Any]) -> None:
        table = _table(raw)
        existing = table.get(key, [])
        if isinstance(existing, str):
            existing = [s.strip() for s in existing.split(",") if s.strip()]
        items = list(existing) if isinstance(existing, list | tuple) else []
        for item in value if isinstance(value, list | tuple) else [value]:
            if item not in items:
                items.append(item)
        table[key] = items

    return apply


def _set(key: str) -> Any:
    def apply(value: Any, raw: dict[str, Any]) -> None:
        _table(raw)[key] = value

    return apply


@hookimpl
def nattrav_register_options(registry: OptionRegistry) -> None:
    """``--turn URI`` (repeatable), ``--turn-user``, ``--turn-password`` and ``--turn-permit``
    on ``probe``, ``map`` and ``connect``."""
    commands = ("probe", "map", "connect")
    registry.add(
        "--turn",
        commands=commands,
        apply=_append("servers"),
        action="append",
        metavar="URI",
        help="TURN server: turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT] (repeatable)",
    )
    registry.add(
        "--turn-user",
        commands=commands,
        apply=_set("username"),
        metavar="USER",
        help="TURN username (long-term credentials)",
    )
    registry.add(
        "--turn-password",
        commands=commands,
        apply=_set("password"),
        metavar="PASSWORD",
        help="TURN password",
    )
    registry.add(
        "--turn-permit",
        commands=commands,
        apply=_append("permit"),
        action="append",
        metavar="PEER",
        help="peer IP allowed to send to the relayed address first (repeatable)",
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    from nattrav_relay.cli import configure_relay

    configure_relay(parser)


def _run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_relay.cli import run_relay

    return run_relay(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """``nattrav relay allocate SERVER``: hold a TURN allocation, print it, echo peers."""
    registry.add(
        NAME,
        help="TURN relay: allocate a relayed address and hold it (echo what peers send)",
        configure=_configure,
        run=_run,
    )


@hookimpl
def nattrav_register_report_sections(registry: ReportRegistry, config: Mapping[str, Any]) -> None:
    """The ``relay`` section of ``nattrav probe``: each TURN server per transport."""

    async def section(ctx: Any) -> Mapping[str, Any]:
        from nattrav_relay.report import report_section

        return await report_section(ctx)

    def render(data: Mapping[str, Any]) -> list[str]:
        from nattrav_relay.report import render_section

        return render_section(data)

    registry.add(section, name=NAME, title="TURN relay", order=90, render=render)
