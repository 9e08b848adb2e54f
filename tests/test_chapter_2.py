"""Chapter 2 (the logit lens) runs top to bottom on a fresh kernel; its exercise checks say "right" with the
solutions in and "not done yet" (or "wrong") with them taken out; the numbers its prose quotes are the ones its
cells print; and the headline (book becomes top-1 right after block 2, from ranks 9, 426, 227) holds in a lens
computed here by hand from the HF model's own modules, not by mechviz."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch

import mechviz
from tests.test_chapters import _execute, _text, assert_checks_right, assert_exercises, assert_stubs_not_done

ROOT = Path(__file__).resolve().parent.parent
CHAPTER2 = ROOT / "notebooks" / "chapter2_logit_lens.ipynb"
PROMPT = " house fire world book voice light night house fire world book"


@pytest.fixture(scope="module")
def chapter2(tmp_path_factory):
    return _execute(nbformat.read(CHAPTER2, as_version=4), tmp_path_factory.mktemp("ch2"))


def test_chapter2_is_well_formed():
    nb = nbformat.read(CHAPTER2, as_version=4)
    assert_exercises(nb, 3)
    assert [c.id for c in nb.cells] == [f"ch2-{i:02d}" for i in range(len(nb.cells))]
    assert PROMPT in nb.cells[1].source


def test_chapter2_checks_say_right(chapter2):
    assert_checks_right(chapter2, 3)


def test_chapter2_numbers_the_prose_quotes(chapter2):
    out = "".join(_text(c) for c in chapter2.cells if c.cell_type == "code")
    prose = "\n".join(c.source for c in chapter2.cells if c.cell_type == "markdown")
    for printed, quoted in [
        ("the view shows this grid: True", "Read the column of the second `world`"),
        ("resid_pre.0   top-3: ' world' 0.97", "reads `world` itself"),
        ("resid_pre.1   top-3: 'ared'", "(`ared`, ` LORD`)"),
        ("resid_pre.3   top-3: ' book' 0.65", "probability 0.65"),
        ("P(book) 0.773", "gives it 0.77"),
        ("\"8 ' house'\": 'resid_pre.3', \"9 ' fire'\": 'resid_pre.3', \"10 ' world'\": 'resid_pre.3'", "(8, 9, 10"),
        ("top-1 of the last two rows at positions 3-5: [[' world', ' book', ' voice'], [' world', ' book', ' voice']]",
         "Positions 3 to 5"),
        ("has the input token as its top-1 at 12 of 12 positions",
         "at every position, the token that is already there"),
        ("the unembedding is the embedding matrix: True", "**tied**"),
        ("rank of ' book' at position 10, per row: [9, 426, 227, 0, 0]",
         "rank **9** in the\nembedding row, falls to **426** and **227**"),
        ("(the first ' world'), per row: [9,", "has the same rank 9"),
        ("residual norm in column 10, per row: [0.96, 9.55, 8.5, 17.69, 16.68]",
         "about **0.96**, the final residual about **16.7**"),
        ("entropy (nats) in column 10, per row: [0.3, 5.34, 5.65, 2.32, 1.55]; uniform over the vocabulary: 7.62",
         "(entropy 0.30 nats, against 1.55"),
        ("uniform over the vocabulary: 7.62", "about 5.3-5.7 nats in column 10, near the 7.62"),
    ]:
        assert printed in out, printed
        assert quoted in prose, quoted
    changes = [float(x) for x in re.findall(r"largest change(?: in any probability)? ([0-9.e+-]+)", out)]
    assert len(changes) == 2 and max(changes) < 1e-4        # "no probability changes by more than rounding"


def test_chapter2_headline_by_hand():
    model, tok = mechviz.zoo.load_default_model()
    ids = torch.tensor([tok.bos_token_id] + tok.encode(PROMPT))      # mechviz prepends BOS, as GPT-2 was trained
    with torch.no_grad():
        hidden = model(input_ids=ids[None], output_hidden_states=True).hidden_states   # embeddings, then each block
        # HF applies ln_f to the last hidden state; the lens rows are the residuals before it
        rows = list(hidden[:-1]) + [None]
        last = model.transformer.ln_f
        book = tok.encode(" book")[0]
        ranks = []
        for r, h in enumerate(rows):
            logits = model(input_ids=ids[None]).logits[0, 10] if h is None else model.lm_head(last(h[0, 10]))
            ranks.append(int((logits > logits[book]).sum()))
    assert ranks == [9, 426, 227, 0, 0]
    assert ids[10] == tok.encode(" world")[0]


def test_chapter2_without_solutions_says_not_done(tmp_path):
    assert_stubs_not_done(CHAPTER2, tmp_path, 3)
