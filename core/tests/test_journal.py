from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nattrav.config import structure_config
from nattrav.errors import MethodError
from nattrav.journal import Journal, JournalEntry, default_state_dir, process_start_time
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import Candidate, CandidateKind, Reachability, TransportAddress
from nattrav.plugins import PluginHost, module_plugin
from nattrav.runtime import Runtime


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_record_update_remove(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    e = j.record("upnp", "port-mapping", {"gateway": "192.168.1.1", "external": 0}, expires=5.0)
    assert e.pid == os.getpid()
    assert j.entries() == [e]
    e2 = j.update(e, data={"external": 40000})
    assert j.entries()[0].data == {"gateway": "192.168.1.1", "external": 40000}
    assert j.leftovers() == []  # we are alive
    j.remove(e2)
    j.remove(e2)  # idempotent
    assert j.entries() == []


def test_holding_removes_on_error(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    with pytest.raises(RuntimeError), j.holding("m", "k", {}):
        assert len(j.entries()) == 1
        raise RuntimeError
    assert j.entries() == []


def test_leftovers_are_entries_of_dead_or_reused_pids(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    mine = j.record("m", "k", {})
    dead = attrs_evolve(mine, id="dead", pid=dead_pid())
    j._write(dead)
    start = process_start_time(os.getpid())
    assert start is not None
    reused = attrs_evolve(mine, id="reused", started=start + 1)  # same pid, other process
    j._write(reused)
    assert sorted(e.id for e in j.leftovers()) == ["dead", "reused"]


def test_garbage_files_are_ignored(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.directory.mkdir(parents=True)
    (j.directory / "junk.json").write_text("{not json")
    (j.directory / "partial.json").write_text(json.dumps({"id": "x"}))
    assert j.entries() == []


def test_default_state_dir() -> None:
    assert default_state_dir({"NATTRAV_STATE_DIR": "/x"}) == Path("/x")
    assert default_state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/nattrav")


def attrs_evolve(entry: JournalEntry, **changes: Any) -> JournalEntry:
    import attrs

    return attrs.evolve(entry, **changes)


class JournaledMethod:
    """Records its "mapping" in the journal like the port-mapping plugins do."""

    released: list[dict[str, Any]] = []
    fail_cleanup = False

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext):  # type: ignore[no-untyped-def]
        assert ctx.journal is not None
        entry = ctx.journal.record("journaled", "port-mapping", {"external": 41000})
        try:
            yield Acquisition(
                Candidate(
                    CandidateKind.PORT_MAPPED,
                    TransportAddress("203.0.113.1", 41000),
                    "journaled",
                    reachability=Reachability.claimed("test"),
                )
            )
        finally:
            ctx.journal.remove(entry)

    async def cleanup(self, entry: JournalEntry, ctx: AttemptContext) -> None:
        if JournaledMethod.fail_cleanup:
            raise MethodError("journaled", "gateway did not answer")
        JournaledMethod.released.append(dict(entry.data))


def runtime(tmp_path: Path) -> Runtime:
    def register(registry: Any) -> None:
        registry.add(JournaledMethod, name="journaled", priority=1, kind=CandidateKind.PORT_MAPPED)

    host = PluginHost.load(
        structure_config({"state_dir": str(tmp_path)}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("j", module_plugin("j", nattrav_register_methods=register))],
    )
    return Runtime(host)


@pytest.mark.anyio
async def test_cleanup_releases_a_crashed_runs_entries_only(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    JournaledMethod.released = []
    JournaledMethod.fail_cleanup = False
    crashed = rt.journal.record("journaled", "port-mapping", {"external": 1234})
    rt.journal._write(attrs_evolve(crashed, pid=dead_pid()))
    unknown = rt.journal.record("gone-plugin", "allocation", {})
    rt.journal._write(attrs_evolve(unknown, pid=dead_pid()))
    live = rt.journal.record("journaled", "port-mapping", {"external": 999})  # ours, alive
    outcomes = await rt.cleanup()
    assert {(o.entry.method, o.released) for o in outcomes} == {
        ("journaled", True),
        ("gone-plugin", False),
    }
    assert JournaledMethod.released == [{"external": 1234}]
    remaining = {e.id for e in rt.journal.entries()}
    assert remaining == {unknown.id, live.id}


@pytest.mark.anyio
async def test_failed_cleanup_keeps_the_entry(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    JournaledMethod.fail_cleanup = True
    crashed = rt.journal.record("journaled", "port-mapping", {"external": 1})
    rt.journal._write(attrs_evolve(crashed, pid=dead_pid()))
    outcomes = await rt.cleanup()
    assert [o.released for o in outcomes] == [False]
    assert "gateway did not answer" in outcomes[0].detail
    assert [e.id for e in rt.journal.entries()] == [crashed.id]
    JournaledMethod.fail_cleanup = False


@pytest.mark.anyio
async def test_a_held_mapping_is_journaled_and_removed_after_release(tmp_path: Path) -> None:
    from nattrav.models import TraversalRequest

    rt = runtime(tmp_path)
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "journaled"
        assert [e.data["external"] for e in rt.journal.entries()] == [41000]
    assert rt.journal.entries() == []
