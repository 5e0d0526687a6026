"""300 (Try Alternate) redirects followed end to end against real coturn servers on loopback.

coturn 4.6.1 with ``--alternate-server=IP:PORT`` (UDP and TCP listeners) or
``--tls-alternate-server`` (TLS) answers every Allocate with 300 and ALTERNATE-SERVER *before*
authenticating it: an unprotected answer to our unsigned first Allocate, the one kind of
unprotected 300 nattrav follows (docs/relay.md, "Redirects"). Here the ``redirector`` sends us
to the ``alternate``; the tests prove that the allocation ends on the alternate (its relay port
range, its log), that data, refreshes and the delete go there, that the journal names it and a
crashed run's allocation is cleaned up there, and that a loop between two coturns that
redirect to each other is stopped. ALTERNATE-DOMAIN, which coturn never sends, comes from a
small scripted TLS redirector in front of the real alternate.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from nattrav.journal import Journal
from nattrav.method import AttemptContext
from nattrav.models import (
    LeaseEvent,
    LeaseEventKind,
    Transport,
    TransportAddress,
    TraversalRequest,
)
from nattrav_relay.config import load_config
from nattrav_relay.driver import RelayEndpoint, RelayError, allocate
from nattrav_relay.method import RelayMethod
from nattrav_relay.testing import (
    Coturn,
    ScriptedServer,
    assert_cleanup_frees_the_5_tuple,
    free_port,
    run_coturn,
)
from nattrav_stun import codec as c

pytestmark = pytest.mark.anyio

#: relay port ranges that tell the two servers' allocations apart
ALTERNATE_PORTS = (50000, 50999)
REDIRECTOR_PORTS = (51000, 51999)


@pytest.fixture(scope="module")
def alternate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """The server that should end up holding the allocations (verbose: its log is evidence)."""
    with run_coturn(
        tmp_path_factory.mktemp("alternate"),
        extra=["--verbose", f"--min-port={ALTERNATE_PORTS[0]}", f"--max-port={ALTERNATE_PORTS[1]}"],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def redirector(tmp_path_factory: pytest.TempPathFactory, alternate: Coturn) -> Iterator[Coturn]:
    """A coturn that redirects every Allocate to ``alternate`` (same user and password)."""
    with run_coturn(
        tmp_path_factory.mktemp("redirector"),
        password=alternate.password,
        extra=[
            "--verbose",
            f"--alternate-server=127.0.0.1:{alternate.port}",
            f"--tls-alternate-server=127.0.0.1:{alternate.tls_port}",
            f"--min-port={REDIRECTOR_PORTS[0]}",
            f"--max-port={REDIRECTOR_PORTS[1]}",
        ],
    ) as server:
        yield server


def credentials(server: Coturn, transport: str, *also: Coturn) -> dict[str, Any]:
    args: dict[str, Any] = {"username": server.username, "password": server.password}
    if transport == "tls":
        context = ssl.create_default_context(cafile=str(server.ca_path))
        for other in also:
            context.load_verify_locations(cafile=str(other.ca_path))
        args["ssl_context"] = context
    return args


def where(server: Coturn, transport: str) -> TransportAddress:
    port = server.tls_port if transport == "tls" else server.port
    return TransportAddress(
        "127.0.0.1", port, Transport.UDP if transport == "udp" else Transport.TCP
    )


def session_of(server: Coturn, relayed_port: int) -> str | None:
    """The coturn session id that allocated ``relayed_port`` (from its verbose log)."""
    log = server.log()
    at = log.find(f"Local relay addr: 127.0.0.1:{relayed_port}\n")
    found = re.search(r"session (\d+): new,", log[at:]) if at >= 0 else None
    return None if found is None else found.group(1)


async def deleted_on(server: Coturn, relayed_port: int) -> bool:
    """Whether ``server`` logged the Refresh with LIFETIME 0 of that allocation."""
    with anyio.move_on_after(3):
        while True:
            sid = session_of(server, relayed_port)
            if sid and re.search(rf"session {sid}: refreshed, [^\n]*lifetime=0[,\n]", server.log()):
                return True
            await anyio.sleep(0.05)
    return False


@asynccontextmanager
async def peer_socket() -> AsyncIterator[anyio.abc.UDPSocket]:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
        yield sock


async def round_trip(ep: RelayEndpoint, payload: bytes) -> None:
    async with peer_socket() as peer:
        host, port = peer.extra(anyio.abc.SocketAttribute.local_address)[:2]
        await ep.send_to(payload, TransportAddress(str(host), int(port)))
        with anyio.fail_after(3):
            data, source = await peer.receive()
        assert data == payload and (source[0], source[1]) == (ep.relayed.host, ep.relayed.port)
        await peer.sendto(b"re:" + payload, source[0], source[1])
        with anyio.fail_after(3):
            assert (await ep.receive())[0] == b"re:" + payload


# ----------------------------------------------------------------------------- followed


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_the_allocation_ends_on_the_alternate_and_everything_goes_there(
    redirector: Coturn, alternate: Coturn, transport: str, tmp_path: Path
) -> None:
    journal = Journal(tmp_path)
    events: list[LeaseEvent] = []
    uri = redirector.uri(transport)
    async with allocate(
        uri,
        **credentials(redirector, transport, alternate),
        journal=journal,
        on_event=events.append,
    ) as ep:
        assert ep.server_address == where(alternate, transport)
        assert ep.redirected_from == [where(redirector, transport)]
        assert ALTERNATE_PORTS[0] <= ep.relayed.port <= ALTERNATE_PORTS[1]
        assert session_of(alternate, ep.relayed.port) is not None  # coturn says it is its own
        [entry] = journal.entries()  # what `nattrav cleanup` would use after a crash
        assert entry.data["server"] == str(ep.server)  # as configured
        assert entry.data["server_address"] == str(ep.server_address)
        assert entry.data["redirected_from"] == [str(where(redirector, transport))]
        assert entry.data["local"] == str(ep.local)
        await round_trip(ep, b"through the alternate")
        async with ep.events() as stream:
            await ep.check()  # a Refresh: only the alternate can answer it
            with anyio.fail_after(3):
                assert (await stream.receive()).kind is LeaseEventKind.RENEWED
        relayed_port = ep.relayed.port
    assert journal.entries() == []
    assert [e.kind for e in events] == [
        LeaseEventKind.ACQUIRED,
        LeaseEventKind.RENEWED,
        LeaseEventKind.RELEASED,
    ]
    assert "redirected from" in events[0].detail
    assert events[0].details["server_address"] == str(where(alternate, transport))
    assert events[-1].details["confirmed"] is True
    assert await deleted_on(alternate, relayed_port)
    log = redirector.log()
    assert "error 300: Try Alternate" in log and "ALLOCATE processed, success" not in log


async def test_the_chain_method_reports_the_server_that_holds_the_allocation(
    redirector: Coturn, alternate: Coturn
) -> None:
    method = RelayMethod(
        load_config(
            {
                "servers": [redirector.uri("udp")],
                "username": redirector.username,
                "password": redirector.password,
            }
        )
    )
    async with method.acquire(AttemptContext(TraversalRequest(port=0), "relay")) as acq:
        details = acq.candidate.details
        assert details["server"] == redirector.uri("udp")
        assert details["server_address"] == str(where(alternate, "udp"))
        assert details["redirected_from"] == [str(where(redirector, "udp"))]
        assert ALTERNATE_PORTS[0] <= acq.candidate.address.port <= ALTERNATE_PORTS[1]
        assert acq.candidate.reachability.verified  # the self-test came back through it


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a subprocess; the paths are above
async def test_a_crashed_runs_redirected_allocation_is_cleaned_up_on_the_alternate(
    redirector: Coturn, alternate: Coturn, tmp_path: Path
) -> None:
    """``nattrav relay allocate`` against the redirector is killed (SIGKILL). Its journal
    entry names the alternate; while the allocation lives, an Allocate from its 5-tuple to
    the alternate draws 437; ``cleanup`` deletes it there, after which it succeeds."""
    import json
    import os
    import signal
    import subprocess
    import sys

    state = tmp_path / "state"
    argv = [
        sys.executable,
        "-m",
        "nattrav.cli",
        "relay",
        "allocate",
        redirector.uri("udp"),
        "--user",
        redirector.username,
        "--password",
        redirector.password,
        "--json",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NATTRAV_STATE_DIR": str(state)},
    )
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        printed = json.loads(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
        proc.stdout.close()  # type: ignore[union-attr]
    assert printed["event"] == "allocated"
    assert printed["server_address"] == str(where(alternate, "udp"))
    assert printed["redirected_from"] == [str(where(redirector, "udp"))]
    [entry] = Journal(state).leftovers()
    assert entry.data["server_address"] == str(where(alternate, "udp"))
    table = {
        "servers": [redirector.uri("udp")],
        "username": redirector.username,
        "password": redirector.password,
    }
    await assert_cleanup_frees_the_5_tuple(alternate, entry, table)


# ----------------------------------------------------------------------------- refused


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coturn, Coturn]]:
    """Two coturns that redirect every Allocate to each other."""
    ports = [free_port() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [free_port() for _ in range(4)]
    first, first_tls, second, second_tls = ports
    with (
        run_coturn(
            tmp_path_factory.mktemp("loop-a"),
            port=first,
            tls_port=first_tls,
            extra=["--verbose", f"--alternate-server=127.0.0.1:{second}"],
        ) as a,
        run_coturn(
            tmp_path_factory.mktemp("loop-b"),
            port=second,
            tls_port=second_tls,
            password=a.password,
            extra=["--verbose", f"--alternate-server=127.0.0.1:{first}"],
        ) as b,
    ):
        yield a, b


async def test_a_redirect_loop_between_two_coturns_is_stopped(loop: tuple[Coturn, Coturn]) -> None:
    a, b = loop
    with pytest.raises(RelayError, match="redirect loop") as caught:
        async with allocate(a.uri("udp"), **credentials(a, "udp"), allocate_timeout=3):
            pytest.fail("a loop cannot allocate")
    assert not caught.value.retryable  # the chain goes on with the next configured server
    event = caught.value.event
    assert event is not None and getattr(event, "redirect", None) == c.Address("127.0.0.1", a.port)
    assert "error 300" in b.log() and "error 300" in a.log()  # A -> B, B -> A: then stop


async def test_max_redirects_zero_follows_none(redirector: Coturn) -> None:
    with pytest.raises(RelayError, match="following redirects is off"):
        async with allocate(
            redirector.uri("udp"), **credentials(redirector, "udp"), max_redirects=0
        ):
            pytest.fail("the redirect should not be followed")


# ----------------------------------------------------------------------------- ALTERNATE-DOMAIN


@contextmanager
def tls_redirector(cert_of: Coturn, to: Coturn, domain: str) -> Iterator[int]:
    """A scripted TLS "TURN server" (coturn never sends ALTERNATE-DOMAIN): it answers each
    Allocate with an unprotected 300 naming ``to``'s TLS port and ``domain``, presenting
    ``cert_of``'s certificate. Yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_of.directory / "cert.pem", cert_of.directory / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    script = ScriptedServer()

    def read(conn: ssl.SSLSocket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            raw.settimeout(2)
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    head = read(conn, 20)
                    request = script.parse(head + read(conn, int.from_bytes(head[2:4], "big")))
                    attributes = {
                        c.ALTERNATE_SERVER: ("127.0.0.1", to.tls_port),
                        c.ALTERNATE_DOMAIN: domain,
                    }
                    conn.sendall(script.error(request, 300, "Try Alternate", attributes, sign=None))
                    conn.recv(1)  # until the client leaves
            except (OSError, ssl.SSLError, ConnectionError):
                pass
            finally:
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(("domain", "works"), [("localhost", True), ("wrong.nattrav.test", False)])
async def test_alternate_domain_is_the_name_verified_at_the_alternate(
    alternate: Coturn, domain: str, works: bool
) -> None:
    """RFC 8489 §10: over TLS the ALTERNATE-DOMAIN names the certificate the alternate must
    present. The alternate's certificate is for localhost, 127.0.0.1 and ::1."""
    with tls_redirector(alternate, alternate, domain) as port:
        args = credentials(alternate, "tls")
        if works:
            async with allocate(f"turns:127.0.0.1:{port}", **args) as ep:
                assert ep.server_address == where(alternate, "tls")
                assert ep.redirected_from == [TransportAddress("127.0.0.1", port, Transport.TCP)]
                await round_trip(ep, b"over TLS, by name")
        else:
            with pytest.raises(RelayError, match=f"certificate of {domain}"):
                async with allocate(f"turns:127.0.0.1:{port}", **args, allocate_timeout=3):
                    pytest.fail("the alternate's certificate is not for that name")
