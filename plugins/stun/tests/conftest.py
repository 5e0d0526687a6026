"""Shared fixtures: the anyio backends and a private coturn on loopback."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Driver-level tests run on both anyio backends."""
    return str(request.param)
