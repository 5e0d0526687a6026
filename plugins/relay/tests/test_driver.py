"""The relay driver against a real coturn on loopback, on asyncio and trio.

UDP, TCP and TLS (certificate verified, and refused when it cannot be), IPv4, IPv6 and dual
allocations, ChannelData and Send indications, permissions for peers that send first,
refresh under a short lifetime, a server restart mid-session (LOST then CHANGED), a stale
nonce, a refused password, a quota (486), a ChannelBind 400 (T7), cancellation and the
journal. Peers are plain UDP sockets on loopback.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from nattrav.journal import Journal
from nattrav.models import LeaseEvent, LeaseEventKind, TransportAddress
from nattrav_relay.driver import RelayEndpoint, RelayError, allocate
from nattrav_relay.events import AllocationFailed
from nattrav_relay.testing import Coturn, run_coturn

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def peer_socket(host: str = "127.0.0.1") -> AsyncIterator[anyio.abc.UDPSocket]:
    sock = await anyio.create_udp_socket(local_host=host)
    async with sock:
        yield sock


def address_of(sock: anyio.abc.UDPSocket) -> TransportAddress:
    host, port = sock.extra(anyio.abc.SocketAttribute.local_address)[:2]
    return TransportAddress(str(host), int(port))


def relay_args(server: Coturn, transport: str = "udp", host: str = "127.0.0.1") -> dict:
    args: dict = {"username": server.username, "password": server.password}
    if transport == "tls":
        args["ssl_context"] = ssl.create_default_context(cafile=str(server.ca_path))
    return {"server": server.uri(transport, host), **args}


async def round_trip(ep: RelayEndpoint, peer: anyio.abc.UDPSocket, payload: bytes) -> None:
    """Client -> relay -> peer, and the peer's answer back through the relay."""
    await ep.send_to(payload, address_of(peer))
    with anyio.fail_after(3):
        data, source = await peer.receive()
    assert data == payload
    assert (str(source[0]), int(source[1])) == (
        ep.relayed_for(address_of(peer).family).host,
        ep.relayed_for(address_of(peer).family).port,
    )
    await peer.sendto(b"re:" + payload, source[0], source[1])
    with anyio.fail_after(3):
        got, sender = await ep.receive()
    assert got == b"re:" + payload and sender == address_of(peer)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_allocate_relay_and_release(coturn: Coturn, transport: str) -> None:
    events: list[LeaseEvent] = []
    async with allocate(**relay_args(coturn, transport), on_event=events.append) as ep:
        assert ep.relayed.host == "127.0.0.1" and ep.relayed.port >= 49152
        assert ep.mapped is not None and ep.mapped.host == "127.0.0.1"
        assert ep.local is not None and ep.local.port == ep.mapped.port
        assert ep.lifetime == 600 and ep.transport == transport
        async with peer_socket() as peer:
            for n in range(3):
                await round_trip(ep, peer, b"datagram %d" % n)
        stats = ep.stats
        assert stats.packets_sent == 3 and stats.packets_received == 3
        assert stats.channel_packets_sent >= 2  # the first may wait for the binding
        assert stats.channels_bound == 1 and stats.allocations == 1
    kinds = [e.kind for e in events]
    assert kinds == [LeaseEventKind.ACQUIRED, LeaseEventKind.RELEASED]
    assert events[-1].details["confirmed"] is True  # the server answered the delete


async def test_send_indications_when_channels_are_off(coturn: Coturn) -> None:
    async with allocate(**relay_args(coturn), channels=False) as ep:
        async with peer_socket() as peer:
            await round_trip(ep, peer, b"no channel")
            await round_trip(ep, peer, b"still none")
        assert ep.stats.channel_packets_sent == 0
        assert ep.stats.indication_packets_sent == 2
        assert ep.stats.indication_packets_received == 2


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_ipv6_relay(coturn: Coturn, transport: str) -> None:
    async with allocate(**relay_args(coturn, transport, "::1"), families=(6,)) as ep:
        assert ep.relayed.host == "::1"
        assert ep.server_address is not None and ep.server_address.host == "::1"
        async with peer_socket("::1") as peer:
            await round_trip(ep, peer, b"over six")


async def test_dual_allocation_relays_both_families(coturn: Coturn) -> None:
    async with allocate(**relay_args(coturn), families=(4, 6)) as ep:
        assert sorted(a.family for a in ep.relayed_addresses) == [4, 6]
        async with peer_socket("127.0.0.1") as peer4, peer_socket("::1") as peer6:
            await round_trip(ep, peer4, b"four")
            await round_trip(ep, peer6, b"six")


