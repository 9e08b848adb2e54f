"""The Lab and its live loop, on a real (small, random-weight) torch model and real widgets."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from mechviz import AttentionView, Lab
from mechviz.models import PromptError
from mechviz.widgets.transport import unpack

from .conftest import build_hf


def sent(view, name):
    """A trait as the browser receives it (the packed transport dict)."""
    return view.get_state(name)[name]


@pytest.fixture()
def lab(tokenizer):
    return Lab(build_hf("gpt2"), tokenizer, prompt="The cat sat on the mat.", threads=1)


def count_forwards(lab):
    calls = []
    lab.model.model.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_view_shows_the_prompts_attention(lab):
    view = lab.attention()
    run = lab.run(capture=["attn_pattern"])
    ref = run.stack("attn_pattern").numpy()
    assert view.prompt == "The cat sat on the mat." and view.tokens == run.token_strs
    # the browser gets the selected layer at full resolution (one byte per weight) and every head's thumbnail
    detail, overview = sent(view, "detail"), sent(view, "overview")
    L, H, T, _ = ref.shape
    assert detail["dtype"] == "uint8" and detail["shape"] == [H, T, T] and len(detail["data"]) == H * T * T
    assert (view.detail_layer, view.detail_heads) == (0, list(range(H)))
    np.testing.assert_allclose(unpack(detail), ref[0], atol=0.5 / 255 + 1e-6)
    assert overview["shape"] == [L, H, T, T]  # short prompts: the thumbnails are the patterns themselves
    np.testing.assert_allclose(unpack(overview), ref, atol=0.5 / 255 + 1e-6)
    view.layer = 2  # another layer: its detail is sent (no loop here: at once)
    assert view.detail_layer == 2
    np.testing.assert_allclose(unpack(sent(view, "detail")), ref[2], atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(view.data["pattern"], ref, atol=1e-6)
    assert lab.prompt_box.shown == "The cat sat on the mat." and lab.prompt_box.n_tokens == len(run.token_strs)
    assert "AttentionView(prompt='The cat sat on the mat.', layers=3, heads=4" in repr(view)


def test_one_forward_pass_per_prompt_for_all_views(lab):
    a, b = lab.attention(), lab.attention()
    calls = count_forwards(lab)
    lab.prompt = "Mary gave John a drink"
    assert len(calls) == 1
    assert a.prompt == b.prompt == "Mary gave John a drink" and np.array_equal(a.pattern, b.pattern)


def test_bad_prompt_keeps_the_last_good_view(lab, tokenizer):
    view = lab.attention()
    good = view.pattern.copy()
    with pytest.raises(PromptError, match="empty"):
        lab.prompt = "   "
    assert np.array_equal(view.pattern, good) and view.prompt == "The cat sat on the mat."
    assert "empty" in view.error and "empty" in lab.prompt_box.error and lab.prompt_box.status == "error"
    assert lab.prompt_box.value == "   "  # what the user typed is never replaced
    with pytest.raises(PromptError, match="at most 64"):
        lab.prompt = "cat " * 100
    assert np.array_equal(view.pattern, good)
    lab.prompt = "The mat"
    assert view.error == "" and lab.prompt_box.error == "" and view.prompt == "The mat"


def test_nan_weights_give_a_clear_error_not_a_blank_view(tokenizer):
    model = build_hf("gpt2")
    lab = Lab(model, tokenizer, prompt="The cat", threads=1)
    view = lab.attention()
    good = view.pattern.copy()
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        lab.prompt = "The mat"
    assert np.array_equal(view.pattern, good) and "NaN" in view.error


def test_live_edits_newest_wins_and_kernel_stays_responsive(tokenizer):
    async def scenario():
        model = build_hf("gpt2")
        gate, entered = threading.Event(), threading.Event()

        def hold(*_):  # the first live forward pass blocks until the test lets it go
            entered.set()
            gate.wait(10)

        lab = Lab(model, tokenizer, prompt="The cat", threads=1)
        view = lab.attention()
        handle = model.transformer.h[0].register_forward_pre_hook(hold)
        lab.prompt_box.value = "first edit"
        while not entered.is_set():
            await asyncio.sleep(0.01)
        assert lab.prompt_box.status == "running"
        # the model is busy in the worker thread; the event loop still serves other work
        t0 = asyncio.get_running_loop().time()
        await asyncio.sleep(0.05)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        lab.prompt_box.value = "second edit"
        await asyncio.sleep(0.1)
        lab.prompt_box.value = "third and newest edit"
        await asyncio.sleep(0.1)
        handle.remove()
        gate.set()
        for _ in range(500):
            if lab._runner.idle:
                break
            await asyncio.sleep(0.02)
        return lab, view

    lab, view = asyncio.run(scenario())
    assert view.prompt == "third and newest edit" and lab.prompt_box.shown == "third and newest edit"
    stats = lab._runner.stats
    assert stats["applied"] == 1 and stats["aborted"] == 1  # the first pass was aborted between layers
    assert stats["started"] == 2  # "second edit" was superseded while waiting: never computed
    assert lab.prompt_box.status == "idle"
    ref = lab.run("third and newest edit", capture=["attn_pattern"]).stack("attn_pattern").numpy()
    np.testing.assert_allclose(view.data["pattern"], ref, atol=1e-6)


def test_live_error_is_shown_and_prompt_kept(tokenizer):
    async def scenario():
        lab = Lab(build_hf("gpt2"), tokenizer, prompt="The cat", threads=1)
        view = lab.attention()
        lab.prompt_box.value = ""
        for _ in range(200):
            await asyncio.sleep(0.02)
            if lab._runner.idle and lab.prompt_box.status == "error":
                break
        return lab, view

    lab, view = asyncio.run(scenario())
    assert lab.prompt_box.status == "error" and "empty" in lab.prompt_box.error
    assert view.prompt == "The cat" and "empty" in view.error and lab.prompt == "The cat"


def test_attention_view_rejects_mismatched_tokens():
    with pytest.raises(ValueError, match=r"T = len\(tokens\) = 2"):
        AttentionView().show(np.zeros((1, 1, 3, 3)), ["a", "b"])


def test_views_share_one_selection_through_browser_links(lab):
    """Every view's layer/head/token is jslinked to the Lab's Selection (client-side links that a
    static export keeps); the links are real ipywidgets Link models between the right traits."""
    a, b = lab.attention(), lab.attention()
    assert a.layer == b.layer == lab.selection.layer  # a new view starts at the shared selection
    links = [w for v in (a, b) for w in lab._bindings[v].link.links]
    pairs = {(l.source[0].model_id, l.source[1], l.target[0].model_id, l.target[1]) for l in links}
    for view in (a, b):
        for name in ("layer", "head", "token"):
            assert (lab.selection.model_id, name, view.model_id, name) in pairs
    assert not any(name == "feature" for *_, name in pairs)  # attention views have no feature trait


def test_selection_set_from_python_is_one_truth(lab):
    """Set from Python on a view, on the selection, or at construction, before or after another view
    exists: the selection and every linked view hold it in the kernel, hence in the saved state."""
    a = lab.attention()
    a.layer, a.head = 2, 1
    assert (lab.selection.layer, lab.selection.head) == (2, 1)
    b = lab.attention()                       # a view made later starts at the shared values
    assert (b.layer, b.head) == (2, 1)
    lab.selection.token = 3
    assert a.token == b.token == 3
    c = lab.attention(head=3)                 # a selection given to a new view wins, for all
    assert a.head == b.head == c.head == lab.selection.head == 3
    state = lab.selection.get_state()
    assert (state["layer"], state["head"], state["token"]) == (2, 3, 3)
    # a change that arrives from the browser is left to the browser's jslinks (no echo from here)
    with a._lock_property(layer=1):
        a.layer = 1
    assert lab.selection.layer == 2 and b.layer == 2


def test_unknown_view_arguments_are_errors(lab):
    with pytest.raises(TypeError, match="unknown argument 'layr' \\(did you mean 'layer'\\?\\)"):
        lab.attention(layr=2)
    with pytest.raises(ValueError, match="k must be a whole number >= 1, got -3"):
        lab.logit_lens(k=-3)
    assert lab.views == []


def test_removed_or_closed_views_cost_nothing(lab):
    views = [lab.attention() for _ in range(5)]
    keep = views[0]
    for v in views[1:3]:
        lab.remove(v)
    for v in views[3:]:
        v.close()
    assert lab.views == [keep]
    old = views[1].seq
    calls = count_forwards(lab)
    lab.prompt = "Mary gave John a drink"
    assert len(calls) == 1 and keep.prompt == "Mary gave John a drink"
    assert views[1].seq == old and views[1].prompt == "The cat sat on the mat."  # not recomputed nor sent
    views[1].layer = 2   # no longer linked
    assert keep.layer == lab.selection.layer == 0


def test_views_are_filled_with_one_pass_and_no_pass_before_views(tokenizer):
    model = build_hf("gpt2")
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    lab = Lab(model, tokenizer, prompt="The cat sat", threads=1)
    assert calls == []                         # nothing to show yet: no pass
    a = lab.attention()
    assert len(calls) == 1 and a.prompt == "The cat sat"
    lab.attention()                            # the last pass holds what it needs: no pass
    assert len(calls) == 1


def test_edits_arriving_on_another_thread_still_update(tokenizer):
    """JupyterLab 4 + ipykernel 7 deliver widget messages on a subshell thread: an edit observed
    there must still be computed and applied on the kernel's loop, with no other message to wake it."""
    async def scenario():
        lab = Lab(build_hf("gpt2"), tokenizer, prompt="The cat", threads=1)
        view = lab.attention()
        shown = asyncio.Event()
        view.observe(lambda _: shown.set(), names="prompt")
        def type_later():  # arrives while the loop sleeps in select(), as a comm message would
            time.sleep(0.3)
            lab.prompt_box.value = "typed on a subshell"

        t = threading.Thread(target=type_later)
        t.start()
        # nothing else wakes the loop: a request that only reached the loop's timer heap from the
        # other thread would sit there until this wait times out
        await asyncio.wait_for(shown.wait(), 3.0)
        t.join()
        return view

    assert asyncio.run(scenario()).prompt == "typed on a subshell"


