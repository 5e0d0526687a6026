"""Benchmark 5: start-up cost of ``import nattrav`` and ``nattrav-plugins list``.

Every sample is a fresh interpreter (the venv's python, run from an empty temporary
directory so no local file is picked up): wall time from spawn to exit, and the child's peak
resident memory (``ru_maxrss`` from ``wait4``). Commands, interleaved round by round:

* ``bare``: ``python -c pass`` (the interpreter and site, .pth files included);
* ``asyncio``: ``python -c "import asyncio"``;
* ``import nattrav``: ``python -c "import nattrav"``;
* ``nattrav-plugins list``: the console script, with every installed plugin;
* ``aioice`` (for reference): ``python -c "import aioice"``.

Targets (issue 11), per round then median: ``import nattrav`` and ``nattrav-plugins list`` cost
at most asyncio's own import + 60 ms (time over bare minus asyncio's time over bare), and peak
memory at most 15 MiB over bare. ``--importtime`` adds a ``python -X importtime`` breakdown
(always printed when a target is missed): which imports cost what, to decide what to make lazy.

    python -m benchmarks.startup [--rounds N] [--quick] [--importtime]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Report, Row, Unavailable

TIME_BUDGET_MS = 60.0
MEMORY_BUDGET_MIB = 15.0


# The child reports its own peak resident memory (VmHWM) on stderr as it ends: ``ru_maxrss``
# from wait4 would include the parent's memory at fork time on Linux (it is carried across exec).
_REPORT_PEAK = """
import sys as _s
with open("/proc/self/status") as _f:
    _s.stderr.write("\\n" + next(_l for _l in _f if _l.startswith("VmHWM")))
