"""What one live edit costs with attention + logit lens + SAE features open, against a bare forward pass of
the same model, both timed in this process (issue: models researchers use, at their real shapes).

Models are built from configs with random weights (nothing is downloaded): ``gpt2-small`` (12 layers,
d 768, 12 heads, vocab 50257) and ``gemma-2-2b`` (26 layers, d 2304, 8 heads / 4 key-value heads,
head_dim 256, vocab 256000, sandwich norms, soft-caps, sliding layers), in float32 or bfloat16; the SAE
is a random 16k-feature ReLU SAE on the middle layer's residual stream. The prompt is ``--tokens``
tokens of the bundled tokenizer's ids (all inside both vocabularies). ``--layers`` keeps the shape of
each layer but builds fewer of them (a 2.6 B-parameter model takes minutes to build on a laptop CPU).

    python bench/live_edit_cost.py --shape gpt2-small --dtype float32 --tokens 128
    python bench/live_edit_cost.py --shape gemma-2-2b --dtype bfloat16 --tokens 128 --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(shape: str, layers: int | None):
    import transformers as tf

    torch.manual_seed(0)
    if shape == "gpt2-small":
        cfg = tf.GPT2Config(n_layer=layers or 12, n_embd=768, n_head=12, vocab_size=50257, n_positions=2048)
        return tf.GPT2LMHeadModel(cfg)
    if shape == "gemma-2-2b":
        n = layers or 26
        cfg = tf.Gemma2Config(hidden_size=2304, intermediate_size=9216, num_hidden_layers=n, num_attention_heads=8,
                              num_key_value_heads=4, head_dim=256, vocab_size=256000, query_pre_attn_scalar=256,
                              sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                              layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)])
        return tf.Gemma2ForCausalLM(cfg)
    raise SystemExit(f"unknown shape {shape!r}")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(shape: str, dtype: str, tokens: int, layers: int | None, repeats: int, threads: int) -> None:
    import mechviz
    from mechviz.saes import SAE
    from mechviz.zoo import load_default_model

    t0 = time.perf_counter()
    model = build(shape, layers).to(getattr(torch, dtype)).eval()
    model.set_attn_implementation("eager")
    built = time.perf_counter() - t0
    _, tok = load_default_model()
    ids = torch.randint(1, 2000, (tokens + repeats + 1,), generator=torch.Generator().manual_seed(0))
    texts = [tok.decode(ids[i:i + tokens - 1]) for i in range(repeats + 1)]
    lab = mechviz.Lab(model, tok, threads=threads, name=shape)
    d, n = lab.model.d_model, lab.model.n_layers
    g = torch.Generator().manual_seed(1)
    sae = SAE(W_enc=torch.randn(d, 16384, generator=g) / d**0.5, b_enc=torch.zeros(16384),
              W_dec=torch.randn(16384, d, generator=g) / d**0.5, b_dec=torch.zeros(d), site=f"resid_post.{n // 2}")
    lab.add_sae(sae)
    lab.prompt = texts[0]
    views = [lab.attention(), lab.logit_lens(), lab.features()]
    T = len(lab.last.run.token_strs)
    run_ids = lab.model.to_tokens(texts[0])[None].to(next(model.parameters()).device)

    def bare():
        with torch.inference_mode():
            model(input_ids=run_ids, use_cache=False)
    bare()
    fwd = median_time(bare, repeats)
    edits = iter(texts[1:])
    edit = median_time(lambda: setattr(lab, "prompt", next(edits)), repeats)
    assert all(v.prompt == lab.prompt for v in views)
    print(f"{shape}{'' if layers is None else f' ({n} layers)'} · {dtype} · {T} tokens · {threads} thread(s) · "
          f"built in {built:.0f} s")
    print(f"  bare forward            {fwd:8.3f} s")
    print(f"  live edit (attention + logit lens + SAE features) {edit:8.3f} s   = {edit / fwd:.1f}x the forward")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "gemma-2-2b"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    main(a.shape, a.dtype, a.tokens, a.layers, a.repeats, a.threads)
