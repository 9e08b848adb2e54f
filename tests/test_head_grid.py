"""HeadGridView bound to a Lab: fed from the one shared pass (DLA, detectors on the prompt) or its own
repeated-token pass (induction, once), numbers equal to the analysis functions, selection linked."""

from __future__ import annotations

import numpy as np
import pytest

import mechviz
from mechviz.analysis import dla as D
from mechviz.analysis import heads as Hd

PROMPT = "The cat sat on the mat. The cat sat on"


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt=PROMPT, sae=False)


def test_dla_view_follows_the_prompt_on_the_shared_pass(lab, monkeypatch):
    attn = lab.attention()
    view = lab.add(mechviz.HeadGridView(), answer=" the", wrong=" a")
    run = lab.model.run(PROMPT, capture=D.needs(lab.model.n_layers, by_source=True))
    ref = D.direct_logit_attribution(lab.model, run, " the", " a", by_source=True)
    np.testing.assert_allclose(view.data["values"], ref.heads, atol=1e-6)
    np.testing.assert_allclose(view.data["extra"], np.stack([ref.attn, ref.mlp], 1), atol=1e-6)
    assert view.data["by_position"].shape == (16, len(ref.token_strs)) and view.diverging
    calls = []
    real = lab.model.run
    monkeypatch.setattr(lab.model, "run", lambda *a, **k: calls.append(k.get("capture")) or real(*a, **k))
    lab.prompt = "The cat sat on the mat. The cat"
    assert len(calls) == 1 and "attn_pattern.0" in calls[0] and "z.3" in calls[0]   # one pass for both views
    assert view.prompt == attn.prompt == lab.prompt and view.result.position == len(view.tokens) - 1 == 12
    view.layer, view.head = 2, 1          # a click on a head: the attention view opens it
    assert (attn.layer, attn.head) == (2, 1)
    lab.remove(view), lab.remove(attn)


def test_detector_views(lab):
    ind = lab.add(mechviz.HeadGridView(), detector="induction", n_seqs=2, seed=5)
    prev = lab.add(mechviz.HeadGridView(), detector="previous_token", exclude_bos=True)
    ref = Hd.head_scores(lab.model, "induction", n_seqs=2, seed=5)
    np.testing.assert_allclose(ind.data["values"], ref.scores, atol=1e-6)
    assert ind.result.top(1) == [(2, 0)] and not ind.diverging
    lab.prompt = PROMPT + " the"
    np.testing.assert_allclose(ind.data["values"], ref.scores, atol=1e-6)   # not recomputed per edit
    ref_prev = Hd.head_scores(lab.model, "previous_token", lab.prompt, exclude_bos=True)
    np.testing.assert_allclose(prev.data["values"], ref_prev.scores, atol=1e-6)
    with pytest.raises(TypeError, match="answer= .* detector= .* or path="):
        lab.add(mechviz.HeadGridView())
    with pytest.raises(ValueError, match="exactly one token"):
        lab.add(mechviz.HeadGridView(), answer=" cat")
    lab.remove(ind), lab.remove(prev)


def test_path_patching_shows_senders_to_a_receiver():
    """lab.add(HeadGridView(), path={...}): every sender head's normalised path-patching effect on the first
    receiver, equal to the analysis function's, computed once (its prompts are fixed)."""
    import numpy as np

    import mechviz
    from mechviz.analysis.path_patching import path_patching

    lab = mechviz.Lab.default(prompt="The cat sat on the mat.")
    args = dict(clean="The cat sat on the mat. The cat", corrupted="The dog sat on the mat. The dog",
                receivers=[("k", 2, 0)], answers=(" sat", " the"), direction="denoise")
    view = lab.add(mechviz.HeadGridView(), path=args)
    want = path_patching(lab.model, **args)
    np.testing.assert_allclose(view.values, want.by_head(0, want.normalized()), atol=1e-6, equal_nan=True)
    assert np.isnan(view.values[2:]).all() and np.isfinite(view.values[:2]).all()   # senders below layer 2 only
    assert "k" in view.value_label and view.diverging
    seq = view.seq
    lab.prompt = "Another prompt entirely."                                             # not recomputed per edit
    np.testing.assert_allclose(view.values, want.by_head(0, want.normalized()), atol=1e-6, equal_nan=True)
    assert view.seq >= seq