async def test_a_permitted_peer_can_send_first_and_others_cannot(coturn: Coturn) -> None:
    async with peer_socket() as friend, peer_socket("127.0.0.2") as stranger:
        async with allocate(**relay_args(coturn), permit=["127.0.0.1"]) as ep:
            assert ep.permitted == ["127.0.0.1"]
            relayed = ep.relayed
            await stranger.sendto(b"let me in", relayed.host, relayed.port)
            await friend.sendto(b"hello first", relayed.host, relayed.port)
            with anyio.fail_after(3):
                data, sender = await ep.receive()
            assert (data, sender) == (b"hello first", address_of(friend))
            with anyio.move_on_after(0.3):
                await ep.receive()
                pytest.fail("a peer without permission got through")
            await ep.permit("127.0.0.2")
            await stranger.sendto(b"now allowed", relayed.host, relayed.port)
            with anyio.fail_after(3):
                assert (await ep.receive())[0] == b"now allowed"


async def test_tls_refuses_an_untrusted_certificate(coturn: Coturn) -> None:
    with pytest.raises(RelayError, match=r"not trusted|certificate"):
        async with allocate(
            coturn.uri("tls"),
            username=coturn.username,
            password=coturn.password,
            ca_file=None,
            allocate_timeout=3,
        ):
            pytest.fail("connected to an untrusted server")


async def test_tls_refuses_a_certificate_for_another_name(coturn: Coturn) -> None:
    context = ssl.create_default_context(cafile=str(coturn.ca_path))
    with pytest.raises(RelayError, match=r"not trusted|certificate|hostname"):
        async with allocate(
            coturn.uri("tls"),
            username=coturn.username,
            password=coturn.password,
            ssl_context=context,
            server_name="turn.example.org",
            allocate_timeout=3,
        ):
            pytest.fail("accepted a certificate for another name")


async def test_tls_with_a_ca_file_and_the_server_name(coturn: Coturn) -> None:
    async with allocate(
        coturn.uri("tls"),
        username=coturn.username,
        password=coturn.password,
        ca_file=str(coturn.ca_path),
        server_name="localhost",
    ) as ep:
        async with peer_socket() as peer:
            await round_trip(ep, peer, b"secret")


async def test_wrong_password_is_refused_without_retry(coturn: Coturn) -> None:
    """T4 against coturn: 401 after credentials -> stop and notify."""
    with pytest.raises(RelayError) as caught:
        async with allocate(coturn.uri("udp"), username=coturn.username, password="wrong"):
            pytest.fail("allocated with a wrong password")
    event = caught.value.event
    assert isinstance(event, AllocationFailed) and event.code == 401
    assert not caught.value.retryable


async def test_unreachable_server_is_a_retryable_error() -> None:
    with pytest.raises(RelayError) as caught:
        async with allocate(
            "turn:127.0.0.1:9?transport=udp", username="u", password="p", allocate_timeout=0.6
        ):
            pytest.fail("allocated on nothing")
    assert caught.value.retryable


async def test_refresh_under_a_short_lifetime_and_stale_nonces(tmp_path: Path) -> None:
    """T2 (coturn grants 4 s, not the 600 s asked) and T4 (a 2 s nonce goes stale between
    refreshes): the client refreshes at half-life and answers every 438 with the new nonce."""
    with run_coturn(tmp_path, extra=["--max-allocate-lifetime=4", "--stale-nonce=2"]) as server:
        events: list[LeaseEvent] = []
        async with allocate(**relay_args(server), on_event=events.append) as ep:
            assert ep.lifetime == 4
            await anyio.sleep(5.0)
            assert ep.stats.refreshes >= 2
            assert ep.stats.auth_retries >= 2  # the first 401 and at least one 438
            async with peer_socket() as peer:
                await round_trip(ep, peer, b"still here")
            assert ep.generation == 1
        assert [e.kind for e in events].count(LeaseEventKind.RENEWED) >= 2
        assert LeaseEventKind.LOST not in [e.kind for e in events]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_server_restart_is_recovered_with_a_new_allocation(
    tmp_path: Path, transport: str
) -> None:
    """T3: after a restart the server answers 437 (UDP) or the connection drops (TCP): the
    endpoint re-allocates, says LOST then CHANGED, and the new relayed address works."""
    with run_coturn(tmp_path, extra=["--max-allocate-lifetime=4"]) as server:
        events: list[LeaseEvent] = []
        async with allocate(**relay_args(server, transport), on_event=events.append) as ep:
            first = ep.relayed
            async with peer_socket() as peer:
                await round_trip(ep, peer, b"before")
                await anyio.to_thread.run_sync(server.restart)
                with anyio.fail_after(15):
                    while ep.generation < 2:
                        await anyio.sleep(0.05)
                assert ep.relayed != first
                await round_trip(ep, peer, b"after")
        kinds = [e.kind for e in events]
        assert LeaseEventKind.LOST in kinds and LeaseEventKind.CHANGED in kinds
        assert kinds.index(LeaseEventKind.LOST) < kinds.index(LeaseEventKind.CHANGED)
        changed = next(e for e in events if e.kind is LeaseEventKind.CHANGED)
        assert changed.endpoint == ep.relayed and str(first) in changed.detail


