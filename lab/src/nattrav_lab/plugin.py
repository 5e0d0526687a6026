"""nattrav plugin of nattrav-lab: the ``nattrav lab`` command. Hook implementations only."""

from __future__ import annotations

from typing import Any

from nattrav.hookspecs import hookimpl


@hookimpl
def nattrav_register_commands(registry: Any) -> None:
    from nattrav_lab import commands

    registry.add(
        "lab",
        help="network lab of namespaces with NATs, coturn and miniupnpd (needs root)",
        configure=commands.configure,
        run=commands.run,
    )
