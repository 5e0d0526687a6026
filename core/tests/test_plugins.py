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


# --------------------------------------------------------------------------- discovery
#
# nattrav reads entry_points.txt itself (importing importlib.metadata cost more than the rest
# of `nattrav-plugins list`). These tests hold it to importlib.metadata's answers: same entry
# points, same order, same distribution names and versions, on the real environment and on
# layouts built for the purpose, and importlib.metadata's own discovery where the scan would
# not see what it sees (zips, eggs, finders that provide distributions).


def _ours(group: str) -> list[tuple[str, str, tuple[str | None, str | None]]]:
    from nattrav.plugins import _name_and_version, installed_entry_points

    return [(e.name, e.value, _name_and_version(e.dist)) for e in installed_entry_points(group)]


def _theirs(group: str) -> list[tuple[str, str, tuple[str | None, str | None]]]:
    return [
        (e.name, e.value, (e.dist.name, e.dist.version) if e.dist else (None, None))
        for e in md.entry_points(group=group)
    ]


@pytest.mark.parametrize("group", ["nattrav", "console_scripts", "pytest11"])
def test_discovery_matches_importlib_metadata_here(group: str) -> None:
    from nattrav.plugins import _plain_layout

    assert _plain_layout()  # the venv: dist-info directories (editable installs included)
    assert _ours(group) == _theirs(group)


