"""A private coturn on loopback for the benchmarks that need a real STUN/TURN server.

``turnserver -n`` (no config file) with explicit pid, log and database paths in a temporary
directory, free ports, long-term credentials for TURN, killed by PID on exit. The stun
plugin's test helper (``nattrav_stun.testing.run_coturn``) does exactly this; the benchmarks
reuse it rather than keep a second copy, and only add the temporary directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import Unavailable

__all__ = ["local_coturn"]


@contextmanager
def local_coturn(*, extra: Sequence[str] = ()) -> Iterator[Any]:
    """coturn on 127.0.0.1; yields ``nattrav_stun.testing.Coturn`` (host, port, username,
    password, realm, log_file)."""
    if shutil.which("turnserver") is None:
        raise Unavailable("coturn is not installed (apt-get install coturn, or make system-deps)")
    try:
        from nattrav_stun.testing import run_coturn
    except ImportError as exc:
        raise Unavailable(f"nattrav-stun is not installed ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="nattrav-bench-coturn-") as tmp:
        with run_coturn(Path(tmp), extra=extra) as server:
            yield server