def test_a_bfloat16_model_runs_every_view_and_says_so():
    """A bfloat16 model (untouched: its weights stay bfloat16) runs the dashboard, steering and a patching
    grid; the numbers agree with the float32 model to bfloat16 precision, and every view's header says
    what computed it."""
    import mechviz
    from mechviz.zoo import SAE_DIR, load_default_model

    prompt = "In the beginning God created the heaven and the earth. And the earth was"
    clean, corrupted = ("And Moses and Aaron went unto the king, and Moses said unto",
                        "And Moses and Aaron went unto the king, and Aaron said unto")
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = load_default_model()
        lab = Lab(model.to(dtype), tok, sae=SAE_DIR, prompt=prompt, threads=1)
        attn, lens, feat = lab.dashboard().children[1:]
        lab.steer(int(feat.result.features[0]), 20.0)
        steered = feat.result.next_prob[1].copy()
        lab.steer(None)
        grid = lab.patching(clean, corrupted, site="z", by="head", answers=(" Aaron", " Moses"))
        assert grid.status == "done" and next(model.parameters()).dtype == dtype
        assert all(v.model_info == f"mechviz-default · HF raw weights · {str(dtype)[6:]} · cpu"
                   for v in (attn, lens, feat, grid))
        out[dtype] = (attn.data["pattern"], lens.result.top_probs, feat.result.acts, steered, grid.data["values"])
    for f32, b16, tol in zip(out[torch.float32], out[torch.bfloat16], (0.05, 0.05, 0.1, 0.05, 0.1)):
        assert f32.shape == b16.shape and np.isfinite(b16).all()
        np.testing.assert_allclose(b16, f32, atol=tol * max(1.0, float(np.abs(f32).max())))


