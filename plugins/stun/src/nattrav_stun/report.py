"""The ``stun`` section of ``nattrav probe``: servers, mapped addresses, NAT behaviour, path.

Everything runs at once, each part bounded by the probe's window or timeout:

* **per server** (every configured one, each of its address families): a Binding over UDP
  from one shared socket per family (so the mapped addresses can be compared across
  servers), and over TCP for ``stun:`` servers (TLS for ``stuns:``): reachable or not, mapped
  address, RTT. A ``stun:`` server that answers over TCP but not UDP is the sign of a network
  that blocks UDP.
* **mapping varies by destination**: from the shared socket's mapped addresses when two or
  more server addresses of a family answered, else from the RFC 5780 mapping test.
* **NAT behaviour** (RFC 5780 mapping and filtering) with the first UDP server; the next one
  is tried when the first does not support RFC 5780. Hairpinning and binding lifetime only
  in ``--deep`` mode (the lifetime durations that fit in the probe's ``--timeout``).
* **path hops** towards the first UDP server over IPv4 (``nattrav.hops``): core's double-NAT
  verdict reads them (``path_hops``) to see a carrier-grade NAT the gateway hides.

``mapped_ips`` (every address servers saw) feeds core's NAT verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from nattrav_stun.config import StunConfig, load_config

__all__ = ["lifetime_durations", "render_section", "report_section"]

#: Binding-lifetime durations tried in ``--deep`` mode, as far as the report's timeout allows.
LIFETIMES = (5.0, 15.0, 30.0, 60.0, 120.0)


def lifetime_durations(timeout: float) -> tuple[float, ...]:
    """The ``--deep`` binding-lifetime durations that end before the report's timeout."""
    return tuple(d for d in LIFETIMES if d <= timeout - 3.0)


async def report_section(ctx: Any) -> Mapping[str, Any]:
    """Run the section for a ``nattrav.probe.ProbeContext``."""
    cfg = load_config(ctx.settings("stun"))
    servers = cfg.parsed_servers()
    if not servers:
        return {
            "skipped": "no STUN server configured: pass --stun HOST:PORT or set "
            "[plugins.stun] servers",
            "servers": [],
            "mapped_ips": [],
        }
    options = getattr(ctx, "options", None)
    window = max(0.3, float(getattr(options, "window", cfg.probe_window)))
    timeout = float(getattr(options, "timeout", 10.0))
    deep = bool(getattr(options, "deep", False))
    # How long an answer that should come may take before "unreachable": a few
    # retransmissions, not the RFC's 39.5 s (a blocked network costs this once).
    answer_timeout = min(5.0, timeout / 2, max(1.5, 3 * window))
    progress = getattr(ctx, "progress", None)
    report: dict[str, Any] = {
        "defaults": cfg.uses_defaults,
        "servers": [],
    }
    udp = [s for s in servers if s.transport == "udp"]

    async def behaviour() -> None:
        report.update(await _behaviour(cfg, udp, window, answer_timeout, deep, timeout, progress))

    async def reachability() -> None:
        report["servers"] = await _servers(cfg, servers, answer_timeout)

    async def hops() -> None:
        report["path_hops"], report["path_target"] = await _hops(udp, window)

    async with anyio.create_task_group() as tg:
        if udp:
            tg.start_soon(behaviour)
            tg.start_soon(hops)
        tg.start_soon(reachability)
    if not udp:
        report["mapping"] = report["filtering"] = "unknown"
        report["mapping_reason"] = report["filtering_reason"] = (
            "no UDP STUN server configured (RFC 5780 tests need one)"
        )
    _summarise(report)
    return report


