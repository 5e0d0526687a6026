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
from typing import Any

import attrs

__all__ = [
    "SERVER",
    "Coturn",
    "Harness",
    "ScriptedServer",
    "assert_cleanup_frees_the_5_tuple",
    "coturn_available",
    "free_port",
    "raw_message",
    "run_coturn",
]

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
        while not (
            _answers_udp("127.0.0.1", self.port) and _answers_tcp("127.0.0.1", self.tls_port)
        ):
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
    port: int | None = None,
    tls_port: int | None = None,
) -> Iterator[Coturn]:
    """Start a loopback coturn (see the module docstring); ``extra``: more coturn options,
    e.g. ``--max-allocate-lifetime=4``, ``--stale-nonce=2``, ``--permission-lifetime=5``.
    ``port``/``tls_port``: listen there (default: free ports), e.g. to point two servers'
    ``--alternate-server`` at each other before either runs."""
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
    port = port or free_port()
    tls_port = tls_port or free_port()
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


# ----------------------------------------------------------------------------- scripted server


class ScriptedServer:
    """Builds the server side of a TURN exchange by hand, for sans-IO tests.

    For behaviours coturn cannot be made to show (forged or unauthenticated successes,
    unknown address families, reserved channel numbers, SHA-256 password algorithms that
    coturn 4.6 lacks): a test decodes what the client sent (``parse``) and answers with
    ``challenge``/``success``/``error`` built here, signed with the right long-term key.
    ``sha256=True`` offers PASSWORD-ALGORITHMS (SHA-256, MD5) with an RFC 8489 nonce cookie.
    """

    def __init__(
        self,
        username: str = "user",
        password: str = "pass",
        realm: str = "example.org",
        *,
        sha256: bool = False,
    ) -> None:
        from nattrav_stun.auth import (
            PasswordAlgorithm,
            SecurityFeatures,
            long_term_key,
            nonce_cookie,
        )
        from nattrav_stun.codec import IntegrityKey

        self.username = username
        self.realm = realm
        self.sha256 = sha256
        self.nonce_counter = 0
        self._cookie = nonce_cookie(SecurityFeatures(password_algorithms=True)) if sha256 else ""
        self.md5_key = IntegrityKey(long_term_key(username, realm, password))
        self.sha256_key = IntegrityKey(
            long_term_key(username, realm, password, PasswordAlgorithm.SHA256)
        )
        self.nonce = self.new_nonce()

    def new_nonce(self) -> str:
        self.nonce_counter += 1
        self.nonce = f"{self._cookie}nonce-{self.nonce_counter}"
        return self.nonce

    @staticmethod
    def parse(data: bytes) -> Any:
        from nattrav_stun.codec import decode

        from nattrav_relay.attributes import TURN_ATTRIBUTES

        return decode(data, TURN_ATTRIBUTES)

    def _encode(self, msg: Any, *, sign: str | None) -> bytes:
        from nattrav_stun.codec import encode

        from nattrav_relay.attributes import TURN_ATTRIBUTES

        if sign == "md5":
            return encode(msg, integrity=self.md5_key, fingerprint=True, table=TURN_ATTRIBUTES)
        if sign == "sha256":
            return encode(
                msg, integrity_sha256=self.sha256_key, fingerprint=True, table=TURN_ATTRIBUTES
            )
        return encode(msg, fingerprint=True, table=TURN_ATTRIBUTES)

    def signing_of(self, request: Any) -> str | None:
        """How the client signed ``request``: ``"sha256"``, ``"md5"`` or ``None``."""
        if request.has_integrity_sha256:
            return "sha256"
        if request.has_integrity:
            return "md5"
        return None

    def verify(self, request: Any) -> bool:
        """Whether the client signed ``request`` correctly with the expected key."""
        from nattrav_stun.codec import verify_integrity

        how = self.signing_of(request)
        if how == "sha256":
            return verify_integrity(request, self.sha256_key, sha256=True)
        if how == "md5":
            return verify_integrity(request, self.md5_key, sha256=False)
        return False

    def challenge(self, request: Any, code: int = 401) -> bytes:
        """An unprotected 401 (or 438) with REALM and NONCE (and the algorithm list)."""
        from nattrav_stun.auth import PasswordAlgorithm, algorithms_attribute
        from nattrav_stun.codec import (
            ERROR,
            ERROR_CODE,
            NONCE,
            PASSWORD_ALGORITHMS,
            REALM,
            ErrorCode,
            Message,
        )

        attributes: dict[int, Any] = {
            ERROR_CODE: ErrorCode(code, "Unauthorized" if code == 401 else "Stale Nonce"),
            REALM: self.realm,
            NONCE: self.nonce,
        }
        if self.sha256:
            attributes[PASSWORD_ALGORITHMS] = algorithms_attribute(
                (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
            )
        msg = Message(request.method, ERROR, request.transaction_id, attributes)
        return self._encode(msg, sign=None)

    def success(
        self, request: Any, attributes: dict[int, Any] | None = None, *, sign: str | None = "auto"
    ) -> bytes:
        """A success response to ``request``; ``sign="auto"`` signs as the client did,
        ``None`` sends it without integrity (forged), ``"md5"``/``"sha256"`` force one."""
        from nattrav_stun.codec import SUCCESS, Message

        how = self.signing_of(request) if sign == "auto" else sign
        msg = Message(request.method, SUCCESS, request.transaction_id, dict(attributes or {}))
        return self._encode(msg, sign=how)

    def error(
        self,
        request: Any,
        code: int,
        reason: str = "",
        attributes: dict[int, Any] | None = None,
        *,
        sign: str | None = "auto",
    ) -> bytes:
        """An error response to ``request`` (signed as the client signed, by default)."""
        from nattrav_stun.codec import ERROR, ERROR_CODE, ErrorCode, Message

        how = self.signing_of(request) if sign == "auto" else sign
        body: dict[int, Any] = {ERROR_CODE: ErrorCode(code, reason)}
        body.update(attributes or {})
        return self._encode(Message(request.method, ERROR, request.transaction_id, body), sign=how)


# ----------------------------------------------------------------------------- sans-IO harness

#: Addresses the harness uses (documentation ranges).
SERVER = ("192.0.2.10", 3478)


def raw_message(
    method: int,
    cls: int,
    transaction_id: bytes,
    tlvs: Sequence[tuple[int, bytes]],
    *,
    server: ScriptedServer | None = None,
    sign: str | None = None,
    fingerprint: bool = True,
) -> bytes:
    """A STUN message from raw attribute TLVs, in order, duplicates allowed (the codec's
    ``Message`` holds one value per type), optionally signed (``"md5"``/``"sha256"``)."""
    import struct
    import zlib

    from nattrav_stun.codec import message_type

    mtype = message_type(method, cls)
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) & 3) for t, v in tlvs)

    def head(length: int) -> bytes:
        return struct.pack("!HHI12s", mtype, length, 0x2112A442, transaction_id)

    if sign is not None:
        assert server is not None
        if sign == "md5":
            body += b"\x00\x08\x00\x14" + server.md5_key.sha1(head(len(body) + 24) + body)
        else:
            body += b"\x00\x1c\x00\x20" + server.sha256_key.sha256(head(len(body) + 36) + body)
    if fingerprint:
        crc = zlib.crc32(head(len(body) + 8) + body) ^ 0x5354554E
        body += b"\x80\x28\x00\x04" + struct.pack("!I", crc)
    return head(len(body)) + body


