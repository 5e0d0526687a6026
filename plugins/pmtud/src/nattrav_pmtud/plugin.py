"""Hook implementations of the ``pmtud`` plugin. Imports nothing heavy: the search, the driver
and the CLI are imported when they are used, because this module is loaded at every start."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.hookspecs import hookimpl
from nattrav.registry import CommandRegistry, PathProbeRegistry, ReportRegistry

NAME = "pmtud"


@hookimpl
def nattrav_register_path_probes(registry: PathProbeRegistry, config: Mapping[str, Any]) -> None:
    """``pmtu``: the RFC 8899 PLPMTU of the chosen endpoint's path (chain ``probe_paths``).

    A ``[plugins.pmtud]`` table is validated here, so a bad one breaks the plugin at load;
    with no table there is nothing to validate, and the config module (the defaults) is
    imported when a probe is made instead of at every start.
    """
    cfg = None
    if config:
        from nattrav_pmtud.config import load_config

        cfg = load_config(config)

    def factory() -> Any:
        from nattrav_pmtud.config import load_config
        from nattrav_pmtud.pathprobe import PmtuPathProbe

        return PmtuPathProbe(cfg if cfg is not None else load_config(None))

    registry.add(factory, name="pmtu", description="RFC 8899 DPLPMTUD: PLPMTU of the chosen path")


@hookimpl
def nattrav_register_report_sections(registry: ReportRegistry, config: Mapping[str, Any]) -> None:
    """The ``pmtu`` section of ``nattrav probe``: PLPMTU per server and family."""

    async def section(ctx: Any) -> Mapping[str, Any]:
        from nattrav_pmtud.report import run_section

        return await run_section(ctx)

    def render(data: Mapping[str, Any]) -> list[str]:
        from nattrav_pmtud.report import render_section

        return render_section(data)

    registry.add(section, name="pmtu", title="Path MTU (RFC 8899)", order=80, render=render)


def _configure(parser: argparse.ArgumentParser) -> None:
    from nattrav_pmtud.cli import configure

    configure(parser)


def _run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_pmtud.cli import run

    return run(args, cli)


def _configure_echo(parser: argparse.ArgumentParser) -> None:
    from nattrav_pmtud.cli import configure_echo

    configure_echo(parser)


def _run_echo(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_pmtud.cli import run_echo

    return run_echo(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """``nattrav pmtu SERVER`` and ``nattrav pmtu-echo``."""
    registry.add(
        "pmtu",
        help="discover the path MTU to a STUN server or echo peer (RFC 8899)",
        configure=_configure,
        run=_run,
    )
    registry.add(
        "pmtu-echo",
        help="answer PMTU probes so another nattrav peer can measure the path to this host",
        configure=_configure_echo,
        run=_run_echo,
    )
