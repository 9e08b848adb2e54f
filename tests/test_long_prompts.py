"""Long prompts: what the browser gets is sized to what is on screen (no message over 16 MB at any
length), picking a layer fetches it off the kernel's loop, and the work is prepared in the worker."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
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
