"""A private coturn on loopback, for this plugin's tests and the relay benchmarks.

``run_coturn(directory)`` starts ``turnserver -n`` (no config file) listening on 127.0.0.1 and
::1 with UDP and TCP on one free port and TLS on another (certificate from a throw-away CA made
with trustme, for ``127.0.0.1``, ``::1`` and ``localhost``), long-term credentials, relay
addresses on loopback and ``--allow-loopback-peers`` (test peers live on loopback too). It
waits until coturn answers, and stops it by PID on exit. ``Coturn.restart()`` kills and starts
it again on the same ports: every allocation is lost, like a server restart.

Only for tests and benchmarks: nothing here runs in the plugin.
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

__all__ = ["Coturn", "coturn_available", "free_port", "run_coturn"]

REALM = "relay.nattrav.test"
USER = "relay-user"


def coturn_available() -> bool:
    return shutil.which("turnserver") is not None


def free_port(hosts: Sequence[str] = ("127.0.0.1", "::1"), *, tries: int = 100) -> int:
    """A port free for UDP and TCP on every host in ``hosts``."""
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        held: list[socket.socket] = []
        ok = True
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(family, kind)
                    held.append(s)
                    try:
                        s.bind((host, port))
                    except OSError:
                        ok = False
        finally:
            for s in held:
                s.close()
        if ok:
            return port
    raise RuntimeError("no free port found")


@attrs.define
class Coturn:
    """A running coturn: where it listens and how to log in."""

    directory: Path
    argv: list[str]
    port: int
    tls_port: int
    username: str
    password: str
    realm: str
    ca_path: Path
    process: subprocess.Popen[bytes] | None = attrs.field(default=None, repr=False)

    def uri(self, transport: str = "udp", host: str = "127.0.0.1") -> str:
        """``turn:127.0.0.1:P?transport=tcp``, ``turns:[::1]:T`` ..."""
        bracketed = f"[{host}]" if ":" in host else host
        if transport == "tls":
            return f"turns:{bracketed}:{self.tls_port}"
        return f"turn:{bracketed}:{self.port}?transport={transport}"

    @property
    def log_file(self) -> Path:
        return self.directory / "turnserver.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not (_answers_udp("127.0.0.1", self.port) and _answers_tcp("127.0.0.1",
                                                                           self.tls_port)):
            if self.process.poll() is not None:
                raise RuntimeError(f"coturn exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not answer within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
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

    def restart(self) -> None:
        """Kill and start again on the same ports: every allocation is lost."""
        self.stop()
        self.start()


def _answers_udp(host: str, port: int) -> bool:
    # A Binding request coturn answers without credentials.
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(request, (host, port))
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[8:20] == request[8:20]


def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def run_coturn(
    directory: Path,
    *,
    extra: Sequence[str] = (),
    username: str = USER,
    password: str | None = None,
    realm: str = REALM,
) -> Iterator[Coturn]:
    """Start a loopback coturn (see the module docstring); ``extra``: more coturn options,
    e.g. ``--max-allocate-lifetime=4``, ``--stale-nonce=2``, ``--permission-lifetime=5``."""
    import trustme

    if not coturn_available():
        raise RuntimeError("coturn (turnserver) is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(8)
    ca = trustme.CA(organization_name="nattrav relay tests")
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca_path = directory / "ca.pem"
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as out:
        for pem in cert.cert_chain_pems:
            out.write(pem.bytes())
    port = free_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    argv = [
        "turnserver",
        "-n",
        "--no-cli",
        "--simple-log",
        f"--log-file={directory / 'turnserver.log'}",
        f"--pidfile={directory / 'turnserver.pid'}",
        f"--userdb={directory / 'turndb.sqlite'}",
        "--listening-ip=127.0.0.1",
        "--listening-ip=::1",
        "--relay-ip=127.0.0.1",
        "--relay-ip=::1",
        f"--listening-port={port}",
        f"--tls-listening-port={tls_port}",
        f"--cert={cert_path}",
        f"--pkey={key_path}",
        "--no-dtls",
        "--lt-cred-mech",
        f"--user={username}:{password}",
        f"--realm={realm}",
        "--allow-loopback-peers",
        "--no-multicast-peers",
        "--min-port=49152",
        "--max-port=65535",
        *extra,
    ]
    server = Coturn(directory, argv, port, tls_port, username, password, realm, ca_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()