async def _behaviour(
    cfg: StunConfig,
    udp: list[Any],
    window: float,
    answer_timeout: float,
    deep: bool,
    timeout: float,
    progress: Any,
) -> dict[str, Any]:
    from nattrav_stun.discovery import discover_nat_behaviour
    from nattrav_stun.driver import StunError

    result: dict[str, Any] = {}
    for server in udp[:2]:
        if progress is not None:
            progress("stun", f"RFC 5780 tests with {server}")
        try:
            found = await discover_nat_behaviour(
                server,
                settings=cfg.client_settings(),
                window=window,
                answer_timeout=answer_timeout,
                hairpinning=deep,
                lifetime=lifetime_durations(timeout) if deep else (),
            )
        except (StunError, OSError, ValueError) as exc:
            result = {
                "server": str(server),
                "mapping": "unknown",
                "filtering": "unknown",
                "mapping_reason": f"RFC 5780 tests with {server} failed: {exc}",
                "filtering_reason": f"RFC 5780 tests with {server} failed: {exc}",
            }
            continue
        result = found.to_json()
        if result.get("rfc5780") or result.get("mapping") == "udp-blocked":
            break
    return result


async def _servers(cfg: StunConfig, servers: list[Any], answer_timeout: float) -> list[Any]:
    """One entry per (server, address family): UDP and TCP (or TLS) Binding outcomes."""
    from nattrav_stun.driver import StunClient, StunError, resolve
    from nattrav_stun.uri import ServerAddress

    entries: list[dict[str, Any]] = []
    async with StunClient.open(cfg.client_settings()) as client:
        shared: dict[int, Any] = {}

        async def endpoint(family: int) -> Any:
            if family not in shared:
                shared[family] = await client.add_socket(family)
            return shared[family]

        async def binding(entry: dict[str, Any], key: str, target: Any, family: int) -> None:
            outcome: dict[str, Any] = {"reachable": False}
            try:
                ep = await endpoint(family) if key == "udp" else None
                with anyio.fail_after(answer_timeout + 1.0):
                    found = await client.binding(target, endpoint=ep, timeout=answer_timeout)
                outcome.update(
                    reachable=True,
                    mapped=str(found.mapped),
                    rtt_ms=None if found.rtt is None else round(found.rtt * 1000, 2),
                )
                if found.other_address is not None:
                    outcome["other_address"] = str(found.other_address)
            except (StunError, OSError, ValueError) as exc:
                outcome["error"] = str(exc)
            except TimeoutError:
                outcome["error"] = f"no answer within {answer_timeout:.1f} s"
            entry[key] = outcome

        async def per_server(server: Any) -> None:
            try:
                addresses = await resolve(server.host, server.port, frozenset({4, 6}))
            except (StunError, OSError) as exc:
                entries.append({"server": str(server), "family": None, "error": str(exc)})
                return
            seen: set[int] = set()
            async with anyio.create_task_group() as tg:
                for address in addresses:
                    if address.family in seen:
                        continue
                    seen.add(address.family)
                    entry: dict[str, Any] = {
                        "server": str(server),
                        "family": address.family,
                        "address": str(address),
                    }
                    entries.append(entry)
                    if server.transport == "tls":
                        target = ServerAddress(server.scheme, server.host, server.port, "tls")
                        tg.start_soon(binding, entry, "tls", target, address.family)
                        continue
                    if server.transport == "udp":
                        tg.start_soon(binding, entry, "udp", address, address.family)
                    literal = ServerAddress("stun", address.host, address.port, "tcp")
                    tg.start_soon(binding, entry, "tcp", literal, address.family)

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(per_server, server)
    order = {str(s): n for n, s in enumerate(servers)}
    entries.sort(key=lambda e: (order.get(e["server"], 99), e.get("family") or 0))
    return entries


async def _hops(udp: list[Any], window: float) -> tuple[list[dict[str, Any]], str | None]:
    from nattrav.hops import trace_hops

    from nattrav_stun.driver import StunError, resolve

    for server in udp:
        try:
            addresses = await resolve(server.host, server.port, frozenset({4}))
        except (StunError, OSError):
            continue
        if not addresses:
            continue
        target = addresses[0]
        try:
            hops = await trace_hops(target.host, max_hops=4, window=window)
        except OSError:
            return [], None
        return ([] if hops is None else [h.as_dict() for h in hops]), str(target)
    return [], None


