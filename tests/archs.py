"""Tiny random-weight HF causal LMs of every architecture mechviz maps, built from their config classes
(nothing downloaded), with each architecture's quirks switched on and made visible at this size.

Every model: 3 layers (2 for the MoE ones), hidden 48, 4 query heads, vocab 300, seeded. Norm weights are
randomised (a missed ``(1 + w)`` offset or post-norm then shows), and every matrix is scaled up so that
attention is far from uniform and patching grids vary well beyond the tests' tolerances. Quirks are
set so they bite on an 8-12 token prompt: sliding windows of 3-4 tokens, small soft-caps, head_dim 16
while ``d_model / n_heads`` is 12.
"""

from __future__ import annotations

import numpy as np
import torch

VOCAB = 300
COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
DENSE = dict(hidden_size=48, num_attention_heads=4, intermediate_size=96, max_position_embeddings=64, **COMMON)
SLIDING = ["sliding_attention", "full_attention", "sliding_attention"]


def _configs():
    import transformers as tf

    return {
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(
            num_hidden_layers=3, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
            max_window_layers=1, **DENSE)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(
            num_hidden_layers=3, num_key_value_heads=2, head_dim=16, **DENSE)),
        "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(
            num_hidden_layers=3, num_key_value_heads=1, head_dim=16, **DENSE)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(
            num_hidden_layers=3, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20,
            sliding_window=3, layer_types=SLIDING, attn_logit_softcapping=4.0, final_logit_softcapping=3.0,
            **DENSE)),
        "gemma3_text": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            num_hidden_layers=3, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20, sliding_window=3,
            layer_types=SLIDING, final_logit_softcapping=5.0, **DENSE)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(num_hidden_layers=3, **DENSE)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(
            num_hidden_layers=3, num_key_value_heads=2, **DENSE)),
        "gptj": lambda: tf.GPTJForCausalLM(tf.GPTJConfig(
            n_layer=3, n_embd=48, n_head=4, rotary_dim=8, n_positions=64, **COMMON)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(
            num_hidden_layers=3, num_key_value_heads=2, sliding_window=4, **DENSE)),
        "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(
            num_hidden_layers=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **DENSE)),
        "qwen2_moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
            num_hidden_layers=2, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[1], **DENSE)),
        "qwen3_moe": lambda: tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(
            num_hidden_layers=2, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, **DENSE)),
        "gpt_oss": lambda: tf.GptOssForCausalLM(tf.GptOssConfig(
            num_hidden_layers=2, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=3, layer_types=SLIDING[:2], rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            **{**DENSE, "intermediate_size": 32})),
    }


ARCH_NAMES = list(_configs())


def _randomise(model, scale: float):
    """Norm weights random in [0.5, 1.5] (norm biases, projection biases random too), every matrix
    (routers and experts included) scaled by ``scale``; attention sinks large enough to take real mass."""
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                if getattr(module, "weight", None) is not None:
                    module.weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.1)
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.normal_(0.0, 1.0)
            elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                p.normal_(0.0, 0.5)
            elif name.endswith("bias") and "norm" not in name and "ln_" not in name:
                p.normal_(0.0, 0.1)
            elif p.dim() >= 2:
                p.mul_(scale)


def build(arch: str, seed: int = 0, scale: float = 6.0):
    """The tiny model of ``arch`` (a key of :data:`ARCH_NAMES`), seeded, in eval mode, eager attention."""
    torch.manual_seed(seed)
    model = _configs()[arch]()
    _randomise(model, scale)
    model.set_attn_implementation("eager")
    return model.eval()


# -- the brute-force patching reference ------------------------------------------------------------
# Where each site lives, written from reading each HF modeling file (independently of mechviz's map):
# site -> (module path inside a block, "in" | "out"). "in": the module's first input; "out": its first
# output. q/k/v are the projections' outputs, z the output projection's input, attn_out / mlp_out what
# the block adds to its residual stream (after a post-norm where there is one). resid_mid is written in place
# into the MLP's (norm's) input, the very tensor the block's second residual connection adds to; a parallel
# block has none (None: resid_pre + attn_out, set through attn_out).
_LLAMA_REF = {"attn_out": ("self_attn", "out"), "mlp_out": ("mlp", "out"),
              "resid_mid": ("post_attention_layernorm", "in"), "z": ("self_attn.o_proj", "in"),
              "q": ("self_attn.q_proj", "out"), "k": ("self_attn.k_proj", "out"), "v": ("self_attn.v_proj", "out")}
_SANDWICH_REF = {**_LLAMA_REF, "attn_out": ("post_attention_layernorm", "out"),
                 "mlp_out": ("post_feedforward_layernorm", "out"), "resid_mid": ("pre_feedforward_layernorm", "in")}
