from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Helpers shared by this plugin's test modules (the root config imports test modules with
# importlib, which does not put their directory on sys.path); the name is unique.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
