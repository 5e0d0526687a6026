"""nattrav-relay: a TURN client (RFC 8656) for nattrav, and the chain's last-resort method.

Library use::

    import nattrav_relay as relay

    async with relay.allocate("turn:turn.example.org", username="u", password="p") as ep:
        print(ep.relayed)
        await ep.send_to(b"hello", peer)
        data, peer = await ep.receive()

Names are imported lazily (the plugin module imports this package at every CLI start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nattrav_relay.client import ClientSettings, RelayStats, TurnClient
    from nattrav_relay.credentials import RelayCredentials
    from nattrav_relay.driver import RelayEndpoint, RelayError, allocate, release_orphan
    from nattrav_relay.method import RelayMethod

__all__ = [
    "ClientSettings",
    "RelayCredentials",
    "RelayEndpoint",
    "RelayError",
    "RelayMethod",
    "RelayStats",
    "TurnClient",
    "allocate",
    "release_orphan",
]

_HOME = {
    "ClientSettings": "nattrav_relay.client",
    "RelayStats": "nattrav_relay.client",
    "TurnClient": "nattrav_relay.client",
    "RelayCredentials": "nattrav_relay.credentials",
    "RelayEndpoint": "nattrav_relay.driver",
    "RelayError": "nattrav_relay.driver",
    "allocate": "nattrav_relay.driver",
    "release_orphan": "nattrav_relay.driver",
    "RelayMethod": "nattrav_relay.method",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'nattrav_relay' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
