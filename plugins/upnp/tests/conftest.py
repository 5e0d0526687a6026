"""Fixtures for the UPnP plugin's tests.

Driver-level tests run on both anyio backends; ``fixture_bytes`` reads the recorded router
responses in ``tests/fixtures`` (written for this project, modelled on real routers' quirks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fixture_bytes() -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (FIXTURES / name).read_bytes()

    return read


@pytest.fixture
def loopback_plan() -> Callable[[int], object]:
    """A search plan that only unicasts to a scripted responder on 127.0.0.1:port.

    Tests never search real interfaces: traffic stays on loopback or in the lab's namespaces.
    """
    from nattrav_upnp.driver import SearchPlan, SocketSpec
    from nattrav_upnp.search import SearchTarget

    def make(port: int) -> SearchPlan:
        key = "lo/127.0.0.1"
        return SearchPlan(
            (SocketSpec(key, "lo", "127.0.0.1", 4),),
            (SearchTarget(key, "127.0.0.1", port, multicast=False),),
        )

    return make