"""

# What the ``nattrav-plugins`` console script runs, written out so the peak can be reported.
_PLUGINS_LIST = """
import sys
sys.argv = ["nattrav-plugins", "list"]
from nattrav.cli import plugins_main
_rc = plugins_main()
"""


def commands(python: str) -> dict[str, list[str]]:
    """The measured commands: fresh ``python -c`` processes."""
    if not Path("/proc/self/status").exists():
        raise Unavailable("needs Linux /proc to read each process's peak memory")
    bodies = {
        "bare": ("pass", ""),
        "asyncio": ("import asyncio", ""),
        "import nattrav": ("import nattrav", ""),
        "nattrav-plugins list": (_PLUGINS_LIST, "sys.exit(_rc)"),
    }
    probe = subprocess.run([python, "-c", "import aioice"], capture_output=True, check=False)
    if probe.returncode == 0:
        bodies["import aioice"] = ("import aioice", "")
    probe = subprocess.run([python, "-c", "import nattrav.cli"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise Unavailable("nattrav (core) is not installed in this interpreter")
    return {
        name: [python, "-c", f"{body}\n{_REPORT_PEAK}\n{tail}"]
        for name, (body, tail) in bodies.items()
    }


def spawn(argv: Sequence[str], cwd: str, env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    peak = math.nan
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024.0
    return elapsed, peak, proc.returncode


def measure(
    cmds: dict[str, list[str]], rounds: int, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Milliseconds and MiB per command, interleaved (rotated order every round)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    memory: dict[str, list[float]] = {name: [] for name in cmds}
    names = list(cmds)
    with tempfile.TemporaryDirectory(prefix="nattrav-bench-startup-") as cwd:
        for name in names:  # warm the OS caches once; not measured
            spawn(cmds[name], cwd, env)
        for r in range(rounds):
            k = r % len(names)
            order = names[k:] + names[:k]
            if r % 2:
                order.reverse()
            for name in order:
                elapsed, rss, code = spawn(cmds[name], cwd, env)
                if code != 0:
                    raise RuntimeError(f"{name}: {' '.join(cmds[name])} exited with {code}")
                times[name].append(elapsed * 1000)
                memory[name].append(rss)
            if progress is not None and (r + 1) % 5 == 0:
                progress(f"startup round {r + 1}/{rounds}")
    return times, memory


def _per_round(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def add_rows(
    report: Report,
    times: dict[str, list[float]],
    memory: dict[str, list[float]],
) -> None:
    asyncio_cost = _per_round(times["asyncio"], times["bare"])
    for name in ("import nattrav", "nattrav-plugins list"):
        over_asyncio = _per_round(times[name], times["asyncio"])
        report.add(
            Row(
                case=f"{name}: time over asyncio's import",
                subject=name,
                reference="asyncio import",
                unit="ms",
                subject_median=statistics.median(over_asyncio),
                reference_median=statistics.median(asyncio_cost),
                ratio=None,
                max_value=TIME_BUDGET_MS,
                note=(
                    f"{name}: {statistics.median(times[name]):.0f} ms, bare interpreter "
                    f"{statistics.median(times['bare']):.0f} ms"
                ),
                ratio_samples=tuple(over_asyncio),
            )
        )
        extra_mib = _per_round(memory[name], memory["bare"])
        report.add(
            Row(
                case=f"{name}: peak memory over bare",
                subject=name,
                reference="bare",
                unit="MiB",
                subject_median=statistics.median(extra_mib),
                reference_median=statistics.median(memory["bare"]),
                ratio=None,
                max_value=MEMORY_BUDGET_MIB,
                ratio_samples=tuple(extra_mib),
            )
        )
    if "import aioice" in times:
        report.add(
            Row(
                case="import aioice (reference): time / memory over bare",
                subject="aioice",
                reference="",
                unit="ms",
                subject_median=statistics.median(_per_round(times["import aioice"], times["bare"])),
                reference_median=None,
                ratio=None,
                note="aioice: +{:.1f} MiB over bare".format(
                    statistics.median(_per_round(memory["import aioice"], memory["bare"]))
                ),
            )
        )


# --------------------------------------------------------------------- where the time goes

_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def importtime(argv: Sequence[str], cwd: str) -> list[tuple[int, int, int, str]]:
    """``-X importtime`` of one run: (self µs, cumulative µs, depth, module) per import."""
    python, *rest = argv
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [python, "-X", "importtime", *rest],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    return rows


def importtime_summary(
    argv: Sequence[str], *, baseline: Sequence[str], baseline_label: str, top: int = 15
) -> str:
    """Own import time per top-level package (median of 5 runs) beyond what ``baseline``
    imports, and the heaviest first-level imports of nattrav's own modules."""
    with tempfile.TemporaryDirectory(prefix="nattrav-bench-importtime-") as cwd:
        base_modules = {row[3] for row in importtime(baseline, cwd)}
        runs = [importtime(argv, cwd) for _ in range(5)]
    per_package: dict[str, list[int]] = {}
    for rows in runs:
        acc: Counter[str] = Counter()
        for self_us, _cum, _depth, module in rows:
            if module not in base_modules:
                acc[module.split(".")[0]] += self_us
        for package, us in acc.items():
            per_package.setdefault(package, []).append(us)
    ranked = sorted(
        ((statistics.median(v + [0] * (5 - len(v))), p) for p, v in per_package.items()),
        reverse=True,
    )
    total = sum(us for us, _ in ranked)
    lines = [
        f"  own import time of modules `{baseline_label}` does not import: {total / 1000:.1f} ms"
    ]
    lines += [f"    {us / 1000:7.1f} ms  {package}" for us, package in ranked[:top]]
    # Which nattrav module pulled each heavy package in: the first-level imports under it.
    cumulative: dict[str, list[int]] = {}
    for rows in runs:
        for _self, cum, _depth, module in rows:
            if module not in base_modules:
                cumulative.setdefault(module, []).append(cum)
    heavy = sorted(
        ((statistics.median(v), m) for m, v in cumulative.items() if m.startswith("nattrav")),
        reverse=True,
    )
    lines.append("  nattrav modules by cumulative import time (what they pull in included):")
    lines += [f"    {us / 1000:7.1f} ms  {module}" for us, module in heavy[:top]]
    return "\n".join(lines)


DEFAULT_ROUNDS = 20


def run(args: argparse.Namespace) -> Report:
    rounds = 8 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    cmds = commands(sys.executable)
    report = Report(
        "startup",
        "start-up of import nattrav and nattrav-plugins list (fresh processes)",
        rounds=rounds,
        quick=args.quick,
    )
    times, memory = measure(cmds, rounds, harness.progress)
    report.record_samples("wall ms", times)
    report.record_samples("peak RSS MiB", memory)
    add_rows(report, times, memory)
    report.extra["medians_ms"] = {k: statistics.median(v) for k, v in times.items()}
    report.extra["medians_mib"] = {k: statistics.median(v) for k, v in memory.items()}
    if args.importtime or report.missed:
        breakdown = {}
        for name in ("import nattrav", "nattrav-plugins list"):
            text = importtime_summary(
                cmds[name], baseline=cmds["asyncio"], baseline_label="import asyncio"
            )
            breakdown[name] = text
            report.notes.append(f"-X importtime, {name}:\n{text}")
        report.extra["importtime"] = breakdown
    return report


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    parser.add_argument(
        "--importtime", action="store_true", help="always add the -X importtime breakdown"
    )
    return harness.run_main("startup", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
