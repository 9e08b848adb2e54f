"""Head detectors against TransformerLens' ``detect_head`` (and, for token ids it cannot take, its own
``get_*_detection_pattern`` and ``compute_head_attention_similarity_score``) on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz import zoo
from mechviz.analysis import heads as Hd
from mechviz.models import HFAdapter

from .conftest import build_hf, tl_from_hf

PROMPT = "The cat sat on the mat. The cat sat on the mat, and the dog sat on the cat."


@pytest.fixture(scope="module")
def bundled():
    model, tok = zoo.load_default_model()
    tl, _ = zoo.load_default_model(backend="transformer_lens")
    return HFAdapter(model, tok), tl


def _detect(tl, seq, det, **kw):
    from transformer_lens.head_detector import detect_head
    return detect_head(tl, seq, det, **kw).numpy()


@pytest.mark.parametrize("kw", [{}, {"exclude_bos": True}, {"exclude_current_token": True},
                                {"error_measure": "abs"}, {"exclude_bos": True, "error_measure": "abs"}])
@pytest.mark.parametrize("kind", ["previous_token", "duplicate_token", "induction"])
def test_named_detectors_equal_detect_head(bundled, kind, kw):
    adapter, tl = bundled
    assert adapter.to_tokens(PROMPT).tolist() == tl.to_tokens(PROMPT)[0].tolist()
    ours = Hd.head_scores(adapter, kind, PROMPT, **kw)
    ref = _detect(tl, PROMPT, f"{kind}_head", **kw)
    assert np.abs(ours.scores - ref).max() < 1e-5
    assert ours.scores.std() > 0.01  # heads differ: the comparison is not of constants


def test_current_token_and_user_pattern_equal_detect_head(bundled):
    adapter, tl = bundled
    T = len(adapter.to_tokens(PROMPT))
    ours = Hd.head_scores(adapter, "current_token", PROMPT)
    assert np.abs(ours.scores - _detect(tl, PROMPT, torch.eye(T))).max() < 1e-5
    bos = torch.zeros(T, T)
    bos[:, 0] = 1  # a "rests on BOS" head, given as a function of the tokens
    ours = Hd.head_scores(adapter, "pattern", PROMPT, pattern=lambda ids: bos.numpy())
    assert np.abs(ours.scores - _detect(tl, PROMPT, bos)).max() < 1e-5
    ours = Hd.head_scores(adapter, "pattern", PROMPT, pattern=bos, error_measure="abs")
    assert np.abs(ours.scores - _detect(tl, PROMPT, bos, error_measure="abs")).max() < 1e-5
    # a list of prompts: each scored, then averaged (detect_head on a list)
    two = [PROMPT, "A dog and a dog and a cat."]
    ours = Hd.head_scores(adapter, "duplicate_token", two)
    assert np.abs(ours.scores - _detect(tl, two, "duplicate_token_head")).max() < 1e-5


def _tl_on_tokens(tl, ids, kind):
    """detect_head's arithmetic on token ids (detect_head itself takes text only)."""
    from transformer_lens import head_detector as hd
    det = getattr(hd, f"get_{kind}_head_detection_pattern")(torch.as_tensor(ids)[None])
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(ids)[None], remove_batch_dim=True)
    return np.array([[hd.compute_head_attention_similarity_score(
        cache["pattern", layer, "attn"][head], det, exclude_bos=False, exclude_current_token=False,
        error_measure="mul") for head in range(tl.cfg.n_heads)] for layer in range(tl.cfg.n_layers)])


def test_induction_on_repeated_random_tokens_finds_head_2_0(bundled):
    adapter, tl = bundled
    ours = Hd.head_scores(adapter, "induction", n_seqs=3, seed=1)
    assert ours.tokens.shape == (3, 81) and (ours.tokens[:, 1:41] == ours.tokens[:, 41:]).all()
    assert (ours.tokens[:, 0] == adapter.bos_id()).all() and (ours.tokens[:, 1:] != adapter.bos_id()).all()
    ref = np.mean([_tl_on_tokens(tl, ids, "induction") for ids in ours.tokens], 0)
    assert np.abs(ours.scores - ref).max() < 1e-5
    assert ours.top(1) == [(2, 0)]
    # (the mul score counts the first copy too, where no head can induct: 2.0 scores ~0.42 of a possible ~0.5;
    # head 2.2 is a second, weaker induction head, every other head scores < 0.21)
    assert ours.scores[2, 0] > 0.4 and np.sort(ours.scores, None)[-3] < 0.25
    for seed in (0, 2):
        assert Hd.head_scores(adapter, "induction", n_seqs=3, seed=seed).top(1) == [(2, 0)]
    # seeded: the same tokens again
    assert (Hd.head_scores(adapter, "induction", n_seqs=3, seed=1).tokens == ours.tokens).all()


def test_gqa_model_on_token_ids():
    model = build_hf("llama_gqa")
    adapter, tl = HFAdapter(model), tl_from_hf(model)
    ours = Hd.head_scores(adapter, "induction", rep_len=12, seed=3)
    ref = _tl_on_tokens(tl, ours.tokens[0], "induction")
    assert np.abs(ours.scores - ref).max() < 1e-5
    prev = Hd.head_scores(adapter, "previous_token", ours.tokens[0].tolist())
    assert np.abs(prev.scores - _tl_on_tokens(tl, ours.tokens[0], "previous_token")).max() < 1e-5


def test_reuses_a_run_and_refuses_bad_input(bundled):
    adapter, _ = bundled
    run = adapter.run(PROMPT, capture=["attn_pattern"])
    a = Hd.head_scores(adapter, "previous_token", run=run)
    b = Hd.head_scores(adapter, "previous_token", PROMPT)
    assert np.array_equal(a.scores, b.scores) and a.patterns.shape[:2] == (4, 4)
    with pytest.raises(ValueError, match="needs a prompt"):
        Hd.head_scores(adapter, "previous_token")
    with pytest.raises(ValueError, match="lower-triangular"):
        Hd.head_scores(adapter, "pattern", PROMPT, pattern=np.ones((3, 3)))
    with pytest.raises(ValueError, match="unknown head kind"):
        Hd.head_scores(adapter, "copy", PROMPT)
    with pytest.raises(ValueError, match="error_measure"):
        Hd.head_scores(adapter, "induction", PROMPT, error_measure="l2")
