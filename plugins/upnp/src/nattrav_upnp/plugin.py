"""Hook implementations of the ``upnp`` plugin. Imports only what registration needs.

The method, driver, httpx and defusedxml are imported inside the factory and the command
runner, so ``nattrav`` starts fast whether or not UPnP is used.
"""

from __future__ import annotations

import argparse
from typing import Any

from nattrav.enums import CandidateKind, Transport
from nattrav.hookspecs import hookimpl
from nattrav.registry import CommandRegistry, MethodRegistry, ReportRegistry

__all__ = [
    "nattrav_register_commands",
    "nattrav_register_methods",
    "nattrav_register_report_sections",
]


@hookimpl
def nattrav_register_methods(registry: MethodRegistry, config: dict[str, Any]) -> None:
    """Register ``upnp`` (priority 40, PORT_MAPPED) after validating ``[plugins.upnp]``."""
    from nattrav_upnp.config import load_config

    cfg = load_config(config)
    shared: dict[str, Any] = {}  # one QuirkBook for every method this registration makes

    def factory() -> Any:
        from nattrav_upnp.method import UpnpMethod
        from nattrav_upnp.planner import QuirkBook

        book = shared.setdefault("quirks", QuirkBook())
        return UpnpMethod(cfg, book)

    registry.add(
        factory,
        name="upnp",
        priority=40,
        kind=CandidateKind.PORT_MAPPED,
        description="UPnP IGD port mapping (IGD v1/v2) and IPv6 pinhole",
        transports=frozenset({Transport.UDP, Transport.TCP}),
        timeout=cfg.discovery_window + 4 * cfg.http_timeout,
        # UPnP, NAT-PMP and PCP edit the same gateway table: never run them at the same time.
        group="gateway",
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="upnp_command", metavar="ACTION")
    sub.required = True

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable"
        )

    def window(p: argparse.ArgumentParser) -> None:
        p.add_argument("--window", type=float, metavar="S", help="discovery window (seconds)")
        p.add_argument(
            "--interface", action="append", metavar="IF", help="search only on this interface"
        )

    def holding(p: argparse.ArgumentParser) -> None:
        p.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
        p.add_argument("--lease", type=int, metavar="S", help="lease to request (seconds)")
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            "--hold", type=float, metavar="S", help="hold this long, then delete (default: ^C)"
        )
        group.add_argument(
            "--detach",
            action="store_true",
            help="leave it in place until its lease ends (not journaled, not renewed)",
        )

    p = sub.add_parser("discover", help="find UPnP gateways and their WAN services")
    window(p)
    json_flag(p)

    p = sub.add_parser("map", help="map a local port and hold the mapping")
    p.add_argument("port", type=int, help="local port")
    p.add_argument("--external-port", type=int, metavar="N", help="external port to ask for")
    holding(p)
    window(p)
    json_flag(p)

    p = sub.add_parser("unmap", help="delete a mapping this host made")
    p.add_argument("external_port", type=int, help="external port of the mapping")
    p.add_argument("--protocol", choices=["udp", "tcp"], default="udp")
    p.add_argument(
        "--force",
        action="store_true",
        help="delete even if it names another client or description",
    )
    window(p)
    json_flag(p)

    p = sub.add_parser("list", help="list the gateway's port mappings")
    window(p)
    json_flag(p)

    p = sub.add_parser("pinhole", help="open an IPv6 pinhole to a local port and hold it")
    p.add_argument("port", type=int, help="local port")
    holding(p)
    window(p)
    json_flag(p)


def _run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_upnp.cli import run_command

    return run_command(args, cli)


@hookimpl
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """Register ``nattrav upnp discover|map|unmap|list|pinhole``."""
    registry.add(
        "upnp", help="UPnP IGD: discover, map, unmap, list, pinhole", configure=_configure, run=_run
    )


def _render(data: Any) -> list[str]:
    from nattrav_upnp.report import render_section

    return render_section(data)


async def _report(ctx: Any) -> Any:
    from nattrav_upnp.report import upnp_section

    return await upnp_section(ctx)


@hookimpl
def nattrav_register_report_sections(registry: ReportRegistry, config: dict[str, Any]) -> None:
    """Add the ``upnp`` section to ``nattrav probe`` (devices, services, double-NAT input)."""
    registry.add(_report, name="upnp", title="UPnP IGD", order=40, render=_render)
