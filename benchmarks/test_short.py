"""Short versions of benchmarks 1 (codec) and 2 (Binding transactions/s) for ``make test``.

They print their same-run ratios and fail only when a ratio falls below HALF its target: a
real regression, not noise on a loaded machine (the full benchmarks, ``make bench``, check the
targets themselves). No absolute speed is asserted anywhere. About 15 s in all.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

# ``benchmarks`` is a plain directory at the repository root, not an installed distribution.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import bindings, codec  # noqa: E402
from benchmarks.coturn import local_coturn  # noqa: E402
from benchmarks.harness import Report, Unavailable  # noqa: E402

HALF = 0.5


def _check(report: Report) -> None:
    print()
    print(report.render())
    missed = [
        f"{row.case}: nattrav/{row.reference} = {row.ratio:.2f}x < {row.min_ratio:.2f}x "
        "(half the target)"
        for row in report.missed
        if row.ratio is not None and row.min_ratio is not None
    ]
    assert not missed, "regression beyond half the target:\n" + "\n".join(missed)


def test_codec_short() -> None:
    """Codec build+parse vs aioice: geometric mean >= 1.5x, no case below 0.75x."""
    try:
        samples, labels = codec.measure(rounds=5, sample_seconds=0.008)
    except Unavailable as exc:
        pytest.fail(f"benchmark cannot run: {exc}")
    report = Report("codec-short", "codec, short (targets halved)", rounds=5, quick=True)
    for label in labels:
        report.compare(
            label,
            samples[label],
            "nattrav",
            "aioice",
            unit="µs",
            higher_is_better=False,
            min_ratio=codec.TARGET_MIN * HALF,
        )
    codec.summarize(
        report, geomean_target=codec.TARGET_GEOMEAN * HALF, min_target=codec.TARGET_MIN * HALF
    )
    _check(report)


def test_bindings_short() -> None:
    """Bindings/s on stock asyncio vs aioice and the raw floor, targets halved."""
    try:
        bindings.check_available()
        with local_coturn() as server:
            samples, _cpu = bindings.measure(
                server.address,
                loops={"asyncio": asyncio.new_event_loop},
                shapes=bindings.SHAPES,
                contenders=("nattrav", "aioice", "floor"),
                rounds=3,
                warmup=0.05,
                duration=0.15,
            )
    except Unavailable as exc:
        pytest.fail(f"benchmark cannot run: {exc}")
    report = Report("bindings-short", "bindings/s, short (targets halved)", rounds=3, quick=True)
    bindings.report_rows(report, samples, scale=HALF)
    _check(report)
