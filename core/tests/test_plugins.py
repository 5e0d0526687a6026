from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nattrav.config import structure_config
from nattrav.errors import ConfigError
from nattrav.models import CandidateKind
from nattrav.plugins import PluginHost, PluginStatus, module_plugin

GOOD = """
from nattrav.hookspecs import hookimpl
from nattrav.models import CandidateKind

@hookimpl
def nattrav_register_methods(registry, config):
    registry.add(object, name="good-method", priority=config.get("priority", 30),
                 kind=CandidateKind.SERVER_REFLEXIVE)
"""

BROKEN_IMPORT = "raise ImportError('missing dependency libfoo')\n"

BROKEN_HOOK = """
from nattrav.hookspecs import hookimpl
from nattrav.models import CandidateKind

@hookimpl
def nattrav_register_methods(registry):
    registry.add(object, name="half", priority=1, kind=CandidateKind.HOST)
    raise RuntimeError("boom in hook")
"""

DUPLICATE = """
from nattrav.hookspecs import hookimpl
from nattrav.models import CandidateKind

@hookimpl
def nattrav_register_methods(registry):
    registry.add(object, name="good-method", priority=5, kind=CandidateKind.HOST)
"""

BAD_SIGNATURE = """
from nattrav.hookspecs import hookimpl

@hookimpl
def nattrav_register_methods(registry, not_an_argument):
    pass
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in {
        "p_good": GOOD,
        "p_broken_import": BROKEN_IMPORT,
        "p_broken_hook": BROKEN_HOOK,
        "p_duplicate": DUPLICATE,
        "p_bad_signature": BAD_SIGNATURE,
    }.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def ep(name: str, module: str) -> md.EntryPoint:
    return md.EntryPoint(name=name, value=module, group="nattrav")


def test_good_plugin_registers_with_its_config(plugin_dir: Path) -> None:
    cfg = structure_config({"plugins": {"good": {"priority": 12}}})
    host = PluginHost.load(cfg, entry_points=[ep("good", "p_good")], disabled=())
    rec = host.records["good"]
    assert rec.status is PluginStatus.OK
    assert rec.methods == [("good-method", 12)]
    assert rec.hooks == ["nattrav_register_methods"]
    assert [s.name for s in host.method_specs()] == ["direct", "good-method"]
    assert host.methods["good-method"].plugin == "good"


def test_failures_are_isolated(plugin_dir: Path) -> None:
    host = PluginHost.load(
        entry_points=[
            ep("broken-import", "p_broken_import"),
            ep("broken-hook", "p_broken_hook"),
            ep("good", "p_good"),
            ep("zdup", "p_duplicate"),
            ep("sig", "p_bad_signature"),
            ep("missing", "p_does_not_exist"),
        ],
        disabled=(),
    )
    status = {n: r.status for n, r in host.records.items()}
    assert status == {
        "direct": PluginStatus.OK,
        "broken-hook": PluginStatus.BROKEN,
        "broken-import": PluginStatus.BROKEN,
        "good": PluginStatus.OK,
        "missing": PluginStatus.BROKEN,
        "sig": PluginStatus.BROKEN,
        "zdup": PluginStatus.BROKEN,
    }
    assert "missing dependency libfoo" in (host.records["broken-import"].error or "")
    assert "boom in hook" in (host.records["broken-hook"].error or "")
    assert "already registered by plugin 'good'" in (host.records["zdup"].error or "")
    assert "not_an_argument" in (host.records["sig"].error or "")
    # The broken hook's partial registration was dropped; the good one stays.
    assert "half" not in host.methods
    assert [s.name for s in host.method_specs()] == ["direct", "good-method"]


def test_disabled_plugins_are_blocked_without_import(plugin_dir: Path) -> None:
    host = PluginHost.load(
        entry_points=[ep("broken-import", "p_broken_import"), ep("good", "p_good")],
        disabled={"broken-import", "direct"},
    )
    assert host.records["broken-import"].status is PluginStatus.BLOCKED
    assert host.records["direct"].status is PluginStatus.BLOCKED
    assert [s.name for s in host.method_specs()] == ["good-method"]


def test_env_var_blocks_by_name(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATTRAV_DISABLE_PLUGINS", " good , other")
    host = PluginHost.load(entry_points=[ep("good", "p_good")])
    assert host.records["good"].status is PluginStatus.BLOCKED
    assert host.records["good"].error == "disabled by NATTRAV_DISABLE_PLUGINS"


def test_duplicate_within_one_plugin_and_bad_arguments() -> None:
    def twice(registry: object) -> None:
        for _ in range(2):
            registry.add(object, name="same", priority=1, kind=CandidateKind.HOST)  # type: ignore[attr-defined]

    def bad_priority(registry: object) -> None:
        registry.add(object, name="x", priority="high", kind=CandidateKind.HOST)  # type: ignore[attr-defined]

    def config_error(registry: object, config: dict[str, object]) -> None:
        raise ConfigError(["[plugins.cfg] servers: expected a list"])

    host = PluginHost.load(
        entry_points=[],
        disabled=(),
        builtins=False,
        extra=[
            ("twice", module_plugin("twice", nattrav_register_methods=twice)),
            ("prio", module_plugin("prio", nattrav_register_methods=bad_priority)),
            ("cfg", module_plugin("cfg", nattrav_register_methods=config_error)),
        ],
    )
    assert "already registered by plugin 'twice'" in (host.records["twice"].error or "")
    assert "priority must be an int" in (host.records["prio"].error or "")
    assert "servers: expected a list" in (host.records["cfg"].error or "")
    assert len(host.methods) == 0


def test_no_plugin_manager_at_import_time() -> None:
    code = (
        "import sys, nattrav, nattrav.plugins, nattrav.hookspecs;"
        "assert 'pluggy._manager' not in sys.modules or True;"
        "import gc, pluggy;"
        "assert not [o for o in gc.get_objects() if isinstance(o, pluggy.PluginManager)]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_nattrav_is_lazy() -> None:
    code = (
        "import sys, nattrav;"
        "heavy = [m for m in ('anyio', 'opentelemetry', 'cattrs', 'stamina') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
