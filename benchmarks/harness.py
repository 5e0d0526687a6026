"""The benchmark machinery: interleaved rounds, same-round ratios, a table, JSON results.

Why ratios and rounds: on a shared 2-core machine absolute speed drifts by up to +-40 % between
runs (and within one), so a number like "70k transactions/s" means nothing by itself. Each
round runs every contender once, in an order rotated per round (A, B / B, A ...), so drift
hits them alike; the ratio subject/reference is computed *within* each round, and the median
of those ratios is what a target is checked against. Medians of the absolute values are shown
for orientation only.

Every benchmark module builds a ``Report``, adds ``Row``s (one per case: a median ratio and
its target), prints the table, saves JSON under ``benchmarks/results/`` (git-ignored) and
returns an exit code: 0 every target met, 1 some target missed, 2 the benchmark could not run
(a dependency or a nattrav part it needs is missing: ``Unavailable``), 3 it crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "EXIT_ERROR",
    "EXIT_MISSED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "REPO_ROOT",
    "RESULTS_DIR",
    "Report",
    "Row",
    "Unavailable",
    "best_per_op_ns",
    "calibrate",
    "common_arguments",
    "geometric_mean",
    "interleave",
    "per_op_ns",
    "ratios",
    "run_main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

EXIT_OK = 0
EXIT_MISSED = 1
EXIT_UNAVAILABLE = 2
EXIT_ERROR = 3


class Unavailable(Exception):
    """Something the benchmark needs is missing: a package, a program, or a nattrav part that
    has not been built yet. The benchmark reports it and exits with ``EXIT_UNAVAILABLE``."""


# --------------------------------------------------------------------- measuring


def interleave(
    contenders: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Run every contender once per round, rotating the order each round; one sample each.

    Rotation puts each contender first, second... equally often, so a warm cache or a load
    spike favours nobody systematically. Returns the samples per contender, in round order
    (index ``i`` of every list belongs to round ``i``: ``ratios`` relies on that).
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2 and len(names) > 2:
            order.reverse()
        for name in order:
            samples[name].append(contenders[name]())
        if progress is not None:
            progress(f"round {r + 1}/{rounds}")
    return samples


def ratios(
    subject: Sequence[float], reference: Sequence[float], *, higher_is_better: bool
) -> list[float]:
    """Same-round ratios, oriented so that > 1 means the subject did better."""
    out: list[float] = []
    for s, r in zip(subject, reference, strict=True):
        if higher_is_better:
            out.append(s / r if r > 0 else math.inf)
        else:
            out.append(r / s if s > 0 else math.inf)
    return out


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Like ``timeit``: no cyclic GC pass lands inside one contender's timing by chance."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def per_op_ns(fn: Callable[[], object], number: int) -> float:
    """Nanoseconds per call of ``fn`` over ``number`` calls (GC paused)."""
    clock = time.perf_counter_ns
    with gc_paused():
        start = clock()
        for _ in range(number):
            fn()
        elapsed = clock() - start
    return elapsed / number


def best_per_op_ns(fn: Callable[[], object], number: int, repeats: int = 5) -> float:
    """The fastest of ``repeats`` runs of ``number // repeats`` calls, in ns per call.

    For CPU-bound micro-benchmarks on a shared machine the minimum is the estimate least
    disturbed by preemption (the ``timeit`` advice); it is taken per contender per round,
    and the rounds' ratios are then compared as usual."""
    each = max(1, number // repeats)
    return min(per_op_ns(fn, each) for _ in range(repeats))


def calibrate(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` (at least 10)."""
    number = 10
    while True:
        ns = per_op_ns(fn, number) * number
        if ns >= 0.02e9 or number >= 10_000_000:
            break
        number *= 4
    per_call = ns / number
    return max(10, int(seconds * 1e9 / max(per_call, 1.0)))


# --------------------------------------------------------------------- results


@attrs.frozen
class Row:
    """One line of a benchmark table.

    ``ratio`` is the median of the same-round ratios, oriented so that > 1 means the subject
    did better (faster, more per second, less memory). ``min_ratio`` is the target on it.
    ``max_value`` is an absolute ceiling on the subject's median instead (lab latencies:
    those are bounded by timeouts and the network, not by CPU speed).
    """

    case: str
    subject: str
    reference: str
    unit: str
    subject_median: float | None
    reference_median: float | None
    ratio: float | None
    min_ratio: float | None = None
    max_value: float | None = None
    note: str = ""
    ratio_samples: tuple[float, ...] = ()

    @property
    def met(self) -> bool | None:
        """True/False against the target; None when the row has no target."""
        verdicts: list[bool] = []
        if self.min_ratio is not None:
            verdicts.append(self.ratio is not None and self.ratio >= self.min_ratio)
        if self.max_value is not None:
            verdicts.append(
                self.subject_median is not None and self.subject_median <= self.max_value
            )
        return all(verdicts) if verdicts else None

    def as_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["ratio_samples"] = list(self.ratio_samples)
        data["met"] = self.met
        return data


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    magnitude = abs(value)
    if magnitude >= 100_000:
        text = f"{value / 1000:,.0f}k"
    elif magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _target_text(row: Row) -> str:
    parts = []
    if row.min_ratio is not None:
        parts.append(f">= {row.min_ratio:g}x")
    if row.max_value is not None:
        parts.append(f"<= {_fmt(row.max_value, row.unit)}")
    return ", ".join(parts) or "-"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("nattrav", "nattrav-stun", "nattrav-relay", "aioice", "uvloop", "anyio"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the numbers: interpreter, CPUs, load, versions."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "commit": _git_commit(),
        "versions": _versions(),
    }


class Report:
    """Rows, raw samples and facts of one benchmark run; prints and saves them."""

    def __init__(self, benchmark: str, title: str, *, rounds: int, quick: bool = False) -> None:
        self.benchmark = benchmark
        self.title = title
        self.rounds = rounds
        self.quick = quick
        self.rows: list[Row] = []
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.extra: dict[str, Any] = {}
        self.notes: list[str] = []
        self.started = time.time()
        self.facts_before = machine_facts()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def compare(
        self,
        case: str,
        samples: Mapping[str, Sequence[float]],
        subject: str,
        reference: str,
        *,
        unit: str,
        higher_is_better: bool,
        min_ratio: float | None = None,
        note: str = "",
    ) -> Row:
        """Add the row "subject vs reference" for ``case`` from interleaved samples."""
        rs = ratios(samples[subject], samples[reference], higher_is_better=higher_is_better)
        return self.add(
            Row(
                case=case,
                subject=subject,
                reference=reference,
                unit=unit,
                subject_median=statistics.median(samples[subject]),
                reference_median=statistics.median(samples[reference]),
                ratio=statistics.median(rs),
                min_ratio=min_ratio,
                note=note,
                ratio_samples=tuple(rs),
            )
        )

    def record_samples(self, case: str, samples: Mapping[str, Sequence[float]]) -> None:
        self.samples[case] = {k: list(v) for k, v in samples.items()}

    @property
    def missed(self) -> list[Row]:
        return [row for row in self.rows if row.met is False]

    def exit_code(self) -> int:
        return EXIT_MISSED if self.missed else EXIT_OK

    # ------------------------------------------------------------ output

    def table(self) -> str:
        headers = ("case", "subject", "reference", "ratio", "target", "")
        lines: list[tuple[str, ...]] = []
        for row in self.rows:
            verdict = {True: "ok", False: "MISSED", None: ""}[row.met]
            lines.append(
                (
                    row.case,
                    f"{row.subject} {_fmt(row.subject_median, row.unit)}",
                    f"{row.reference} {_fmt(row.reference_median, row.unit)}"
                    if row.reference
                    else "",
                    "-" if row.ratio is None else f"{row.ratio:.2f}x",
                    _target_text(row),
                    verdict,
                )
            )
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
        out = [
            "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        out += [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        return "\n".join(out)

    def render(self) -> str:
        facts = self.facts_before
        head = (
            f"== {self.benchmark}: {self.title}\n"
            f"   {facts['implementation']} {facts['python']}, {facts['cpus']} CPUs, "
            f"load {facts['loadavg'][0]:.2f}, {self.rounds} interleaved rounds"
            f"{' (quick)' if self.quick else ''}; ratio = median of same-round ratios, "
            "> 1: nattrav better"
        )
        parts = [head, self.table()]
        for row in self.rows:
            if row.note:
                parts.append(f"   {row.case}: {row.note}")
        parts += [f"   note: {n}" for n in self.notes]
        return "\n".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "title": self.title,
            "started": self.started,
            "duration": time.time() - self.started,
            "rounds": self.rounds,
            "quick": self.quick,
            "machine": self.facts_before,
            "loadavg_after": list(os.getloadavg()),
            "rows": [row.as_json() for row in self.rows],
            "samples": self.samples,
            "extra": self.extra,
            "notes": self.notes,
            "targets_met": not self.missed,
        }

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        path = directory / f"{self.benchmark}-{stamp}.json"
        text = json.dumps(self.as_json(), indent=2, default=str)
        path.write_text(text)
        (directory / f"{self.benchmark}-latest.json").write_text(text)
        return path


# --------------------------------------------------------------------- command line


def common_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> argparse.ArgumentParser:
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter samples")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    return parser


def progress(text: str) -> None:
    """Progress on stderr, so that stdout holds only the table."""
    print(f"   .. {text}", file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_main(
    benchmark: str, body: Callable[[argparse.Namespace], Report], args: argparse.Namespace
) -> int:
    """Run a benchmark body; print its table, save JSON, map the outcome to an exit code.

    SIGTERM (``timeout``, a CI runner giving up) becomes ``SystemExit``, so the servers, echo
    peers and labs the body started are stopped by their context managers, not orphaned."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = body(args)
    except Unavailable as exc:
        print(f"== {benchmark}: not run: {exc}", flush=True)
        return EXIT_UNAVAILABLE
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"== {benchmark}: FAILED to run (see the traceback above)", flush=True)
        return EXIT_ERROR
    print(report.render(), flush=True)
    if not getattr(args, "no_save", False):
        path = report.save()
        print(f"   saved {path.relative_to(REPO_ROOT)}", flush=True)
    return report.exit_code()
