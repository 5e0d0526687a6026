"""``open_endpoint``: the library's main entry, a public endpoint held by an async context.

::

    async with nattrav.open_endpoint(5000) as ep:
        print(ep.address)            # what a remote peer sends to
        await ep.send_to(b"hi", peer)
        data, peer = await ep.receive()

The endpoint is a datagram endpoint on the same local port nattrav used to obtain the public
address (or, when the relay won, the relay allocation), so the public address stays valid for
the application's own traffic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from nattrav.chain import Held
from nattrav.config import Config
from nattrav.errors import NatTravError
from nattrav.method import DatagramChannel
from nattrav.models import (
    Goal,
    LeaseEvent,
    LeaseEventKind,
    Transport,
    TransportAddress,
    TraversalRequest,
    TraversalResult,
)
from nattrav.runtime import Runtime

__all__ = ["Endpoint", "open_endpoint"]


@attrs.define(eq=False)
class Endpoint:
    """A held public endpoint. ``result`` explains how it was obtained.

    ``address`` is where peers send to *now*: it starts as the chain's result and follows the
    held method's ``changed`` events (a gateway that re-created the mapping on another port,
    a TURN server that lost the allocation and relayed it from a new address).
    """

    result: TraversalResult
    channel: DatagramChannel | None
    mux: Any = None
    current: TransportAddress | None = None

    @property
    def address(self) -> TransportAddress:
        return self.current or self.result.endpoint

    def follow(self, event: LeaseEvent) -> None:
        """Track the public endpoint through the held method's ``changed`` events (another
        family's endpoint, such as a UPnP IPv6 pinhole next to an IPv4 mapping, is not it)."""
        if (
            event.kind is LeaseEventKind.CHANGED
            and event.method == self.result.method
            and event.endpoint is not None
            and event.endpoint.family == self.address.family
            and event.endpoint.transport is self.address.transport
        ):
            self.current = event.endpoint

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def local_port(self) -> int | None:
        """The application's UDP port (the socket nattrav used for the mapping), or ``None``
        for a TCP request. A relayed endpoint's traffic goes through ``channel`` instead."""
        return int(self.mux.port) if self.mux is not None else None

    def _path(self) -> DatagramChannel:
        if self.channel is not None:
            return self.channel
        if self.mux is not None:
            app: DatagramChannel = self.mux.app
            return app
        raise NatTravError("this endpoint carries no datagrams (TCP request)")

    async def send_to(self, data: bytes, peer: TransportAddress) -> None:
        await self._path().send_to(data, peer)

    async def receive(self) -> tuple[bytes, TransportAddress]:
        return await self._path().receive()


@asynccontextmanager
async def open_endpoint(
    port: int = 0,
    *,
    protocol: Transport | str = Transport.UDP,
    goal: Goal | str | None = None,
    lifetime: float = 3600.0,
    config: Config | str | None = None,
    runtime: Runtime | None = None,
    on_event: Callable[[LeaseEvent], None] | None = None,
) -> AsyncIterator[Endpoint]:
    """Obtain a public endpoint for local ``port`` by the best method available; hold it.

    Raises ``ChainExhausted`` when no method succeeds, ``ConfigError`` for a bad config.
    """
    rt = runtime or Runtime.load(config)
    transport = Transport(protocol) if isinstance(protocol, str) else protocol
    goal_value = Goal(goal) if isinstance(goal, str) else (goal or rt.config.chain.goal)
    request = TraversalRequest(port=port, transport=transport, goal=goal_value, lifetime=lifetime)
    endpoint: Endpoint | None = None

    def forward(event: LeaseEvent) -> None:
        if endpoint is not None:
            endpoint.follow(event)
        if on_event is not None:
            on_event(event)

    async with rt.traverse(request, on_event=forward) as (held, mux):
        assert isinstance(held, Held)
        endpoint = Endpoint(held.result, held.channel, mux)
        yield endpoint
