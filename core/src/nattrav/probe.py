"""``nattrav probe``: one report of what the network does, built concurrently.

Theory of operation
-------------------
Core contributes what needs no protocol: interfaces and addresses, default gateways, the chain
verdict (the chain really runs, on an ephemeral port, and its endpoint is released at once) and
the double-NAT verdict. Every other section comes from a plugin through
``nattrav_register_report_sections``: an async function of a ``ProbeContext`` returning a
JSON-able mapping. All sections and the chain run at the same time under one deadline, so the
report costs about as long as its slowest part, not the sum; a section that fails or overruns
reports ``{"error": ...}`` and never costs the others.

Sections that know external addresses say so with two optional keys that core reads to judge
double NAT: ``gateway_external_ips`` (what a port-mapping gateway says its WAN address is) and
``mapped_ips`` (what a server saw as our source). The report's JSON shape is versioned and
checked against ``nattrav/schemas/probe.schema.json``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs

from nattrav.addresses import AddressScope, scope_of
from nattrav.errors import ChainExhausted, NatTravError
from nattrav.gateways import default_gateways
from nattrav.interfaces import list_addresses
from nattrav.models import TraversalRequest
from nattrav.runtime import Runtime
from nattrav.serialize import to_jsonable

__all__ = ["REPORT_VERSION", "ProbeContext", "ProbeOptions", "double_nat_verdict", "run_probe"]

REPORT_VERSION = 1


@attrs.frozen
class ProbeOptions:
    """What the user asked ``probe`` for.

    ``window`` is how long tests that expect *no* answer wait (filtering tests, absent
    gateways): a few RTTs, never an RFC's 39.5 s transaction timeout. ``timeout`` bounds the
    whole report.
    """

    deep: bool = False
    test_mapping: bool = False
    window: float = 0.5
    timeout: float = 10.0
    chain: bool = True


@attrs.define
class ProbeContext:
    """What a report section receives."""

    runtime: Runtime
    options: ProbeOptions
    interfaces: list[Any]
    gateways: list[Any]
    progress: Callable[[str, str], None] = attrs.field(default=lambda _s, _t: None)

    def settings(self, plugin: str) -> Mapping[str, Any]:
        return self.runtime.method_settings(plugin)


def double_nat_verdict(sections: Mapping[str, Any], local_ips: set[str]) -> dict[str, Any]:
    """Judge the NAT layout from what gateways and servers reported.

    * a gateway's external address that is private or shared (100.64/10): double NAT, and
      carrier-grade when shared;
    * a public gateway address different from the address servers saw: another NAT beyond it;
    * a server-observed address equal to a local one: no NAT for that family.

    NAT is judged per family: an IPv6 address that servers see unchanged (the normal case
    without NAT66) says nothing about IPv4, so ``no_nat`` is about IPv4 and ``no_nat6`` about
    IPv6; double NAT is an IPv4 verdict.
    """
    gateway_ips: list[str] = []
    mapped: list[str] = []
    for data in sections.values():
        if isinstance(data, Mapping):
            gateway_ips += [str(i) for i in data.get("gateway_external_ips", []) or []]
            mapped += [str(i) for i in data.get("mapped_ips", []) or []]
    mapped4 = [ip for ip in mapped if ":" not in ip]
    mapped6 = [ip for ip in mapped if ":" in ip]
    verdict: dict[str, Any] = {
        "double_nat": None,
        "cgnat": None,
        "no_nat": None,
        "no_nat6": (any(ip in local_ips for ip in mapped6) if mapped6 else None),
        "gateway_external_ips": sorted(set(gateway_ips)),
        "mapped_ips": sorted(set(mapped)),
        "why": "",
    }
    if mapped4:
        verdict["no_nat"] = any(ip in local_ips for ip in mapped4)
        if verdict["no_nat"]:
            verdict["double_nat"] = False
            verdict["why"] = "servers see one of this host's own IPv4 addresses"
            return verdict
    scopes = {ip: scope_of(ip) for ip in gateway_ips}
    shared = [ip for ip, s in scopes.items() if s is AddressScope.SHARED]
    private = [ip for ip, s in scopes.items() if s is AddressScope.PRIVATE]
    if shared or private:
        verdict["double_nat"] = True
        verdict["cgnat"] = bool(shared)
        ip = (shared or private)[0]
        kind = "carrier-grade (100.64.0.0/10)" if shared else "private"
        verdict["why"] = f"the gateway's external address {ip} is {kind}: another NAT is beyond it"
        return verdict
    public_gw = [ip for ip, s in scopes.items() if s is AddressScope.PUBLIC]
    mapped_v4 = set(mapped4)
    if public_gw and mapped_v4:
        v4_gw = {ip for ip in public_gw if ":" not in ip}
        if v4_gw and not (v4_gw & mapped_v4):
            verdict["double_nat"] = True
            verdict["cgnat"] = False
            verdict["why"] = (
                f"the gateway says its external address is {sorted(v4_gw)[0]} but servers "
                f"see {sorted(mapped_v4)[0]}: another NAT is beyond it"
            )
        else:
            verdict["double_nat"] = False
            verdict["cgnat"] = False
            verdict["why"] = "the gateway's external address is what servers see"
        return verdict
    verdict["why"] = (
        "no gateway reported an external address"
        if not gateway_ips
        else ("no server-observed address to compare with")
    )
    return verdict


async def _chain_verdict(ctx: ProbeContext) -> dict[str, Any]:
    """Run the chain for an ephemeral UDP port, as ``map`` would, then release at once."""
    runtime = ctx.runtime
    request = TraversalRequest(port=0, goal=runtime.config.chain.goal, lifetime=120.0)
    try:
        async with runtime.traverse(request) as (held, _mux):
            result = held.result
            return {
                "goal": request.goal.value,
                "method": result.method,
                "endpoint": to_jsonable(result.endpoint),
                "kind": result.candidate.kind.value,
                "reachability": to_jsonable(result.candidate.reachability),
                "attempts": to_jsonable(result.attempts),
                "candidates": to_jsonable(result.candidates),
                "error": None,
            }
    except ChainExhausted as exc:
        return {
            "goal": request.goal.value,
            "method": None,
            "endpoint": None,
            "kind": None,
            "reachability": None,
            "attempts": to_jsonable(exc.failures),
            "candidates": [
                to_jsonable(f.candidate) for f in exc.failures if f.candidate is not None
            ],
            "error": str(exc),
        }


async def run_probe(
    runtime: Runtime,
    options: ProbeOptions | None = None,
    *,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Build the whole report. Never raises for a failing section."""
    options = options or ProbeOptions()
    started = time.monotonic()
    interfaces = list_addresses()
    gateways = default_gateways()
    ctx = ProbeContext(
        runtime=runtime,
        options=options,
        interfaces=interfaces,
        gateways=gateways,
        progress=progress or (lambda _s, _t: None),
    )
    specs = sorted(runtime.host.report_sections, key=lambda s: (s.order, s.name))
    sections: dict[str, Any] = {}
    chain: dict[str, Any] | None = None

    async def run_section(name: str, runner: Any) -> None:
        ctx.progress(name, "running")
        section_start = time.monotonic()
        try:
            with anyio.fail_after(options.timeout):
                data = dict(await runner(ctx))
        except TimeoutError:
            data = {"error": f"no result within {options.timeout:.1f} s"}
        except (NatTravError, OSError, ValueError) as exc:
            data = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a plugin's bug must not cost the report
            data = {"error": f"plugin bug: {type(exc).__name__}: {exc}"}
        data.setdefault("duration", round(time.monotonic() - section_start, 3))
        sections[name] = to_jsonable(data)
        ctx.progress(name, "error" if data.get("error") else "done")

    async def run_chain() -> None:
        nonlocal chain
        ctx.progress("chain", "running")
        try:
            with anyio.fail_after(options.timeout):
                chain = await _chain_verdict(ctx)
        except TimeoutError:
            chain = {"error": f"no decision within {options.timeout:.1f} s", "method": None}
        except NatTravError as exc:
            chain = {"error": str(exc), "method": None}
        ctx.progress("chain", "done")

    async with anyio.create_task_group() as tg:
        for spec in specs:
            tg.start_soon(run_section, spec.name, spec.run)
        if options.chain:
            tg.start_soon(run_chain)

    local_ips = {a.ip for a in interfaces}
    return {
        "version": REPORT_VERSION,
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration": round(time.monotonic() - started, 3),
        "options": attrs.asdict(options),
        "plugins": {r.name: r.status.value for r in runtime.host.records.values()},
        "interfaces": [a.as_dict() for a in interfaces],
        "gateways": [g.as_dict() for g in gateways],
        "sections": {s.name: sections.get(s.name, {"error": "did not run"}) for s in specs},
        "nat": double_nat_verdict(sections, local_ips),
        "chain": chain,
    }
