"""The rendezvous server and client on loopback, on asyncio and trio."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import anyio
import pytest
from nattrav_p2p.errors import SignalError
from nattrav_p2p.rendezvous import (
    MAX_MESSAGE,
    RendezvousServer,
    parse_url,
    rendezvous_signal,
    serve,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, RendezvousServer]]:
    srv = RendezvousServer()
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(serve, "127.0.0.1", 0, server=srv))
        yield f"ws://127.0.0.1:{port}/", srv
        tg.cancel_scope.cancel()


async def test_two_peers_swap_messages(server: tuple[str, RendezvousServer]) -> None:
    url, srv = server
    async with rendezvous_signal(url, "room-1") as a:
        assert a.peers == 1
        await a.send({"type": "offer", "n": 1})  # held until b joins
        async with rendezvous_signal(url, "room-1") as b:
            assert b.peers == 2
            with anyio.fail_after(2):
                assert await b.receive() == {"type": "offer", "n": 1}
                await b.send({"type": "answer"})
                assert await a.receive() == {"type": "answer"}
        # Rooms are separate and vanish with their last peer.
        assert list(srv.rooms) == ["room-1"]
    with anyio.fail_after(5):  # the server notices the close on its own schedule
        while srv.rooms:
            await anyio.sleep(0.01)


async def test_third_peer_is_refused(server: tuple[str, RendezvousServer]) -> None:
    url, _ = server
    async with rendezvous_signal(url, "full"), rendezvous_signal(url, "full"):
        with pytest.raises(SignalError, match="full"):
            async with rendezvous_signal(url, "full"):
                pass


async def test_bad_room_names_are_refused_locally() -> None:
    with pytest.raises(SignalError, match="room name"):
        async with rendezvous_signal("ws://127.0.0.1:9/", "no spaces"):
            pass
    with pytest.raises(SignalError, match="expected ws://"):
        parse_url("http://example.org/")
    assert parse_url("wss://h.example/x") == ("h.example", 443, "/x", True)


async def test_hostile_clients_lose_only_their_connection(
    server: tuple[str, RendezvousServer],
) -> None:
    url, srv = server
    host, port, _, _ = parse_url(url)
    async with rendezvous_signal(url, "calm") as good:
        # Not a websocket at all.
        async with await anyio.connect_tcp(host, port) as raw:
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(2):
                reply = await raw.receive()
            assert b"400" in reply.split(b"\r\n", 1)[0]
        # A websocket that sends garbage, then one that sends too much.
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request, TextMessage

        for payload in ("not json", '{"join": "' + "x" * (MAX_MESSAGE + 10) + '"}'):
            async with await anyio.connect_tcp(host, port) as raw:
                ws = WSConnection(ConnectionType.CLIENT)
                await raw.send(ws.send(Request(host="x", target="/")))
                ws.receive_data(await raw.receive())
                list(ws.events())
                await raw.send(ws.send(TextMessage(data=payload)))
                with anyio.fail_after(2):
                    while True:
                        try:
                            await raw.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
        # The well-behaved peer still works.
        async with rendezvous_signal(url, "calm") as other:
            await other.send({"ok": True})
            with anyio.fail_after(2):
                assert await good.receive() == {"ok": True}
    assert srv.rejected >= 2


async def test_peer_leaving_is_not_a_message(server: tuple[str, RendezvousServer]) -> None:
    url, _ = server
    async with rendezvous_signal(url, "bye") as a:
        async with rendezvous_signal(url, "bye"):
            pass
        # {"peer": "left"} is skipped; the next real message is returned.
        async with rendezvous_signal(url, "bye") as c:
            await c.send({"again": 1})
            with anyio.fail_after(2):
                assert await a.receive() == {"again": 1}


async def test_unreachable_server_is_a_signal_error() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with pytest.raises(SignalError, match="cannot reach"):
        async with rendezvous_signal(f"ws://127.0.0.1:{port}/", "r"):
            pass
