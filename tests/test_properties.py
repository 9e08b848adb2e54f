"""Property-based checks (hypothesis) of what a user can type or pass: any unicode prompt up to past the
model's context, and view arguments; each case ends in a result or a clear error, with the prompt and
the last good view kept. 1,200 generated cases per run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechviz import Lab
from mechviz.models import PromptError

from .conftest import _tokenizer, build_hf

GOOD = "The cat sat on the mat."


@pytest.fixture(scope="module")
def lab():
    lab = Lab(build_hf("gpt2"), _tokenizer(), prompt=GOOD, threads=1)
    lab.attention()
    lab.logit_lens(k=3)
    return lab


def _state(lab):
    a, lens = lab.views
    return lab.prompt, a.pattern.copy(), lens.data["top_probs"].copy()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=40), st.text(min_size=60, max_size=90)))
def test_any_prompt_gives_a_result_or_a_clear_error(lab, text):
    lab.prompt = GOOD
    before = _state(lab)
    try:
        lab.prompt = text
    except PromptError as exc:
        assert any(w in str(exc) for w in ("empty", "surrogate", "control character", "at most", "no tokens")), str(exc)
        now = _state(lab)
        assert now[0] == before[0] and np.array_equal(now[1], before[1]) and np.array_equal(now[2], before[2])
        assert lab.views[0].error == str(exc)
    else:
        a, lens = lab.views
        assert a.prompt == lens.prompt == text and a.error == ""
        T = len(lab.last.run.token_strs)
        assert a.pattern.shape[2] == T and np.isfinite(lens.data["top_probs"]).all()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.one_of(st.integers(-5, 400), st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.booleans()),
       head=st.integers(-3, 8), layer=st.integers(-3, 8))
def test_view_arguments_are_checked_not_coerced(lab, k, head, layer):
    n = len(lab.views)
    try:
        view = lab.logit_lens(k=k)
    except ValueError as exc:
        assert "k must be a whole number >= 1" in str(exc)
        assert not (isinstance(k, int) and not isinstance(k, bool) and k >= 1)
    else:
        assert isinstance(k, int) and k >= 1 and view.data["top_probs"].shape[-1] == min(k, lab.model.d_vocab)
        lab.remove(view)
    assert len(lab.views) == n
    a = lab.views[0]
    for name, value, limit in (("head", head, lab.model.n_heads - 1), ("layer", layer, lab.model.n_layers)):
        old = getattr(a, name)
        try:
            setattr(a, name, value)
        except Exception as exc:
            assert "out of range" in str(exc) and not 0 <= value <= limit
            assert getattr(a, name) == old
        else:
            assert 0 <= value <= limit
    a.head = a.layer = 0
