"""Chapter 3 (SAE features) runs top to bottom on a fresh kernel; its checks say "right" with the solutions and
"not done yet"/"wrong" without them; the numbers its prose quotes are the ones it prints; and the feature it
builds on (692, number words) is what it says, checked here without the notebook (issue 15: the tour's feature
only fires on the start token)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch

from tests.test_chapters import _execute, _text, assert_checks_right, assert_exercises, assert_stubs_not_done

ROOT = Path(__file__).resolve().parent.parent
CHAPTER3 = ROOT / "notebooks" / "chapter3_sae_features.ipynb"


@pytest.fixture(scope="module")
def chapter3(tmp_path_factory):
    return _execute(nbformat.read(CHAPTER3, as_version=4), tmp_path_factory.mktemp("ch3"))


def _out(nb) -> str:
    return "".join(_text(c) for c in nb.cells if c.cell_type == "code")


def test_chapter3_exercises_are_well_formed():
    nb = nbformat.read(CHAPTER3, as_version=4)
    assert_exercises(nb, 3)
    assert len({c.id for c in nb.cells}) == len(nb.cells) and all(c.id.startswith("ch3-") for c in nb.cells)
    workers = [c for c in nb.cells if c.cell_type == "code" and re.search(r"(Dashboard|Steering)View\(", c.source)]
    assert len(workers) == 2 and all("await" in c.source and ".finished()" in c.source for c in workers)


def test_feature_692_is_a_number_word_feature():
    """Without the notebook or mechviz's encoder: the raw HF residual stream after block 1 through the SAE's
    weights (TopK by hand), on number words and on the same sentence without them."""
    from safetensors.torch import load_file

    from mechviz import zoo

    model, tok = zoo.load_default_model()
    w = load_file(str(next(zoo.SAE_DIR.glob("*.safetensors"))))

    def feature(text):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(text)])
        with torch.no_grad():
            x = model(ids, output_hidden_states=True).hidden_states[2][0]       # resid_post.1
            pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
            top = pre.topk(24, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return [tok.decode([i]) for i in ids[0]], f[:, 692]

    toks, a = feature("He was one of four brothers, and for seven years he stayed at home.")
    assert toks[int(a[1:].argmax()) + 1] == " four" and a[toks.index(" seven")] > 3
    assert {t for t, v in zip(toks[1:], a[1:]) if v > 0.5} == {" one", " four", " seven"}
    _, b = feature("He was the son of rich brothers, and for long years he stayed at home.")   # no number word
    assert float(b[1:].max()) < 1.5 < 3 < float(a[toks.index(" seven")])
    toks, c = feature("She had several sons and a few daughters.")                               # a quantity word
    assert toks[int(c[1:].argmax()) + 1] == " few" and float(c.max()) > 2


def test_chapter3_checks_say_right(chapter3):
    assert_checks_right(chapter3, 3)


def test_chapter3_numbers_the_prose_quotes(chapter3):
    out = _out(chapter3)
    assert re.search(r"resid_post\.1 +0\.883 +24\.0 +0\.0% +4\.033 \(clean 3\.853, \+0\.180\)", out)
    assert "(L0): [" + ", ".join(["24"] * 27) + "]" in out
    assert "start token 0.517, others median 0.284, worst 0.487 at 'H'" in out
    assert "FeatureSummary(tokens=27, features=[692," in out
    assert "feature 692 over the prompt: [(' one', 0.79), (' four', 5.49), (' seven', 3.91)]" in out
    assert "feature 692 on 'She had several sons and a few daughters.': [(' a', 0.52), (' few', 2.92)]" in out
    assert "feature 692 on 'For many years he stayed at home.': [(' many', 1.93)]" in out
    table = re.findall(r"^(\d+) +\S.*? +(\d+\.\d\d)%   (.*)$", out, re.M)
    rows, dens = {int(f): rest for f, _, rest in table}, {int(f): float(d) for f, d, _ in table}
    assert len(table) == 9 and set(rows) == {158, 767, 495, 926, 1017, 872, 692, 111, 264}
    assert dens[692] == 1.44 and dens[264] == 1.74 and dens[158] == 4.95 and dens[1017] == 35.25 and dens[872] == 30.29
    assert "bible ' Then' 3.82" in rows[158] and "bible ' 2' 3.39" in rows[926]
    assert "bible ':' 2.74 | python ':' 2.06" in rows[495]
    assert "bible '1' 1.37 | python - | prose ' years' 2.15" in rows[111]
    assert "bible ':' 3.27 | python '\\n' 1.66" in rows[767]
    assert "python '!' 4.45" in rows[1017] and "bible 'h' 0.56 | python - | prose ' four' 5.49" in rows[692]
    assert "bible - | python - | prose ' because' 1.82" in rows[264]
    assert "FeatureDashboard(feature 692: density 1.444%" in out
    assert "top context 'tal ordering)\\n\\n  The last[[ two]] expressions apply'" in out
    assert "'In[[ other]] words" not in out and "In[[ other]] words, identical" in out
    assert re.search(r"weakest interval: \[' typically assume\\n  ident\[\[ical\]\]", out)
    assert "promotes: ['te', ' hundred', '-', ' of', ' thousand', 'th', ' th', ' c']" in out
    assert "unsteered:         ' the bed, and the bed, and the b'" in out
    assert "692 clamped to 6:  ' the two hundred and thirty and thirty and'" in out
    assert "692 clamped to 10: ' two hundred hundred hundred hundred" in out


def test_chapter3_without_solutions_says_not_done(tmp_path):
    assert_stubs_not_done(CHAPTER3, tmp_path, 3)
