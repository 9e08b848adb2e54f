"""Long prompts on the GPT-2-small shape (12 layers x 12 heads, d_model 768, vocab 50,257, 2,048
positions; random seeded weights, float32, torch threads 1), both sides in one process.

P1: a live edit (the Lab's real path: worker thread, streamed payloads, applied on an asyncio loop)
until attention + the lens' first stage (final prediction, selected column) + SAE features are
shown, over a bare forward pass of the same prompt; then until the whole lens is shown. The full
lens computation over its floor, the (layers + 1) unembeddings of the same rows.
P2: bytes the attention view sends for the whole model (first message: every head's thumbnail + the
selected layer or head at full resolution) and per layer picked, against CircuitsVis'
``attention_heads`` HTML for the same data (one call per layer: measured on one head and scaled by
heads x layers above 512 tokens, where one call's string would be gigabytes).

    python bench/long_prompts.py [--tokens 128 512 1024 2048] [--no-live] [--no-lens] [--no-bytes] [--cv-max 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import torch
from ipywidgets.widgets.widget import _remove_buffers


def model_and_tokenizer():
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import mechviz.zoo as zoo

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=2048)
    model = GPT2LMHeadModel(cfg).eval()
    return model, AutoTokenizer.from_pretrained(str(zoo.MODEL_DIR))


def prompt_of(tokenizer, n: int) -> str:
    """A prompt of about ``n`` tokens (the bundled tokenizer; text that tokenises stably)."""
    words = ("the cat sat on the mat and then the dog ran to the park where a bird sang ").split()
    text = " ".join(words[i % len(words)] for i in range(n * 2))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: n - 1]
    return tokenizer.decode(ids)


def sae_for(d_model: int, d_sae: int = 6144):
    from mechviz.saes import SAE

    g = torch.Generator().manual_seed(1)
    W = torch.randn(d_model, d_sae, generator=g) / d_model ** 0.5
    return SAE(W_enc=W, b_enc=torch.zeros(d_sae), W_dec=W.T.contiguous(), b_dec=torch.zeros(d_model),
               site="resid_pre.6")


def message_bytes(view, names=None) -> int:
    state, _, buffers = _remove_buffers(view.get_state(names))
    state.pop("_esm", None)
    return len(json.dumps(state)) + sum(len(b) for b in buffers)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


async def live_edit(lab, views, prompt: str, timeout: float = 900.0):
    """Seconds from a prompt edit to (first: every view showing the new prompt) and (full: idle)."""
    seqs = {v: v.seq for v in views}
    t0 = time.perf_counter()
    lab.prompt_box.value = prompt
    first = None
    while time.perf_counter() - t0 < timeout:
        await asyncio.sleep(0.005)
        if first is None and all(v.seq > seqs[v] and v.prompt == prompt for v in views):
            first = time.perf_counter() - t0
        if first is not None and lab._runner.idle and lab.prompt_box.status == "idle":
            return first, time.perf_counter() - t0
        if lab.prompt_box.status == "error":
            raise RuntimeError(f"the edit failed: {lab.prompt_box.error}")
    raise TimeoutError(prompt[:40])


def p1(model, tokenizer, lengths, repeat):
    from mechviz import Lab

    async def run():
        lab = Lab(model, tokenizer, prompt="warm up", threads=1, sae=sae_for(768), allow_model_mismatch=True)
        views = [lab.attention(), lab.logit_lens(), lab.features()]
        for n in lengths:
            base = prompt_of(tokenizer, n - 2)   # each edit appends " i" (two tokens): n tokens, within the context
            edits = [base + f" {i}" for i in range(repeat)]
            T = len(lab.model.to_tokens(edits[0]))
            bare = best(lambda: lab.model.run(edits[0]), repeat)
            firsts, fulls = [], []
            for prompt in edits:
                f, full = await live_edit(lab, views, prompt)
                firsts.append(f)
                fulls.append(full)
            bare = min(bare, best(lambda: lab.model.run(edits[0]), repeat))  # interleaved: load drifts
            first, full = min(firsts), min(fulls)
            print(f"| {T} | {bare:.2f} | {first:.2f} | {first / bare:.2f}x | {full:.2f} | {full / bare:.2f}x |", flush=True)

    print("\n(P1) live edit -> attention + final prediction + SAE features shown, over a bare forward pass")
    print("| tokens | bare forward s | first view s | ratio (target <= 1.3) | whole lens shown s | ratio |")
    print("|---|---|---|---|---|---|")
    asyncio.run(run())


def lens_floor(model, tokenizer, lengths, repeat):
    """The full logit lens (top-5, entropy, next-token probability and rank of every cell) over its
    floor: the (layers + 1) unembeddings ``adapter.logits_of(resid)`` of the same rows, one row at a time."""
    from mechviz.analysis import logit_lens as LL
    from mechviz.models import wrap

    adapter = wrap(model, tokenizer)
    print("\n(P1) the full logit lens over its floor, the (layers+1) unembedding matmuls (logits_of per row)")
    print("| tokens | floor s | lens s | ratio (target <= 1.3) |")
    print("|---|---|---|---|")
    for n in lengths:
        run = adapter.run(prompt_of(tokenizer, n), capture=LL.needs(adapter.n_layers))
        rows = LL.needs(adapter.n_layers)

        def floor():
            for r in rows:
                adapter.logits_of(run[r])
        floor_s = best(floor, repeat)
        lens_s = best(lambda: LL.logit_lens(adapter, run, k=5, target="next"), repeat)
        floor_s = min(floor_s, best(floor, repeat))   # interleaved: load drifts on a shared machine
        print(f"| {len(run.tokens)} | {floor_s:.2f} | {lens_s:.2f} | {lens_s / floor_s:.2f}x |", flush=True)
        del run


def p2(lengths, cv_max: int):
    import circuitsvis as cv

    from mechviz import AttentionView

    L, H = 12, 12
    print("\n(P2) attention bytes: mechviz view (every layer's thumbnails + selected layer/head) vs CircuitsVis "
          "attention_heads (one call per layer)")
    print("| tokens | mechviz first message | mechviz per layer picked | CircuitsVis per layer | CircuitsVis all layers "
          "| ratio all layers | ratio per layer |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for T in lengths:
        pattern = rng.random((L, H, T, T), dtype=np.float32)
        pattern /= pattern.sum(-1, keepdims=True)
        tokens = [f" tok{i}" for i in range(T)]
        view = AttentionView()
        view.show(pattern, tokens, prompt="bench")
        first = message_bytes(view)
        view.layer = 5
        pick = message_bytes(view, ["detail", "detail_layer", "detail_heads"])
        heads = H if T <= cv_max else 1
        cvb = len(str(cv.attention.attention_heads(attention=pattern[5, :heads], tokens=tokens)).encode())
        per_layer = cvb * (H / heads)
        mb = 1e6
        print(f"| {T} | {first / mb:.2f} MB | {pick / mb:.2f} MB | {per_layer / mb:.1f} MB{'' if heads == H else ' (scaled)'} "
              f"| {per_layer * L / mb:.0f} MB | {per_layer * L / first:.0f}x | {per_layer / pick:.0f}x |", flush=True)
        del pattern, view


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024, 2048])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-live", action="store_true", help="skip P1 (minutes at 2,048 tokens)")
    ap.add_argument("--no-bytes", action="store_true", help="skip P2")
    ap.add_argument("--no-lens", action="store_true", help="skip the lens-over-floor table")
    ap.add_argument("--cv-max", type=int, default=512, help="above this, CircuitsVis is measured on one head")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if not a.no_bytes:
        p2(a.tokens, a.cv_max)
    if not (a.no_live and a.no_lens):
        model, tokenizer = model_and_tokenizer()
        if not a.no_lens:
            lens_floor(model, tokenizer, a.tokens, a.repeat)
        if not a.no_live:
            p1(model, tokenizer, a.tokens, a.repeat)


if __name__ == "__main__":
    main()
