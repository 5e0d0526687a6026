"""The rendezvous server and client: websocket rooms where two peers swap offer and answer.

Theory of operation
-------------------
WebSocket framing is wsproto's (python-hyper, sans-IO); the bytes travel over anyio TCP
streams, so server and client run on asyncio and trio alike. Each message is one JSON text
frame:

* client -> server, first: ``{"join": "<room>"}``; the server answers ``{"joined": "<room>",
  "peers": n}`` or ``{"error": "..."}`` and closes (room full: two peers per room; bad name);
* then ``{"msg": {...}}`` in either direction: the server forwards it to the other peer of
  the room, holding up to ``QUEUE`` messages for a peer that has not joined yet;
* the server tells the remaining peer ``{"peer": "left"}`` when the other disconnects.

Everything a client sends is untrusted: frames larger than ``MAX_MESSAGE`` bytes, non-JSON,
unknown shapes and room names outside ``[A-Za-z0-9._-]{1,64}`` end that connection with a
close frame and an error message; other rooms are unaffected. The server keeps no state
beyond open connections: a room disappears with its last peer.

``rendezvous_signal(url, room)`` is the client side as a ``Signal`` (an async context
manager owning the connection); ``serve(host, port)`` runs the server until cancelled.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalError
from wsproto.utilities import RemoteProtocolError as WsRemoteError

from nattrav_p2p.errors import SignalError

__all__ = [
    "MAX_MESSAGE",
    "RendezvousServer",
    "RendezvousSignal",
    "parse_url",
    "rendezvous_signal",
    "serve",
]

log = logging.getLogger("nattrav.p2p.rendezvous")

MAX_MESSAGE = 65536
QUEUE = 16
_ROOM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Closed(Exception):
    pass


class _Hostile(_Closed):
    """The other end broke the protocol (we closed the connection)."""


class _WsChannel:
    """JSON messages over one websocket (wsproto) on one anyio byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self._pending: deque[Any] = deque()
        self._text: list[str] = []
        self._size = 0
        self._lock = anyio.Lock()
        self.closed = False

    async def _write(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self.stream.send(data)

    async def send_json(self, value: Any) -> None:
        if self.closed or self.ws.state is not ConnectionState.OPEN:
            raise _Closed("connection closed")
        await self._write(self.ws.send(TextMessage(data=json.dumps(value))))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Say goodbye if we can, and always close the TCP stream: a stream left open (the
        goodbye was cut short by a deadline) would keep the other side waiting forever."""
        try:
            if not self.closed:
                self.closed = True
                with suppress(
                    WsLocalError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    await self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        finally:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.stream.aclose()

    async def receive_json(self) -> Any:
        while not self._pending:
            if self.closed:
                raise _Closed("connection closed")
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.closed = True
                raise _Closed("connection closed by the peer") from None
            try:
                self.ws.receive_data(data)
                await self._drain()
            except WsRemoteError as exc:
                await self.close(1002, "protocol error")
                raise _Hostile(f"websocket protocol error: {exc}") from None
        return self._pending.popleft()

    async def _drain(self) -> None:
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._size += len(event.data)
                if self._size > MAX_MESSAGE:
                    await self.close(1009, "message too big")
                    raise _Hostile(f"message larger than {MAX_MESSAGE} bytes")
                self._text.append(event.data)
                if event.message_finished:
                    text = "".join(self._text)
                    self._text, self._size = [], 0
                    try:
                        self._pending.append(json.loads(text))
                    except ValueError:
                        await self.close(1007, "not JSON")
                        raise _Hostile("message is not JSON") from None
            elif isinstance(event, BytesMessage):
                await self.close(1003, "text frames only")
                raise _Hostile("binary frame")
            elif isinstance(event, Ping):
                await self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with suppress(WsLocalError, OSError, anyio.BrokenResourceError):
                    await self._write(self.ws.send(event.response()))
                self.closed = True
                with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self.stream.aclose()
                raise _Closed(f"closed by the peer ({event.code} {event.reason})")


# --------------------------------------------------------------------------- server


@attrs.define(eq=False)
class _Peer:
    channel: _WsChannel
    room: str
    inbox: deque[Any] = attrs.field(factory=deque)


class RendezvousServer:
    """Rooms by name, two peers per room, messages forwarded (state: open connections)."""

    def __init__(self) -> None:
        self.rooms: dict[str, list[_Peer]] = {}
        self.held: dict[str, deque[Any]] = {}
        self.connections = 0
        self.rejected = 0

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one client connection until it closes (never raises)."""
        self.connections += 1
        ws = WSConnection(ConnectionType.SERVER)
        channel = _WsChannel(stream, ws)
        peer: _Peer | None = None
        try:
            with anyio.fail_after(10):
                accepted = await self._handshake(channel)
            if not accepted:
                return
            with anyio.fail_after(30):
                first = await channel.receive_json()
            room = first.get("join") if isinstance(first, dict) else None
            if not isinstance(room, str) or not _ROOM.match(room):
                await self._refuse(
                    channel,
                    'first message must be {"join": ROOM}; ROOM is 1-64 of A-Z a-z 0-9 . _ -',
                )
                return
            members = self.rooms.setdefault(room, [])
            if len(members) >= 2:
                await self._refuse(channel, f"room {room!r} is full (two peers per room)")
                return
            peer = _Peer(channel, room)
            members.append(peer)
            await channel.send_json({"joined": room, "peers": len(members)})
            held = self.held.pop(room, deque())
            for message in held:
                await channel.send_json({"msg": message})
            while True:
                value = await channel.receive_json()
                message = value.get("msg") if isinstance(value, dict) else None
                if not isinstance(message, dict):
                    await self._refuse(channel, 'messages must be {"msg": {...}}')
                    return
                others = [p for p in self.rooms.get(room, []) if p is not peer]
                if others:
                    with suppress(_Closed, WsLocalError, OSError, anyio.BrokenResourceError):
                        await others[0].channel.send_json({"msg": message})
                else:
                    queue = self.held.setdefault(room, deque())
                    if len(queue) >= QUEUE:
                        await self._refuse(channel, "too many messages held for an absent peer")
                        return
                    queue.append(message)
        except _Hostile as exc:
            self.rejected += 1
            log.info("rendezvous: dropped a client: %s", exc)
        except (_Closed, TimeoutError, OSError, anyio.BrokenResourceError) as exc:
            log.debug("rendezvous: connection ended: %s", exc)
        except Exception as exc:  # one client must never take the server down
            self.rejected += 1
            log.warning("rendezvous: client handler failed: %s: %s", type(exc).__name__, exc)
        finally:
            if peer is not None:
                members = self.rooms.get(peer.room, [])
                if peer in members:
                    members.remove(peer)
                for other in members:
                    with suppress(_Closed, WsLocalError, OSError, anyio.BrokenResourceError):
                        await other.channel.send_json({"peer": "left"})
                if not members:
                    self.rooms.pop(peer.room, None)
                    self.held.pop(peer.room, None)
            with anyio.move_on_after(1, shield=True):
                await channel.close()

    async def _handshake(self, channel: _WsChannel) -> bool:
        while True:
            try:
                data = await channel.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return False
            try:
                channel.ws.receive_data(data)
                for event in channel.ws.events():
                    if isinstance(event, Request):
                        await channel._write(channel.ws.send(AcceptConnection()))
                        return True
            except (WsRemoteError, WsLocalError):
                self.rejected += 1
                with suppress(WsLocalError, OSError, anyio.BrokenResourceError):
                    await channel._write(
                        channel.ws.send(RejectConnection(status_code=400, has_body=False))
                    )
                return False

    async def _refuse(self, channel: _WsChannel, why: str) -> None:
        self.rejected += 1
        with suppress(_Closed, OSError, anyio.BrokenResourceError):
            await channel.send_json({"error": why})
        await channel.close(1008, why[:100])


async def serve(
    host: str = "0.0.0.0",
    port: int = 8765,
    *,
    server: RendezvousServer | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a rendezvous server until cancelled; ``task_status`` gets the bound port."""
    srv = server or RendezvousServer()
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        sock = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
        task_status.started(int(sock[1]))
        await listener.serve(srv.handle)


# --------------------------------------------------------------------------- client


def parse_url(url: str) -> tuple[str, int, str, bool]:
    """``ws://host:port/path`` or ``wss://...`` -> (host, port, path, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SignalError(f"rendezvous URL {url!r}: expected ws://HOST[:PORT][/PATH] or wss://...")
    tls = parts.scheme == "wss"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise SignalError(f"rendezvous URL {url!r}: bad port") from None
    return parts.hostname, port, parts.path or "/", tls


class RendezvousSignal:
    """A ``Signal`` through a rendezvous room (use ``rendezvous_signal`` to open one)."""

    def __init__(self, channel: _WsChannel, room: str) -> None:
        self._channel = channel
        self.room = room
        self.peers = 0

    async def send(self, message: Mapping[str, Any]) -> None:
        try:
            await self._channel.send_json({"msg": dict(message)})
        except (_Closed, OSError, anyio.BrokenResourceError) as exc:
            raise SignalError(f"rendezvous connection lost: {exc}") from None

    async def receive(self) -> Mapping[str, Any]:
        while True:
            try:
                value = await self._channel.receive_json()
            except _Closed as exc:
                raise SignalError(f"rendezvous connection lost: {exc}") from None
            if isinstance(value, dict) and isinstance(value.get("msg"), dict):
                return dict(value["msg"])
            if isinstance(value, dict) and "error" in value:
                raise SignalError(f"rendezvous server: {value['error']}")
            # {"peer": "left"} and anything else: not for the connector


@asynccontextmanager
async def rendezvous_signal(
    url: str,
    room: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[RendezvousSignal]:
    """Join ``room`` on the rendezvous server at ``url``; the signal lives in the body."""
    if not _ROOM.match(room):
        raise SignalError(f"room name {room!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    host, port, path, tls = parse_url(url)
    try:
        with anyio.fail_after(timeout):
            if tls:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=ssl_context, tls_hostname=host
                )
            else:
                stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError) as exc:
        raise SignalError(f"cannot reach the rendezvous server {url}: {exc}") from None
    ws = WSConnection(ConnectionType.CLIENT)
    channel = _WsChannel(stream, ws)
    try:
        try:
            with anyio.fail_after(timeout):
                reply = await _join(channel, ws, url, host, port, path, room)
        except TimeoutError:
            raise SignalError(
                f"rendezvous server {url} did not answer within {timeout:g} s"
            ) from None
        except (_Closed, WsRemoteError, WsLocalError) as exc:
            raise SignalError(f"rendezvous server {url}: {exc}") from None
        signal = RendezvousSignal(channel, room)
        signal.peers = int(reply.get("peers", 0))
        yield signal
    finally:
        with anyio.move_on_after(1, shield=True):
            await channel.close()


async def _join(
    channel: _WsChannel, ws: WSConnection, url: str, host: str, port: int, path: str, room: str
) -> dict[str, Any]:
    await channel._write(ws.send(Request(host=f"{host}:{port}", target=path)))
    while True:
        try:
            data = await channel.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise SignalError(f"rendezvous server {url} closed the connection") from None
        ws.receive_data(data)
        events = list(ws.events())
        if any(isinstance(e, RejectConnection) for e in events):
            raise SignalError(f"rendezvous server {url} refused the websocket")
        if any(isinstance(e, AcceptConnection) for e in events):
            break
    await channel.send_json({"join": room})
    reply = await channel.receive_json()
    if not isinstance(reply, dict) or reply.get("joined") != room:
        why = reply.get("error") if isinstance(reply, dict) else None
        raise SignalError(f"rendezvous server refused room {room!r}: {why or reply!r}")
    return reply
