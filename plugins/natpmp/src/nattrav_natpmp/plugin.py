"""Hook implementations of the ``natpmp`` plugin. Imports nothing heavy: the method, the driver
and the CLI are imported when they are used, because this module is loaded at every start."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.enums import CandidateKind, Transport
from nattrav.hookspecs import hookimpl
from nattrav.registry import CommandRegistry, MethodRegistry, ReportRegistry

NAME = "natpmp"
PRIORITY = 45


@hookimpl
def nattrav_register_methods(registry: MethodRegistry, config: Mapping[str, Any]) -> None:
    """Register ``natpmp`` (priority 45, port-mapped): PCP first, NAT-PMP fallback."""
    from nattrav_natpmp.config import load_settings

    settings = load_settings(config)
    # One ErrorMemory shared by this runtime's attempts so PCP error lifetimes hold across
    # retries; made by the first factory call (the lease module is not needed to register).
    shared: dict[str, Any] = {}

    def factory() -> Any:
        from nattrav_natpmp.lease import ErrorMemory
        from nattrav_natpmp.method import NatPmpMethod

        errors = shared.get("errors")
        if errors is None:
            errors = shared["errors"] = ErrorMemory()
        return NatPmpMethod(settings, errors)

    registry.add(
        factory,
        name=NAME,
        priority=PRIORITY,
        kind=CandidateKind.PORT_MAPPED,
        description="PCP (RFC 6887) / NAT-PMP (RFC 6886) mapping on the default gateway",
        transports={Transport.UDP, Transport.TCP},
        timeout=max(5.0, settings.probe_window * 4 + 3.0),
        # UPnP and NAT-PMP/PCP share the gateway's table: never map the same port with both.
        group="gateway",
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    from nattrav_natpmp.cli import configure

    configure(parser)


def _run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_natpmp.cli import run

    return run(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """``nattrav natpmp external|map|unmap``."""
    registry.add(
        NAME,
        help="talk NAT-PMP/PCP to the gateway: external address, map, unmap",
        configure=_configure,
        run=_run,
    )


@hookimpl
def nattrav_register_report_sections(registry: ReportRegistry, config: Mapping[str, Any]) -> None:
    """The ``natpmp`` section of ``nattrav probe``."""

    async def section(ctx: Any) -> Mapping[str, Any]:
        from nattrav_natpmp.report import run_section

        return await run_section(ctx)

    def render(data: Mapping[str, Any]) -> list[str]:
        from nattrav_natpmp.report import render_section

        return render_section(data)

    registry.add(section, name=NAME, title="NAT-PMP / PCP", order=45, render=render)
