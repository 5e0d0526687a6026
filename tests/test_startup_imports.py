"""What ``nattrav-plugins list`` imports with every plugin installed (issue 11, target 5).

The start-up budget is measured in ``benchmarks/startup.py``; this guards the cause. Listing
loads each plugin's entry module and runs its registration hooks, which validate the plugin's
table: that needs the plugin's ``config`` module and nothing of its protocol, driver or CLI.
A module here that breaks the rule (an eager import in a ``plugin.py``, a config module that
imports its protocol for a constant) costs every ``nattrav`` start milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LIST = """
import contextlib, io, sys
from nattrav.cli import plugins_main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = plugins_main(["list"])
sys.stdout.write(f"{code}\\n{out.getvalue()}--- modules\\n" + "\\n".join(sorted(sys.modules)))
"""

# Modules of the standard library and dependencies that listing must not need.
NOT_NEEDED = (
    "importlib.metadata",  # discovery reads entry_points.txt itself
    "email",  # importlib.metadata's metadata parser
    "zipfile",
    "pathlib",
    "tomllib",  # no config file, no NATTRAV_* settings
    "json",  # the table needs none
    "cattrs",  # empty tables are not structured
    "ssl",
    "socket",
    "subprocess",
    "asyncio",
    "anyio",
    "trio",
    "httpx",
    "opentelemetry",
    "stamina",
)
# What a plugin may load at registration: its package, its entry module, its config module
# (the table is validated at registration) and hookspecs it adds for other plugins.
MAY_LOAD = ("plugin", "config", "hookspecs")
# Core modules listing needs: not the value classes of nattrav.models (registration needs
# only the enumerations), not the chain, runtime, method API or gateway discovery.
CORE = {
    "nattrav",
    "nattrav.cli",
    "nattrav.config",
    "nattrav.direct",
    "nattrav.enums",
    "nattrav.errors",
    "nattrav.hookspecs",
    "nattrav.plugins",
    "nattrav.registry",
}


def test_listing_imports_only_what_registration_needs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATTRAV_", "PYTHON"))}
    result = subprocess.run(
        [sys.executable, "-c", LIST],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no ./nattrav.toml
        env=env,
        timeout=60,
        check=True,
    )
    head, _, tail = result.stdout.partition("--- modules\n")
    code, _, table = head.partition("\n")
    assert code == "0"
    assert "direct" in table and "stun(20)" in table  # the installed plugins registered
    modules = set(tail.splitlines())
    loaded = sorted(
        m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_NEEDED)
    )
    assert not loaded, loaded
    ours = sorted(m for m in modules if m.startswith("nattrav"))
    core = {m for m in ours if m.split(".")[0] == "nattrav"}
    assert core <= CORE, sorted(core - CORE)
    extra = [
        m
        for m in ours
        if m.split(".")[0] != "nattrav" and "." in m and m.split(".", 1)[1] not in MAY_LOAD
    ]
    assert not extra, f"imported at registration, import them when used: {extra}"
