"""Shared fixtures: the anyio backends and private coturn servers on loopback.

coturn is a system package the lab installs (``lab/install-deps.sh``, run by ``make test``);
without it the coturn tests fail with a message saying so: they are never skipped silently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nattrav_stun.testing import Coturn, coturn_available, run_coturn


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Driver-level tests run on both anyio backends."""
    return str(request.param)


def require_coturn() -> None:
    if not coturn_available():
        pytest.fail(
            "these tests run against a real coturn: install it with `bash lab/install-deps.sh`",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn on loopback with RFC 5780 (127.0.0.1 and 127.0.0.2, port and port + 1)."""
    require_coturn()
    with run_coturn(tmp_path_factory.mktemp("coturn"), alt_host="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def coturn_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn that challenges Binding requests (long-term credentials), with TLS."""
    require_coturn()
    import trustme

    directory: Path = tmp_path_factory.mktemp("coturn-secure")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for blob in cert.cert_chain_pems[1:]:
        with cert_file.open("ab") as f:
            f.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    with run_coturn(
        directory, secure_stun=True, tls_cert=(str(cert_file), str(key_file))
    ) as server:
        yield server


@pytest.fixture(scope="module")
def test_ca_file(coturn_secure: Coturn) -> str:
    return str(coturn_secure.log_file.parent / "ca.pem")
