"""Chapter 4 (activation and attribution patching) runs top to bottom on a fresh kernel; its checks say "right"
with the solutions and "not done yet"/"wrong" without them; the numbers its prose quotes are the ones it prints;
and the task it patches really has a large clean/corrupted gap of opposite signs (issue 15: the tour's pair had a
0.59-logit gap with the same answer preferred in both prompts)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from tests.test_chapters import _execute, _text, assert_checks_right, assert_exercises, assert_stubs_not_done

ROOT = Path(__file__).resolve().parent.parent
CHAPTER4 = ROOT / "notebooks" / "chapter4_patching.ipynb"
CLEAN = " house fire world book voice light night house fire world"
CORRUPTED = " house fire world king voice light night house fire world"


@pytest.fixture(scope="module")
def chapter4(tmp_path_factory):
    return _execute(nbformat.read(CHAPTER4, as_version=4), tmp_path_factory.mktemp("ch4"))


def _out(nb) -> str:
    return "".join(_text(c) for c in nb.cells if c.cell_type == "code")


def test_chapter4_exercises_are_well_formed():
    nb = nbformat.read(CHAPTER4, as_version=4)
    assert_exercises(nb, 3)
    assert len({c.id for c in nb.cells}) == len(nb.cells) and all(c.id.startswith("ch4-") for c in nb.cells)
    views = [c for c in nb.cells if c.cell_type == "code" and "lab.patching(" in c.source]
    assert views and all("await" in c.source and ".finished()" in c.source for c in views)


def test_the_task_has_a_large_gap_of_opposite_signs():
    """Independent of the notebook: the raw HF model on the pair, logit(' book') - logit(' king') at the end."""
    from mechviz import zoo

    model, tok = zoo.load_default_model()
    book, king = tok.encode(" book"), tok.encode(" king")
    assert len(book) == len(king) == 1
    diffs = []
    for prompt in (CLEAN, CORRUPTED):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt)])
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        diffs.append(float(logits[book[0]] - logits[king[0]]))
        assert int(logits.argmax()) == (book if prompt == CLEAN else king)[0]
    assert len(tok.encode(CLEAN)) == len(tok.encode(CORRUPTED))
    assert diffs[0] > 10 and diffs[1] < -10, diffs


def test_chapter4_checks_say_right(chapter4):
    assert_checks_right(chapter4, 3)


def test_chapter4_numbers_the_prose_quotes(chapter4):
    out = _out(chapter4)
    assert "clean:     logit(' book') - logit(' king') = +10.63   top: [(' book', 0.77)" in out
    assert "corrupted: logit(' book') - logit(' king') = -10.91   top: [(' king', 0.91)" in out
    assert "the tour's pair: clean -3.08, corrupted -2.48" in out
    # the residual grid: rows as the prose reads them
    grid = re.search(r"\[\[ 0\. .*?\]\]", out, re.S)[0]
    rows = np.array([[float(v) for v in r.split()] for r in re.findall(r"\[([^\[\]]+)\]", grid)])
    assert rows.shape == (4, 11)
    np.testing.assert_allclose(rows[:3, 4], [1.0, 0.99, 0.95])
    assert rows[3, 10] == 0.99 and abs(rows[3, 4]) < 0.01
    rest = rows.copy()
    rest[:3, 4] = rest[3, 10] = 0
    assert np.abs(rest).max() <= 0.04
    table = dict((c, (float(e), float(a))) for c, e, a in
                 re.findall(r"^(\w+\.\d pos +\d+) +(-?\d\.\d\d) +(-?\d\.\d\d)$", out, re.M))
    assert table["resid_pre.0 pos 4"] == (1.0, 0.68) and table["resid_pre.2 pos 4"] == (0.95, 0.34)
    assert table["mlp_out.0 pos 4"] == (1.0, 0.48) and table["resid_pre.3 pos 10"] == (0.99, 0.72)
    assert all(a < e for e, a in table.values() if e > 0.5)        # the estimate shrinks every big effect
    assert "largest estimate where the exact effect is under 0.05: 0.07" in out
    assert "strongest heads: [('2.0', 0.55), ('2.2', 0.36), ('1.0', 0.04)]" in out
    assert "attribution estimate: [0.32, 0.31, 0.0]" in out


def test_chapter4_without_solutions_says_not_done(tmp_path):
    assert_stubs_not_done(CHAPTER4, tmp_path, 3)
