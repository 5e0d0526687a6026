"""What ``nattrav natpmp external`` and the ``nattrav probe`` section report about a gateway.

The probe section asks every default gateway (one per family) at the same time, within the
probe's short window: is NAT-PMP there (external address, epoch), is PCP there (version,
epoch)? With ``--test-mapping`` it also creates a mapping of a throwaway UDP port and deletes it
again, so the report says "created / released" rather than just "present". It publishes the
gateways' external addresses as ``gateway_external_ips`` for core's double-NAT verdict.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import anyio
from nattrav.errors import NatTravError

__all__ = ["probe_gateway", "run_section", "summarize"]


def summarize(report: dict[str, Any], verdict_of: Callable[[str], str | None]) -> dict[str, Any]:
    """The external address, whether anything answered, and the double-NAT verdict."""
    external = None
    answered = False
    for key in ("natpmp", "pcp"):
        part = report.get(key)
        if isinstance(part, dict) and "error" not in part:
            answered = True
            external = external or part.get("external_address")
    verdict = verdict_of(external) if external else None
    return {"external_address": external, "answered": answered, "verdict": verdict}


async def _throwaway_mapping(client: Any, family: int) -> dict[str, Any]:
    from nattrav.models import Transport

    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with socket.socket(af, socket.SOCK_DGRAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
        try:
            mapping = await client.create(Transport.UDP, port, lifetime=120)
        except NatTravError as exc:
            return {"created": False, "error": str(exc)}
        released = False
        try:
            with anyio.move_on_after(client.settings.release_timeout):
                released = await client.delete(mapping)
        except NatTravError as exc:
            return {"created": True, "released": False, "error": str(exc)}
        return {
            "created": True,
            "released": released,
            "protocol": mapping.details()["protocol"],
            "external": str(mapping.external) if mapping.external else None,
            "lifetime": mapping.lifetime,
        }


async def probe_gateway(
    gateway: Any, settings: Any, *, window: float, test_mapping: bool = False, **options: Any
) -> dict[str, Any]:
    """Presence, versions and epochs of NAT-PMP and PCP on one gateway."""
    import attrs

    from nattrav_natpmp.driver import GatewayClient
    from nattrav_natpmp.method import double_nat_reason

    settings = attrs.evolve(settings, probe_window=window)
    result: dict[str, Any] = {
        "gateway": gateway.host,
        "family": gateway.family,
        "natpmp": None,
        "pcp": None,
    }
    async with GatewayClient.open(gateway, settings=settings, listen=False, **options) as client:
        protocols = settings.protocols()
        if "natpmp" in protocols and gateway.family == 4:
            try:
                found = await client.external_address_natpmp(client._probe_timing())
                result["natpmp"] = {
                    "version": 0,
                    "epoch": found.epoch,
                    "external_address": found.address,
                }
            except NatTravError as exc:
                result["natpmp"] = {"error": str(exc)}
        if "pcp" in protocols:
            try:
                announced = await client.announce(client._probe_timing())
                result["pcp"] = {"version": announced.version, "epoch": announced.epoch}
            except NatTravError as exc:
                result["pcp"] = {"error": str(exc)}
        summary = summarize(result, double_nat_reason)
        result.update(summary)
        if test_mapping and summary["answered"]:
            result["test_mapping"] = await _throwaway_mapping(client, gateway.family)
            external = result["test_mapping"].get("external")
            if external and not result["external_address"]:
                from nattrav.addresses import parse_hostport

                host = parse_hostport(external)[0]
                # An IPv6 firewall maps our own address (no NAT): not a gateway WAN address.
                if host != client.client_address:
                    result["external_address"] = host
                    result["verdict"] = double_nat_reason(host)
    return result


async def run_section(ctx: Any) -> dict[str, Any]:
    """The ``natpmp`` section of ``nattrav probe``."""
    from nattrav.gateways import default_gateways

    from nattrav_natpmp.config import load_settings

    settings = load_settings(ctx.settings("natpmp"))
    gateways = []
    for family in settings.families:
        found = (
            default_gateways(family, override=settings.gateway)
            if settings.gateway
            else [g for g in ctx.gateways if g.family == family]
        )
        if found:
            gateways.append(found[0])
    results: list[dict[str, Any]] = [{} for _ in gateways]

    async def one(index: int, gateway: Any) -> None:
        try:
            results[index] = await probe_gateway(
                gateway,
                settings,
                window=ctx.options.window,
                test_mapping=ctx.options.test_mapping,
            )
        except NatTravError as exc:
            results[index] = {"gateway": gateway.host, "family": gateway.family, "error": str(exc)}

    async with anyio.create_task_group() as tg:
        for i, g in enumerate(gateways):
            tg.start_soon(one, i, g)
    externals = sorted({r["external_address"] for r in results if r.get("external_address")})
    return {
        "present": any(r.get("answered") for r in results),
        "gateways": results,
        "gateway_external_ips": externals,
    }


def render_section(data: Any) -> list[str]:
    """Readable lines for the human ``nattrav probe`` output."""
    lines = []
    for g in data.get("gateways") or []:
        if g.get("error"):
            lines.append(f"{g.get('gateway')}: {g['error']}")
            continue
        parts = []
        for key, label in (("natpmp", "NAT-PMP"), ("pcp", "PCP")):
            part = g.get(key)
            if part is None:
                continue
            if "error" in part:
                parts.append(f"{label} no")
            else:
                version, epoch = part.get("version"), part.get("epoch")
                parts.append(f"{label} yes (version {version}, epoch {epoch})")
        line = f"{g.get('gateway')}: " + (", ".join(parts) or "not asked")
        if g.get("external_address"):
            line += f"; external {g['external_address']}"
        if g.get("verdict"):
            line += f" ({g['verdict']})"
        lines.append(line)
        test = g.get("test_mapping")
        if isinstance(test, dict):
            if test.get("created"):
                lines.append(
                    f"  test mapping: {test.get('protocol')} {test.get('external')}, "
                    + ("released" if test.get("released") else "NOT released")
                )
            else:
                lines.append(f"  test mapping: not created ({test.get('error')})")
    if not lines:
        lines.append("no default gateway to ask")
    return lines
