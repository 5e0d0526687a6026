"""The CLI frame: listing, exit codes, JSON output, plugin commands and options, clean errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nattrav.cli import Cli, main, plugins_main
from nattrav.models import CandidateKind, Goal, Inbound
from nattrav.plugins import module_plugin
from nattrav.testing import FakeMethod

MAP_SCHEMA = json.loads(resources.files("nattrav").joinpath("schemas/map.schema.json").read_text())


def run(
    argv: list[str], *plugins: tuple[str, object], monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, extra_plugins=plugins, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def fakes(*methods: tuple[FakeMethod, int]) -> tuple[str, object]:
    def nattrav_register_methods(registry: Any) -> None:
        for m, prio in methods:
            registry.add(m, name=m.name, priority=prio, kind=m.kind, timeout=2.0)

    return "fakes", module_plugin("fakes", nattrav_register_methods=nattrav_register_methods)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./nattrav.toml
    monkeypatch.delenv("NATTRAV_CONFIG", raising=False)
    # Only the built-in and the test's own plugins: installed protocol plugins would send
    # traffic to their default (public) servers, and tests must stay on loopback.
    monkeypatch.setattr("nattrav.plugins._installed_entry_points", list)


def test_plugins_list_json_shows_builtin_direct() -> None:
    code, out, _ = run(["plugins", "list", "--json"], fakes((FakeMethod("fake"), 33)))
    assert code == 0
    data = json.loads(out)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["direct"]["status"] == "ok"
    assert by_name["direct"]["builtin"] is True
    assert by_name["direct"]["methods"] == [{"name": "direct", "priority": 0}]
    assert by_name["fakes"]["methods"] == [{"name": "fake", "priority": 33}]
    assert by_name["fakes"]["hooks"] == ["nattrav_register_methods"]


def test_plugins_list_table_reports_broken_plugins() -> None:
    def boom(registry: Any) -> None:
        raise RuntimeError("exploded")

    code, out, _ = run(
        ["plugins", "list"], ("bad", module_plugin("bad", nattrav_register_methods=boom))
    )
    assert code == 0
    assert "plugin" in out.splitlines()[0] and "status" in out.splitlines()[0]
    assert "bad: broken: hook raised RuntimeError: exploded" in out


def test_nattrav_plugins_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugins_main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plugins"][0]["name"] == "direct"
    assert plugins_main([]) == 2


def test_map_json_success_and_events() -> None:
    m = FakeMethod("fake", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES)
    code, out, err = run(
        ["map", "0", "--hold", "0.05", "--json"],
        fakes((m, 40)),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [line["event"]["kind"] for line in lines if "event" in line]
    assert kinds == ["acquired", "released"]
    result = next(line["result"] for line in lines if "result" in line)
    assert result["candidate"]["method"] == "fake"
    assert result["candidate"]["address"]["text"] == "198.51.100.7:40000"
    assert m.released


def test_map_exhausted_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATTRAV_DISABLE_PLUGINS", "direct")
    code, out, _err = run(["map", "0", "--json"], fakes((FakeMethod("x", "unavailable"), 1)))
    assert code == 1
    data = json.loads(out)
    assert data["error"] == "exhausted"
    assert data["attempts"][0]["outcome"] == "unavailable"
    jsonschema.validate(data, MAP_SCHEMA)


def test_map_json_lines_follow_the_shipped_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATTRAV_DISABLE_PLUGINS", "direct")
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED, inbound=Inbound.YES)
    code, out, err = run(["map", "0", "--hold", "0.05", "--json"], fakes((relay, 90)))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    for line in lines:
        jsonschema.validate(line, MAP_SCHEMA)
    acquired = lines[0]["event"]
    assert acquired["kind"] == "acquired" and acquired["details"]["kind"] == "relay"
    assert lines[1]["inbound"]["from"] == "anyone"  # the fake says nothing about permissions
    lost = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, lose_after=0.05)
    code, out, _err = run(["map", "0", "--json"], fakes((lost, 40)))
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    for line in lines:
        jsonschema.validate(line, MAP_SCHEMA)
    kinds = [line["event"]["kind"] for line in lines if "event" in line]
    assert kinds == ["acquired", "lost", "released"]
    assert lines[-1]["error"] == "lost" and "lease lost" in lines[-1]["reason"]


def test_map_human_output_says_who_may_send_to_a_relay() -> None:
    from nattrav.cli import Cli, _print_result
    from nattrav.models import Candidate, Reachability, TransportAddress, TraversalResult

    candidate = Candidate(
        CandidateKind.RELAYED,
        TransportAddress("203.0.113.1", 50000),
        "relay",
        reachability=Reachability.proven("self-test"),
        details={"permitted": ["198.51.100.7"], "inbound": "peers with a permission only"},
    )
    result = TraversalResult(goal=Goal.REACHABLE, candidate=candidate, attempts=())
    out = io.StringIO()
    cli = Cli.__new__(Cli)
    cli.out = out
    _print_result(cli, result)
    text = out.getvalue()
    assert "ONLY permitted peers can send" in text and "198.51.100.7" in text
    assert "--turn-permit PEER" in text


def test_config_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[chain]\nstrategy = "fastest"\nstagger = -1\n')
    code, _, err = run(["--config", str(cfg), "plugins", "list"])
    assert code == 2
    assert "2 problems" in err and "Traceback" not in err
    code, _, err = run(["--config", str(tmp_path / "missing.toml"), "plugins", "list"])
    assert code == 2 and "config file not found" in err


def test_unknown_method_in_order_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[chain]\norder = ["nope"]\n')
    code, _, err = run(["--config", str(cfg), "map", "0"], fakes((FakeMethod("x"), 1)))
    assert code == 2
    assert "unknown method 'nope'" in err


@pytest.mark.parametrize("argv", [["frobnicate"], ["map"], ["map", "x"], ["map", "70000"], []])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, _, err = run(argv)
    assert code == 2
    assert err.strip() and "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "plugins" in capsys.readouterr().out


def test_plugin_commands_and_options_are_wired() -> None:
    seen: dict[str, Any] = {}

    def commands(registry: Any) -> None:
        def configure(parser: Any) -> None:
            parser.add_argument("target")

        async def run_echo(args: Any, cli: Any) -> int:
            seen["target"] = args.target
            seen["json"] = cli.json
            cli.emit_json({"echo": args.target})
            return 0

        registry.add("echo", help="echo a target", configure=configure, run=run_echo)

    def options(registry: Any) -> None:
        def apply(value: list[str], raw: dict[str, Any]) -> None:
            raw.setdefault("plugins", {}).setdefault("echo", {})["servers"] = value

        registry.add("--echo-server", action="append", commands=("map",), apply=apply)

    def methods(registry: Any, config: dict[str, Any]) -> None:
        seen["servers"] = config.get("servers")
        registry.add(FakeMethod("echo-m"), name="echo-m", priority=1, kind=CandidateKind.HOST)

    plugin = module_plugin(
        "echo",
        nattrav_register_commands=commands,
        nattrav_register_options=options,
        nattrav_register_methods=methods,
    )
    code, out, _ = run(["echo", "somewhere", "--json"], ("echo", plugin))
    assert code == 0
    assert json.loads(out) == {"echo": "somewhere"}
    assert seen["target"] == "somewhere" and seen["json"] is True
    code, _, err = run(
        ["map", "0", "--hold", "0", "--echo-server", "192.0.2.1:1"], ("echo", plugin)
    )
    assert code == 0, err
    assert seen["servers"] == ["192.0.2.1:1"]  # the runtime was rebuilt with the flag applied


def _command_plugin(calls: list[str], *, raises: bool = False) -> tuple[str, object]:
    """A plugin with a command ``echo`` (its setup recorded in ``calls``) and an option
    ``--target`` on ``map`` and ``echo``, where the command's own ``--target`` must win."""

    def commands(registry: Any) -> None:
        def configure(parser: Any) -> None:
            calls.append("configure")
            if raises:
                raise RuntimeError("setup exploded")
            parser.add_argument("--target", default="own")

        def run_echo(args: Any, cli: Any) -> int:
            cli.line(f"target={getattr(args, 'target', None)}")
            return 0

        registry.add("echo", help="echo a target", configure=configure, run=run_echo)

    def options(registry: Any) -> None:
        registry.add(
            "--target", commands=("map", "echo"), apply=lambda value, raw: None, help="option"
        )

    return "echo", module_plugin(
        "echo", nattrav_register_commands=commands, nattrav_register_options=options
    )


