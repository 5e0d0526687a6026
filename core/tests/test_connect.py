"""The protocol-free part of peer-to-peer connect: gather, pick a connector, hand over."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nattrav.config import structure_config
from nattrav.connect import connect
from nattrav.errors import MethodUnavailable
from nattrav.models import CandidateKind, Inbound
from nattrav.plugins import PluginHost, module_plugin
from nattrav.runtime import Runtime
from nattrav.testing import FakeMethod

pytestmark = pytest.mark.anyio


class LoopSignal:
    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []

    async def send(self, message: Mapping[str, Any]) -> None:
        self.sent.append(message)

    async def receive(self) -> Mapping[str, Any]:
        return self.sent[-1]


class RequestRecorder(FakeMethod):
    """A fake reflexive method that remembers what the chain asked it for."""

    requests: list[Any] = []

    def acquire(self, ctx: Any) -> Any:
        RequestRecorder.requests.append(ctx.request)
        return super().acquire(ctx)


class RecordingConnector:
    seen: dict[str, Any] = {}

    @asynccontextmanager
    async def connect(
        self, gathered: Any, signal: Any, *, role: str, sockets: Any, runtime: Any
    ) -> AsyncIterator[str]:
        await signal.send({"candidates": [str(c.address) for c in gathered.candidates]})
        RecordingConnector.seen = {
            "kinds": [c.kind for c in gathered.candidates],
            "role": role,
            "port": sockets.port,
            "offer": await signal.receive(),
            "mux_families": sockets.families,
        }
        yield "connection"


def runtime(tmp_path: Path, *, with_connector: bool = True) -> Runtime:
    def methods(registry: Any) -> None:
        registry.add(
            RequestRecorder("srflx", inbound=Inbound.NO),
            name="srflx",
            priority=20,
            kind=CandidateKind.SERVER_REFLEXIVE,
        )
        registry.add(
            FakeMethod("relay", kind=CandidateKind.RELAYED),
            name="relay",
            priority=90,
            kind=CandidateKind.RELAYED,
        )

    def connectors(registry: Any) -> None:
        registry.add(RecordingConnector, name="rec", priority=5)

    hooks: dict[str, Any] = {"nattrav_register_methods": methods}
    if with_connector:
        hooks["nattrav_register_connectors"] = connectors
    host = PluginHost.load(
        structure_config({"state_dir": str(tmp_path)}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("p", module_plugin("p", **hooks))],
    )
    return Runtime(host)


async def test_connect_gathers_every_candidate_and_uses_the_connector(tmp_path: Path) -> None:
    signal = LoopSignal()
    async with connect(signal, role="offer", runtime=runtime(tmp_path)) as conn:
        assert conn == "connection"
    seen = RecordingConnector.seen
    assert seen["kinds"] == [CandidateKind.SERVER_REFLEXIVE, CandidateKind.RELAYED]
    assert seen["role"] == "offer"
    assert seen["port"] > 0
    assert seen["offer"]["candidates"] == ["198.51.100.7:40000", "198.51.100.7:40000"]


async def test_connect_without_a_connector_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(MethodUnavailable, match="install nattrav-p2p"):
        async with connect(
            LoopSignal(), role="answer", runtime=runtime(tmp_path, with_connector=False)
        ):
            pass


async def test_connect_families_limit_the_port_and_the_gathering(tmp_path: Path) -> None:
    """``families=(4,)`` opens the port on IPv4 only and asks the methods for IPv4 only (a
    host whose IPv6 is known to be broken); the default keeps both."""
    async with connect(LoopSignal(), role="offer", runtime=runtime(tmp_path), families=(4,)):
        pass
    assert RecordingConnector.seen["mux_families"] == frozenset({4})
    assert RequestRecorder.requests[-1].families == frozenset({4})
    async with connect(LoopSignal(), role="offer", runtime=runtime(tmp_path)):
        pass
    assert RequestRecorder.requests[-1].families == frozenset({4, 6})


@pytest.mark.parametrize("families", [(), (5,), (4, 17)])
async def test_connect_refuses_families_other_than_4_and_6(
    tmp_path: Path, families: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="families must be a non-empty subset"):
        async with connect(
            LoopSignal(), role="offer", runtime=runtime(tmp_path), families=families
        ):
            pass
