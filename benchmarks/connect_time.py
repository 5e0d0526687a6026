"""Benchmark (issue 11, with issue 12): time to a working peer-to-peer connection, per pair
of lab topologies (eim, symmetric, open, double, no-igd, udp-blocked on each side).

NOT YET AVAILABLE: it needs ``nattrav.connect`` (issue 12), which does not exist yet. This
module is the one deliberate placeholder among the benchmarks: it says so and exits with
status 2 ("could not run"), so ``run_all`` lists it as not run instead of passing it.

When ``nattrav.connect`` lands, this measures, in interleaved rounds over
``Lab.up(a, second_site=b)`` for each pair: the time from both peers calling
``nattrav.connect`` until the first application datagram arrives each way, and which path won
(direct, hole-punched, relayed).

    python -m benchmarks.connect_time
"""

from __future__ import annotations

import sys

from benchmarks.harness import EXIT_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    print(
        "== connect_time: not yet available: nattrav.connect (issue 12) does not exist yet; "
        "nothing was measured",
        flush=True,
    )
    return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
