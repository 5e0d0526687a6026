"""The ``pmtu`` section of ``nattrav probe``: the PLPMTU towards each server, per family.

Servers come from ``[plugins.pmtud] servers``, else from ``[plugins.stun] servers`` (which
``nattrav probe --stun`` fills). Every (server, family) pair is searched at the same time, each
over its own socket; the probe timer is the report's ``window`` (how long a diagnostic waits for
answers that may never come: a few RTTs, not RFC 8899's 1 s floor), and the whole section stays
inside the report's timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from nattrav.addresses import format_hostport
from nattrav.errors import ConfigError, NatTravError

from nattrav_pmtud.config import load_config, parse_target

__all__ = ["run_section"]


def _servers(ctx: Any) -> list[str]:
    own = ctx.settings("pmtud").get("servers") or ()
    if isinstance(own, str):
        own = [own]
    if own:
        return [str(s) for s in own]
    stun = ctx.settings("stun").get("servers") or ()
    if isinstance(stun, str):
        stun = [stun]
    return [str(s) for s in stun if not str(s).lower().startswith(("stuns:", "turns:"))]


async def run_section(ctx: Any) -> Mapping[str, Any]:
    """Run the section for a ``nattrav.probe.ProbeContext``."""
    from nattrav_pmtud.driver import discover_pmtu, resolve

    try:
        cfg = load_config(ctx.settings("pmtud"))
    except ConfigError as exc:
        return {"error": str(exc)}
    servers = _servers(ctx)
    if not servers:
        return {
            "paths": [],
            "note": "no server to probe: set [plugins.pmtud] servers or pass --stun",
        }
    window = float(getattr(ctx.options, "window", 0.5))
    budget = max(1.0, float(getattr(ctx.options, "timeout", 10.0)) * 0.8)
    paths: list[dict[str, Any]] = []

    async def one(server: str, family: int) -> None:
        try:
            host, port = parse_target(server)
            addresses = await resolve(host, port, family)
        except (ValueError, NatTravError) as exc:
            paths.append({"server": server, "family": family, "error": str(exc)})
            return
        if not addresses:
            return  # the server has no address of this family: nothing to report
        target = addresses[0]
        try:
            found = await discover_pmtu(
                target,
                cfg.search_settings(family, probe_timeout=window),
                credentials=cfg.credentials(),
                software=cfg.software,
                deadline=min(cfg.deadline, budget),
            )
        except NatTravError as exc:
            paths.append({"server": server, "family": family, "error": str(exc)})
            return
        entry = found.to_dict()
        entry["server"] = server
        entry["target"] = format_hostport(*target)
        paths.append(entry)

    async with anyio.create_task_group() as tg:
        for server in servers:
            for family in cfg.families:
                tg.start_soon(one, server, family)
    paths.sort(key=lambda p: (str(p.get("server")), int(p.get("family", 0))))
    # IPv4 only: core's NAT verdict reads "a server saw one of our own addresses" as "no NAT",
    # and an IPv6 address seen unchanged is normal behind a NAT44 router without NAT66.
    mapped = sorted(
        {
            parse_target(str(p["mapped_address"]))[0]
            for p in paths
            if p.get("mapped_address") and p.get("family") == 4
        }
    )
    out: dict[str, Any] = {"paths": paths}
    confirmed = [p for p in paths if p.get("confirmed")]
    for family in (4, 6):
        sizes = [int(p["path_mtu"]) for p in confirmed if p.get("family") == family]
        if sizes:
            out[f"ipv{family}_path_mtu"] = min(sizes)
    if mapped:
        out["mapped_ips"] = mapped
    return out


def render_section(data: Mapping[str, Any]) -> list[str]:
    """Readable lines for the human ``nattrav probe`` output."""
    if data.get("note"):
        return [str(data["note"])]
    lines = []
    for p in data.get("paths") or []:
        if p.get("error"):
            lines.append(f"{p.get('server')} IPv{p.get('family')}: {p['error']}")
            continue
        how = ", ".join(p.get("how") or [])
        state = "confirmed" if p.get("confirmed") else "unconfirmed"
        lines.append(
            f"{p.get('target')} IPv{p.get('family')}: path MTU {p.get('path_mtu')} "
            f"(UDP payload {p.get('udp_payload')}; {state}; {how}; "
            f"limited by {p.get('limited_by')})"
        )
    return lines or ["no path measured"]
