"""Shared fixtures: the anyio backends and a private coturn on loopback."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Driver-level tests run on both anyio backends."""
    return str(request.param)


from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from nattrav_stun.testing import Coturn, coturn_available, run_coturn  # noqa: E402

needs_coturn = pytest.mark.skipif(not coturn_available(), reason="coturn is not installed")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn on loopback with RFC 5780 (127.0.0.1 and 127.0.0.2, port and port + 1)."""
    if not coturn_available():
        pytest.skip("coturn is not installed")
    with run_coturn(tmp_path_factory.mktemp("coturn"), alt_host="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def coturn_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn that challenges Binding requests (long-term credentials), with TLS."""
    if not coturn_available():
        pytest.skip("coturn is not installed")
    trustme = pytest.importorskip("trustme")
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