def test_non_finite_activations_are_an_error_in_every_view(tokenizer):
    """NaN or inf anywhere in a pass is an error naming where it starts, shown by every view (which keep
    their last good data), not a lens of NaN probabilities or a feature view of zeros."""
    model = build_hf("gpt2")
    lab = Lab(model, tokenizer, prompt="The cat sat", threads=1)
    lens = lab.logit_lens()
    good = lens.data["top_probs"].copy()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.bias.fill_(float("inf"))   # layer 1's MLP: the lens first sees it entering layer 2
    with pytest.raises(FloatingPointError, match="NaN or inf, first at site resid_pre.2"):
        lab.prompt = "The mat"
    assert np.array_equal(lens.data["top_probs"], good) and "NaN or inf" in lens.error
    with pytest.raises(FloatingPointError, match="in the logits"):
        lab.run("The mat")                       # no site captured: the logits themselves are checked


def test_bad_inputs_get_messages_that_name_the_problem(lab, tokenizer):
    """A catalogue of careless inputs: each gets a message naming the problem; the prompt and the last
    good view are kept."""
    from transformers import GPT2Config, GPT2Model

    import mechviz
    from mechviz.models import UnsupportedModelError

    view = lab.attention()
    good = view.pattern.copy()
    cases = [
        (lambda: setattr(lab, "prompt", "cat \ud800 dog"), PromptError, "lone surrogate"),
        (lambda: setattr(lab, "prompt", "cat " * 100), PromptError, "counting the start token"),
        (lambda: setattr(view, "head", 99), Exception, "head 99 is out of range: this view shows 4 heads"),
        (lambda: setattr(view, "layer", -1), Exception, "layer -1 is out of range"),
        (lambda: lab.features(), ValueError, "needs an SAE"),
        (lambda: lab.steer(3, 1.0), ValueError, "steering needs an SAE"),
        (lambda: lab.logit_lens(k=2.5), ValueError, "k must be a whole number"),
        (lambda: lab.patching("The cat sat", "The cat sat", answers=(1, 10**6)), ValueError,
         "outside the vocabulary"),
        (lambda: lab.patching("The cat sat on", "The dog sat on", site="attn_pattern"), Exception, "is per head"),
        (lambda: lab.patching("The cat sat on", "The dog sat on", site="router"), Exception, "cannot be patched"),
        (lambda: lab.patching("The cat sat on", "The dog sat on", direction="sideways"), ValueError, "direction must be"),
        (lambda: mechviz.Lab(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)), tokenizer), UnsupportedModelError,
         "no language-model head"),
    ]
    for fn, exc, phrase in cases:
        with pytest.raises(exc, match=phrase):
            fn()
        assert np.array_equal(view.pattern, good) and lab.prompt == "The cat sat on the mat.", phrase
    assert (view.head, view.layer) == (0, 0)


