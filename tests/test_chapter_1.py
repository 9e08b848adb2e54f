"""Chapter 1 (attention and the induction circuit) runs top to bottom on a fresh kernel; its exercise checks
say "right" with the solutions in and "not done yet" (or "wrong") with them taken out; and the numbers its prose
quotes are the ones its cells print, re-derived here from the real model where a test can do so cheaply."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis import heads
from tests.test_chapters import _execute, _text, assert_checks_right, assert_exercises, assert_stubs_not_done

ROOT = Path(__file__).resolve().parent.parent
CHAPTER1 = ROOT / "notebooks" / "chapter1_attention_induction.ipynb"


@pytest.fixture(scope="module")
def chapter1(tmp_path_factory):
    return _execute(nbformat.read(CHAPTER1, as_version=4), tmp_path_factory.mktemp("ch1"))


def _out(nb) -> str:
    return "".join(_text(c) for c in nb.cells if c.cell_type == "code")


def _prose(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_chapter1_is_well_formed():
    nb = nbformat.read(CHAPTER1, as_version=4)
    assert_exercises(nb, 3)
    ids = [c.id for c in nb.cells]
    assert ids == [f"ch1-{i:02d}" for i in range(len(nb.cells))]                      # stable cell ids


def test_chapter1_checks_say_right(chapter1):
    assert_checks_right(chapter1, 3)


def test_chapter1_numbers_the_prose_quotes(chapter1):
    out, prose = _out(chapter1), _prose(chapter1)
    for printed, quoted in [
        ("P(' book') = 0.773", "77%"),
        ("to the first ' book' (position 4): 0.75", "**0.75**"),
        ("induction heads: 2.0 (0.46), 2.2 (0.42)", "**2.0** (0.46) and **2.2** (0.42)"),
        ("previous-token heads: 0.2 (0.58), 0.0 (0.29)", "**0.2** (0.58, the head we looked at) and **0.0** (0.29)"),
        ("runner-up: ' mother'", "`mother`"),
        ("total=3.31", "**3.31**"),
        ("head 2.2 writes 2.18 of 3.31 (1.79 of it read from position 4); head 2.0 writes 0.13; head 0.2 writes -0.00",
         "**2.2: 2.18** of it, 1.79 read from position 4"),
        ("head 2.0 writes 0.13;", "only **0.13**"),
        ("head 0.2 writes -0.00", "(-0.00)"),
        ("head 2.2's attention from the last position to position 4: 0.61", "with 0.61 of its weight"),
        ("the logit of ' book' alone: head 2.0 writes 2.88, head 2.2 writes 6.17", "it writes 2.88 (2.2: 6.17)"),
        ("share of the gap through 2.0's key: from 0.2 0.30, from 0.0 0.16", "about\n**0.30**"),
        ("largest share through the query: 0.06, through the value: 0.06", "more than **0.06**"),
        ("clean metric 4.423, corrupted -2.8", "about 4.4"),
        ("the clean-corrupted gap: 7.2 logits", "of that 7.2-logit gap"),
        ("the strongest sender into 2.0's key is the best previous-token head: True", "K-composition"),
    ]:
        assert printed in out, printed
        assert quoted in prose, quoted
    prev = [float(v) for v in re.search(r"weight on the previous token, per destination: \[(.+?)\]", out)[1].split(",")]
    assert min(prev) == 0.33 and max(prev) == 0.82 and 0.45 <= np.median(prev) <= 0.55    # "a third to four fifths"
    assert "a third to four fifths of its attention (about half, typically)" in prose
    assert "0.19" in out.split("induction scores [layer, head]")[1].split("previous-token")[0] and "1.0 (0.19)" in prose
    heads_row = re.search(r"per head \[layer, head\]:\n(.+?)\nattention", out, re.S)[1]
    dla = np.array([[float(v) for v in row.strip(" []").split()] for row in heads_row.splitlines()])
    assert dla[2, 2] == 2.18 and dla[2, 0] == 0.13
    assert np.unravel_index(np.argmax(dla), dla.shape) == (2, 2)          # 2.2 is the largest direct writer
    assert "MLPs: [ 1.68" in out and "adds 1.68" in prose


def test_chapter1_heads_against_an_independent_detector():
    """The heads the prose names, from attention patterns captured here and a detection pattern built by a loop
    (not mechviz's detector): the two best induction heads are in layer 2, the best previous-token head is 0.2."""
    model, tok = mechviz.zoo.load_default_model()
    adapter = mechviz.wrap(model, tok)
    ids = heads.repeated_random_tokens(adapter, 30, 1, 0)[0]
    run = adapter.run(torch.as_tensor(ids), capture=[f"attn_pattern.{l}" for l in range(adapter.n_layers)])
    A = run.stack("attn_pattern").double().numpy()           # [L, H, T, T]
    T = len(ids)
    ind = np.zeros((T, T))
    for d in range(T):
        for s in range(1, d + 1):
            ind[d, s] = float(ids[s - 1] == ids[d])
    prev = np.eye(T, k=-1)
    score = lambda D: (A * D).sum((-1, -2)) / A.sum((-1, -2))  # noqa: E731
    order = np.argsort(-score(ind), axis=None)[:2]
    assert {tuple(int(x) for x in np.unravel_index(o, (4, 4))) for o in order} == {(2, 0), (2, 2)}
    assert np.unravel_index(np.argmax(score(prev)), (4, 4)) == (0, 2)
    assert round(float(score(ind)[2, 0]), 2) == 0.46 and round(float(score(prev)[0, 2]), 2) == 0.58


def test_chapter1_without_solutions_says_not_done(tmp_path):
    assert_stubs_not_done(CHAPTER1, tmp_path, 3)
