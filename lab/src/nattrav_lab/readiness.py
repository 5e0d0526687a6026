"""Waiting for the lab's daemons to be ready, from inside their namespaces.

A daemon is ready when it answers, not when its process exists: coturn when a STUN Binding
request gets a response, miniupnpd when its HTTP port accepts a connection and its log shows
the start-up STUN check finished (before that it refuses mappings).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from nattrav_lab.errors import LabStepError
from nattrav_lab.netns import in_namespace

__all__ = ["log_contains", "stun_answers", "tcp_accepts", "wait_for"]

_MAGIC = bytes.fromhex("2112a442")


def stun_answers(namespace: str, host: str, port: int, timeout: float = 0.2) -> bool:
    """Send one STUN Binding request from ``namespace``; True if a success response comes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    txid = os.urandom(12)
    request = b"\x00\x01\x00\x00" + _MAGIC + txid
    with in_namespace(namespace):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid


def tcp_accepts(namespace: str, host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connection from ``namespace`` to ``host``:``port`` is accepted."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with in_namespace(namespace):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
    return True


def log_contains(path: str | Path, *needles: str) -> bool:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return False
    return any(n in text for n in needles)


def wait_for(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``check`` until true; ``LabStepError`` on timeout or if ``alive`` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if alive is not None and not alive():
            raise LabStepError(f"{what}: the process exited")
        if time.monotonic() >= deadline:
            raise LabStepError(f"{what}: not ready after {timeout:.1f} s")
        time.sleep(interval)
