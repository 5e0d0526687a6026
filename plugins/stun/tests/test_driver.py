"""The driver end to end against a real coturn on loopback, on asyncio and trio."""

from __future__ import annotations

import socket

import anyio
import pytest
from nattrav.datagram import DatagramMux
from nattrav_stun import codec as c
from nattrav_stun.auth import LongTermCredentials
from nattrav_stun.driver import (
    ClientSettings,
    StunClient,
    StunError,
    happy_eyeballs,
    resolve,
    run_bindings,
)
from nattrav_stun.events import (
    AuthenticationFailed,
    IntegrityViolated,
    SuccessResponse,
    TimedOut,
)
from nattrav_stun.testing import Coturn
from nattrav_stun.transaction import Timers

pytestmark = pytest.mark.anyio

FAST = Timers(rto=0.05, rc=3, rm=4, ti=2.0)


@pytest.fixture(params=[None, False], ids=["auto", "portable"])
def settings(request: pytest.FixtureRequest) -> ClientSettings:
    """On asyncio: the fast path (auto) and the portable anyio path; on trio both are the
    portable path, so the matrix covers every driver."""
    return ClientSettings(fast_path=request.param, timers=FAST)


async def test_binding_reports_mapping_and_rfc5780_hints(
    coturn: Coturn, settings: ClientSettings
) -> None:
    async with StunClient.open(settings) as client:
        result = await client.binding(coturn.uri)
        endpoint = await client.endpoint_for(4)
    assert result.mapped == c.Address("127.0.0.1", endpoint.local.port)  # type: ignore[union-attr]
    assert result.server == c.Address("127.0.0.1", coturn.port)
    assert result.source == result.server
    assert result.other_address == c.Address("127.0.0.2", coturn.port + 1)
    assert result.response_origin == c.Address("127.0.0.1", coturn.port)
    assert result.software and "Coturn" in result.software
    assert result.rtt is not None and result.rtt < 1.0
    assert not result.authenticated


async def test_rto_cache_learns_the_server(coturn: Coturn, settings: ClientSettings) -> None:
    async with StunClient.open(settings) as client:
        await client.binding(coturn.uri)
        assert len(client.rto_cache) == 1
        assert client.rto_cache.rto_for("127.0.0.1", 0.0) < FAST.rto * 10


async def test_long_term_credentials_authenticate(
    coturn_secure: Coturn, settings: ClientSettings
) -> None:
    creds = LongTermCredentials(coturn_secure.username, coturn_secure.password)
    async with StunClient.open(
        ClientSettings(credentials=creds, fast_path=settings.fast_path)
    ) as client:
        first = await client.binding(coturn_secure.uri)
        assert first.authenticated
        session = client.session("udp", c.Address("127.0.0.1", coturn_secure.port))
        assert session.realm == coturn_secure.realm and session.ready
        second = await client.binding(coturn_secure.uri)  # signed from the start now
        assert second.authenticated and second.mapped == first.mapped


async def test_wrong_password_fails_as_authentication_not_timeout(coturn_secure: Coturn) -> None:
    creds = LongTermCredentials(coturn_secure.username, "not-the-password")
    async with StunClient.open(ClientSettings(credentials=creds, timers=FAST)) as client:
        with pytest.raises(StunError) as info:
            await client.binding(coturn_secure.uri)
    assert isinstance(info.value.event, AuthenticationFailed)
    assert "rejected" in info.value.event.reason


async def test_no_credentials_against_secure_stun(coturn_secure: Coturn) -> None:
    async with StunClient.open(ClientSettings(timers=FAST)) as client:
        with pytest.raises(StunError, match="no credentials"):
            await client.binding(coturn_secure.uri)


async def test_tcp_binding(coturn: Coturn, settings: ClientSettings) -> None:
    async with StunClient.open(settings) as client:
        result = await client.binding(f"stun:127.0.0.1:{coturn.port}?transport=tcp")
        again = await client.binding(f"stun:127.0.0.1:{coturn.port}?transport=tcp")
    assert result.transport == "tcp"
    assert result.mapped.host == "127.0.0.1" and result.local is not None
    assert result.mapped.port == result.local.port
    assert again.mapped == result.mapped  # the connection is reused


