"""Plugin wiring: registration (priority 90, RELAYED, UDP only), config validation at
registration, the ``--turn*`` options folded into the raw config, the command, the probe
section, the credential hookspec, and a cheap import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import nattrav_relay.plugin
from nattrav.config import structure_config
from nattrav.models import CandidateKind, Transport
from nattrav.plugins import PluginHost, PluginStatus, module_plugin
from nattrav_relay.credentials import RelayCredentials, hook_provider
from nattrav_relay.hookspecs import add_hookspecs


def host(relay: dict[str, Any], *extra: tuple[str, object]) -> PluginHost:
    config = structure_config({"plugins": {"relay": relay}})
    return PluginHost.load(
        config, entry_points=[], builtins=False, extra=[("relay", nattrav_relay.plugin), *extra]
    )


def test_registers_the_last_resort_method_command_options_and_section() -> None:
    h = host({"servers": ["turn:192.0.2.1"], "username": "u", "password": "p"})
    assert h.records["relay"].status is PluginStatus.OK
    spec = h.methods["relay"]
    assert (spec.priority, spec.kind) == (90, CandidateKind.RELAYED)
    assert spec.transports == frozenset({Transport.UDP})
    assert "relay" in h.commands and "relay" in h.report_sections
    assert {o.flags[0] for o in h.options} == {
        "--turn",
        "--turn-user",
        "--turn-password",
        "--turn-permit",
    }


def test_a_bad_table_marks_the_plugin_broken_with_every_problem() -> None:
    h = host({"servers": ["stun:192.0.2.1"], "lifetime": -1})
    record = h.records["relay"]
    assert record.status is PluginStatus.BROKEN
    assert "stun: URI" in (record.error or "") and "lifetime" in (record.error or "")


def test_options_fold_into_the_raw_config() -> None:
    h = host({})
    raw: dict[str, Any] = {"plugins": {"relay": {"servers": ["turn:192.0.2.9"]}}}
    by_flag = {o.flags[0]: o for o in h.options}
    by_flag["--turn"].apply(["turn:192.0.2.1", "turn:192.0.2.9"], raw)
    by_flag["--turn-user"].apply("alice", raw)
    by_flag["--turn-password"].apply("pw", raw)
    by_flag["--turn-permit"].apply(["203.0.113.100"], raw)
    assert raw["plugins"]["relay"] == {
        "servers": ["turn:192.0.2.9", "turn:192.0.2.1"],
        "username": "alice",
        "password": "pw",
        "permit": ["203.0.113.100"],
    }
    assert {o.flags[0]: o.commands for o in h.options}["--turn"] == frozenset(
        {"probe", "map", "connect"}
    )


def test_the_credential_hook_is_validated_and_answers() -> None:
    def nattrav_relay_credentials(server: str, username: str | None, realm: str | None) -> Any:
        return ("hooked", "secret") if server.endswith("192.0.2.1") else None

    provider_plugin = module_plugin("creds", nattrav_relay_credentials=nattrav_relay_credentials)
    h = host({}, ("creds", provider_plugin))
    provide = hook_provider(h.pm)
    assert RelayCredentials.coerce(provide("turn:192.0.2.1", None, None)) == RelayCredentials(
        "hooked", "secret"
    )
    assert provide("turn:192.0.2.2", None, None) is None
    add_hookspecs(h.pm)  # idempotent
    assert h.pm.hook.nattrav_relay_credentials.spec is not None


def test_a_credential_hook_with_a_wrong_signature_is_refused() -> None:
    """Registered after relay: pluggy refuses it at registration. Registered before relay:
    relay's ``nattrav_add_hookspecs`` finds it; the bad plugin is marked broken, relay stays."""

    def nattrav_relay_credentials(server: str, password: str) -> Any:
        return None

    bad = module_plugin("bad", nattrav_relay_credentials=nattrav_relay_credentials)
    h = host({}, ("bad", bad))
    assert h.records["relay"].status is PluginStatus.OK
    assert h.records["bad"].status is PluginStatus.BROKEN
    assert "password" in (h.records["bad"].error or "")
    before = PluginHost.load(
        structure_config({}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("bad", bad), ("relay", nattrav_relay.plugin)],
    )
    assert before.records["relay"].status is PluginStatus.OK
    assert before.records["bad"].status is PluginStatus.BROKEN
    assert "does not match relay's hook" in (before.records["bad"].error or "")
    add_hookspecs(before.pm)  # idempotent


def test_importing_the_plugin_module_is_cheap() -> None:
    code = (
        "import sys; import nattrav_relay.plugin; "
        "heavy = [m for m in ('nattrav_relay.driver', 'nattrav_relay.client', "
        "'nattrav_stun.codec', 'nattrav_stun.auth', 'anyio', 'ssl') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
