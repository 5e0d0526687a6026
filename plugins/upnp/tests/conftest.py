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


@pytest.fixture
def igd_session() -> Callable[..., object]:
    """``async with igd_session(**quirks) as (fake, transport, conn, fw)``: a scripted IGD on
    loopback with an HTTP transport and the two service descriptors pointing at it."""
    from contextlib import asynccontextmanager

    from nattrav_upnp.description import ServiceInfo, ServiceKind
    from nattrav_upnp.driver import HttpTransport
    from nattrav_upnp.testing import FakeIgd
    from nattrav_upnp.urls import HttpUrl

    @asynccontextmanager
    async def session(**quirks: object):  # type: ignore[no-untyped-def]
        fake = FakeIgd(**quirks)  # type: ignore[arg-type]
        async with fake.running(), HttpTransport(timeout=1.0) as transport:
            assert fake.http is not None
            port = fake.http.port
            conn = ServiceInfo(
                fake.service_type,
                ServiceKind.WAN_IP,
                fake.version,
                HttpUrl("127.0.0.1", port, "/ctl/IPConn"),
            )
            fw = ServiceInfo(
                "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
                ServiceKind.FIREWALL6,
                1,
                HttpUrl("127.0.0.1", port, "/ctl/IP6FCtl"),
            )
            yield fake, transport, conn, fw

    return session
