from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test helpers shared by this plugin's test modules (the root config imports test modules with
# importlib, which does not put their directory on sys.path). The helper module's name is
# unique so it cannot shadow another plugin's helpers.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Driver-level tests run on both anyio backends."""
    return str(request.param)
