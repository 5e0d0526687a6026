"""The pytest plugin's contract: lab tests FAIL without root (never skipped silently), and
NATTRAV_SKIP_LAB=1 skips them explicitly. Checked by running pytest as user nobody."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run pytest as another user")
    path = Path(tempfile.mkdtemp(prefix="nattrav-lab-nonroot-"))
    try:
        path.chmod(0o777)
        (path / "test_uses_lab.py").write_text(
            "def test_a(lab):\n    pass\n\ndef test_b(lab_factory):\n    pass\n"
        )
        yield path
    finally:
        shutil.rmtree(path)


def _pytest_as_nobody(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-p",
            "nattrav_lab.pytest_plugin",
            "test_uses_lab.py",
        ],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=120,
        # only our plugin: autoloading every installed one makes each run seconds slower
        env={**os.environ, "HOME": str(path), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
    )


def test_lab_tests_fail_clearly_without_root(nobody_dir: Path) -> None:
    proc = _pytest_as_nobody(nobody_dir)
    assert proc.returncode != 0
    assert proc.stdout.count("needs root") >= 2, proc.stdout[-3000:]
    assert "skipped" not in proc.stdout.splitlines()[-1]


def test_skip_only_on_explicit_request(nobody_dir: Path) -> None:
    proc = _pytest_as_nobody(nobody_dir, NATTRAV_SKIP_LAB="1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 skipped" in proc.stdout
    assert "NATTRAV_SKIP_LAB=1" in proc.stdout
