"""The ``upnp`` section of ``nattrav probe``: which IGDs answer, and what they are good for.

It reports every device that answered (and why one was not usable), every WAN connection
service with its status and external address verdict, the service the ``upnp`` method would
use, whether IPv6 pinholes are offered, and ``gateway_external_ips`` so core can judge double
NAT. With ``probe --test-mapping`` it also creates a short test mapping and releases it, so
the report says "created / released", not just "present".
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from nattrav.errors import MethodError, MethodUnavailable

from nattrav_upnp.config import load_config
from nattrav_upnp.control import ConnectionClient
from nattrav_upnp.driver import local_address_for
from nattrav_upnp.lease import PortMappingLease, hold
from nattrav_upnp.method import UpnpMethod
from nattrav_upnp.selection import ExternalVerdict

__all__ = ["upnp_section"]

TEST_LEASE = 60


async def upnp_section(ctx: Any) -> dict[str, Any]:
    """Run the section for a ``nattrav.probe.ProbeContext``."""
    cfg = load_config(ctx.settings("upnp"))
    # An absent IGD costs the probe window, not the full discovery window.
    window = min(cfg.discovery_window, max(float(ctx.options.window), 0.2))
    method = UpnpMethod(attrs.evolve(cfg, discovery_window=window))
    async with method.transport() as transport:
        try:
            choice = await method.choose(transport)
        except MethodUnavailable as exc:
            return {"present": False, "reason": exc.reason}
        found = choice.discovery
        out: dict[str, Any] = {
            "present": True,
            "elapsed": round(found.elapsed, 4),
            "devices": [d.as_dict() for d in found.devices],
            "services": [
                {
                    "service": p.service.label,
                    "control_url": str(p.service.control_url),
                    "igd_version": p.igd_version,
                    "default_gateway": p.from_gateway,
                    "status": p.status.status if p.status else None,
                    "external_ip": p.external_ip,
                    "verdict": p.verdict.value,
                    "reason": p.reason,
                }
                for p in choice.probes
            ],
            "best": str(choice.best.service.control_url) if choice.best else None,
            "usable": bool(
                choice.best is not None and choice.best.verdict is ExternalVerdict.PUBLIC
            ),
            "pinholes": str(choice.firewall[1].control_url) if choice.firewall else None,
            "gateway_external_ips": sorted({p.external_ip for p in choice.probes if p.external_ip}),
        }
        best = choice.best
        if ctx.options.test_mapping and best is not None and out["usable"]:
            out["test_mapping"] = await _test_mapping(method, transport, best)
        return out


async def _test_mapping(method: UpnpMethod, transport: Any, best: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port = int(probe.getsockname()[1])
    lease = PortMappingLease(
        ConnectionClient(transport, best.service),
        quirks=method.quirks.get(best.device_key),
        protocol="UDP",
        internal_client=local_address_for(best.service.control_url.host),
        internal_port=port,
        external_ip=best.external_ip or "",
        lease=TEST_LEASE,
        description=f"{method.config.description} probe",
        release_timeout=method.config.release_timeout,
    )
    result: dict[str, Any] = {"created": False, "released": False}
    try:
        async with hold(lease):
            assert lease.mapping is not None
            result.update(
                created=True,
                endpoint=str(lease.mapping.endpoint()),
                action=lease.mapping.action,
                lease_granted=lease.mapping.granted_lease,
            )
    except MethodError as exc:
        result["error"] = exc.reason
    result["released"] = lease.released
    result["quirks"] = method.quirks.get(best.device_key).as_dict()
    return result


def render_section(data: Any) -> list[str]:
    """Readable lines for the human ``nattrav probe`` output."""
    if not data.get("present"):
        return [f"no IGD: {data.get('reason')}"]
    lines = []
    for s in data.get("services") or []:
        lines.append(
            f"IGD v{s.get('igd_version')} {s.get('service')} ({s.get('status') or 'status ?'}): "
            f"external {s.get('external_ip') or '-'} ({s.get('reason')})"
        )
    lines.append(
        f"usable for mappings: {'yes' if data.get('usable') else 'no'}; IPv6 pinholes: "
        + ("yes" if data.get("pinholes") else "no")
    )
    test = data.get("test_mapping")
    if isinstance(test, dict):
        if test.get("created"):
            lines.append(
                f"test mapping: created {test.get('endpoint')}, "
                + ("released" if test.get("released") else "NOT released")
            )
        else:
            lines.append(f"test mapping: not created ({test.get('error')})")
    return lines