def test_a_model_on_the_meta_device_is_refused_with_a_message():
    import torch as _t
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechviz.models import UnsupportedModelError, wrap

    with _t.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedModelError, match="meta device"):
        wrap(model)


@pytest.mark.parametrize("target,phrase", [(10**6, "target id 1000000 is outside the vocabulary"),
                                           (-5, "target id -5 is outside the vocabulary"),
                                           (2.5, "never rounded"), (True, "never rounded")])
def test_a_lens_target_is_checked_when_the_view_is_made_and_a_failed_view_is_not_kept(lab, target, phrase):
    """A target id outside the vocabulary was an IndexError on the first pass, and the half-made view stayed
    bound to the Lab: every later edit failed with it. Now the target is refused up front, and a view that
    cannot be filled is unbound again (the views already shown keep their data and show no error)."""
    view = lab.attention()
    with pytest.raises(ValueError, match=phrase):
        lab.logit_lens(target=target)
    assert lab.views == [view] and view.error == "" and lab.prompt_box.error == ""
    lab.prompt = "The mat"
    assert view.prompt == "The mat"


def test_a_view_whose_first_fill_fails_is_unbound(lab):
    from mechviz import LogitLensView
    from mechviz.widgets.base import Feed

    class Broken(LogitLensView):
        def feed(self, lab, **_):
            def stream(p):
                raise RuntimeError("this view cannot be computed")
                yield
            return Feed(lambda: [], stream=stream)

    view = lab.attention()
    with pytest.raises(RuntimeError, match="cannot be computed"):
        lab.add(Broken())
    assert lab.views == [view] and view.error == ""
    lab.prompt = "The mat"
    assert view.prompt == "The mat"


