"""Long prompts: what the browser gets is sized to what is on screen (no message over 16 MB at any
length), picking a layer fetches it off the kernel's loop, and the work is prepared in the worker."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch
from ipywidgets.widgets.widget import _remove_buffers

from mechviz import AttentionView, Lab
from mechviz.widgets import attention as A
from mechviz.widgets.transport import unpack

from .conftest import build_hf

MESSAGE_LIMIT = 16 * 2**20


def _message_bytes(view, names=None) -> int:
    state, _, buffers = _remove_buffers(view.get_state(names))
    state.pop("_esm", None)
    import json

    return len(json.dumps(state)) + sum(len(b) for b in buffers)


def test_a_2048_token_view_sends_its_selected_head_and_thumbnails_not_every_layer():
    T, H = 2048, 12
    rng = np.random.default_rng(0)
    pattern = rng.random((2, H, T, T), dtype=np.float32)   # values in [0, 1): what is sent is the point here
    view = AttentionView(layer=1, head=5)
    view.show(pattern, [f"t{i}" for i in range(T)], prompt="long")
    assert view.detail_layer == 1 and view.detail_heads == [5]            # 12 heads x 4 MB do not fit 8 MB
    size = _message_bytes(view)
    assert size < MESSAGE_LIMIT and size < 5 * 2**20, size                # one head + 64x64 thumbnails
    assert view.get_state("overview")["overview"]["shape"] == [2, H, 64, 64]
    np.testing.assert_allclose(unpack(view.get_state("detail")["detail"])[0], pattern[1, 5], atol=0.5 / 255 + 1e-6)
    # the thumbnails are max-pooled: a head's sharpest weight in each 32 x 32 block survives
    ov = unpack(view.get_state("overview")["overview"])
    np.testing.assert_allclose(ov[0, 3, 10, 20], pattern[0, 3, 320:352, 640:672].max(), atol=0.5 / 255 + 1e-6)
    view.head = 7                                   # from Python: sent at once (it is in the saved state)
    assert view.detail_heads == [7] and _message_bytes(view, ["detail", "detail_heads", "detail_layer"]) < MESSAGE_LIMIT
    np.testing.assert_allclose(unpack(view.get_state("detail")["detail"])[0], pattern[1, 7], atol=0.5 / 255 + 1e-6)


def test_a_layer_picked_in_the_browser_is_packed_off_the_loop(tokenizer):
    threads = []

    async def scenario():
        lab = Lab(build_hf("gpt2"), tokenizer, prompt="The cat sat on the mat. The cat sat", threads=1)
        view = lab.attention()
        ref = view.data["pattern"]
        real = A._detail

        def spy(*args):
            threads.append(threading.current_thread().name)
            return real(*args)
        A._detail = spy
        try:
            view.set_state({"layer": 2})   # as a browser message applies it
            assert view.layer == 2 and view.detail_layer == 0  # not yet: packed in a worker, applied on the loop
            for _ in range(200):
                await asyncio.sleep(0.01)
                if view.detail_layer == 2:
                    break
        finally:
            A._detail = real
        return view, ref

    view, ref = asyncio.run(scenario())
    assert view.detail_layer == 2 and threads and all(n.startswith("mechviz-fetch") for n in threads)
    np.testing.assert_allclose(unpack(view.get_state("detail")["detail"]), ref[2], atol=0.5 / 255 + 1e-6)


def test_the_pass_keeps_the_attention_once():
    """The run's cache holds views of the pattern the attention view shows, not a second copy."""
    from mechviz.zoo import load_default_model

    model, tok = load_default_model()
    lab = Lab(model, tok, prompt="The cat sat on the mat.", threads=1)
    view = lab.attention()
    cached = lab.last.run.cache["attn_pattern.1"]
    assert np.shares_memory(cached.numpy(), view.data["pattern"])
    np.testing.assert_array_equal(cached.numpy(), view.data["pattern"][1])
    # captured straight into one stack: Run.stack is that stack (no second copy), equal to HF's own weights
    run = lab.model.run("The cat sat on the mat.", capture=["attn_pattern"])
    stack = run.stack("attn_pattern")
    assert stack.data_ptr() == run["attn_pattern.0"].data_ptr() and stack.shape[0] == lab.model.n_layers
    with torch.no_grad():
        ref = model(lab.model.to_tokens("The cat sat on the mat.")[None], output_attentions=True).attentions
    torch.testing.assert_close(stack, torch.cat(ref), atol=1e-6, rtol=0)
    run.cache["attn_pattern.0"] = run.cache["attn_pattern.0"].clone()    # no longer its slice: stacked anew
    assert run.stack("attn_pattern").data_ptr() != stack.data_ptr()
    torch.testing.assert_close(run.stack("attn_pattern"), stack)


def test_the_lens_streams_its_final_row_and_selected_column_first(tokenizer):
    from mechviz.analysis.logit_lens import logit_lens, logit_lens_stream, needs

    lab = Lab(build_hf("gpt2"), tokenizer, threads=1)
    run = lab.model.run("The cat sat on the mat. The cat sat", capture=needs(lab.model.n_layers))
    full = logit_lens(lab.model, run, k=3, target="next")
    stages = list(logit_lens_stream(lab.model, run, k=3, target="next", first=[2], rows_per_stage=2))
    R, T = full.entropy.shape
    assert len(stages) == 1 + -(-(R - 1) // 2)
    first = stages[0]
    expect = np.zeros((R, T), bool)
    expect[-1], expect[:, 2] = True, True
    np.testing.assert_array_equal(first.ready, expect)
    assert not first.complete and stages[-1].complete
    np.testing.assert_array_equal(first.top_ids[expect], full.top_ids[expect])
    np.testing.assert_allclose(first.top_probs[expect], full.top_probs[expect], atol=1e-6)
    assert (first.top_ids[~expect] == -1).all() and np.isnan(first.entropy[~expect]).all()
    assert (first.top_strs[~expect] == "").all() and (first.target_rank[~expect] == -1).all()
    for a, b in zip(stages, stages[1:]):
        assert (b.ready >= a.ready).all() and b.ready.sum() > a.ready.sum()   # only grows
    last = stages[-1]
    np.testing.assert_array_equal(last.top_ids, full.top_ids)
    np.testing.assert_array_equal(last.top_strs, full.top_strs)
    np.testing.assert_allclose(last.top_probs, full.top_probs, atol=1e-6)
    np.testing.assert_allclose(last.target_prob, full.target_prob, atol=1e-6)
    import pytest

    with pytest.raises(ValueError, match="position 99 is out of range"):
        next(logit_lens_stream(lab.model, run, first=[99]))


def test_a_live_edit_shows_the_lens_in_stages(tokenizer):
    shown = []

    async def scenario():
        lab = Lab(build_hf("gpt2"), tokenizer, prompt="The cat", threads=1)
        lens = lab.logit_lens()
        assert lens.result.complete  # from Python: the whole grid
        real = lens.apply

        def spy(ready):
            shown.append(ready.result.ready.copy())
            real(ready)
        lens.apply = spy
        lab.prompt_box.value = "The cat sat on the mat. The dog"
        for _ in range(500):
            await asyncio.sleep(0.01)
            if lab._runner.idle and lab.prompt_box.status == "idle":
                break
        return lab, lens

    lab, lens = asyncio.run(scenario())
    assert len(shown) == 1 + -(-lab.model.n_layers // 3) and not shown[0].all() and shown[-1].all()
    assert shown[0][-1].all() and shown[0][:, -1].all()  # the final row and the last position first
    assert lens.prompt == "The cat sat on the mat. The dog" and lens.result.complete