def test_plugin_commands_are_set_up_only_when_used(capsys: pytest.CaptureFixture[str]) -> None:
    """Setting up a command imports its plugin's CLI module: other commands (``plugins
    list``, ``--help``) must not pay for it, the command itself and its help must."""
    calls: list[str] = []
    plugin = _command_plugin(calls)
    code, out, _ = run(["plugins", "list", "--json"], plugin)
    assert code == 0 and json.loads(out)["plugins"]
    assert main(["--help"], extra_plugins=[plugin]) == 0
    assert "echo a target" in capsys.readouterr().out
    assert calls == []
    code, out, err = run(["echo", "--target", "there"], plugin)
    assert code == 0, err
    assert out == "target=there\n" and calls == ["configure"]
    # The command's own --target wins over the plugin option of the same name, as before.
    code, out, _ = run(["echo"], plugin)
    assert out == "target=own\n"
    assert main(["echo", "--help"], extra_plugins=[plugin]) == 0
    assert "--target" in capsys.readouterr().out
    assert main(["map", "--help"], extra_plugins=[plugin]) == 0
    assert "--target" in capsys.readouterr().out  # a plugin option on a core command


def test_a_failing_command_setup_is_a_warning_not_a_crash() -> None:
    calls: list[str] = []
    plugin = _command_plugin(calls, raises=True)
    code, out, _ = run(["plugins", "list"], plugin)
    assert code == 0 and calls == []
    code, out, _ = run(["echo"], plugin)
    assert calls == ["configure"]
    assert code == 0 and out == "target=None\n"  # run anyway, without the command's flag