class Harness:
    """A ``TurnClient`` against a ``ScriptedServer`` on a fake clock (``now``): the
    sans-IO test bench. ``allocate()`` runs the whole 401 + signed Allocate exchange."""

    def __init__(
        self,
        settings: Any = None,
        *,
        sha256: bool = False,
        transport: str = "udp",
    ) -> None:
        from nattrav_stun.auth import LongTermCredentials

        from nattrav_relay.client import ClientSettings, TurnClient

        self.server = ScriptedServer("user", "pass", "example.org", sha256=sha256)
        self.client = TurnClient(
            SERVER,
            LongTermCredentials("user", "pass"),
            transport=transport,
            settings=settings or ClientSettings(),
        )
        self.now = 0.0
        self.collected: list[Any] = []

    def wires(self) -> list[bytes]:
        """Everything the client wants to send now."""
        return self.client.datagrams_to_send()

    def sent(self) -> list[Any]:
        """The STUN messages the client wants to send now (ChannelData skipped)."""
        return [self.server.parse(w) for w in self.wires() if w[0] < 0x40]

    def one(self) -> Any:
        msgs = self.sent()
        assert len(msgs) == 1, msgs
        return msgs[0]

    def reply(self, data: bytes) -> Any:
        """Hand ``data`` to the client as if it came from the server."""
        return self.client.receive(data, self.now)

    def events(self) -> list[Any]:
        out = []
        while (event := self.client.next_event()) is not None:
            out.append(event)
        self.collected += out
        return out

    def advance(self, to: float) -> None:
        """Move the clock to ``to`` and fire what is due."""
        assert to >= self.now
        self.now = to
        self.client.handle_timer(to)

    def allocate(
        self,
        attributes: dict[int, Any] | None = None,
        *,
        lifetime: int | None = 600,
        relayed: Sequence[Any] = (("192.0.2.10", 50000),),
        mapped: Any = ("198.51.100.7", 40000),
    ) -> list[Any]:
        """Allocate through the 401 challenge; answer with a success carrying ``relayed``
        (several give a dual allocation), ``mapped``, ``lifetime`` and ``attributes``."""
        from nattrav_stun.codec import SUCCESS, XOR_MAPPED_ADDRESS

        from nattrav_relay.attributes import LIFETIME, TURN_ATTRIBUTES, XOR_RELAYED_ADDRESS

        self.client.allocate(self.now)
        first = self.one()
        assert not first.has_integrity and not first.has_integrity_sha256
        self.reply(self.server.challenge(first))
        signed = self.one()
        assert self.server.verify(signed)
        tid = signed.transaction_id
        tlvs: list[tuple[int, bytes]] = []
        for address in relayed:
            tlvs.append(
                (XOR_RELAYED_ADDRESS, TURN_ATTRIBUTES.encoders[XOR_RELAYED_ADDRESS](address, tid))
            )
        if mapped is not None:
            tlvs.append(
                (XOR_MAPPED_ADDRESS, TURN_ATTRIBUTES.encoders[XOR_MAPPED_ADDRESS](mapped, tid))
            )
        if lifetime is not None:
            tlvs.append((LIFETIME, lifetime.to_bytes(4, "big")))
        for kind, value in (attributes or {}).items():
            tlvs.append((kind, TURN_ATTRIBUTES.encoders[kind](value, tid)))
        self.reply(
            raw_message(
                signed.method,
                SUCCESS,
                tid,
                tlvs,
                server=self.server,
                sign=self.server.signing_of(signed),
            )
        )
        return self.events()