@pytest.mark.parametrize("answers,phrase", [((1.5, 2), "got 1.5"), ((True, 2), "got True"),
                                            ((1, 10**6), "outside the vocabulary")])
def test_answer_ids_are_never_rounded(lab, answers, phrase):
    with pytest.raises(ValueError, match=phrase):
        lab.patching("The cat sat", "The dog sat", answers=answers)


@pytest.mark.parametrize("name,value", [("head", True), ("layer", 2.0), ("token", False), ("feature", 1.0)])
def test_selection_indices_are_never_rounded(lab, name, value):
    """traitlets' Int took True as 1 and 2.0 as 2 for a view's layer, head, token or feature: refused now,
    and the selection stays where it was."""
    view = lab.attention() if name in ("head", "layer", "token") else lab.logit_lens()
    target = view if view.has_trait(name) else lab.selection
    before = getattr(lab.selection, name)
    with pytest.raises(Exception, match=f"{name} must be a whole number"):
        setattr(target, name, value)
    with pytest.raises(Exception, match=f"{name} must be a whole number"):
        setattr(lab.selection, name, value)
    assert getattr(lab.selection, name) == before and getattr(target, name) == before
    setattr(target, name, np.int64(1))
    assert getattr(lab.selection, name) == 1 and type(getattr(target, name)) is int


def test_a_lab_whose_loop_has_closed_computes_synchronously():
    """A Lab built inside an asyncio loop that has since ended (an ``asyncio.run`` in a script, a test
    harness) computes edits, steering refusals and patch-cell clicks now, in the caller, instead of
    raising 'Event loop is closed'."""
    import asyncio

    import mechviz

    async def build():
        lab = mechviz.Lab.default(prompt="The cat sat on the mat.")
        return lab, lab.attention(), lab.patching("The cat sat on the mat. The cat", "The dog sat on the mat. The dog",
                                                  exact=False)

    lab, view, grid = asyncio.run(build())
    assert lab._loop.is_closed()
    lab.prompt_box.value = "A live edit after the loop closed"          # the browser's path
    assert view.prompt == "A live edit after the loop closed" and lab.prompt_box.status == "idle"
    grid.cell = [1, 2]                                                  # a click: answered now
    assert grid.detail_cell == [1, 2]


def test_snapshot_keeps_the_state_it_was_taken_in():
    """A snapshot is a copy bound to nothing: the Lab's next prompt and selection move the view, not the copy."""
    lab = Lab.default(prompt="The cat sat on the mat.")
    attn = lab.attention()
    lab.selection.layer = 2
    snap = attn.snapshot()
    detail = np.array(attn.detail, copy=True)
    lab.prompt = "A dog ran"
    lab.selection.layer = 0
    assert (snap.prompt, snap.layer, attn.prompt, attn.layer) == ("The cat sat on the mat.", 2, "A dog ran", 0)
    assert snap.tokens != attn.tokens and snap.result is not attn.result
    assert np.array_equal(snap.detail, detail) and snap.detail.shape != attn.detail.shape
    assert snap not in lab.views
