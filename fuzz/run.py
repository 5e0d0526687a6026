"""Run the fuzz harnesses: ``python -m fuzz.run NAME --seconds N`` or ``--all``.

Each harness runs in its own process (``python -m fuzz.harnesses.NAME``, libFuzzer through
atheris) over a working corpus that starts from the committed seeds in ``fuzz/corpus/NAME``.
The committed seeds are read, never written: new inputs go to the working corpus, a temporary
directory unless ``--corpus DIR`` keeps them (``DIR/NAME``) for the next session. A crash, an
uncaught exception, a failed property (``assert``), a hang longer than ``--timeout`` or memory
above ``--rss-limit-mb`` stops the harness, writes the input to ``--artifacts DIR`` and makes
the exit status 1. Replay a finding with ``python -m fuzz.harnesses.NAME ARTIFACT``.

``--check-seeds`` runs no fuzzer: it feeds every committed seed to its harness's ``check`` in
this process and fails unless each is accepted as a valid message.

A NAME may also be the path of a harness file outside ``fuzz/harnesses`` (with ``--seeds DIR``
for its seeds); the tests use that to plant a crash and see it reported.

Exit status: 0 when every harness ran clean, 1 when any found something, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from fuzz.engine import NO_INSTRUMENT

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
HARNESSES = FUZZ / "harnesses"
CORPUS = FUZZ / "corpus"
DICTS = FUZZ / "dicts"

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_COVERAGE = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
_SEEDS = re.compile(r"INFO: seed corpus: files: (\d+)")
_DICTIONARY = re.compile(r"^Dictionary: (\d+) entries", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def harness_names() -> list[str]:
    """Every harness: the modules of ``fuzz/harnesses`` (sorted)."""
    return sorted(p.stem for p in HARNESSES.glob("*.py") if not p.stem.startswith("_"))


@attrs.frozen
class Harness:
    """Where a harness lives and how to start it."""

    name: str
    path: Path
    seeds: Path | None

    @classmethod
    def find(cls, name: str, seeds: Path | None = None) -> Harness | None:
        if name in harness_names():
            corpus = CORPUS / name
            return cls(
                name, HARNESSES / f"{name}.py", seeds or (corpus if corpus.is_dir() else None)
            )
        path = Path(name)
        if path.suffix == ".py" and path.is_file():
            return cls(path.stem, path.resolve(), seeds)
        return None

    @property
    def builtin(self) -> bool:
        return self.path.parent == HARNESSES

    def _constant(self, pattern: str) -> str | None:
        match = re.search(pattern, self.path.read_text(), re.MULTILINE)
        return match.group(1) if match else None

    @property
    def description(self) -> str:
        """DESCRIPTION, read without importing (no atheris, no parser import)."""
        return self._constant(r'^DESCRIPTION = "(.*)"$') or ""

    @property
    def max_len(self) -> int | None:
        found = self._constant(r"^MAX_LEN = (\d+)$")
        return int(found) if found else None

    def argv(self) -> list[str]:
        if self.builtin:
            return [sys.executable, "-m", f"fuzz.harnesses.{self.name}"]
        return [sys.executable, str(self.path)]


@attrs.frozen
class Outcome:
    """What one harness run did: exit status, executions, coverage, the finding if any."""

    name: str
    returncode: int
    seconds: float
    runs: int | None
    coverage: int | None
    corpus: int | None
    seeds: int | None
    dictionary: int | None
    artifact: str | None
    log: str = attrs.field(repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.name}: ok, {self.runs} runs in {self.seconds:.1f} s from "
                f"{self.seeds} seeds, cov {self.coverage}, corpus {self.corpus}"
            )
        found = f", input saved to {self.artifact}" if self.artifact else ""
        tail = "\n".join("    " + line for line in self.log.splitlines()[-40:])
        return f"{self.name}: FAILED (exit {self.returncode}){found}\n{tail}"

    def as_json(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data["ok"] = self.ok
        data["log"] = self.log[-4000:]
        return data


def command(
    harness: Harness,
    *,
    seconds: float,
    work: Path,
    artifacts: Path,
    timeout: int,
    rss_limit_mb: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """The libFuzzer command line of one harness (absolute paths: it runs in ``artifacts``)."""
    argv = [*harness.argv(), str(work)]
    if harness.seeds is not None:
        argv.append(str(harness.seeds))
    argv += [
        f"-max_total_time={max(1, round(seconds))}",
        f"-timeout={timeout}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-artifact_prefix={artifacts}{os.sep}{harness.name}-",
        "-print_final_stats=1",
    ]
    if harness.max_len:
        argv.append(f"-max_len={harness.max_len}")
    dictionary = DICTS / f"{harness.name}.dict"
    if harness.builtin and dictionary.exists():
        argv.append(f"-dict={dictionary}")
    return argv + list(extra)


def run_one(
    harness: Harness,
    *,
    seconds: float,
    corpus_root: Path | None,
    artifacts: Path,
    timeout: int,
    rss_limit_mb: int,
    extra: Sequence[str],
    stream: bool,
) -> Outcome:
    """Run ``harness`` for ``seconds``; ``stream`` shows libFuzzer's output live."""
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop(NO_INSTRUMENT, None)
    with tempfile.TemporaryDirectory(prefix=f"nattrav-fuzz-{harness.name}-") as scratch:
        work = (corpus_root / harness.name) if corpus_root else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        argv = command(
            harness,
            seconds=seconds,
            work=work,
            artifacts=artifacts,
            timeout=timeout,
            rss_limit_mb=rss_limit_mb,
            extra=extra,
        )
        started = time.monotonic()
        lines: list[str] = []
        # libFuzzer writes its -jobs logs (fuzz-N.log) to the working directory: the artifacts
        # directory, never the repository or a corpus.
        with subprocess.Popen(
            argv,
            cwd=artifacts,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if stream:
                    sys.stderr.write(line)
        elapsed = time.monotonic() - started
    log = "".join(lines)

    def number(pattern: re.Pattern[str]) -> int | None:
        match = pattern.search(log)
        return int(match.group(1)) if match else None

    coverage = _COVERAGE.findall(log)
    artifact = _ARTIFACT.search(log)
    return Outcome(
        name=harness.name,
        returncode=proc.returncode,
        seconds=elapsed,
        runs=number(_DONE),
        coverage=int(coverage[-1][1]) if coverage else None,
        corpus=int(coverage[-1][3]) if coverage else None,
        seeds=number(_SEEDS),
        dictionary=number(_DICTIONARY),
        artifact=artifact.group(1) if artifact else None,
        log=log,
    )


def check_seeds(harnesses: Sequence[Harness]) -> int:
    """Feed every seed to its harness in-process; 0 when all are accepted, 1 otherwise."""
    os.environ[NO_INSTRUMENT] = "1"
    failures = 0
    for harness in harnesses:
        if not harness.builtin or harness.seeds is None:
            print(f"{harness.name}: no committed seeds")
            failures += 1
            continue
        module = importlib.import_module(f"fuzz.harnesses.{harness.name}")
        seeds = sorted(p for p in harness.seeds.iterdir() if p.is_file())
        refused = []
        for seed in seeds:
            try:
                accepted = module.check(seed.read_bytes())
            except Exception as exc:  # a crash on a seed: report it, go on with the others
                refused.append(f"{seed.name}: {type(exc).__name__}: {exc}")
                continue
            if accepted is not True:
                refused.append(f"{seed.name}: not accepted as a valid message")
        failures += bool(refused) or not seeds
        state = "ok" if seeds and not refused else "FAILED"
        print(f"{harness.name}: {state}, {len(seeds) - len(refused)}/{len(seeds)} seeds accepted")
        for line in refused:
            print(f"    {line}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz.run",
        description="Fuzz nattrav's parsers with atheris (libFuzzer).",
        epilog="Arguments after -- go to libFuzzer (e.g. -- -jobs=4 -workers=4).",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="harnesses to run (or paths of harness files)"
    )
    parser.add_argument("--all", action="store_true", help="run every harness")
    parser.add_argument("--list", action="store_true", help="list the harnesses and exit")
    parser.add_argument(
        "--check-seeds", action="store_true", help="check the committed seeds, run no fuzzer"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="per harness (default 60)")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at once (default 1)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="keep the working corpus in DIR/NAME across sessions (default: a temporary dir)",
    )
    parser.add_argument("--seeds", type=Path, default=None, help="seed directory (one harness)")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=FUZZ / "artifacts",
        help="where findings are written (default fuzz/artifacts)",
    )
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input (hang)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024, help="memory per process")
    parser.add_argument("--json", type=Path, default=None, help="also write outcomes as JSON")
    args, extra = parser.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    known = harness_names()
    if args.list:
        width = max(len(n) for n in known)
        for name in known:
            listed = Harness.find(name)
            assert listed is not None
            print(f"{name:<{width}}  {listed.description}")
        return 0
    names = known if args.all else args.names
    if args.seeds is not None and len(names) != 1:
        parser.error("--seeds goes with exactly one harness")
    seeds = args.seeds.resolve() if args.seeds else None
    harnesses = [Harness.find(n, seeds) for n in names]
    unknown = [n for n, h in zip(names, harnesses, strict=True) if h is None]
    if not names or unknown:
        what = f"unknown harness {', '.join(unknown)}" if unknown else "name a harness or --all"
        parser.error(f"{what} (known: {', '.join(known)})")
    ready = [h for h in harnesses if h is not None]
    if args.check_seeds:
        return check_seeds(ready)
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        print(
            "atheris is not installed: .venv/bin/pip install -r fuzz/requirements.txt",
            file=sys.stderr,
        )
        return 2

    def one(harness: Harness) -> Outcome:
        return run_one(
            harness,
            seconds=args.seconds,
            corpus_root=args.corpus.resolve() if args.corpus else None,
            artifacts=args.artifacts.resolve(),
            timeout=args.timeout,
            rss_limit_mb=args.rss_limit_mb,
            extra=extra,
            stream=len(ready) == 1,
        )

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(one, ready))
    for outcome in outcomes:
        print(outcome.summary(), flush=True)
    if args.json:
        args.json.write_text(json.dumps([o.as_json() for o in outcomes], indent=1))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
