"""nattrav plugin of nattrav-lab: the ``nattrav lab`` command. Hook implementations only."""

from __future__ import annotations

import argparse
from typing import Any

from nattrav.hookspecs import hookimpl


def _configure(parser: argparse.ArgumentParser) -> None:
    # The commands module (and subprocess) is imported when `nattrav lab` is used, not at
    # every start of the CLI.
    from nattrav_lab.commands import configure

    configure(parser)


def _run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_lab.commands import run

    return run(args, cli)


@hookimpl
def nattrav_register_commands(registry: Any) -> None:
    registry.add(
        "lab",
        help="network lab of namespaces with NATs, coturn and miniupnpd (needs root)",
        configure=_configure,
        run=_run,
    )