async def test_channel_bind_400_restarts_the_allocation(coturn: Coturn) -> None:
    """T7 against coturn: binding a number already bound to another peer draws a 400; the
    client deletes the allocation and starts afresh."""
    events: list[LeaseEvent] = []
    async with allocate(**relay_args(coturn), on_event=events.append) as ep:
        async with peer_socket() as a, peer_socket() as b:
            assert await ep.bind(address_of(a)) == 0x4000
            assert ep._client is not None
            ep._client._next_number = 0x4000  # simulate a client that lost track
            with pytest.raises(RelayError, match="out of sync"):
                await ep.bind(address_of(b))
            with anyio.fail_after(5):
                while ep.generation < 2:
                    await anyio.sleep(0.05)
            await round_trip(ep, b, b"fresh start")
    assert [e.kind for e in events][:3] == [
        LeaseEventKind.ACQUIRED,
        LeaseEventKind.LOST,
        LeaseEventKind.CHANGED,
    ]


async def test_quota_reached_is_486_with_a_minute_of_back_off(tmp_path: Path) -> None:
    with run_coturn(tmp_path, extra=["--user-quota=1"]) as server:
        async with allocate(**relay_args(server)):
            with pytest.raises(RelayError) as caught:
                async with allocate(**relay_args(server)):
                    pytest.fail("second allocation beyond the quota")
    event = caught.value.event
    assert isinstance(event, AllocationFailed) and event.code == 486
    assert event.retry_at is not None


async def test_cancellation_still_deletes_the_allocation(coturn: Coturn) -> None:
    events: list[LeaseEvent] = []
    with anyio.CancelScope() as scope:
        async with allocate(**relay_args(coturn), on_event=events.append):
            scope.cancel()
            await anyio.sleep(1)
    assert events[-1].kind is LeaseEventKind.RELEASED
    assert events[-1].details["confirmed"] is True


async def test_the_journal_holds_the_allocation_while_it_lives(
    coturn: Coturn, tmp_path: Path
) -> None:
    journal = Journal(tmp_path)
    async with allocate(**relay_args(coturn), journal=journal) as ep:
        [entry] = journal.entries()
        assert entry.kind == "allocation" and entry.method == "relay"
        assert entry.data["relayed"] == [str(ep.relayed)]
        assert entry.data["local"] == str(ep.local)
        assert "password" not in entry.data
    assert journal.entries() == []


async def test_event_stream_check_and_describe(coturn: Coturn) -> None:
    async with allocate(**relay_args(coturn)) as ep:
        async with ep.events() as stream:
            await ep.permit("127.0.0.3")
            await ep.check()  # a Refresh now
            with anyio.fail_after(3):
                event = await stream.receive()
            assert event.kind is LeaseEventKind.RENEWED and event.endpoint == ep.relayed
            info = ep.describe()
            assert info["relayed"] == [str(ep.relayed)] and "127.0.0.3" in info["permissions"]
            assert info["stats"]["permissions_created"] == 1
            assert info["stats"]["refreshes"] == 1


async def test_without_recovery_a_lost_allocation_ends_the_body(tmp_path: Path) -> None:
    with run_coturn(tmp_path) as server:
        with pytest.raises(RelayError, match="allocation lost"):
            async with allocate(**relay_args(server), recover=False) as ep:
                await anyio.to_thread.run_sync(server.restart)
                await ep.check()
                await anyio.sleep(10)
                pytest.fail("the loss went unnoticed")


async def test_send_to_a_family_without_relay_is_an_error(coturn: Coturn) -> None:
    async with allocate(**relay_args(coturn)) as ep:
        with pytest.raises(RelayError, match="no IPv6 relayed address"):
            await ep.send_to(b"x", ("::1", 9999))


async def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(RelayError, match="credentials"):
        async with allocate("turn:127.0.0.1"):
            pass
    with pytest.raises(RelayError, match="not a turn"):
        async with allocate("stun:127.0.0.1", username="u", password="p"):
            pass
    with pytest.raises(RelayError, match="settings"):
        async with allocate("turn:127.0.0.1", username="u", password="p", families=(5,)):
            pass