def test_reserved_command_names_break_the_plugin() -> None:
    def commands(registry: Any) -> None:
        registry.add("map", help="x", configure=lambda p: None, run=lambda a, c: 0)

    _code, out, _ = run(
        ["plugins", "list", "--json"],
        ("evil", module_plugin("evil", nattrav_register_commands=commands)),
    )
    data = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert data["evil"]["status"] == "broken"
    assert "reserved" in data["evil"]["error"]


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bindir / "nattrav-plugins"), "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert any(p["name"] == "direct" for p in json.loads(result.stdout)["plugins"])
    result = subprocess.run(
        [str(bindir / "nattrav"), "bogus"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2


def test_probe_progress_shows_each_part_on_a_terminal() -> None:
    from nattrav.cli import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    cli = Cli.__new__(Cli)
    cli.json = False
    cli.err = Terminal()
    progress = _Progress(cli, ["stun", "upnp", "chain"])
    assert progress.live is not None  # rich draws a live line on a terminal
    with progress:
        progress.update("stun", "running")
        progress.update("upnp", "done")
        progress.update("chain", "error")
    assert progress.state == {"stun": "running", "upnp": "done", "chain": "error"}
    cli.err = io.StringIO()  # not a terminal (a pipe, a log): nothing is drawn
    assert _Progress(cli, ["stun"]).live is None
    cli.json = True
    cli.err = Terminal()
    assert _Progress(cli, ["stun"]).live is None  # --json output stays clean
