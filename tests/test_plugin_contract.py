"""The plugin contract, proven the way a third party would meet it.

A tiny plugin distribution and a broken one are built in a temporary directory and pip-installed
with core into a fresh virtualenv; the installed console scripts must list them and the chain
must run the third-party method at its priority, while the broken plugin is reported and the
rest keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ECHO_PLUGIN = '''
"""A third-party nattrav plugin: one method that "maps" without any I/O."""
from contextlib import asynccontextmanager

from nattrav import hookimpl
from nattrav.method import Acquisition
from nattrav.models import Candidate, CandidateKind, Reachability, TransportAddress


class EchoMethod:
    @asynccontextmanager
    async def acquire(self, ctx):
        port = ctx.sockets.port if ctx.sockets is not None else ctx.request.port
        yield Acquisition(
            Candidate(
                CandidateKind.PORT_MAPPED,
                TransportAddress("203.0.113.77", port),
                method="echo",
                reachability=Reachability.claimed("third-party echo plugin says so"),
                lifetime=60.0,
            )
        )


@hookimpl
def nattrav_register_methods(registry, config):
    registry.add(EchoMethod, name="echo", priority=int(config.get("priority", 15)),
                 kind=CandidateKind.PORT_MAPPED, description="test plugin")
'''


def _write_dist(base: Path, dist: str, module: str, ep_name: str, plugin_code: str) -> Path:
    root = base / dist
    pkg = root / "src" / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent(plugin_code))
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.2.3"
            dependencies = ["nattrav"]

            [project.entry-points.nattrav]
            {ep_name} = "{module}.plugin"

            [tool.setuptools.packages.find]
            where = ["src"]
            """
        )
    )
    return root


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("contract")
    echo = _write_dist(base, "nattrav-echo-test", "nattrav_echo_test", "echo", ECHO_PLUGIN)
    broken = _write_dist(
        base,
        "nattrav-broken-test",
        "nattrav_broken_test",
        "broken",
        "raise ImportError('this plugin needs libfrobnicate')\n",
    )
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip = env_dir / "bin" / "pip"
    subprocess.run(
        [
            str(pip),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(ROOT / "core"),
            str(echo),
            str(broken),
        ],
        check=True,
        timeout=600,
    )
    return env_dir


def _run(
    env_dir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NATTRAV_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(env_dir / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=env_dir,
        check=False,
    )


def test_listing_shows_the_third_party_and_the_broken_plugin(fresh_venv: Path) -> None:
    result = _run(fresh_venv, "nattrav-plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert set(plugins) == {"direct", "echo", "broken"}
    echo = plugins["echo"]
    assert echo["status"] == "ok"
    assert echo["distribution"] == "nattrav-echo-test"
    assert echo["version"] == "1.2.3"
    assert echo["methods"] == [{"name": "echo", "priority": 15}]
    assert echo["hooks"] == ["nattrav_register_methods"]
    broken = plugins["broken"]
    assert broken["status"] == "broken"
    assert broken["distribution"] == "nattrav-broken-test"
    assert "libfrobnicate" in broken["error"]
    table = _run(fresh_venv, "nattrav", "plugins", "list")
    assert table.returncode == 0
    assert "echo(15)" in table.stdout and "broken" in table.stdout


def test_the_chain_runs_the_third_party_method_at_its_priority(fresh_venv: Path) -> None:
    result = _run(fresh_venv, "nattrav", "map", "0", "--hold", "0", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    res = next(line["result"] for line in lines if "result" in line)
    assert res["candidate"]["method"] == "echo"
    order = [(a["method"], a["priority"]) for a in res["attempts"]]
    assert order == [("direct", 0), ("echo", 15)]


def test_config_moves_the_plugin_and_disabling_blocks_it(fresh_venv: Path) -> None:
    (fresh_venv / "nattrav.toml").write_text("[plugins.echo]\npriority = 99\n")
    try:
        result = _run(fresh_venv, "nattrav-plugins", "list", "--json")
        plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
        assert plugins["echo"]["methods"] == [{"name": "echo", "priority": 99}]
    finally:
        (fresh_venv / "nattrav.toml").unlink()
    result = _run(
        fresh_venv, "nattrav-plugins", "list", "--json", env={"NATTRAV_DISABLE_PLUGINS": "echo"}
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["echo"]["status"] == "blocked"
    result = _run(
        fresh_venv, "nattrav", "map", "0", "--json", env={"NATTRAV_DISABLE_PLUGINS": "echo"}
    )
    assert result.returncode == 1  # only direct is left, and it cannot prove reachability
    assert json.loads(result.stdout)["error"] == "exhausted"