REF = {
    **{a: _LLAMA_REF for a in ("qwen2", "qwen3", "gemma", "mistral", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")},
    "gemma2": _SANDWICH_REF, "gemma3_text": _SANDWICH_REF,
    "olmo2": {**_SANDWICH_REF, "resid_mid": ("mlp", "in")},
    "phi3": {**_LLAMA_REF, **{n: ("self_attn.qkv_proj", "out") for n in "qkv"}},
    "gptj": {"attn_out": ("attn", "out"), "mlp_out": ("mlp", "out"), "resid_mid": None,
             "z": ("attn.out_proj", "in"), "q": ("attn.q_proj", "out"), "k": ("attn.k_proj", "out"),
             "v": ("attn.v_proj", "out")},
}
BLOCKS = {"gptj": "transformer.h"}


def blocks_of(model, arch):
    return model.get_submodule(BLOCKS.get(arch, "model.layers"))


def _heads(model):
    cfg = model.config
    H = cfg.num_attention_heads
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    return H, getattr(cfg, "num_key_value_heads", None) or H, dh


def _view(model, arch, name):
    """The site-shaped view ``[B, T, ...]`` of the hooked tensor."""
    H, Hkv, dh = _heads(model)
    if name not in ("q", "k", "v", "z"):
        return lambda x: x
    n = Hkv if name in "kv" else H
    if arch == "phi3" and name in "qkv":       # [q (H*dh) | k (Hkv*dh) | v (Hkv*dh)]
        lo = {"q": 0, "k": H * dh, "v": (H + Hkv) * dh}[name]
        return lambda x: x[..., lo:lo + n * dh].unflatten(-1, (n, dh))
    return lambda x: x.unflatten(-1, (n, dh))


def _hook(module, kind, fn):
    """``fn(tensor)`` on the module's first input / first output; it edits in place."""
    if kind == "in":
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: fn(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    return module.register_forward_hook(lambda m, a, out: fn(out[0] if isinstance(out, tuple) else out))


def _point(model, arch, layer, name):
    block = blocks_of(model, arch)[layer]
    if name == "resid_pre":
        return block, "in"
    if name == "resid_post":
        return block, "out"
    path, kind = REF[arch][name]
    return block.get_submodule(path), kind


def capture(model, arch, ids, name):
    """Site ``name`` of every layer on one prompt, ``[L][T, ...]`` (resid_mid: resid_pre + attn_out in a
    parallel block)."""
    if name == "resid_mid" and REF[arch]["resid_mid"] is None:
        pre, attn = capture(model, arch, ids, "resid_pre"), capture(model, arch, ids, "attn_out")
        return [p + a for p, a in zip(pre, attn)]
    out, handles = [], []
    for layer in range(len(blocks_of(model, arch))):
        module, kind = _point(model, arch, layer, name)
        view = _view(model, arch, name)
        handles.append(_hook(module, kind, lambda x, view=view: out.append(view(x)[0].clone())))
    try:
        with torch.inference_mode():
            model(ids[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


def patched_metric(model, arch, ids, name, layer, index, value, metric):
    """One full forward pass over ``ids`` with ``site[layer][index] = value``; the metric of its logits."""
    block = blocks_of(model, arch)[layer]
    handles = []
    if name == "resid_mid" and REF[arch]["resid_mid"] is None:   # parallel: resid_pre + attn_out := value
        live = {}
        handles.append(_hook(block, "in", lambda x: live.update(pre=x.clone())))
        module, kind = _point(model, arch, layer, "attn_out")

        def write(x):
            x[0][index] = value - live["pre"][0][index]
    else:
        module, kind = _point(model, arch, layer, name)
        view = _view(model, arch, name)

        def write(x):
            view(x)[0][index] = value
    handles.append(_hook(module, kind, write))
    try:
        with torch.inference_mode():
            return float(metric(model(ids[None], use_cache=False).logits)[0])
    finally:
        for h in handles:
            h.remove()


def reference_grid(model, arch, receiving, source, name, by, metric):
    """The patching grid of site ``name`` by ``by`` computed cell by cell, one full forward pass per cell
    (a cell whose source and receiving values are equal is the receiving metric: the pass would be the
    unpatched one). Shapes as mechviz's: ``[L, T]``, ``[L, H]`` or ``[L, T, H]``."""
    src, recv = capture(model, arch, source, name), capture(model, arch, receiving, name)
    with torch.inference_mode():
        base = float(metric(model(receiving[None], use_cache=False).logits)[0])
    L, T = len(src), len(receiving)
    heads = src[0].shape[1] if src[0].dim() == 3 else 0
    cells = ([((lay, p), (p,)) for lay in range(L) for p in range(T)] if by == "position" else
             [((lay, h), (slice(None), h)) for lay in range(L) for h in range(heads)] if by == "head" else
             [((lay, p, h), (p, h)) for lay in range(L) for p in range(T) for h in range(heads)])
    shape = {"position": (L, T), "head": (L, heads), "head_position": (L, T, heads)}[by]
    grid = np.full(shape, base)
    for out_idx, index in cells:
        lay = out_idx[0]
        value = src[lay][index]
        if not torch.equal(value, recv[lay][index]):
            grid[out_idx] = patched_metric(model, arch, receiving, name, lay, index, value, metric)
    return grid
