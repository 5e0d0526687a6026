"""The lab's daemons: start them inside a namespace, stop exactly those, by PID.

A lab can outlive the process that made it (``nattrav lab up`` returns while coturn keeps
running), so each daemon is recorded as PID plus the kernel's start time of that PID: a later
``down`` signals only a process whose start time still matches, never a recycled PID and never
anything found by name. A killed daemon whose parent is gone stays a zombie until PID 1 reaps
it (about two seconds here); a zombie is dead for our purposes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Daemon", "is_alive", "start_daemon", "stop_daemon"]


@attrs.frozen
class Daemon:
    """A process the lab started: what, where, which PID and that PID's start time."""

    name: str
    namespace: str
    pid: int
    start_time: int
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Daemon:
        return cls(
            name=data["name"],
            namespace=data["namespace"],
            pid=int(data["pid"]),
            start_time=int(data["start_time"]),
            argv=tuple(data["argv"]),
            log=data["log"],
        )


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None if there is no such PID."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def is_alive(daemon: Daemon) -> bool:
    """True while ``daemon`` runs: same PID, same start time, not a zombie."""
    st = _stat(daemon.pid)
    return st is not None and st[1] == daemon.start_time and st[0] not in ("Z", "X")


def start_daemon(
    name: str,
    namespace: str,
    argv: list[str],
    log: Path,
    *,
    children: dict[int, subprocess.Popen[bytes]],
) -> Daemon:
    """Start ``argv`` inside ``namespace`` in a session of its own, output to ``log``.

    ``ip netns exec`` switches namespace and then execs the command, so the PID we get is the
    daemon's own. The Popen object goes into ``children`` so this process can reap it. A log
    from an earlier run of the same daemon is kept as ``<log>.prev``: readiness checks read the
    log, and must only see what this run wrote.
    """
    if log.exists():
        log.replace(log.with_name(log.name + ".prev"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    children[proc.pid] = proc
    st = _stat(proc.pid)
    start = st[1] if st else 0
    return Daemon(name, namespace, proc.pid, start, tuple(argv), str(log))


def stop_daemon(
    daemon: Daemon,
    *,
    children: dict[int, subprocess.Popen[bytes]],
    timeout: float = 3.0,
    sig: int = signal.SIGTERM,
) -> None:
    """Stop ``daemon`` (``sig``, then SIGKILL after ``timeout``) and wait until it is dead."""
    proc = children.pop(daemon.pid, None)
    deadline = time.monotonic() + timeout
    signalled_kill = False
    if is_alive(daemon):
        try:
            os.kill(daemon.pid, sig)
        except ProcessLookupError:
            pass
    while True:
        if proc is not None and proc.poll() is not None:
            return
        if not is_alive(daemon):
            if proc is not None:
                # Ours: reap it so no zombie or ResourceWarning is left behind.
                try:
                    proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            return
        if time.monotonic() >= deadline and not signalled_kill:
            try:
                os.kill(daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            signalled_kill = True
            deadline = time.monotonic() + 2.0
        elif signalled_kill and time.monotonic() >= deadline:
            raise TimeoutError(f"{daemon.name} (pid {daemon.pid}) did not die after SIGKILL")
        time.sleep(0.01)
