"""Servers on the command line of ``probe`` and ``map``, with the installed stun and relay plugins.

Nothing here sends a packet: the commands are parsed (``nattrav.cli.prepare``) and the runtime
is built, which is where the flags meet the plugins' configuration checks. The lab tests
(``test_main_job_lab.py``) run the same flags against real servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nattrav.cli import prepare
from nattrav.errors import ConfigError

FLAGS = ("--stun", "--turn", "--turn-user", "--turn-password", "--turn-permit")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./nattrav.toml
    monkeypatch.delenv("NATTRAV_CONFIG", raising=False)
    monkeypatch.setenv("NATTRAV_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize("command", ["probe", "map"])
def test_help_lists_the_server_options(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nattrav.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    for flag in FLAGS:
        assert f"  {flag} " in out, f"{command} --help lacks {flag}"


def test_flags_become_the_plugins_configuration() -> None:
    cli = prepare(
        [
            "map", "0",
            "--stun", "192.0.2.1:3478",
            "--stun", "[2001:db8::1]:3478",
            "--turn", "turn:192.0.2.1?transport=udp",
            "--turn", "turns:turn.example.org",
            "--turn-user", "alice",
            "--turn-password", "s3cret",
            "--turn-permit", "198.51.100.7",
        ]
    )  # fmt: skip
    plugins = cli.raw_config["plugins"]
    assert plugins["stun"]["servers"] == ["192.0.2.1:3478", "[2001:db8::1]:3478"]
    relay = plugins["relay"]
    assert relay["servers"] == ["turn:192.0.2.1?transport=udp", "turns:turn.example.org"]
    assert (relay["username"], relay["password"]) == ("alice", "s3cret")
    assert relay["permit"] == ["198.51.100.7"]
    runtime = cli.runtime()
    assert {r.name: r.status.value for r in runtime.host.records.values()}["stun"] == "ok"
    from nattrav_relay.config import load_config as relay_config
    from nattrav_stun.config import load_config as stun_config

    stun = stun_config(runtime.method_settings("stun"))
    assert [str(s) for s in stun.parsed_servers()] == [
        "stun:192.0.2.1:3478",
        "stun:[2001:db8::1]:3478",
    ]
    assert not stun.uses_defaults  # a flag replaces the public defaults
    turn = relay_config(runtime.method_settings("relay"))
    assert [s.uri for s in turn.servers] == relay["servers"]
    assert turn.permit == ("198.51.100.7",)


def test_flags_add_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "nattrav.toml"
    config.write_text('[plugins.stun]\nservers = ["192.0.2.9:3478"]\n')
    cli = prepare(["--config", str(config), "probe", "--stun", "192.0.2.1:3478"])
    assert cli.raw_config["plugins"]["stun"]["servers"] == ["192.0.2.9:3478", "192.0.2.1:3478"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stun", "2001:db8::1:3478"], "write an IPv6 address in brackets"),
        (["--turn", "stun:192.0.2.1"], "a TURN server needs turn: or turns:"),
        (["--turn", "turn:192.0.2.1", "--turn-permit", "not-an-ip"], "not-an-ip"),
    ],
)
def test_a_bad_server_flag_is_a_config_error_not_a_silently_broken_plugin(
    argv: list[str], message: str
) -> None:
    """The runtime is where the command fails (``main`` turns it into exit code 2), before
    anything is sent."""
    cli = prepare(["map", "0", *argv])
    with pytest.raises(ConfigError) as info:
        cli.runtime()
    assert "the command line" in str(info.value) and message in str(info.value)


ROOT = Path(__file__).resolve().parents[1]


def test_json_docs_cover_every_key_of_the_shipped_schemas() -> None:
    import json
    from importlib import resources

    from nattrav.models import LeaseEventKind

    text = (ROOT / "docs" / "json.md").read_text()
    probe = json.loads(resources.files("nattrav").joinpath("schemas/probe.schema.json").read_text())
    for key in probe["properties"]:
        assert f"`{key}`" in text, f"probe key {key} undocumented"
    for part in ("nat", "options"):
        for key in probe["properties"][part]["properties"]:
            assert f"`{key}`" in text or key in text, f"{part}.{key} undocumented"
    tests = probe["properties"]["mapping_tests"]["oneOf"][1]["items"]["properties"]
    for key in tests:
        assert f"`{key}`" in text, f"mapping_tests.{key} undocumented"
    for kind in LeaseEventKind:
        assert f"`{kind.value}`" in text, f"event {kind.value} undocumented"


@pytest.mark.parametrize("command", ["probe", "map", "cleanup"])
def test_cli_docs_cover_every_option(command: str) -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    cli = prepare([command, "0"] if command == "map" else [command])
    parser = cli.args  # parsed namespace: the option names are its attributes
    for name in vars(parser):
        if name in ("handler", "command", "config", "verbose", "log_json", "backend"):
            continue
        if name in ("metrics_port", "metrics_addr", "port"):
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in text, f"{command} {flag} undocumented in docs/cli.md"
