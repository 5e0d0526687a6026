"""nattrav: NAT traversal for Python, as a pluggable, observable fallback chain.

The public API is imported lazily (PEP 562) so ``import nattrav`` stays cheap: command-line
start-up and plugin listing must not pay for anyio, OpenTelemetry or the protocol plugins.

>>> import nattrav
>>> nattrav.TransportAddress("192.0.2.1", 5000).family
4
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "TransportAddress": "nattrav.models",
    "Transport": "nattrav.models",
    "Candidate": "nattrav.models",
    "CandidateKind": "nattrav.models",
    "Inbound": "nattrav.models",
    "Reachability": "nattrav.models",
    "Goal": "nattrav.models",
    "TraversalRequest": "nattrav.models",
    "TraversalResult": "nattrav.models",
    "AttemptRecord": "nattrav.models",
    "AttemptOutcome": "nattrav.models",
    "LeaseEvent": "nattrav.models",
    "LeaseEventKind": "nattrav.models",
    "PathProperty": "nattrav.models",
    # errors
    "NatTravError": "nattrav.errors",
    "ConfigError": "nattrav.errors",
    "PluginError": "nattrav.errors",
    "ProtocolError": "nattrav.errors",
    "LocalProtocolError": "nattrav.errors",
    "RemoteProtocolError": "nattrav.errors",
    "ParseError": "nattrav.errors",
    "MethodError": "nattrav.errors",
    "MethodUnavailable": "nattrav.errors",
    "CircuitOpen": "nattrav.errors",
    "ChainExhausted": "nattrav.errors",
    # plugin API
    "hookimpl": "nattrav.hookspecs",
    "Acquisition": "nattrav.method",
    "AttemptContext": "nattrav.method",
    "TraversalMethod": "nattrav.method",
    "DatagramChannel": "nattrav.method",
    "MethodRegistry": "nattrav.registry",
    "RetryPolicy": "nattrav.resilience",
    "BreakerPolicy": "nattrav.resilience",
    "BreakerState": "nattrav.resilience",
    # running
    "Config": "nattrav.config",
    "load_config": "nattrav.config",
    "Runtime": "nattrav.runtime",
    "Chain": "nattrav.chain",
    "open_endpoint": "nattrav.endpoint",
    "connect": "nattrav.connect",
    "Signal": "nattrav.connect",
    "Connection": "nattrav.connect",
    "Endpoint": "nattrav.endpoint",
    "DatagramMux": "nattrav.datagram",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nattrav' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from nattrav.chain import Chain
    from nattrav.config import Config, load_config
    from nattrav.connect import Connection, Signal, connect
    from nattrav.datagram import DatagramMux
    from nattrav.endpoint import Endpoint, open_endpoint
    from nattrav.errors import (
        ChainExhausted,
        CircuitOpen,
        ConfigError,
        LocalProtocolError,
        MethodError,
        MethodUnavailable,
        NatTravError,
        ParseError,
        PluginError,
        ProtocolError,
        RemoteProtocolError,
    )
    from nattrav.hookspecs import hookimpl
    from nattrav.method import Acquisition, AttemptContext, DatagramChannel, TraversalMethod
    from nattrav.models import (
        AttemptOutcome,
        AttemptRecord,
        Candidate,
        CandidateKind,
        Goal,
        Inbound,
        LeaseEvent,
        LeaseEventKind,
        PathProperty,
        Reachability,
        Transport,
        TransportAddress,
        TraversalRequest,
        TraversalResult,
    )
    from nattrav.registry import MethodRegistry
    from nattrav.resilience import BreakerPolicy, BreakerState, RetryPolicy
    from nattrav.runtime import Runtime
