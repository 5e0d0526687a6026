"""The ``relay`` section of ``nattrav probe`` against a loopback coturn: every transport of
every configured server, allocate + delete, mapped addresses for the double-NAT verdict."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from nattrav_relay.config import ServerConfig
from nattrav_relay.report import report_section, transports_to_test
from nattrav_relay.testing import Coturn

pytestmark = pytest.mark.anyio


@attrs.define
class Options:
    timeout: float = 6.0
    window: float = 0.5


@attrs.define
class Ctx:
    table: dict[str, Any]
    options: Options = attrs.field(factory=Options)

    def settings(self, plugin: str) -> dict[str, Any]:
        assert plugin == "relay"
        return self.table


def test_transports_to_test() -> None:
    assert transports_to_test(ServerConfig("turn:192.0.2.1")) == [
        ("udp", "turn:192.0.2.1:3478?transport=udp"),
        ("tcp", "turn:192.0.2.1:3478?transport=tcp"),
    ]
    assert transports_to_test(ServerConfig("turns:[2001:db8::1]")) == [
        ("tls", "turns:[2001:db8::1]")
    ]


async def test_every_transport_is_tried(coturn: Coturn) -> None:
    ctx = Ctx(
        {
            "servers": [coturn.uri("udp"), coturn.uri("tls"), "turn:127.0.0.1:9"],
            "username": coturn.username,
            "password": coturn.password,
            "ca_file": str(coturn.ca_path),
            "timeout": 1.0,
        }
    )
    section = await report_section(ctx)
    assert section["configured"] and section["usable"]
    reachable = section["reachable"]
    assert reachable[coturn.uri("udp")] == {"udp": True, "tcp": True}
    assert reachable[coturn.uri("tls")] == {"tls": True}
    assert reachable["turn:127.0.0.1:9"] == {"udp": False, "tcp": False}
    ok = [r for r in section["servers"] if r["ok"]]
    assert all(r["deleted"] and r["relayed"].startswith("127.0.0.1:") for r in ok)
    assert section["mapped_ips"] == ["127.0.0.1"]
    failed = [r for r in section["servers"] if not r["ok"]]
    assert all(r["error"] for r in failed)


async def test_wrong_credentials_show_the_code(coturn: Coturn) -> None:
    ctx = Ctx({"servers": [coturn.uri("udp")], "username": "nobody", "password": "x"})
    section = await report_section(ctx)
    assert not section["usable"]
    assert {r["code"] for r in section["servers"]} == {401}


async def test_no_server_configured() -> None:
    section = await report_section(Ctx({}))
    assert section["configured"] is False and "no TURN server" in section["note"]
