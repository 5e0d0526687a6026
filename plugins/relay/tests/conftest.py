"""Shared fixtures: the anyio backends and a private coturn on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nattrav_relay.testing import Coturn, coturn_available, run_coturn


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Driver-level tests run on both anyio backends."""
    return str(request.param)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A loopback coturn (UDP/TCP/TLS, long-term credentials), one per test module."""
    if not coturn_available():
        pytest.fail("coturn (turnserver) is not installed: run `bash lab/install-deps.sh`")
    with run_coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server
