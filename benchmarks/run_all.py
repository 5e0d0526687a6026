"""Run every benchmark (``make bench``), each in its own process, and summarise.

Each benchmark prints its table and saves JSON under ``benchmarks/results/``; this prints one
line per benchmark at the end. Exit status: 0 every benchmark ran and met its targets, 1 some
target was missed or a benchmark crashed, 2 nothing missed but some benchmark could not run
(a dependency or a nattrav part is missing: listed).

    python -m benchmarks.run_all [--quick] [--only NAME ...] [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.harness import EXIT_ERROR, EXIT_MISSED, EXIT_OK, EXIT_UNAVAILABLE, REPO_ROOT

#: In the order of issue 11's list; the lab ones last (slowest).
BENCHMARKS = (
    "codec",
    "bindings",
    "startup",
    "relay",
    "scale",
    "map_time",
    "probe_time",
    "connect_time",
)

_STATUS = {
    EXIT_OK: "targets met",
    EXIT_MISSED: "TARGET MISSED",
    EXIT_UNAVAILABLE: "not run",
    EXIT_ERROR: "CRASHED",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="skip these")
    args = parser.parse_args(argv)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    outcomes: list[tuple[str, int, float]] = []
    for name in names:
        command = [sys.executable, "-m", f"benchmarks.{name}"]
        if args.quick:
            command.append("--quick")
        print(f"\n##### {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
        outcomes.append((name, code, time.monotonic() - start))
    print("\n##### summary")
    for name, code, took in outcomes:
        print(f"  {name:13s} {_STATUS.get(code, f'exit {code}'):14s} {took:6.1f} s")
    codes = {code for _name, code, _took in outcomes}
    if codes & {EXIT_MISSED, EXIT_ERROR} or codes - set(_STATUS):
        return EXIT_MISSED
    return EXIT_UNAVAILABLE if EXIT_UNAVAILABLE in codes else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
