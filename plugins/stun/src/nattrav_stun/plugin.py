"""Hook implementations of the ``stun`` plugin.

Only ``@hookimpl`` functions live here, and importing this module is cheap (it is loaded at
every CLI start): the config module is imported when a registration hook runs, everything
else (codec, driver, method, CLI) when it is used.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.enums import CandidateKind, Transport
from nattrav.hookspecs import hookimpl
from nattrav.registry import (
    CommandRegistry,
    MethodRegistry,
    OptionRegistry,
    ReportRegistry,
    VerifierRegistry,
)

NAME = "stun"
PRIORITY = 20


@hookimpl
def nattrav_register_methods(registry: MethodRegistry, config: Mapping[str, Any]) -> None:
    """Register ``stun`` (priority 20, server-reflexive): the public address of the app's
    UDP port as STUN servers see it. The ``[plugins.stun]`` table is validated here."""
    from nattrav_stun.config import load_config

    cfg = load_config(config)

    def factory() -> Any:
        from nattrav_stun.method import StunMethod

        return StunMethod(cfg)

    registry.add(
        factory,
        name=NAME,
        priority=PRIORITY,
        kind=CandidateKind.SERVER_REFLEXIVE,
        description="server-reflexive address via STUN (RFC 8489), inbound proven via RFC 5780",
        transports={Transport.UDP},
        timeout=max(5.0, cfg.compare_wait + cfg.probe_window + 3.0),
    )


@hookimpl
def nattrav_register_verifiers(registry: VerifierRegistry, config: Mapping[str, Any]) -> None:
    """``stun-inbound``: prove or refute inbound reachability with an RFC 5780 server."""
    from nattrav_stun.config import load_config

    cfg = load_config(config)

    def factory() -> Any:
        from nattrav_stun.verifier import StunVerifier

        return StunVerifier(cfg)

    registry.add(
        factory,
        name="stun-inbound",
        kinds={
            CandidateKind.HOST,
            CandidateKind.SERVER_REFLEXIVE,
            CandidateKind.PEER_REFLEXIVE,
            CandidateKind.PORT_MAPPED,
        },
    )


def _add_servers(value: Any, raw: dict[str, Any]) -> None:
    """Fold repeated ``--stun`` values into ``plugins.stun.servers`` (appended, deduplicated)."""
    plugins = raw.setdefault("plugins", {})
    table = plugins.setdefault(NAME, {})
    existing = table.get("servers", [])
    if isinstance(existing, str):
        existing = [s.strip() for s in existing.split(",") if s.strip()]
    servers = list(existing) if isinstance(existing, list | tuple) else []
    for server in value if isinstance(value, list | tuple) else [value]:
        if server not in servers:
            servers.append(server)
    table["servers"] = servers


@hookimpl
def nattrav_register_options(registry: OptionRegistry) -> None:
    """``--stun HOST:PORT`` (repeatable) on ``probe``, ``map`` and ``connect``."""
    registry.add(
        "--stun",
        commands=("probe", "map", "connect"),
        apply=_add_servers,
        action="append",
        metavar="SERVER",
        help="STUN server: HOST:PORT, [IPv6]:PORT or stun:/stuns: URI (repeatable)",
    )


def _configure_stun(parser: argparse.ArgumentParser) -> None:
    from nattrav_stun.cli import configure_stun

    configure_stun(parser)


def _run_stun(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_stun.cli import run_stun

    return run_stun(args, cli)


def _configure_nat_type(parser: argparse.ArgumentParser) -> None:
    from nattrav_stun.cli import configure_nat_type

    configure_nat_type(parser)


def _run_nat_type(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_stun.cli import run_nat_type

    return run_nat_type(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """``nattrav stun SERVER`` and ``nattrav nat-type SERVER``."""
    registry.add(
        "stun",
        help="send a STUN Binding request and show the mapped address",
        configure=_configure_stun,
        run=_run_stun,
    )
    registry.add(
        "nat-type",
        help="classify the NAT's mapping and filtering (RFC 5780) with a STUN server",
        configure=_configure_nat_type,
        run=_run_nat_type,
    )


@hookimpl
def nattrav_register_report_sections(registry: ReportRegistry, config: Mapping[str, Any]) -> None:
    """The ``stun`` section of ``nattrav probe``: NAT type and mapped addresses."""

    async def section(ctx: Any) -> Mapping[str, Any]:
        from nattrav_stun.report import report_section

        return await report_section(ctx)

    def render(data: Mapping[str, Any]) -> list[str]:
        from nattrav_stun.report import render_section

        return render_section(data)

    registry.add(section, name=NAME, title="STUN / NAT behaviour", order=20, render=render)
