"""Time to a reachable endpoint through a UPnP gateway, next to miniupnpc's ``upnpc``.

Runs in the lab (root needed): brings up the ``eim`` topology, then from the LAN host

* ``method``: ``UpnpMethod.acquire`` until the candidate is yielded (discovery, description,
  status/IP probes, AddPortMapping, read-back), then releases it;
* ``chain``: ``Runtime.traverse`` with only the ``upnp`` method enabled, until the held result
  (IPv4 only; ``chain_dual_stack`` also opens the IPv6 pinhole);
* ``upnpc``: ``upnpc -i -r PORT UDP`` (miniupnpc 2.x, discovery + AddPortMapping; ``-i`` because it
  counts the lab's documentation-range WAN address as reserved) then
  ``upnpc -d`` to delete, as one process each, measured the same way in the same run.

Target (issue 5): the chain reaches a reachable endpoint in under 300 ms. Prints JSON with the
medians, p90s and the ratio upnpc / chain.

    python plugins/upnp/benchmarks/bench_upnp.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from typing import Any

import anyio
from nattrav.config import structure_config
from nattrav.method import AttemptContext
from nattrav.models import TraversalRequest
from nattrav.runtime import Runtime
from nattrav_lab import Lab
from nattrav_upnp.config import UpnpConfig
from nattrav_upnp.method import UpnpMethod


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[max(0, int(len(ordered) * 0.9) - 1)] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
    }


async def _method_runs(runs: int) -> list[float]:
    times = []
    for i in range(runs):
        ctx = AttemptContext(
            request=TraversalRequest(port=41000 + i, families=frozenset({4})), method="upnp"
        )
        started = time.perf_counter()
        async with UpnpMethod(UpnpConfig()).acquire(ctx):
            times.append(time.perf_counter() - started)
    return times


async def _chain_runs(runs: int, families: frozenset[int] = frozenset({4})) -> list[float]:
    config = structure_config({"chain": {"order": ["upnp"]}})
    runtime = Runtime.load(config)
    enabled = [s.name for s in runtime.host.method_specs()]
    runtime = Runtime.load(
        structure_config(
            {
                "chain": {
                    "order": ["upnp"],
                    "disabled": [n for n in enabled if n != "upnp"],
                    "verify": False,
                },
                "cleanup_on_start": False,
            }
        )
    )
    times = []
    for i in range(runs):
        request = TraversalRequest(port=42000 + i + 100 * len(families), families=families)
        started = time.perf_counter()
        async with runtime.traverse(request) as (held, _mux):
            times.append(time.perf_counter() - started)
            assert held.result.method == "upnp"
    return times


def _upnpc_runs(lab: Any, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        port = str(43000 + i)
        started = time.perf_counter()
        done = lab.exec("lan", ["upnpc", "-i", "-r", port, "UDP"], timeout=30)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or "is redirected to" not in done.stdout:
            raise RuntimeError(f"upnpc failed: {done.stdout[-300:]} {done.stderr[-300:]}")
        lab.exec("lan", ["upnpc", "-i", "-d", port, "UDP"], timeout=30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    result: dict[str, Any] = {"runs": args.runs, "target_ms": 300}
    with Lab.up("eim") as lab:
        with lab.inside("lan"):
            result["method"] = _stats(anyio.run(_method_runs, args.runs))
            result["chain"] = _stats(anyio.run(_chain_runs, args.runs))
            # Dual stack: also opens an IPv6 pinhole, so it waits for the IPv6 answer too.
            result["chain_dual_stack"] = _stats(
                anyio.run(_chain_runs, args.runs, frozenset({4, 6}))
            )
        if shutil.which("upnpc"):
            result["upnpc"] = _stats(_upnpc_runs(lab, args.runs))
            result["ratio_upnpc_over_chain"] = round(
                result["upnpc"]["median_ms"] / result["chain"]["median_ms"], 1
            )
        result["gateway_clean"] = lab.gateway_state().empty
    result["meets_target"] = result["chain"]["median_ms"] < result["target_ms"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
