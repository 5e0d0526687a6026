"""``nattrav.connect``: a peer-to-peer datagram path between two hosts behind NATs.

::

    async with nattrav.connect(signal, role="offer") as conn:
        await conn.send(b"hello")
        data = await conn.receive()
        print(conn.path)          # which candidate pair carries the traffic, and its kind

Core's part is protocol-free: it opens the application's UDP port, gathers every candidate the
installed methods can obtain (host, server-reflexive, port-mapped, relayed; all held at once
with ``Chain.gather``), and hands them to the best installed *connector*
(``nattrav_register_connectors``), which exchanges candidates with the other peer through
``signal``, runs connectivity checks and yields the connection. The signal is the
application's choice: anything with ``send(message)`` and ``receive()`` for JSON-able
mappings (plugins ship ready ones through ``nattrav_register_signalers``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol, runtime_checkable

from nattrav.config import Config
from nattrav.errors import MethodUnavailable
from nattrav.models import Goal, Transport, TraversalRequest
from nattrav.runtime import Runtime

__all__ = ["Connection", "Signal", "connect"]

Role = Literal["offer", "answer"]


@runtime_checkable
class Signal(Protocol):
    """How the two peers exchange their offer and answer (JSON-able mappings)."""

    async def send(self, message: Mapping[str, Any]) -> None:
        """Deliver ``message`` to the other peer."""

    async def receive(self) -> Mapping[str, Any]:
        """Wait for the other peer's next message."""


@runtime_checkable
class Connection(Protocol):
    """A datagram connection to the other peer, kept alive, moving to another path if needed."""

    async def send(self, data: bytes) -> None:
        """Send one datagram to the peer over the current path."""

    async def receive(self) -> bytes:
        """Wait for the next datagram from the peer."""

    @property
    def path(self) -> Any:
        """The candidate pair in use (local and remote candidate, kind, how it was chosen)."""


@asynccontextmanager
async def connect(
    signal: Signal,
    *,
    role: Role,
    port: int = 0,
    runtime: Runtime | None = None,
    config: Config | str | None = None,
    gather_timeout: float = 5.0,
    connector: str | None = None,
    families: Iterable[int] = (4, 6),
) -> AsyncIterator[Connection]:
    """Connect to the peer on the other end of ``signal`` by the best path both networks allow.

    ``role`` is ``"offer"`` on one side and ``"answer"`` on the other. ``families`` limits the
    IP families the port is opened on, candidates are gathered for and paths are tried over
    (``(4,)`` when IPv6 is known to be broken; the connector may narrow it further by its own
    configuration, never widen it). Raises ``ValueError`` for families other than 4 and 6,
    ``MethodUnavailable`` when no connector plugin is installed, and the connector's errors
    (``ChainExhausted``-like ``NatTravError`` subclasses) when no path works.
    """
    rt = runtime or Runtime.load(config)
    if connector is not None:
        spec = rt.host.connectors.get(connector)
    else:
        spec = rt.host.connectors.best()
    if spec is None:
        installed = ", ".join(s.name for s in rt.host.connectors) or "none"
        raise MethodUnavailable(
            "connect",
            f"no peer-to-peer connector installed (installed: {installed}); install nattrav-p2p",
        )
    from nattrav.datagram import DatagramMux

    request = TraversalRequest(
        port=port, transport=Transport.UDP, goal=Goal.ANY, families=frozenset(families)
    )
    async with DatagramMux.open(port, families=request.families) as mux:
        chain = rt.chain()
        async with chain.gather(request, sockets=mux, timeout=gather_timeout) as gathered:
            async with spec.factory().connect(
                gathered, signal, role=role, sockets=mux, runtime=rt
            ) as conn:
                yield conn
