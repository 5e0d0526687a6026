"""Public default servers: used only when ``[plugins.stun] servers`` is absent, never in tests.

No test here sends anything: they check which servers the configuration resolves to. The
whole test session runs with ``NATTRAV_NO_PUBLIC_SERVERS=1`` (set by core's pytest plugin), so
a test that forgets to configure a server cannot reach a public one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nattrav_stun.config import (
    DEFAULT_SERVERS,
    NO_PUBLIC_SERVERS_ENV,
    load_config,
    public_defaults_allowed,
)
from nattrav_stun.plugin import _add_servers
from nattrav_stun.uri import parse_server

ROOT = Path(__file__).resolve().parents[3]


def test_the_test_session_forbids_public_servers() -> None:
    assert os.environ.get(NO_PUBLIC_SERVERS_ENV) == "1"
    assert not public_defaults_allowed()
    cfg = load_config({})
    assert cfg.server_list() == () and cfg.parsed_servers() == []
    assert not cfg.uses_defaults


def test_defaults_apply_only_when_the_key_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_PUBLIC_SERVERS_ENV)
    assert load_config({}).server_list() == DEFAULT_SERVERS
    assert load_config(None).uses_defaults
    assert load_config({"servers": []}).server_list() == ()  # explicit: none at all
    assert load_config({"servers": ["192.0.2.1:3478"]}).server_list() == ("192.0.2.1:3478",)
    for flag in ("0", "", "no"):
        monkeypatch.setenv(NO_PUBLIC_SERVERS_ENV, flag)
        assert load_config({}).server_list() == DEFAULT_SERVERS
    for flag in ("1", "true", "YES", "on"):
        monkeypatch.setenv(NO_PUBLIC_SERVERS_ENV, flag)
        assert load_config({}).server_list() == ()


def test_a_stun_flag_replaces_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_PUBLIC_SERVERS_ENV)
    raw: dict[str, object] = {}
    _add_servers(["[2001:db8::1]:3478"], raw)
    cfg = load_config(raw["plugins"]["stun"])  # type: ignore[index]
    assert cfg.server_list() == ("[2001:db8::1]:3478",)
    assert not cfg.uses_defaults


def test_defaults_parse_and_are_documented() -> None:
    for server in DEFAULT_SERVERS:
        assert parse_server(server).transport == "udp"
    docs = (ROOT / "docs" / "config.md").read_text() + (ROOT / "docs" / "stun.md").read_text()
    for server in DEFAULT_SERVERS:
        assert server in docs, f"{server} is a default but not documented"
    assert NO_PUBLIC_SERVERS_ENV in docs
