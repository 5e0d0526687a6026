"""Bringing labs up and down: idempotent up, clean failure, nothing left behind, reaping.

These make their own labs (not the shared module fixture) because they test the life cycle
itself; each lab is unique by name, so they coexist with other test runs on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nattrav_lab import Lab, LabError
from nattrav_lab import netns as ns
from nattrav_lab.processes import Daemon, is_alive
from nattrav_lab.registry import load_record

pytestmark = pytest.mark.lab


def _our_namespaces(lab: Lab) -> list[str]:
    return [n for n in ns.list_namespaces() if n.startswith(f"ntl-{lab.name}-")]


def test_up_twice_is_a_no_op_and_down_leaves_nothing() -> None:
    lab = Lab("eim", second_site="symmetric", second_lan_host=True)
    try:
        lab.bring_up()
        assert sorted(_our_namespaces(lab)) == sorted(lab.namespaces.values())
        assert set(lab.roles) == {
            "internet",
            "router",
            "lan",
            "lan2",
            "site2.router",
            "site2.lan",
            "site2.lan2",
        }
        daemons = [Daemon.from_json(d) for d in load_record(lab.state_dir).daemons]  # type: ignore[union-attr]
        assert {d.name for d in daemons} == {"coturn", "miniupnpd1", "miniupnpd2"}
        pids = {d.pid for d in daemons}
        assert lab.bring_up() is lab  # the same object: nothing done
        again = Lab.up("eim", name=lab.name, second_site="symmetric", second_lan_host=True)
        assert {d["pid"] for d in again.facts()["daemons"].values()} == pids
        assert sorted(_our_namespaces(lab)) == sorted(lab.namespaces.values())
        with pytest.raises(LabError, match="already up with topology eim"):
            Lab.up("open", name=lab.name)
    finally:
        lab.down()
    assert _our_namespaces(lab) == []
    assert not any(is_alive(d) for d in daemons)
    assert not lab.state_dir.exists()
    lab.down()  # idempotent


def test_failed_up_cleans_up_and_names_the_step() -> None:
    lab = Lab("eim", miniupnpd_options={"no_such_option": "1"}, ready_timeout=5)
    with pytest.raises(LabError, match=r"failed at step 'miniupnpd \(site 1\)'") as info:
        lab.bring_up()
    assert info.value.step == "miniupnpd (site 1)"
    assert "no_such_option" in str(info.value)  # miniupnpd's own complaint, from its log
    assert _our_namespaces(lab) == []
    assert not lab.state_dir.exists()
    assert lab._daemons == {}


def test_up_refuses_namespaces_it_did_not_make() -> None:
    lab = Lab("eim")
    squatter = lab.namespaces["router"]
    ns.add_namespaces([squatter])
    try:
        with pytest.raises(LabError, match=r"step 'namespaces'.*not ours"):
            lab.bring_up()
        assert ns.exists(squatter)  # someone else's: left alone
        assert _our_namespaces(lab) == [squatter]
    finally:
        ns.delete_namespace(squatter)


def test_labs_of_dead_processes_are_reaped(tmp_path: Path) -> None:
    """A process that brings a lab up and dies without `down` leaves a lab that `reap` (run
    at every test session start) removes; a CLI-made lab is left alone."""
    root = tmp_path / "state"
    code = textwrap.dedent(f"""
        import os
        from nattrav_lab import Lab
        Lab.up("no-igd", name="reapme{os.getpid()}", state_dir_root={str(root)!r})
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    from nattrav_lab import reap

    kept = Lab.up("open", persistent=True, state_dir_root=root)
    try:
        stale = Lab.attach(f"reapme{os.getpid()}", state_dir_root=root)
        assert stale.is_up and _our_namespaces(stale)
        assert reap(state_dir_root=root) == [stale.name]
        assert _our_namespaces(stale) == []
        assert not any(is_alive(d) for d in stale._daemons.values())
        assert Lab.attach(kept.name, state_dir_root=root).is_up
    finally:
        kept.down()


def test_cli_up_status_exec_down() -> None:
    name = f"cli{os.getpid()}"
    cli = [sys.executable, "-m", "nattrav.cli", "lab"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

    try:
        up = run("up", "--topology", "symmetric", "--name", name, "--json")
        assert up.returncode == 0, up.stderr
        import json

        facts = json.loads(up.stdout)
        assert facts["topology"] == "symmetric" and facts["up"]
        assert run("up", "--topology", "symmetric", "--name", name).returncode == 0  # no-op
        status = json.loads(run("status", "--json").stdout)
        assert name in [lab["name"] for lab in status["labs"]]
        ex = run("exec", "--name", name, "lan", "--", "ip", "-o", "-4", "addr", "show", "eth0")
        assert ex.returncode == 0 and "192.168.1.10/24" in ex.stdout
        bad = run("exec", "--name", name, "nowhere", "--", "true")
        assert bad.returncode == 1 and "no role 'nowhere'" in bad.stderr
    finally:
        down = run("down", "--name", name, "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {"removed": [name]}
    assert not [n for n in ns.list_namespaces() if n.startswith(f"ntl-{name}-")]
