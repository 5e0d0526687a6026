"""Every hook is documented: a docstring in hookspecs.py and a section in docs/hooks.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from nattrav import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def _hookspecs() -> dict[str, object]:
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if name.startswith("nattrav_") and inspect.isfunction(obj)
    }


def test_every_hookspec_has_a_docstring() -> None:
    specs = _hookspecs()
    assert len(specs) >= 10
    missing = [n for n, f in specs.items() if len((inspect.getdoc(f) or "").strip()) < 40]
    assert not missing, f"hookspecs without a real docstring: {missing}"


def test_every_hookspec_is_in_docs_hooks_md_and_nothing_else_is() -> None:
    documented = set(re.findall(r"^### (nattrav_\w+)\s*$", DOC.read_text(), re.M))
    specs = set(_hookspecs())
    assert specs - documented == set(), f"missing from docs/hooks.md: {specs - documented}"
    assert documented - specs == set(), f"documented but not a hook: {documented - specs}"


def test_groups_cover_every_hook_exactly_once() -> None:
    grouped = [h for hooks in hookspecs.GROUPS.values() for h in hooks]
    assert sorted(grouped) == sorted(_hookspecs())
    assert set(hookspecs.GROUPS) == {"method", "resilience", "telemetry"}


def test_hookspec_names_follow_the_convention() -> None:
    for name in _hookspecs():
        assert re.fullmatch(r"nattrav_[a-z]+(_[a-z]+)+", name), name
