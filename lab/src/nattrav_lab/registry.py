"""Where labs keep their state, and the registry of labs made by nattrav-lab.

Each lab has a directory ``<root>/<name>/`` holding ``lab.json`` (topology, namespaces it made,
daemons it started, its owner), configs, pidfiles, logs, leases and certificates. The set of
those directories *is* the registry: ``nattrav lab status`` lists it and ``nattrav lab down
--all`` tears down what it finds there, so nothing outside it (another tool's namespaces) is ever
touched. ``lab.json`` is written before the first namespace is made, so even a lab whose creator
crashed half-way can be torn down.

The root is ``$NATTRAV_LAB_STATE`` or ``/run/nattrav-lab`` (tmpfs: gone at reboot, like the
namespaces themselves).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "LabRecord",
    "Owner",
    "list_records",
    "load_record",
    "state_root",
    "validate_name",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")


def state_root(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    return Path(os.environ.get("NATTRAV_LAB_STATE", "/run/nattrav-lab"))


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"lab name {name!r} must be 1-24 characters of a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def _proc_start_time(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@attrs.frozen
class Owner:
    """The process a lab belongs to; the lab may be reaped once that process is gone."""

    pid: int
    start_time: int

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), _proc_start_time(os.getpid()) or 0)

    def alive(self) -> bool:
        return _proc_start_time(self.pid) == self.start_time


@attrs.define
class LabRecord:
    """The content of ``lab.json``."""

    name: str
    topology: str
    second_site: str | None
    state_dir: str
    namespaces: dict[str, str]
    created: list[str]
    daemons: list[dict[str, Any]]
    owner: Owner | None
    options: dict[str, Any]
    up: bool = False

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / "lab.json"

    def save(self) -> None:
        data = attrs.asdict(self)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)

    def orphaned(self) -> bool:
        """True if the owning process is gone (a lab made by the CLI has no owner)."""
        return self.owner is not None and not self.owner.alive()


def load_record(state_dir: Path) -> LabRecord | None:
    try:
        data = json.loads((state_dir / "lab.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    owner = data.get("owner")
    return LabRecord(
        name=data["name"],
        topology=data["topology"],
        second_site=data.get("second_site"),
        state_dir=data["state_dir"],
        namespaces=dict(data.get("namespaces", {})),
        created=list(data.get("created", [])),
        daemons=list(data.get("daemons", [])),
        owner=Owner(**owner) if owner else None,
        options=dict(data.get("options", {})),
        up=bool(data.get("up", False)),
    )


def list_records(root: Path) -> list[LabRecord]:
    if not root.is_dir():
        return []
    records = []
    for child in sorted(root.iterdir()):
        rec = load_record(child)
        if rec is not None:
            records.append(rec)
    return records
