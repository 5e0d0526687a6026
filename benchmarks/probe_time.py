"""Benchmark 4: ``nattrav probe`` run to completion in the network lab.

The real command on the LAN host (``lab.exec("lan", [python, -m, nattrav.cli, probe, --json,
--stun ..., --turn ...])``), timed from spawn to exit: what a user waits for, interpreter
start-up and plugin loading included. The report's own ``duration`` (sections run
concurrently) and each section's time are recorded too, to show which probe bounds the total.

Target (issue 11): under 3 s (median), in every topology measured.

    python -m benchmarks.probe_time [--rounds N] [--quick] [--topology T ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from benchmarks import harness
from benchmarks.harness import Report, Row, Unavailable

LIMIT_MS = 3000.0
TOPOLOGIES = ("eim", "no-igd", "double")


def check_available() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the lab needs root (network namespaces, nftables, daemons)")
    try:
        import nattrav_lab  # noqa: F401
        from nattrav.probe import ProbeContext  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the lab or `nattrav probe` is not installed ({exc})") from None


def probe_argv(lab: Any) -> list[str]:
    host, port = lab.stun_primary4
    turn = lab.turn
    return [
        sys.executable,
        "-m",
        "nattrav.cli",
        "probe",
        "--json",
        "--stun",
        f"{host}:{port}",
        "--turn",
        f"turn:{turn.host4}:{turn.port}?transport=udp",
        "--turn-user",
        turn.user,
        "--turn-password",
        turn.password,
    ]


def _section_seconds(report: dict[str, Any]) -> dict[str, float]:
    """Seconds per report section, and per chain attempt (``chain:<method>``): the chain
    verdict runs next to the sections and can be what bounds the total."""
    out: dict[str, float] = {}
    for name, section in (report.get("sections") or {}).items():
        if isinstance(section, dict):
            value = section.get("duration", section.get("elapsed"))
            if isinstance(value, int | float):
                out[name] = float(value)
    chain = report.get("chain")
    if isinstance(chain, dict):
        for attempt in chain.get("attempts") or ():
            if isinstance(attempt, dict) and isinstance(attempt.get("duration"), int | float):
                out[f"chain:{attempt.get('method')}"] = float(attempt["duration"])
    return out


def measure_topology(
    topology: str, rounds: int
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """Wall ms per run, the report's own duration (ms), and per-section seconds."""
    from nattrav_lab import Lab

    wall: list[float] = []
    own: list[float] = []
    sections: list[dict[str, float]] = []
    with Lab.up(topology) as lab:
        argv = probe_argv(lab)
        lab.exec("lan", [sys.executable, "-c", "import nattrav.cli"], timeout=60)  # warm caches
        for r in range(rounds):
            start = time.perf_counter()
            proc = lab.exec("lan", argv, timeout=60)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(
                    f"nattrav probe failed in {topology} ({proc.returncode}): {proc.stderr[-500:]}"
                )
            data = json.loads(proc.stdout)
            wall.append(elapsed * 1000)
            own.append(float(data.get("duration", float("nan"))) * 1000)
            sections.append(_section_seconds(data))
            harness.progress(f"probe {topology} round {r + 1}/{rounds}")
    return wall, own, sections


DEFAULT_ROUNDS = 5


def run(args: argparse.Namespace) -> Report:
    check_available()
    rounds = 3 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    report = Report(
        "probe_time",
        "nattrav probe to completion in the lab (CLI on the LAN host)",
        rounds=rounds,
        quick=args.quick,
    )
    for topology in args.topology:
        wall, own, sections = measure_topology(topology, rounds)
        report.record_samples(f"{topology} ms", {"wall": wall, "report duration": own})
        report.extra[f"{topology} sections"] = sections
        names = sorted({n for s in sections for n in s})
        slowest = sorted(
            ((statistics.median(s.get(n, 0.0) for s in sections), n) for n in names), reverse=True
        )[:3]
        report.add(
            Row(
                case=f"{topology}: nattrav probe",
                subject="wall",
                reference="report duration",
                unit="ms",
                subject_median=statistics.median(wall),
                reference_median=statistics.median(own),
                ratio=None,
                max_value=LIMIT_MS,
                note="slowest sections: " + ", ".join(f"{n} {sec:.2f} s" for sec, n in slowest),
            )
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    parser.add_argument("--topology", nargs="+", choices=TOPOLOGIES, default=list(TOPOLOGIES))
    return harness.run_main("probe_time", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
