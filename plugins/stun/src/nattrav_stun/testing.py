"""A private coturn on loopback for tests (this plugin's and the relay plugin's).

``run_coturn(tmp_path, ...)`` starts ``turnserver -n`` with explicit pid, log and database
paths under ``tmp_path``, free ports, no CLI and no config file, waits until it answers a
Binding request, and kills it (by PID) on exit. Two listening IPs switch RFC 5780 on: coturn
then also answers on ``port + 1`` and on the second IP (127.0.0.2 is loopback too on Linux).

Only for tests: nothing here is used by the plugin at run time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import attrs

from nattrav_stun.codec import BINDING, REQUEST, Message, decode, encode

__all__ = ["Coturn", "coturn_available", "free_port_pair", "run_coturn"]


def coturn_available() -> bool:
    return shutil.which("turnserver") is not None


def free_port_pair(host: str = "127.0.0.1", *, tries: int = 50) -> int:
    """A port P with P and P+1 free for UDP and TCP on ``host`` (coturn's alt port is P+1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(tries):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port >= 65534 or port % 2:
            continue
        ok = True
        held: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(family, kind)
                    held.append(s)
                    try:
                        s.bind((host, p))
                    except OSError:
                        ok = False
        finally:
            for s in held:
                s.close()
        if ok:
            return port
    raise RuntimeError("no free port pair found")


@attrs.frozen
class Coturn:
    """A running coturn: where it listens and how to log in."""

    process: subprocess.Popen[bytes] = attrs.field(eq=False, repr=False)
    host: str
    port: int
    alt_host: str | None
    tls_port: int | None
    username: str
    password: str
    realm: str
    log_file: Path

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        return (
            f"stun:{self.host}:{self.port}"
            if ":" not in self.host
            else (f"stun:[{self.host}]:{self.port}")
        )

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def _answers(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        msg = Message(BINDING, REQUEST)
        try:
            sock.sendto(encode(msg), (host, port))
            data, _ = sock.recvfrom(2048)
        except OSError:
            return False
    try:
        reply = decode(data)
    except Exception:
        return False
    return reply.transaction_id == msg.transaction_id


@contextmanager
def run_coturn(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    alt_host: str | None = None,
    username: str = "nattrav",
    password: str | None = None,
    realm: str = "nattrav.test",
    secure_stun: bool = False,
    tls_cert: tuple[str, str] | None = None,
    extra: Sequence[str] = (),
    start_timeout: float = 10.0,
) -> Iterator[Coturn]:
    """Start coturn; ``alt_host`` (e.g. ``127.0.0.2``) enables RFC 5780; ``secure_stun``
    makes it challenge Binding requests (long-term credentials); ``tls_cert`` is
    ``(cert.pem, key.pem)`` for a TLS listener."""
    if not coturn_available():
        raise RuntimeError("coturn (turnserver) is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(8)
    port = free_port_pair(host)
    tls_port = free_port_pair(host) if tls_cert else None
    log_file = directory / "turnserver.log"
    argv = [
        "turnserver",
        "-n",
        "--no-cli",
        "--simple-log",
        "--log-file",
        str(log_file),
        "--pidfile",
        str(directory / "turnserver.pid"),
        "--userdb",
        str(directory / "turndb.sqlite"),
        "--listening-port",
        str(port),
        "-L",
        host,
        "--relay-ip",
        host,
        "--lt-cred-mech",
        "--user",
        f"{username}:{password}",
        "--realm",
        realm,
        "--no-dtls",
        "--no-multicast-peers",
        "--min-port",
        "49152",
        "--max-port",
        "65535",
    ]
    if alt_host:
        argv += ["-L", alt_host]
    if secure_stun:
        argv.append("--secure-stun")
    if tls_cert:
        assert tls_port is not None
        argv += [
            "--tls-listening-port",
            str(tls_port),
            "--cert",
            tls_cert[0],
            "--pkey",
            tls_cert[1],
        ]
    else:
        argv.append("--no-tls")
    argv += list(extra)
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Coturn(process, host, port, alt_host, tls_port, username, password, realm, log_file)
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(host, port):
            if process.poll() is not None:
                raise RuntimeError(f"coturn exited ({process.returncode}):\n{server.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"coturn did not answer within {start_timeout} s:\n{server.log()}"
                )
            time.sleep(0.05)
        if tls_port is not None:
            _wait_tcp(host, tls_port, deadline)
        yield server
    finally:
        _stop(process)


def _wait_tcp(host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=3)
