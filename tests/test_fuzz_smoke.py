"""Every fuzz harness runs briefly and clean, from its committed seeds (the CI part of fuzz/).

Runs ``python -m fuzz.run --all --seconds 2 --jobs 2`` once for the module, in a subprocess,
exactly as a developer would, and checks each harness's outcome: no finding, the seeds loaded,
inputs beyond the seeds executed. A planted crash proves the runner reports findings (a smoke
test that cannot fail proves nothing), and ``--check-seeds`` proves every committed seed is a
valid message. Long sessions: docs/threats.md, "Fuzzing".
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = sorted(
    p.stem for p in (ROOT / "fuzz" / "harnesses").glob("*.py") if not p.stem.startswith("_")
)
SECONDS = 2
JOBS = 2


def _fuzz(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuzz.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _require_atheris() -> None:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        pytest.fail("atheris is not installed: .venv/bin/pip install -r fuzz/requirements.txt")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of every harness; the outcomes by name (and the whole run under ``""``)."""
    _require_atheris()
    where = tmp_path_factory.mktemp("fuzz")
    report = where / "outcomes.json"
    proc = _fuzz(
        "--all",
        f"--seconds={SECONDS}",
        f"--jobs={JOBS}",
        f"--artifacts={where / 'artifacts'}",
        f"--json={report}",
    )
    outcomes: dict[str, Any] = {o["name"]: o for o in json.loads(report.read_text())}
    outcomes[""] = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    return outcomes


def test_the_whole_run_is_clean(smoke: dict[str, Any]) -> None:
    run = smoke[""]
    assert run["returncode"] == 0, run["stdout"] + run["stderr"]
    assert sorted(n for n in smoke if n) == HARNESSES


@pytest.mark.parametrize("name", HARNESSES)
def test_every_harness_runs_clean(smoke: dict[str, Any], name: str) -> None:
    outcome = smoke[name]
    assert outcome["ok"], f"{name} found something: {outcome['artifact']}\n{outcome['log']}"
    seeds = len(list((ROOT / "fuzz" / "corpus" / name).glob("*.seed")))
    assert outcome["seeds"] == seeds, "libFuzzer did not start from the committed seeds"
    assert outcome["runs"] is not None and outcome["runs"] > 10 * seeds, "it barely ran"
    assert outcome["coverage"], "no coverage feedback: the parser is not instrumented"
    if (ROOT / "fuzz" / "dicts" / f"{name}.dict").exists():
        assert outcome["dictionary"], "the dictionary was not loaded"


def test_every_committed_seed_is_a_valid_message() -> None:
    proc = _fuzz("--all", "--check-seeds")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok,") == len(HARNESSES), proc.stdout


PLANTED = '''
"""A harness with a planted bug: the smoke test checks that the runner reports it."""
from fuzz.engine import fuzz

DESCRIPTION = "planted crash"
MAX_LEN = 64


def check(data: bytes) -> bool:
    if data.startswith(b"BOOM"):
        raise KeyError("planted")
    return True


if __name__ == "__main__":
    fuzz(check)
'''


def test_a_planted_crash_is_found_reported_and_saved(tmp_path: Path) -> None:
    _require_atheris()
    harness = tmp_path / "planted.py"
    harness.write_text(textwrap.dedent(PLANTED))
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "boom.seed").write_bytes(b"BOOM!")
    artifacts = tmp_path / "artifacts"
    report = tmp_path / "outcome.json"
    proc = _fuzz(
        str(harness),
        f"--seeds={seeds}",
        "--seconds=5",
        f"--artifacts={artifacts}",
        f"--json={report}",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (outcome,) = json.loads(report.read_text())
    assert not outcome["ok"] and "FAILED" in proc.stdout
    assert "KeyError" in outcome["log"]
    saved = list(artifacts.glob("planted-crash-*"))
    assert [p.read_bytes() for p in saved] == [b"BOOM!"]
    assert outcome["artifact"] == str(saved[0])


def test_unknown_harness_is_a_usage_error() -> None:
    proc = _fuzz("no_such_parser", "--seconds=1")
    assert proc.returncode == 2
    assert "unknown harness no_such_parser" in proc.stderr
    listing = _fuzz("--list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == HARNESSES