async def test_tls_binding_verifies_the_server(coturn_secure: Coturn, test_ca_file: str) -> None:
    creds = LongTermCredentials(coturn_secure.username, coturn_secure.password)
    trusted = ClientSettings(credentials=creds, ca_file=test_ca_file, timers=FAST)
    async with StunClient.open(trusted) as client:
        result = await client.binding(
            f"stuns:localhost:{coturn_secure.tls_port}",
        )
    assert result.transport == "tls" and result.authenticated
    # The system store does not know the test CA: the handshake must fail, nothing sent.
    untrusted = ClientSettings(credentials=creds, timers=FAST)
    async with StunClient.open(untrusted) as client:
        with pytest.raises(StunError, match="TLS"):
            await client.binding(f"stuns:localhost:{coturn_secure.tls_port}")


async def test_silent_server_times_out_on_schedule(settings: ClientSettings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        address = silent.getsockname()
        async with StunClient.open(settings) as client:
            start = anyio.current_time()
            exchange = await client.request(f"127.0.0.1:{address[1]}")
            elapsed = anyio.current_time() - start
        received = 0
        while True:
            try:
                silent.recvfrom(2048)
            except BlockingIOError:
                break
            received += 1
    assert exchange.event == TimedOut(sends=3)
    assert received == 3
    assert 0.3 <= elapsed < 2.0  # 0.05 + 0.1, then 4 x 0.05 = 0.35 s


async def test_at_most_ten_outstanding_per_server(settings: ClientSettings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        server = c.Address("127.0.0.1", silent.getsockname()[1])
        seen: set[bytes] = set()
        async with StunClient.open(settings) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(15):
                    tg.start_soon(client.exchange_udp, server, c.BINDING, None)
                await anyio.sleep(0.03)  # before the first retransmission at 0.05 s
                while True:
                    try:
                        data, _ = silent.recvfrom(2048)
                    except BlockingIOError:
                        break
                    seen.add(data[8:20])
                assert len(seen) == 10
                assert sum(client._outstanding.values()) == 10
                tg.cancel_scope.cancel()


async def test_shared_port_through_the_mux(coturn: Coturn, settings: ClientSettings) -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        async with StunClient.open(settings, mux=mux) as client:
            result = await client.binding(coturn.uri)
            assert result.mapped == c.Address("127.0.0.1", mux.port)
            # the application's own traffic still reaches the application
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.sendto(b"\x80app data", ("127.0.0.1", mux.port))
                with anyio.fail_after(2):
                    data, _source = await mux.app.receive()
            assert data == b"\x80app data"
            # a late duplicate of our response is claimed (and dropped), not given to the app
            late = c.encode(
                c.Message(
                    c.BINDING,
                    c.SUCCESS,
                    client.new_transaction_id(),
                    {c.XOR_MAPPED_ADDRESS: c.Address("127.0.0.1", 1)},
                )
            )
            tid = late[8:20]
            client._recent[tid] = None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.sendto(late, ("127.0.0.1", mux.port))
            await anyio.sleep(0.1)
            assert client.stats.late == 1
            with pytest.raises(anyio.WouldBlock):
                mux._app_recv.receive_nowait()


async def test_tampered_responses_end_as_integrity_violation(settings: ClientSettings) -> None:
    """A scripted fake server: coturn cannot be made to send a wrong MESSAGE-INTEGRITY,
    which is exactly what an on-path attacker would do."""
    from nattrav_stun.auth import ShortTermCredentials

    async with await anyio.create_udp_socket(local_host="127.0.0.1") as server:
        port = server.extra(anyio.abc.SocketAttribute.local_port)

        async def forge() -> None:
            async for data, addr in server:
                req = c.decode(data)
                reply = c.Message(
                    c.BINDING,
                    c.SUCCESS,
                    req.transaction_id,
                    {c.XOR_MAPPED_ADDRESS: c.Address("203.0.113.66", 6666)},
                )
                await server.sendto(c.encode(reply, integrity=c.IntegrityKey(b"forged")), *addr)

        creds = ShortTermCredentials("user", "right-password")
        client_settings = ClientSettings(
            credentials=creds, timers=FAST, fast_path=settings.fast_path
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(forge)
            async with StunClient.open(client_settings) as client:
                exchange = await client.request(f"127.0.0.1:{port}")
            tg.cancel_scope.cancel()
    event = exchange.event
    assert isinstance(event, IntegrityViolated)
    assert event.discarded == 3 and event.sends == 3


async def test_hairpin_watch_sees_an_incoming_request(settings: ClientSettings) -> None:
    async with StunClient.open(settings) as client:
        receiver = await client.add_socket(4, host="127.0.0.1")
        sender = await client.add_socket(4, host="127.0.0.1")
        msg = c.Message(c.BINDING, c.REQUEST, client.new_transaction_id())
        async with client.watch(msg.transaction_id) as watch:
            await client.send_raw(c.encode(msg), receiver.local, sender)
            with anyio.fail_after(2):
                await watch.event.wait()
        assert watch.source == sender.local and watch.endpoint is receiver


async def test_resolution_orders_ipv6_first() -> None:
    addresses = await resolve("localhost", 3478)
    assert addresses
    families = [a.family for a in addresses]
    if 6 in families and 4 in families:
        assert families[0] == 6
    assert await resolve("192.0.2.1", 1) == [c.Address("192.0.2.1", 1)]
    with pytest.raises(StunError):
        await resolve("192.0.2.1", 1, frozenset({6}))


async def test_happy_eyeballs_staggers_and_first_answer_wins() -> None:
    started: list[tuple[str, float]] = []
    t0 = anyio.current_time()
    msg = c.decode(
        c.encode(
            c.Message(
                c.BINDING, c.SUCCESS, attributes={c.XOR_MAPPED_ADDRESS: c.Address("192.0.2.1", 1)}
            )
        )
    )

    async def attempt(address: c.Address) -> SuccessResponse | TimedOut:
        started.append((address.host, anyio.current_time() - t0))
        if address.family == 6:
            await anyio.sleep(5)  # IPv6 path black-holed
            return TimedOut(sends=1)
        return SuccessResponse(msg, address)

    winner, event = await happy_eyeballs(
        [c.Address("2001:db8::1", 1), c.Address("192.0.2.1", 1)], attempt, 0.1
    )
    assert winner.host == "192.0.2.1" and isinstance(event, SuccessResponse)
    assert started[0][0] == "2001:db8::1" and started[1][1] >= 0.09
    assert anyio.current_time() - t0 < 1.0  # the IPv6 attempt was cancelled

    async def failing(address: c.Address) -> TimedOut:
        return TimedOut(sends=1)

    t1 = anyio.current_time()
    _, event = await happy_eyeballs(
        [c.Address("2001:db8::1", 1), c.Address("192.0.2.1", 1)], failing, 5.0
    )
    assert isinstance(event, TimedOut)
    assert anyio.current_time() - t1 < 1.0  # a failure starts the next at once


async def test_benchmark_hook(coturn: Coturn) -> None:
    result = await run_bindings(coturn.uri, 200, concurrency=4)
    assert result.succeeded == 200 and result.failed == 0
    assert result.per_second > 0
    spread = await run_bindings(coturn.uri, 120, concurrency=2, sockets=3)
    assert spread.succeeded == 120


def test_fast_path_on_uvloop(coturn: Coturn) -> None:
    """The asyncio fast path (add_reader + own timers) also runs on uvloop."""
    from nattrav_stun.driver import bench_bindings

    result = bench_bindings(coturn.uri, 100, concurrency=20, use_uvloop=True)
    assert result.fast_path and result.succeeded == 100

    async def binding() -> tuple[bool, c.Address]:
        import asyncio

        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with StunClient.open(ClientSettings(timers=FAST)) as client:
            mapped = (await client.binding(coturn.uri)).mapped
            return client._loop is not None, mapped

    fast, mapped = anyio.run(binding, backend_options={"use_uvloop": True})
    assert fast and mapped.host == "127.0.0.1"


async def test_tcp_challenge_and_answer_race_regression(coturn_secure: Coturn) -> None:
    """Regression: over TCP the 401 (and then the success) can be dispatched while the
    requester is still inside ``send``; the retry must go out at once and its answer must
    match. This used to time out about one time in five on trio."""
    creds = LongTermCredentials(coturn_secure.username, coturn_secure.password)
    for _ in range(15):
        async with StunClient.open(ClientSettings(credentials=creds, timers=FAST)) as client:
            result = await client.binding(f"stun:127.0.0.1:{coturn_secure.port}?transport=tcp")
            assert result.authenticated and result.transport == "tcp"


async def test_local_send_error_fails_the_transaction(settings: ClientSettings) -> None:
    """A hard local error (here: broadcast without SO_BROADCAST) ends the transaction at
    once, as a hard ICMP error would, instead of escaping as an OSError."""
    from nattrav_stun.events import TransactionFailed

    async with StunClient.open(settings) as client:
        event = await client.exchange_udp(c.Address("255.255.255.255", 3478))
    assert isinstance(event, TransactionFailed) and "cannot send" in event.reason


# ----------------------------------------------------------------------------- lean path
# Plain Binding requests (no credentials, UDP, an IP address) take the lean path of
# binding_table.py on asyncio; on trio, and with ``fast_path=False``, the general path. The
# tests below run on both and expect the same behaviour.


def _silent_socket() -> socket.socket:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    return silent


async def test_lean_path_on_asyncio_general_path_elsewhere(
    coturn: Coturn, settings: ClientSettings, anyio_backend: str
) -> None:
    async with StunClient.open(settings) as client:
        results = [await client.binding(coturn.uri) for _ in range(3)]
        endpoint = await client.endpoint_for(4)
        lean = endpoint.lean
        if anyio_backend == "asyncio" and settings.fast_path is None:
            assert lean is not None and not lean.pending
            assert lean._memo is not None  # coturn's answers went through the table
        else:
            assert lean is None
    assert len({r.mapped for r in results}) == 1
    assert all(r.source == r.server and r.other_address is not None for r in results)


async def test_scripted_server_loss_garbage_wrong_source_duplicates(
    settings: ClientSettings,
) -> None:
    """A scripted fake server: coturn never drops a request, answers from another address,
    sends garbage with our transaction ID or answers twice; a path and an attacker can."""
    mapped = c.Address("203.0.113.5", 4242)
    async with (
        await anyio.create_udp_socket(local_host="127.0.0.1") as server,
        await anyio.create_udp_socket(local_host="127.0.0.1") as impostor,
    ):
        port = server.extra(anyio.abc.SocketAttribute.local_port)
        seen: list[bytes] = []

        async def serve() -> None:
            async for data, addr in server:
                req = c.decode(data)
                seen.append(req.transaction_id)
                if len(seen) % 2:  # every first send of a transaction is "lost"
                    continue
                good = c.encode(
                    c.Message(
                        c.BINDING,
                        c.SUCCESS,
                        req.transaction_id,
                        {c.XOR_MAPPED_ADDRESS: mapped},
                    )
                )
                forged = c.encode(
                    c.Message(
                        c.BINDING,
                        c.SUCCESS,
                        req.transaction_id,
                        {c.XOR_MAPPED_ADDRESS: c.Address("198.51.100.66", 6666)},
                    )
                )
                await impostor.sendto(forged, *addr)  # wrong source: discarded
                await server.sendto(data[:8] + req.transaction_id + b"garbage!", *addr)
                await server.sendto(good, *addr)
                await server.sendto(good, *addr)  # duplicate: ignored

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            async with StunClient.open(settings) as client:
                target = c.Address("127.0.0.1", port)
                first = await client.binding(target)
                second = await client.binding(target)
                await anyio.sleep(0.05)  # the duplicates and late answers arrive
                third = await client.binding(target)
            tg.cancel_scope.cancel()
    for result in (first, second, third):
        assert result.mapped == mapped and result.source == target
        assert result.rtt is None  # retransmitted: no RTT sample (Karn)
    assert len(seen) == 6 and seen[0] == seen[1] and seen[2] == seen[3]
    assert len(set(seen)) == 3


async def test_many_concurrent_bindings(coturn: Coturn, settings: ClientSettings) -> None:
    count = 1500
    async with StunClient.open(
        ClientSettings(fast_path=settings.fast_path, max_outstanding=count)
    ) as client:
        endpoint = await client.add_socket(4, host="127.0.0.1")
        results: list[c.Address] = []

        async def one() -> None:
            results.append((await client.binding(coturn.uri, endpoint=endpoint)).mapped)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)
        assert not client._outstanding
    assert len(results) == count and set(results) == {endpoint.local}


async def test_cancelled_binding_leaves_nothing_behind(settings: ClientSettings) -> None:
    with _silent_socket() as silent:
        target = c.Address(*silent.getsockname())
        async with StunClient.open(settings) as client:
            with anyio.move_on_after(0.1) as scope:
                await client.binding(target)
            assert scope.cancelled_caught
            assert not client._outstanding and not client._pending
            endpoint = await client.endpoint_for(4)
            assert endpoint.lean is None or not endpoint.lean.pending


async def test_binding_timeout_is_a_short_window(settings: ClientSettings) -> None:
    with _silent_socket() as silent:
        target = c.Address(*silent.getsockname())
        async with StunClient.open(settings) as client:
            start = anyio.current_time()
            with pytest.raises(StunError) as info:
                await client.binding(target, timeout=0.3)
            elapsed = anyio.current_time() - start
    assert isinstance(info.value.event, TimedOut) and info.value.event.sends >= 2
    assert 0.25 <= elapsed < 2.0


async def test_closing_the_client_ends_outstanding_bindings(settings: ClientSettings) -> None:
    with _silent_socket() as silent:
        target = c.Address(*silent.getsockname())
        outcome: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            async with StunClient.open(settings) as client:

                async def run() -> None:
                    try:
                        await client.binding(target)
                    except StunError as exc:
                        outcome.append(exc)

                tg.start_soon(run)
                await anyio.sleep(0.05)
            with anyio.fail_after(2):
                while not outcome:
                    await anyio.sleep(0.01)
    assert "closed" in str(outcome[0])


async def test_own_sockets_get_a_large_receive_buffer(settings: ClientSettings) -> None:
    """Best effort (the kernel caps it): answers to a burst must not overflow it."""
    from nattrav_stun.driver import RECEIVE_BUFFER

    with open("/proc/sys/net/core/rmem_max") as f:
        cap = int(f.read())
    async with StunClient.open(settings) as client:
        endpoint = await client.add_socket(4, host="127.0.0.1")
        size = endpoint.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert size >= min(RECEIVE_BUFFER, cap)


async def test_a_timeout_drops_the_rto_estimate(coturn: Coturn, settings: ClientSettings) -> None:
    """RFC 8489 §6.2.1: an RTO learnt from answers is not kept after a timeout (the lean
    path's per-socket hint goes with the cache entry)."""
    with _silent_socket() as silent:
        async with StunClient.open(settings) as client:
            endpoint = await client.endpoint_for(4)
            await client.binding(coturn.uri, endpoint=endpoint)
            assert len(client.rto_cache) == 1
            if endpoint.lean is not None:
                assert "127.0.0.1" in endpoint.lean.rto_hints
            exchange = await client.request(c.Address(*silent.getsockname()), endpoint=endpoint)
            assert isinstance(exchange.event, TimedOut)
            assert len(client.rto_cache) == 0
            if endpoint.lean is not None:
                assert "127.0.0.1" not in endpoint.lean.rto_hints
