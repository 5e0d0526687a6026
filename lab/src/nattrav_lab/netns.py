"""Network namespaces: create, delete, and switch the calling thread into one.

``ip netns add NAME`` makes a namespace and pins it with a bind mount at ``/run/netns/NAME``;
everything else in the lab refers to namespaces by that name. Switching uses setns(2) through
ctypes (Python 3.11 has no ``os.setns``). setns with CLONE_NEWNET changes only the calling
thread, and a socket keeps the namespace it was created in for its whole life, so a test can
step into the LAN host, create its sockets and step out again while the rest of the process
(other threads, the pytest machinery) stays in its own namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "NETNS_DIR",
    "NamespaceError",
    "add_namespaces",
    "delete_namespace",
    "exists",
    "in_namespace",
    "list_namespaces",
    "write_sysctl",
]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NamespaceError(OSError):
    """A namespace could not be entered or left."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"setns: {os.strerror(err)}")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def add_namespaces(names: list[str]) -> None:
    """Create the namespaces with one ``ip -batch`` (fails if any name is taken)."""
    script = "".join(f"netns add {n}\n" for n in names)
    proc = subprocess.run(
        ["ip", "-batch", "-"], input=script, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise NamespaceError(0, f"ip netns add: {proc.stderr.strip() or proc.stdout.strip()}")


def delete_namespace(name: str) -> None:
    """Delete one namespace; deleting one that is already gone is not an error."""
    if not exists(name):
        return
    proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and exists(name):
        raise NamespaceError(0, f"ip netns del {name}: {proc.stderr.strip()}")


@contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Run the body with the calling thread in namespace ``name``; always switch back.

    Sockets created in the body live in ``name`` after the block ends. Anything else the thread
    does in the body (an event loop running other tasks, a subprocess it forks) also happens
    there, so keep the body short.
    """
    path = NETNS_DIR / name
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(2, f"no network namespace {name!r}") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
                _rehome_trio_workers(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _rehome_trio_workers(home: int) -> None:
    """Move trio's idle worker threads back to ``home``.

    A thread inherits its creator's namespace, and trio keeps its worker threads in one
    process-wide cache for a while after they finish. A worker created inside the block
    (``to_thread.run_sync`` under trio: a file write, a name lookup) would otherwise serve a
    later caller from inside the lab: another test's "127.0.0.1" would be the LAN host's
    loopback. So each idle worker is given one job (the jobs wait for each other, so no
    worker takes two) that switches it home. trio does not publish how many idle workers it
    has; the count is read from its cache and nothing is done when that is not possible.
    asyncio's workers belong to their event loop and end with it.
    """
    cache_module = sys.modules.get("trio._core._thread_cache")
    trio = sys.modules.get("trio")
    idle = getattr(getattr(cache_module, "THREAD_CACHE", None), "_idle_workers", None)
    if trio is None or not isinstance(idle, dict) or not idle:
        return
    jobs = len(idle)
    barrier = threading.Barrier(jobs, timeout=2.0)
    finished = threading.Semaphore(0)

    def job() -> None:
        try:
            _setns(home)
            barrier.wait()
        except (threading.BrokenBarrierError, OSError):
            pass

    def deliver(_outcome: object) -> None:
        finished.release()

    for _ in range(jobs):
        trio.lowlevel.start_thread_soon(job, deliver)
    for _ in range(jobs):
        finished.acquire(timeout=3.0)


def write_sysctl(name: str, values: dict[str, str]) -> None:
    """Set ``net.*`` sysctls of namespace ``name`` without forking.

    /proc/sys/net resolves to the network namespace of the thread that opens the file, so
    writing from inside ``in_namespace`` sets the namespace's own value.
    """
    with in_namespace(name):
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value)
