"""Benchmark 3: time to a reachable endpoint (``nattrav map``) in the network lab.

In-process from the LAN host: the calling thread enters the lab's ``lan`` namespace
(``lab.inside("lan")``) and times ``Runtime.traverse(TraversalRequest(port, families={4}))``
(what ``nattrav.open_endpoint`` runs) from the call to the held, reachable endpoint (the
chain's default goal: inbound proven). IPv4 only: over IPv6 the lab's routers route behind a
stateful firewall and a UPnP pinhole wins even in ``double``. Every installed
plugin takes part, pointed at the lab's coturn for STUN and TURN. A fresh ``Runtime`` is built
before each sample (not timed) so no circuit-breaker state carries over, and every sample uses
its own local port (miniupnpd keeps a port's mapping for the lab's life).

Topologies and targets (issue 11): ``eim`` (UPnP/NAT-PMP/PCP gateway present) under 300 ms;
``no-igd`` and ``double`` (no usable gateway: the relay wins) under 1.5 s. Both chain
strategies run in interleaved rounds; ``sequential`` must be slower than ``race`` where a
higher-priority method times out (``no-igd``, ``double``), which is checked as a ratio > 1.

    python -m benchmarks.map_time [--rounds N] [--quick] [--topology T ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from benchmarks import harness
from benchmarks.harness import Report, Row, Unavailable

#: topology -> (max median ms for race, sequential must be slower, expected winners)
TOPOLOGIES: dict[str, tuple[float, bool, tuple[str, ...]]] = {
    "eim": (300.0, False, ("upnp", "natpmp")),
    "no-igd": (1500.0, True, ("relay",)),
    "double": (1500.0, True, ("relay",)),
}
STRATEGIES = ("race", "sequential")
#: IPv4 only: the lab routes IPv6 behind a stateful firewall, so over IPv6 a UPnP pinhole (or
#: direct) wins even in ``double``; the NAT traversal the targets are about is IPv4's.
FAMILIES = frozenset({4})


def check_available() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the lab needs root (network namespaces, nftables, daemons)")
    try:
        import nattrav_lab  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the lab is not installed ({exc})") from None
    from nattrav.runtime import Runtime

    methods = {spec.name for spec in Runtime.load(_config_for_probe()).host.method_specs()}
    missing = {"stun", "relay"} - methods
    if missing:
        raise Unavailable(f"the chain has no {', '.join(sorted(missing))} method installed yet")


def _config_for_probe() -> Any:
    from nattrav.config import structure_config

    return structure_config({"state_dir": tempfile.gettempdir()})


def lab_config(lab: Any, strategy: str, state_dir: str) -> Any:
    """The chain pointed at the lab's coturn (STUN and TURN over UDP, IPv4)."""
    from nattrav.config import structure_config

    host, port = lab.stun_primary4
    turn = lab.turn
    return structure_config(
        {
            "state_dir": state_dir,
            "chain": {"strategy": strategy},
            "plugins": {
                "stun": {"servers": [f"{host}:{port}"]},
                "relay": {
                    "servers": [f"turn:{turn.host4}:{turn.port}?transport=udp"],
                    "username": turn.user,
                    "password": turn.password,
                },
            },
        }
    )


async def _time_to_endpoint(runtime: Any, port: int) -> tuple[float, str, list[dict[str, Any]]]:
    from nattrav.endpoint import Endpoint
    from nattrav.models import TraversalRequest

    request = TraversalRequest(port=port, families=FAMILIES)
    start = time.perf_counter()
    async with runtime.traverse(request) as (held, mux):
        elapsed = time.perf_counter() - start
        endpoint = Endpoint(held.result, held.channel, mux)
        attempts = [
            {
                "method": a.method,
                "outcome": a.outcome.value,
                "duration_ms": round(a.duration * 1000, 1),
            }
            for a in endpoint.result.attempts
        ]
        return elapsed, endpoint.method, attempts


def measure_topology(
    topology: str, rounds: int, port_base: int
) -> tuple[dict[str, list[float]], dict[str, list[str]], list[dict[str, Any]]]:
    """Milliseconds per strategy (interleaved), winners, and the attempts of every sample."""
    from nattrav.runtime import Runtime
    from nattrav_lab import Lab

    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    winners: dict[str, list[str]] = {s: [] for s in STRATEGIES}
    log: list[dict[str, Any]] = []
    port = port_base
    with Lab.up(topology) as lab, tempfile.TemporaryDirectory(prefix="nattrav-bench-map-") as state:
        for r in range(rounds):
            for strategy in STRATEGIES if r % 2 == 0 else STRATEGIES[::-1]:
                runtime = Runtime.load(lab_config(lab, strategy, state))
                port += 1
                with lab.inside("lan"):
                    elapsed, winner, attempts = asyncio.run(_time_to_endpoint(runtime, port))
                times[strategy].append(elapsed * 1000)
                winners[strategy].append(winner)
                log.append(
                    {"round": r, "strategy": strategy, "ms": elapsed * 1000, "attempts": attempts}
                )
            harness.progress(f"map {topology} round {r + 1}/{rounds}")
    return times, winners, log


DEFAULT_ROUNDS = 5


def run(args: argparse.Namespace) -> Report:
    check_available()
    rounds = 3 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    report = Report(
        "map_time",
        "time to a reachable endpoint in the lab (in-process, LAN host)",
        rounds=rounds,
        quick=args.quick,
    )
    for index, topology in enumerate(args.topology):
        limit, slower, expected = TOPOLOGIES[topology]
        times, winners, log = measure_topology(topology, rounds, 41000 + 100 * index)
        report.record_samples(f"{topology} ms", times)
        report.extra[f"{topology} attempts"] = log
        won = Counter(winners["race"])
        unexpected = sorted(set(won) - set(expected))
        report.add(
            Row(
                case=f"{topology}: race",
                subject="race",
                reference="",
                unit="ms",
                subject_median=statistics.median(times["race"]),
                reference_median=None,
                ratio=None,
                max_value=limit,
                note=f"winners {dict(won)}"
                + (f" (expected {'/'.join(expected)})" if unexpected else "")
                + "; median attempt durations: "
                + _attempt_summary(log, "race"),
            )
        )
        report.compare(
            f"{topology}: sequential vs race",
            times,
            "race",
            "sequential",
            unit="ms",
            higher_is_better=False,
            min_ratio=1.0 if slower else None,
            note=f"sequential winners {dict(Counter(winners['sequential']))}; "
            + _attempt_summary(log, "sequential"),
        )
    return report


def _attempt_summary(log: list[dict[str, Any]], strategy: str) -> str:
    per: dict[str, list[float]] = {}
    outcome: dict[str, Counter[str]] = {}
    for sample in log:
        if sample["strategy"] != strategy:
            continue
        for a in sample["attempts"]:
            per.setdefault(a["method"], []).append(a["duration_ms"])
            outcome.setdefault(a["method"], Counter())[a["outcome"]] += 1
    return ", ".join(
        f"{m} {statistics.median(v):.0f} ms ({'/'.join(outcome[m])})" for m, v in per.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    parser.add_argument("--topology", nargs="+", choices=list(TOPOLOGIES), default=list(TOPOLOGIES))
    return harness.run_main("map_time", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