def _dist(parent: Path, dirname: str, *, metadata: str | None, entry_points: str | None) -> Path:
    path = parent / dirname
    path.mkdir(parents=True)
    if metadata is not None:
        name = "PKG-INFO" if dirname.endswith(".egg-info") else "METADATA"
        (path / name).write_text(textwrap.dedent(metadata))
    if entry_points is not None:
        (path / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return path


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two path entries: installed dist-info, a ``setup.py develop`` egg-info, a distutils
    egg-info *file*, a dist without entry points, a shadowed older copy, odd metadata."""
    first, second = tmp_path / "site", tmp_path / "other"
    _dist(
        first,
        "alpha_plugin-1.0.dist-info",
        metadata="Metadata-Version: 2.1\nName: alpha-plugin\nVersion: 1.0\n\nName: not this\n",
        entry_points="""
            # a comment, then groups in any order
            [console_scripts]
            alpha = alpha_mod:main

            [nattrav]
            alpha = alpha_mod.plugin
              spaced   =   alpha_mod.other : hooks.inner [extra1, extra2]
            """,
    )
    _dist(
        first,
        "Beta.Pkg.egg-info",
        metadata="Metadata-Version: 1.0\nName: Beta.Pkg\nVersion: 0.3.dev1\n",
        entry_points="[nattrav]\nbeta=beta_mod.plugin\n",
    )
    _dist(first, "gamma-2.0.dist-info", metadata="Name: gamma\nVersion: 2.0\n", entry_points=None)
    (first / "old_dist-0.1.egg-info").write_text("Metadata-Version: 1.0\nName: old-dist\n")
    _dist(
        second,
        "alpha_plugin-0.9.dist-info",
        metadata="Name: alpha-plugin\nVersion: 0.9\n",
        entry_points="[nattrav]\nalpha-old = alpha_mod.old\n",
    )
    _dist(
        second,
        "delta-3.0.dist-info",
        # Folded headers and a Version only after them: the cheap reader must not be fooled.
        metadata="Summary: a\n  Version: 9.9\nName:delta\nVersion:   3.0  \n",
        entry_points="[nattrav]\ndelta = delta_mod\n",
    )
    _dist(
        second,
        "epsilon-1.0.dist-info",
        metadata="Metadata-Version: 2.1\nName: epsilon\n\nVersion: 5\n",  # no Version header
        entry_points="[nattrav]\nepsilon = epsilon_mod\n",
    )
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    return first, second


def test_discovery_reads_layouts_like_importlib_metadata(layout: tuple[Path, Path]) -> None:
    ours = _ours("nattrav")
    assert ours == _theirs("nattrav")
    assert _ours("console_scripts") == _theirs("console_scripts")
    # Path entries in order (each as its directory lists); the first copy of a name wins.
    assert {name: dist for name, _, dist in ours[:3]} == {
        "alpha": ("alpha-plugin", "1.0"),
        "spaced": ("alpha-plugin", "1.0"),
        "beta": ("Beta.Pkg", "0.3.dev1"),  # egg-info: PKG-INFO
    }
    assert {name: dist for name, _, dist in ours[3:]} == {
        "delta": ("delta", "3.0  "),  # trailing blanks kept, as the email parser keeps them
        "epsilon": ("epsilon", None),  # no Version header: importlib.metadata decides
    }
    from nattrav.plugins import _find_distribution, _name_and_version

    for name in ("beta-pkg", "Beta_Pkg", "gamma", "old-dist"):
        found = _find_distribution(name)
        assert found is not None
        assert _name_and_version(found) == (md.distribution(name).name, md.version(name))
    assert _find_distribution("not-installed") is None


def test_discovered_plugins_load_with_their_distribution(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _second = layout
    (first / "alpha_mod").mkdir()
    (first / "alpha_mod" / "__init__.py").write_text("")
    (first / "alpha_mod" / "plugin.py").write_text(textwrap.dedent(GOOD))
    (first / "beta_mod").mkdir()
    (first / "beta_mod" / "__init__.py").write_text("")
    (first / "beta_mod" / "plugin.py").write_text(BROKEN_IMPORT)
    monkeypatch.setattr("nattrav.plugins._find_distribution", lambda name: None)
    host = PluginHost.load(disabled=("delta", "epsilon"))
    alpha, beta = host.records["alpha"], host.records["beta"]
    assert alpha.status is PluginStatus.OK
    assert (alpha.distribution, alpha.version, alpha.module) == (
        "alpha-plugin",
        "1.0",
        "alpha_mod.plugin",
    )
    assert alpha.methods == [("good-method", 30)]
    assert beta.status is PluginStatus.BROKEN and "libfoo" in (beta.error or "")
    assert beta.distribution == "Beta.Pkg"
    # `spaced` names an attribute path (module:attr.attr [extras]) that does not exist.
    assert host.records["spaced"].status is PluginStatus.BROKEN
    assert host.records["delta"].status is PluginStatus.BLOCKED
    assert host.records["direct"].version is None  # core's own metadata is not on this path


def test_entry_point_values_load_like_importlib_metadata() -> None:
    from nattrav.plugins import InstalledEntryPoint

    for value in ("os.path", "os.path:join", "os : path.join", "os.path:join [extra]"):
        ours = InstalledEntryPoint("x", value, "nattrav").load()
        assert ours is md.EntryPoint(name="x", value=value, group="nattrav").load()
    with pytest.raises(ValueError, match="malformed"):
        InstalledEntryPoint("x", "not a module!", "nattrav").load()


def test_unusual_layouts_use_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip on the path and a finder with distributions of its own: the scan cannot see them,
    so discovery is importlib.metadata's (and still finds them)."""
    import zipfile

    from nattrav.plugins import _plain_layout

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zeta-1.0.dist-info/METADATA", "Name: zeta\nVersion: 1.0\n")
        zf.writestr("zeta-1.0.dist-info/entry_points.txt", "[nattrav]\nzeta = zeta_mod\n")
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert not _plain_layout()
    assert _ours("nattrav") == _theirs("nattrav") == [("zeta", "zeta_mod", ("zeta", "1.0"))]

    eta = _dist(
        tmp_path / "elsewhere",
        "eta-4.0.dist-info",
        metadata="Name: eta\nVersion: 4.0\n",
        entry_points="[nattrav]\neta = eta_mod\n",
    )

    class Finder:
        @staticmethod
        def find_spec(*_args: object) -> None:
            return None

        @staticmethod
        def find_distributions(*_args: object) -> list[md.Distribution]:
            return [md.PathDistribution(eta)]

    monkeypatch.setattr(sys, "path", [])
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    assert not _plain_layout()
    assert _ours("nattrav") == [("eta", "eta_mod", ("eta", "4.0"))]


def test_upper_case_metadata_suffix_goes_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dist(
        tmp_path,
        "Theta-1.0.DIST-INFO",
        metadata="Name: theta\nVersion: 1.0\n",
        entry_points="[nattrav]\ntheta = theta_mod\n",
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert _ours("nattrav") == _theirs("nattrav")


def test_a_line_without_equals_sign_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """importlib.metadata raises on it (and so would every CLI start): one broken third-party
    file must not stop the listing, so the scan skips the line and keeps the rest."""
    _dist(
        tmp_path,
        "iota-1.0.dist-info",
        metadata="Name: iota\nVersion: 1.0\n",
        entry_points="[nattrav]\nno equals sign here\niota = iota_mod\n",
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(TypeError):
        _theirs("nattrav")
    assert _ours("nattrav") == [("iota", "iota_mod", ("iota", "1.0"))]


@pytest.mark.parametrize(
    "metadata",
    [
        "Name: kappa\nVersion: 1.0\n",
        "Name: kappa\r\nVersion: 1.0\r\n\r\nVersion: 2\r\n",
        "Name: kappa\rVersion: 1.0\r",
        "Name: kappa\n  continued\nVersion: 1.0\n",  # a folded Name
        "Summary: x\nVersion : 1.0\nName: kappa\n",  # "Version :" is no header: block ends
        "Name:kappa\nVERSION:\t1.0\nname: other\n",
        "From somebody\nName: kappa\nVersion: 1.0\n",
        "Name: kappa\n   \nVersion: 1.0\n",  # a blank-looking line is a continuation
        "Name: kappa\nVersion: 1.0",
        "",
    ],
)
def test_name_and_version_agree_with_the_email_parser(tmp_path: Path, metadata: str) -> None:
    from nattrav.plugins import MetadataDirectory, _name_and_version

    path = tmp_path / "kappa-1.0.dist-info"
    path.mkdir()
    (path / "METADATA").write_bytes(metadata.encode())
    expected = md.PathDistribution(path)
    assert _name_and_version(MetadataDirectory(str(path))) == (expected.name, expected.version)