def _summarise(report: dict[str, Any]) -> None:
    """``mapped_v4``/``mapped_v6``, ``mapping_varies_by_destination`` and ``mapped_ips``."""
    by_family: dict[int, dict[str, str]] = {4: {}, 6: {}}
    for entry in report["servers"]:
        udp = entry.get("udp") or {}
        if udp.get("mapped") and entry.get("family") in by_family:
            by_family[entry["family"]][entry["address"]] = udp["mapped"]
    report["mapped_v4"] = sorted(set(by_family[4].values()))
    report["mapped_v6"] = sorted(set(by_family[6].values()))
    varies: bool | None = None
    how = "fewer than two server addresses answered and no RFC 5780 mapping test"
    if len(by_family[4]) >= 2:
        varies = len(set(by_family[4].values())) > 1
        how = (
            f"one socket's mapped address seen by {len(by_family[4])} IPv4 server addresses: "
            + ", ".join(sorted(set(by_family[4].values())))
        )
    else:
        mapping = report.get("mapping")
        if mapping in ("endpoint-independent", "no-nat"):
            varies, how = False, f"RFC 5780 mapping test: {mapping}"
        elif mapping in ("address-dependent", "address-and-port-dependent"):
            varies, how = True, f"RFC 5780 mapping test: {mapping}"
    report["mapping_varies_by_destination"] = varies
    report["mapping_varies_how"] = how
    mapped = set()
    for text in report["mapped_v4"] + report["mapped_v6"]:
        mapped.add(text.rsplit(":", 1)[0].strip("[]"))
    for entry in report["servers"]:  # what servers saw over TCP/TLS counts too
        for key in ("tcp", "tls"):
            part = entry.get(key) or {}
            if part.get("mapped"):
                mapped.add(str(part["mapped"]).rsplit(":", 1)[0].strip("[]"))
    discovered = report.get("mapped")
    if discovered:
        mapped.add(str(discovered).rsplit(":", 1)[0].strip("[]"))
    report["mapped_ips"] = sorted(mapped)


def render_section(data: Mapping[str, Any]) -> list[str]:
    """Readable lines for the human ``nattrav probe`` output."""
    if data.get("skipped"):
        return [str(data["skipped"])]
    lines: list[str] = []
    if data.get("defaults"):
        lines.append("servers: public defaults (no [plugins.stun] servers, no --stun)")
    lines.append(f"NAT mapping:   {data.get('mapping', 'unknown')} ({data.get('mapping_reason')})")
    lines.append(
        f"NAT filtering: {data.get('filtering', 'unknown')} ({data.get('filtering_reason')})"
    )
    varies = data.get("mapping_varies_by_destination")
    lines.append(
        "mapping varies by destination: "
        + {True: "yes", False: "no", None: "unknown"}[varies]
        + f" ({data.get('mapping_varies_how')})"
    )
    for family in (4, 6):
        mapped = data.get(f"mapped_v{family}") or []
        if mapped:
            lines.append(f"mapped IPv{family}: {', '.join(mapped)}")
    hair = data.get("hairpinning")
    if isinstance(hair, Mapping):
        lines.append(
            f"hairpinning: {'yes' if hair.get('supported') else 'no'} ({hair.get('reason')})"
        )
    life = data.get("binding_lifetime")
    if isinstance(life, Mapping):
        alive, expired = life.get("alive_after"), life.get("expired_by")
        text = (
            f"binding lifetime: alive after {alive} s"
            if alive is not None
            else ("binding lifetime: expired before the shortest test")
        )
        text += f", expired by {expired} s" if expired is not None else " (no expiry seen)"
        lines.append(text)
    hops = data.get("path_hops") or []
    if hops:
        lines.append("path: " + " -> ".join(str(h.get("ip") or "*") for h in hops))
    rows = []
    for entry in data.get("servers") or []:
        cells = []
        for key in ("udp", "tcp", "tls"):
            part = entry.get(key)
            if isinstance(part, Mapping):
                cells.append(f"{key.upper()} {'ok' if part.get('reachable') else 'no'}")
        mapped = (entry.get("udp") or entry.get("tcp") or entry.get("tls") or {}).get("mapped")
        label = entry.get("address") or entry.get("server")
        if entry.get("error"):
            rows.append(f"  {entry['server']}: {entry['error']}")
        else:
            rows.append(f"  {label}: {', '.join(cells)}; mapped {mapped or '-'}")
    if rows:
        lines.append("servers:")
        lines += rows
    return lines
