"""A crash-safe journal of the mappings, pinholes and allocations nattrav holds.

Why: a process killed with ``kill -9`` runs no cleanup, and a router keeps a mapping until its
lease ends (forever for a UPnP lease 0). So every resource is recorded *before* the request that
creates it is sent, updated when the gateway grants it, and removed after it was released. The
next start (or ``nattrav cleanup``) finds the entries whose owning process is gone and asks the
method that made each one to release it.

Layout: one JSON file per entry under ``<state_dir>/journal/``, written to a temporary name and
renamed into place, so a crash never leaves a half-written entry and concurrent processes never
contend for one file. An entry is *ours to clean* only if the process that wrote it is gone:
its PID is not running, or it runs with a different start time (the PID was reused).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Journal", "JournalEntry", "default_state_dir", "process_start_time"]


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$NATTRAV_STATE_DIR``, else ``$XDG_STATE_HOME/nattrav``, else ``~/.local/state/nattrav``
    (``%LOCALAPPDATA%\\nattrav`` on Windows)."""
    env = os.environ if environ is None else environ
    if env.get("NATTRAV_STATE_DIR"):
        return Path(env["NATTRAV_STATE_DIR"])
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "nattrav"
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nattrav"


def process_start_time(pid: int) -> float | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or ``None`` if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return float(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    # A zombie has exited; its entries are leftovers.
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2 :].startswith("Z"):
            return False
    except OSError:
        pass
    return True


@attrs.frozen
class JournalEntry:
    """One live (or leftover) resource.

    ``method`` names the method that can release it; ``kind`` is e.g. ``port-mapping``,
    ``pinhole``, ``allocation``; ``data`` is whatever that method needs to release it (gateway,
    protocol, ports, nonce, server...). ``expires`` is a wall-clock time or ``None``.
    """

    id: str
    method: str
    kind: str
    data: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    pid: int = attrs.field(factory=os.getpid)
    started: float | None = None
    created: float = attrs.field(factory=time.time)
    expires: float | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {"data": dict(self.data)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalEntry:
        return cls(
            id=str(data["id"]),
            method=str(data["method"]),
            kind=str(data["kind"]),
            data=dict(data.get("data") or {}),
            pid=int(data["pid"]),
            started=None if data.get("started") is None else float(data["started"]),
            created=float(data.get("created", 0.0)),
            expires=None if data.get("expires") is None else float(data["expires"]),
        )

    def owner_alive(self) -> bool:
        if not _alive(self.pid):
            return False
        if self.started is None:
            return True
        now = process_start_time(self.pid)
        return now is None or now == self.started

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires


class Journal:
    """Entries of live resources in a directory; safe across processes and crashes."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(state_dir or default_state_dir()) / "journal"
        self._started = process_start_time(os.getpid())

    def _path(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}.json"

    def _write(self, entry: JournalEntry) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.directory / f".{entry.id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry.to_json(), sort_keys=True))
        os.replace(tmp, self._path(entry.id))

    def record(
        self,
        method: str,
        kind: str,
        data: Mapping[str, Any],
        *,
        expires: float | None = None,
    ) -> JournalEntry:
        """Write an entry (before the request that creates the resource is sent)."""
        entry = JournalEntry(
            id=f"{method}-{secrets.token_hex(8)}",
            method=method,
            kind=kind,
            data=dict(data),
            started=self._started,
            expires=expires,
        )
        self._write(entry)
        return entry

    def update(self, entry: JournalEntry, **changes: Any) -> JournalEntry:
        """Replace fields (e.g. the granted external port, a new expiry) atomically."""
        if "data" in changes:
            changes["data"] = {**entry.data, **changes["data"]}
        new = attrs.evolve(entry, **changes)
        self._write(new)
        return new

    def remove(self, entry: JournalEntry | str) -> None:
        """Forget an entry once its resource was released (missing entries are fine)."""
        entry_id = entry if isinstance(entry, str) else entry.id
        with suppress(FileNotFoundError):
            self._path(entry_id).unlink()

    @contextmanager
    def holding(
        self, method: str, kind: str, data: Mapping[str, Any], *, expires: float | None = None
    ) -> Iterator[JournalEntry]:
        """Record on entry, remove on a clean exit or an error (the caller released it)."""
        entry = self.record(method, kind, data, expires=expires)
        try:
            yield entry
        finally:
            self.remove(entry)

    def entries(self) -> list[JournalEntry]:
        """Every readable entry. Unreadable files are skipped: entries are renamed into place
        whole, so such a file was not written by nattrav and is not ours to act on."""
        found: list[JournalEntry] = []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(JournalEntry.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def leftovers(self) -> list[JournalEntry]:
        """Entries whose owning process is gone: a crashed run's resources."""
        return [e for e in self.entries() if not e.owner_alive()]