async def assert_cleanup_frees_the_5_tuple(
    server: Coturn, entry: Any, table: dict[str, Any]
) -> None:
    """Prove by the server's own rule that ``RelayMethod.cleanup`` deleted the crashed UDP
    allocation journalled as ``entry`` on ``server``: before it, an Allocate from the entry's
    5-tuple draws 437 (Allocation Mismatch); after it, the same 5-tuple can allocate again
    (coturn tears the session down within about a second of the LIFETIME 0). ``table`` is the
    relay plugin's configuration the cleanup runs with."""
    import anyio
    import pytest
    from nattrav.method import AttemptContext
    from nattrav.models import TransportAddress, TraversalRequest

    from nattrav_relay.config import load_config
    from nattrav_relay.driver import RelayError, allocate
    from nattrav_relay.method import RelayMethod
    from nattrav_relay.transport import UdpTransport

    local = TransportAddress.parse(entry.data["local"])

    async def same_port(host: str, port: int, kind: str) -> UdpTransport:
        return UdpTransport.connect(host, port, local_host=local.host, local_port=local.port)

    def again() -> Any:
        return allocate(
            server.uri("udp"),
            username=server.username,
            password=server.password,
            opener=same_port,
            allocate_timeout=1.5,
        )

    with pytest.raises(RelayError, match="437"):
        async with again():
            pytest.fail("the crashed allocation should still hold the 5-tuple")
    await RelayMethod(load_config(table)).cleanup(
        entry, AttemptContext(TraversalRequest(), "relay")
    )
    with anyio.fail_after(6):
        while True:
            try:
                async with again() as ep:
                    assert ep.local == local
                    return
            except RelayError:
                await anyio.sleep(0.3)
