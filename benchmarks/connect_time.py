"""Benchmark: time to a working peer-to-peer connection (``nattrav.connect``), per pair of
lab topologies (issue 11, with the p2p connector of issue 12).

For each pair, ``Lab.up(first, second_site=second)``; then, ``--rounds`` times, one peer per
site (each in its own thread inside its LAN host's namespace, with its own event loop,
signaling through an in-process thread signal) calls ``nattrav.connect`` and exchanges data
both ways: the p2p plugin's benchmark hook ``nattrav_p2p.benchmark.time_to_connect``. Reported
per pair: the median time from the call to a working connection on the offering side
(gathering, offer/answer, connectivity checks, nomination), the checks alone, the path kind
(direct, punched, mapped, relay) and the failures. IPv4, gateway methods off (the hook's
default: hole punching and relay are what is measured; ``--gateways`` turns UPnP/NAT-PMP/PCP
on). The issue sets no target for these times: they are reported, not judged; a pair with a
run that fails to connect is a failure (the last row; exit status 1).

    python -m benchmarks.connect_time [--rounds N] [--quick] [--pairs A:B ...] [--all]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from typing import Any

from benchmarks import harness
from benchmarks.harness import Report, Row, Unavailable

TOPOLOGIES = ("eim", "symmetric", "open", "double", "no-igd", "udp-blocked")
#: A representative default: cone/cone (punched), cone/symmetric, symmetric/symmetric
#: (relay), a public host, carrier-grade NAT, no gateway.
DEFAULT_PAIRS = (
    ("eim", "eim"),
    ("eim", "symmetric"),
    ("symmetric", "symmetric"),
    ("open", "symmetric"),
    ("double", "eim"),
    ("no-igd", "no-igd"),
)
# Not in the default: ``udp-blocked`` pairs. The hook configures TURN over UDP only, which
# that topology drops, so they measure the configuration, not nattrav (``--all`` has them).


def check_available() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the lab needs root (network namespaces, nftables, daemons)")
    try:
        import nattrav.connect  # noqa: F401
    except ImportError:
        raise Unavailable("nattrav.connect (issue 12) does not exist in this nattrav") from None
    try:
        import nattrav_lab  # noqa: F401
        import nattrav_p2p.benchmark  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"{exc.name} is not installed (the p2p connector or the lab)") from None


def _pair(text: str) -> tuple[str, str]:
    first, _, second = text.partition(":")
    if first not in TOPOLOGIES or second not in TOPOLOGIES:
        raise argparse.ArgumentTypeError(f"{text!r}: want A:B with A, B in {', '.join(TOPOLOGIES)}")
    return first, second


DEFAULT_ROUNDS = 3


def run(args: argparse.Namespace) -> Report:
    check_available()
    from nattrav_p2p.benchmark import time_to_connect

    rounds = 2 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    if args.all:
        pairs = list(itertools.combinations_with_replacement(TOPOLOGIES, 2))
    else:
        pairs = list(args.pairs or DEFAULT_PAIRS)
    report = Report(
        "connect_time",
        "time to a working peer-to-peer connection (nattrav.connect, two lab sites)",
        rounds=rounds,
        quick=args.quick,
    )
    failed_runs = 0
    for first, second in pairs:
        summary: dict[str, Any] = time_to_connect(
            first, second, gateways=args.gateways, repeat=rounds
        )
        harness.progress(f"connect {first}:{second} done")
        report.extra[f"{first}:{second}"] = summary
        runs = summary["runs"]
        totals = [
            r["offer"]["total_seconds"] * 1000
            for r in runs
            if r["offer"]["error"] is None and r["answer"]["error"] is None
        ]
        failures = [
            r["offer"]["error"] or r["answer"]["error"]
            for r in runs
            if r["offer"]["error"] or r["answer"]["error"]
        ]
        checks = summary.get("median_checks_seconds")
        report.add(
            Row(
                case=f"{first} <-> {second}",
                subject="connected",
                reference="",
                unit="ms",
                subject_median=statistics.median(totals) if totals else None,
                reference_median=None,
                ratio=None,
                note=(
                    f"path {'/'.join(summary.get('kinds') or ['-'])}, "
                    f"{summary['succeeded']}/{len(runs)} connected"
                    + (f", checks {checks * 1000:.0f} ms" if checks is not None else "")
                    + (f"; failures: {failures}" if failures else "")
                ),
            )
        )
        failed_runs += len(failures)
        if failures:
            report.notes.append(
                f"{first} <-> {second}: {len(failures)} of {len(runs)} runs failed to connect"
            )
    report.add(
        Row(
            case="runs that failed to connect (all pairs)",
            subject="failed",
            reference="",
            unit="",
            subject_median=float(failed_runs),
            reference_median=None,
            ratio=None,
            max_value=0.0,
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
    parser.add_argument("--pairs", nargs="+", type=_pair, metavar="A:B", help="topology pairs")
    parser.add_argument("--all", action="store_true", help="every unordered pair of topologies")
    parser.add_argument("--gateways", action="store_true", help="let UPnP/NAT-PMP/PCP take part")
    return harness.run_main("connect_time", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
