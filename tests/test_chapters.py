"""The course chapters run top to bottom on a fresh kernel; their exercise checks say "right" with the
solutions in and "not done yet" (or "wrong") with them taken out; and what the prose claims from the
printed numbers holds (an ablation in the real model moves the logit the way the graph's edges say)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import mechviz

ROOT = Path(__file__).resolve().parent.parent
CHAPTER5 = ROOT / "notebooks" / "chapter5_attribution_graphs.ipynb"


def _execute(nb, tmp_path):
    # the kernel imports the mechviz under test (this checkout's, also when it is not the installed one)
    here = str(Path(mechviz.__file__).resolve().parent.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([here] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, [(e["ename"], e["evalue"]) for e in errors]
    return nb


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def _tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def assert_exercises(nb, n: int | None = None, *, gap: int = 1) -> None:
    """The exercise pattern every chapter follows: each solution (hidden, tagged "solution") comes right after
    its stub (the same function, raising NotImplementedError) and within ``gap`` cells before its check (tagged
    "check", starting with ``check(``); ``n`` exercises (at least 2 if None); committed without outputs."""
    sols, checks = _tagged(nb, "solution"), _tagged(nb, "check")
    assert len(sols) == len(checks) and (len(sols) == n if n is not None else len(sols) >= 2)
    for s in sols:
        assert s.metadata == {"jupyter": {"source_hidden": True}, "tags": ["solution"]}
        i = nb.cells.index(s)
        stub = nb.cells[i - 1]   # the student's cell comes just before its solution and defines the same name
        assert "raise NotImplementedError" in stub.source and "raise NotImplementedError" not in s.source
        assert re.match(r"def (\w+)\(", stub.source)[1] == re.match(r"def (\w+)\(", s.source)[1]
        assert any(c in checks for c in nb.cells[i + 1:i + 1 + gap])
    assert all(c.source.startswith("check(") for c in checks)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")      # committed without outputs


def assert_checks_right(nb, n: int | None = None) -> None:
    """Every check cell of an executed chapter printed "✓ <name>: right" (``n`` of them; at least 3 if None)."""
    said = [_text(c) for c in _tagged(nb, "check")]
    assert len(said) == n if n is not None else len(said) >= 3
    for s in said:
        assert re.fullmatch(r"✓ [^\n]+: right\n", s), s


def assert_stubs_not_done(path, tmp_path, n: int | None = None) -> None:
    """The chapter at ``path`` executed with its solution cells taken out: every check says "not done yet" or
    "wrong" (``n`` of them; at least 3 if None)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    _execute(nb, tmp_path)
    said = [_text(c) for c in _tagged(nb, "check")]
    assert len(said) == n if n is not None else len(said) >= 3
    for s in said:
        assert re.fullmatch(r"✗ [^\n]+: (not done yet|wrong: [^\n]+)\n", s), s


@pytest.fixture(scope="module")
def chapter5(tmp_path_factory):
    return _execute(nbformat.read(CHAPTER5, as_version=4), tmp_path_factory.mktemp("ch5"))


def test_chapter5_exercises_are_well_formed():
    nb = nbformat.read(CHAPTER5, as_version=4)
    assert_exercises(nb, gap=2)
    heads = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    assert "## Explore it in the graph view" in heads[:3]


def test_chapter5_checks_say_right(chapter5):
    assert_checks_right(chapter5)


def test_chapter5_numbers_the_prose_quotes(chapter5):
    out = "".join(_text(c) for c in chapter5.cells if c.cell_type == "code")
    assert "P(' book') = 0.773" in out
    assert "replacement score 0.831, completeness score 0.949" in out
    assert "embed 4 ' book' -> feature L0 pos 4 ' book' #246 -> logit ' book'" in out
    assert "the top path survives pruning: True" in out
    # the intervention table: the frozen model's change equals the graph's prediction; the real model's has
    # its sign and is within a factor 3 of it; switching off all layer-0 features on 'book' kills the prediction
    rows = re.findall(r"^(.+?)\s+([-+]\d+\.\d+)\s+([-+]\d+\.\d+)\s+([-+]\d+\.\d+)\s+(\d\.\d+)$", out, re.M)
    assert len(rows) == 5
    for name, pred, frozen, real, p in rows:
        pred, frozen, real = float(pred), float(frozen), float(real)
        assert pred == frozen and pred < 0 and pred / 3 > real > 3 * pred, (name, pred, real)
    assert [float(r[4]) for r in rows if r[0].startswith("all 57")] == [0.001]


def test_chapter5_without_solutions_says_not_done(tmp_path):
    assert_stubs_not_done(CHAPTER5, tmp_path)
