"""docs/threats.md stays true: every hostile-input row names tests, and every test it names exists.

The table is only worth something while it points at real tests: a renamed or deleted test
would otherwise leave a row claiming coverage that is gone. So this module reads the document
and fails when

* a table row (first cell an id such as ``S12`` or ``N3``) names no test;
* any pytest node id in the document (a table row or the "Not covered" section) does not
  resolve: the file must exist, and the test function (and its class, if given) must be defined
  in it, checked on the AST without importing anything (``test_x[case]`` resolves to
  ``test_x``);
* a row id of the research table (hostile-inputs.md: S1-S21, U1-U7, X1-X7, H1-H7, P1-P9,
  C1-C7, T1-T8, M1-M4, and F1-F5 for the input-related faults) is missing, listed twice, or
  both in the table and under "Not covered".
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "threats.md"

ROW_ID = re.compile(r"^[A-Z]{1,2}\d{1,3}$")
NODE_ID = re.compile(r"`([^`\s]+\.py::[^`\s]+)`")
NOT_COVERED_ID = re.compile(r"^\s*[-*] \*\*([A-Z]{1,2}\d{1,3})\*\*", re.MULTILINE)
NOT_COVERED_HEADING = re.compile(r"^## Not covered", re.MULTILINE)


def _ids(prefix: str, last: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(1, last + 1)]


RESEARCH_ROWS = (
    _ids("S", 21)
    + _ids("U", 7)
    + _ids("X", 7)
    + _ids("H", 7)
    + _ids("P", 9)
    + _ids("C", 7)
    + _ids("T", 8)
    + _ids("M", 4)
    + _ids("F", 5)
)


@attrs.frozen
class Row:
    id: str
    line: int
    tests: tuple[str, ...]


def table_rows(text: str) -> list[Row]:
    """Every markdown table row above "Not covered" whose first cell is a row id."""
    match = NOT_COVERED_HEADING.search(text)
    body = text[: match.start()] if match else text
    rows = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and ROW_ID.match(cells[0]):
            rows.append(Row(cells[0], number, tuple(NODE_ID.findall(cells[-1]))))
    return rows


def not_covered_ids(text: str) -> list[str]:
    match = NOT_COVERED_HEADING.search(text)
    return NOT_COVERED_ID.findall(text[match.start() :]) if match else []


def _defined(tree: ast.Module, names: list[str]) -> bool:
    scope: Iterable[ast.stmt] = tree.body
    for i, name in enumerate(names):
        last = i == len(names) - 1
        kinds: tuple[type[ast.stmt], ...] = (
            (ast.FunctionDef, ast.AsyncFunctionDef) if last else (ast.ClassDef,)
        )
        found = next(
            (n for n in scope if isinstance(n, kinds) and getattr(n, "name", None) == name), None
        )
        if found is None:
            return False
        scope = found.body if isinstance(found, ast.ClassDef) else ()
    return True


def resolve(node_id: str, root: Path = ROOT) -> str | None:
    """``None`` when ``node_id`` names an existing test, else what is wrong with it."""
    path_text, *names = node_id.split("::")
    if not names:
        return f"{node_id}: not a pytest node id (path::test)"
    names[-1] = names[-1].split("[", 1)[0]
    path = root / path_text
    if not path.is_file():
        return f"{node_id}: no file {path_text}"
    if not path.name.startswith("test_") or not names[-1].startswith("test"):
        return f"{node_id}: not a test (files test_*.py, functions test*)"
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        return f"{node_id}: {path_text} does not parse ({exc})"
    if not _defined(tree, names):
        return f"{node_id}: {'::'.join(names)} is not defined in {path_text}"
    return None


def problems(text: str, root: Path = ROOT) -> list[str]:
    """Everything wrong with a threats document (empty when it is sound)."""
    found: list[str] = []
    rows = table_rows(text)
    for row in rows:
        if not row.tests:
            found.append(f"line {row.line}: row {row.id} names no test")
    for node_id in sorted(set(NODE_ID.findall(text))):
        error = resolve(node_id, root)
        if error:
            found.append(error)
    table = [r.id for r in rows]
    gaps = not_covered_ids(text)
    for row_id in sorted(set(table)):
        if table.count(row_id) > 1:
            found.append(f"row {row_id} appears {table.count(row_id)} times in the table")
        if row_id in gaps:
            found.append(f"row {row_id} is both in the table and under 'Not covered'")
    for row_id in RESEARCH_ROWS:
        if row_id not in table and row_id not in gaps:
            found.append(f"research row {row_id} is neither in the table nor under 'Not covered'")
    return found


def test_threat_table_names_existing_tests_for_every_row() -> None:
    text = DOC.read_text()
    assert len(table_rows(text)) >= len(RESEARCH_ROWS)
    assert problems(text) == []


def test_every_research_row_is_in_the_table() -> None:
    """Rows of the research table are all covered by a test (none is only a gap)."""
    table = {r.id for r in table_rows(DOC.read_text())}
    assert [r for r in RESEARCH_ROWS if r not in table] == []


GOOD = "plugins/stun/tests/test_codec.py::test_rfc5769_request_decodes"


@pytest.mark.parametrize(
    ("row", "complaint"),
    [
        ("| S1 | short | discard | |", "names no test"),
        ("| S1 | short | discard | see the codec |", "names no test"),
        ("| S1 | short | discard | `plugins/stun/tests/test_nope.py::test_x` |", "no file"),
        (f"| S1 | short | discard | `{GOOD}_not` |", "is not defined"),
        ("| S1 | s | d | `plugins/stun/tests/test_codec.py::TestNope::test_x` |", "not defined"),
        ("| S1 | s | d | `plugins/stun/src/nattrav_stun/codec.py::decode` |", "not a test"),
        ("| S1 | s | d | `plugins/stun/tests/test_codec.py::TID` |", "not a test"),
        (f"| S1 | s | d | `{GOOD}` |\n| S1 | s | d | `{GOOD}` |", "appears 2 times"),
    ],
)
def test_the_checker_catches_broken_rows(row: str, complaint: str) -> None:
    found = problems(row)
    assert any(complaint in p for p in found), found


def test_the_checker_accepts_sound_rows_and_resolves_parametrised_and_class_ids(
    tmp_path: Path,
) -> None:
    tests = tmp_path / "pkg" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_mod.py").write_text(
        "import pytest\n"
        "class TestThing:\n"
        "    async def test_method(self):\n"
        "        pass\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "def test_param(x):\n"
        "    pass\n"
    )
    doc = (
        "| id | input | behaviour | tests |\n| --- | --- | --- | --- |\n"
        "| S1 | x | y | `pkg/tests/test_mod.py::TestThing::test_method` |\n"
        "| S2 | x | y | `pkg/tests/test_mod.py::test_param[1]`<br>"
        "`pkg/tests/test_mod.py::test_param` |\n"
        "\n## Not covered\n\n- **S3** a gap; reproducer `pkg/tests/test_mod.py::test_param`\n"
    )
    found = problems(doc, tmp_path)
    assert not [p for p in found if "research row" not in p], found
    assert "research row S3 is neither in the table nor under 'Not covered'" not in found
    assert "research row S4 is neither in the table nor under 'Not covered'" in found
    assert [r.id for r in table_rows(doc)] == ["S1", "S2"]
    assert not_covered_ids(doc) == ["S3"]


def test_a_gap_listed_in_the_table_too_is_refused() -> None:
    doc = f"| S1 | s | d | `{GOOD}` |\n\n## Not covered\n\n- **S1** also here\n"
    assert "row S1 is both in the table and under 'Not covered'" in problems(doc)
