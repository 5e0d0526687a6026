"""Hook implementations of the ``p2p`` plugin. Imports nothing heavy: the agent, the driver,
the signals and the rendezvous code are imported when used (this module loads at every start).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nattrav.hookspecs import hookimpl
from nattrav.registry import CommandRegistry, ConnectorRegistry, SignalerRegistry

NAME = "p2p"


@hookimpl
def nattrav_register_connectors(registry: ConnectorRegistry, config: Mapping[str, Any]) -> None:
    """Register ``ice``: RFC 8445-style checks, hole punching, relay fallback, path change.

    A ``[plugins.p2p]`` table is validated here, so a bad one breaks the plugin at load; with
    no table there is nothing to validate, and the config module (the defaults) is imported
    when a connector is made instead of at every start.
    """
    settings = None
    if config:
        from nattrav_p2p.config import load_config

        settings = load_config(config)

    def factory() -> Any:
        from nattrav_p2p.config import load_config
        from nattrav_p2p.driver import IceConnector

        return IceConnector(settings if settings is not None else load_config(None))

    registry.add(
        factory,
        name="ice",
        priority=10,
        description="RFC 8445-style connectivity checks: direct, punched, mapped, relayed",
    )


@hookimpl
def nattrav_register_signalers(registry: SignalerRegistry, config: Mapping[str, Any]) -> None:
    """Register ``paste`` (copy-and-paste blob) and ``rendezvous`` (websocket rooms)."""

    def paste(*args: Any, **kwargs: Any) -> Any:
        from nattrav_p2p.signals import PasteSignal

        return PasteSignal(*args, **kwargs)

    def rendezvous(*args: Any, **kwargs: Any) -> Any:
        from nattrav_p2p.rendezvous import rendezvous_signal

        return rendezvous_signal(*args, **kwargs)

    registry.add(paste, name="paste", description="offer/answer as one base64 line to copy")
    registry.add(rendezvous, name="rendezvous", description="websocket rooms (nattrav rendezvous)")


def _configure_connect(parser: argparse.ArgumentParser) -> None:
    from nattrav_p2p.cli import configure_connect

    configure_connect(parser)


def _run_connect(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_p2p.cli import run_connect

    return run_connect(args, cli)


def _configure_rendezvous(parser: argparse.ArgumentParser) -> None:
    from nattrav_p2p.cli import configure_rendezvous

    configure_rendezvous(parser)


def _run_rendezvous(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_p2p.cli import run_rendezvous

    return run_rendezvous(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """``nattrav connect`` and ``nattrav rendezvous serve``."""
    registry.add(
        "connect",
        help="connect to a peer (hole punching, relay fallback) and pipe stdin/stdout over it",
        configure=_configure_connect,
        run=_run_connect,
    )
    registry.add(
        "rendezvous",
        help="run the rendezvous server peers meet at (rooms by name, two peers per room)",
        configure=_configure_rendezvous,
        run=_run_rendezvous,
    )
