"""``[plugins.relay]`` validation: every problem listed at once, strings or tables for
servers, credentials required (or a provider), and the credential sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from nattrav.errors import ConfigError
from nattrav_relay.config import RelayConfig, ServerConfig, load_config
from nattrav_relay.credentials import CredentialSource, RelayCredentials


def test_defaults_and_string_servers() -> None:
    cfg = load_config(
        {
            "servers": ["turn:203.0.113.1?transport=tcp", "turns:turn.example.org"],
            "username": "u",
            "password": "hunter2",
        }
    )
    assert [s.uri for s in cfg.servers] == [
        "turn:203.0.113.1?transport=tcp",
        "turns:turn.example.org",
    ]
    assert cfg.lifetime == 600 and cfg.channels and cfg.self_test
    assert cfg.max_redirects == 3  # 300 Try Alternate is followed by default
    assert cfg.credentials_for(cfg.servers[0]) == ("u", "hunter2", None)
    assert "hunter2" not in repr(cfg)


def test_server_tables_with_their_own_credentials(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = load_config(
        {
            "servers": [
                {
                    "uri": "turns:turn.example.org",
                    "username": "bob",
                    "password": "pw",
                    "realm": "r",
                    "ca_file": str(ca),
                    "server_name": "turn.example.org",
                },
            ],
        }
    )
    assert cfg.credentials_for(cfg.servers[0]) == ("bob", "pw", "r")


def test_a_comma_separated_server_string_is_accepted() -> None:
    cfg = load_config(
        {"servers": "turn:192.0.2.1, turn:192.0.2.2", "username": "u", "password": "p"}
    )
    assert len(cfg.servers) == 2


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            {
                "servers": [
                    "stun:192.0.2.1",
                    {"uri": "turn:192.0.2.1", "username": "only-a-name"},
                    {"uri": "turn:192.0.2.2", "server_name": "x"},
                ],
                "permit": ["not-an-ip", "192.0.2.9"],
                "lifetime": -5,
                "timeout": 0,
                "ca_file": "/nonexistent/ca.pem",
                "max_redirects": 11,
            }
        )
    text = str(caught.value)
    problems = caught.value.problems
    assert len(problems) >= 8, problems
    assert "max_redirects must be 0-10" in text
    assert "stun: URI" in text
    assert "a username without a password" in text
    assert "server_name only applies" in text
    assert "'not-an-ip' is not an IP address" in text
    assert "lifetime" in text and "timeout must be > 0" in text and "ca_file" in text


def test_unknown_keys_and_wrong_types_are_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            {"servers": ["turn:192.0.2.1"], "usernam": "u", "channels": "yes", "families": "ipv5"}
        )
    text = str(caught.value)
    assert "usernam" in text and "channels" in text and "families" in text


def test_a_credential_provider_stands_in_for_passwords() -> None:
    cfg = load_config(
        {"servers": ["turn:192.0.2.1"], "credential_provider": "tests_relay_creds:provide"}
    )
    assert cfg.credentials_for(cfg.servers[0]) is None
    with pytest.raises(ConfigError, match=r"package\.module:function"):
        load_config({"servers": ["turn:192.0.2.1"], "credential_provider": "nocolon"})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_credential_source_order(anyio_backend: str) -> None:
    calls: list[tuple[str, str | None, str | None]] = []

    def provider(server: str, username: str | None, realm: str | None) -> object:
        calls.append((server, username, realm))
        return ("from-provider", "pw")

    async def later(server: str, username: str | None, realm: str | None) -> object:
        return None

    cfg = RelayConfig(
        servers=(
            ServerConfig("turn:a", username="alice", password="x"),
            ServerConfig("turn:b", username="bob"),
        ),
        realm="r",
    )
    source = CredentialSource(cfg, [later, provider])
    assert await source.get(cfg.servers[0]) == RelayCredentials("alice", "x", "r")
    assert calls == []  # the table's own password needs no provider
    assert await source.get(cfg.servers[1]) == RelayCredentials("from-provider", "pw")
    assert calls == [("turn:b", "bob", "r")]


def test_provider_results_are_checked() -> None:
    assert RelayCredentials.coerce(("u", "p", "r")) == RelayCredentials("u", "p", "r")
    assert RelayCredentials.coerce(None) is None
    with pytest.raises(TypeError):
        RelayCredentials.coerce("just a string")
