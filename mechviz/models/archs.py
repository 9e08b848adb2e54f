"""Where each HuggingFace architecture keeps what mechviz reads: one declarative :class:`ArchSpec` per
``config.model_type`` in :data:`ARCHS`. The adapter (:mod:`.hf`) knows no architecture by name.

Every entry is verified against the HF model itself (logits, hidden states, attentions) and against
a brute-force patching reference (tests/test_archs.py); an architecture that is not listed is refused
(:func:`unsupported_message`), never guessed: a map that misses a quirk (a post-norm, a soft-cap, a
sliding window) gives wrong numbers without any error.

The block math each field expresses (``x`` = ``resid_pre``; norms named by their spec field)::

    sequential:  mid  = x + attn_out_norm(attn(attn_in(x)))      # attn_out: what is added
                 post = mid + mlp_out_norm(mlp(mlp_in(mid)))      # mlp_out: what is added
    parallel:    post = x + attn_out + mlp_out(mlp_in(x))         # no resid_mid on the path

A missing ``attn_out_norm`` / ``mlp_out_norm`` is the identity (pre-norm models), as is a missing
``mlp_in`` (OLMo-2: the MLP reads ``resid_mid`` itself). Logits are ``final_softcap(unembed(
final_norm(post_last)))`` with ``softcap(l) = c * tanh(l / c)`` where the config sets ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ArchSpec:
    """One architecture's map. Paths are attribute paths (dots); ``blocks`` and ``final_norm`` are from
    the ``*ForCausalLM`` root, the others inside one block.

    ``attn``: the attention module (its forward returns ``(output, weights)``; ``weights`` is
    ``attn_pattern``, kept as the model computes it: rows of a model with attention sinks sum to less
    than 1). ``o_proj``: the output projection (its *input* is ``z``). ``mlp``: the MLP, or the whole
    mixture-of-experts block (its output, or first output, is the MLP's contribution before any
    post-norm). ``qkv``: ``("separate", (q_path, k_path, v_path))``, ``("split", path)`` for one fused
    ``[q | k | v]`` projection (Phi-3, GPT-2) or ``("heads", path)`` for one laid out per head as
    ``[q k v]`` (GPT-NeoX); ``q``/``k``/``v`` are these projections' outputs.
    ``mlp_in``: the norm the MLP reads through (its input is ``resid_mid`` in a sequential block);
    None: the MLP reads ``resid_mid`` unnormalised. ``attn_out_norm`` / ``mlp_out_norm``: post-norms
    applied to the attention / MLP output before it is added to the residual (sandwich norms);
    ``attn_out`` and ``mlp_out`` are then their outputs.
    ``parallel``: True when attention and MLP always read the same ``resid_pre`` (GPT-J), or the name
    of the config attribute that says so (GPT-NeoX's ``use_parallel_residual``).
    ``final_softcap``: config attribute holding the final-logit soft-cap ``c`` (None/0 there: no cap),
    applied after the unembedding, in the logit lens and patching metrics too.
    ``router``: the module whose first output is the router logits ``[tokens, n_experts]`` (site
    ``router``); absent in a block whose MLP is dense.
    ``pos_embed``: the learned positional embedding (from the root; its input is the positions ``0..T-1``),
    where the model adds one to the token embedding (GPT-2); rotary models have none.
    ``requires``: ``(config attribute, value)`` pairs this map assumes (e.g. causal attention); a model
    whose config differs is refused.
    """

    blocks: str
    attn: str
    o_proj: str
    mlp: str
    qkv: tuple
    final_norm: str
    mlp_in: str | None = None
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    parallel: bool | str = False
    final_softcap: str | None = None
    router: str | None = None
    pos_embed: str | None = None
    requires: tuple = ()

    def block_paths(self) -> list[str]:
        """Every module path inside a block this map reads (the router aside: MoE blocks only)."""
        kind, where = self.qkv
        qkv = list(where) if kind == "separate" else [where]
        opt = [p for p in (self.mlp_in, self.attn_out_norm, self.mlp_out_norm) if p]
        return [self.attn, self.o_proj, self.mlp, *qkv, *opt]


#: Llama and the families that share its module tree. Qwen2's q/k/v biases, Qwen3's per-head QK-norm
#: (inside the attention, after q_proj/k_proj) and Gemma's sqrt(d)-scaled embedding, (1 + w) RMSNorm
#: and head_dim != d/n_heads all live inside HF modules this map reads around: nothing to declare.
_LLAMA = ArchSpec(
    blocks="model.layers", attn="self_attn", o_proj="self_attn.o_proj", mlp="mlp",
    mlp_in="post_attention_layernorm",
    qkv=("separate", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    final_norm="model.norm",
)

#: Gemma 2 / Gemma 3: sandwich norms. HF names the *post*-attention norm post_attention_layernorm here
#: (in Llama that name is the pre-MLP norm), and the pre-MLP norm pre_feedforward_layernorm.
_GEMMA_SANDWICH = replace(
    _LLAMA, mlp_in="pre_feedforward_layernorm", attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm", final_softcap="final_logit_softcapping",
)

#: model_type -> ArchSpec (the first four in the order mechviz first supported them)
ARCHS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        blocks="transformer.h", attn="attn", o_proj="attn.c_proj", mlp="mlp", mlp_in="ln_2",
        qkv=("split", "attn.c_attn"), final_norm="transformer.ln_f", pos_embed="transformer.wpe",
    ),
    "gpt_neox": ArchSpec(
        blocks="gpt_neox.layers", attn="attention", o_proj="attention.dense", mlp="mlp",
        mlp_in="post_attention_layernorm", qkv=("heads", "attention.query_key_value"),
        final_norm="gpt_neox.final_layer_norm", parallel="use_parallel_residual",
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,                       # sliding-window attention: a mask inside HF's forward
    "qwen2": _LLAMA,                         # q/k/v biases; optional sliding-window layers
    "qwen3": _LLAMA,                         # per-head QK-norm after q_proj/k_proj
    "gemma": _LLAMA,                         # sqrt(d) embedding scale, (1 + w) RMSNorm, head_dim 256
    "gemma2": _GEMMA_SANDWICH,               # + attention soft-cap, query_pre_attn_scalar, sliding layers
    # + per-head QK-norm, dual RoPE bases (local/global); bidirectional Gemma 3 variants are not causal LMs
    "gemma3_text": replace(_GEMMA_SANDWICH, requires=(("use_bidirectional_attention", False),)),
    # post-norms only (no pre-norm at all); QK-norm over the full q/k projections, after them
    "olmo2": replace(_LLAMA, mlp_in=None, attn_out_norm="post_attention_layernorm",
                     mlp_out_norm="post_feedforward_layernorm"),
    # fused [q | k | v]; the fused gate_up MLP is read whole (mlp_out), so it needs no entry
    "phi3": replace(_LLAMA, qkv=("split", "self_attn.qkv_proj")),
    "gptj": ArchSpec(                        # attention and MLP both read ln_1(resid_pre)
        blocks="transformer.h", attn="attn", o_proj="attn.out_proj", mlp="mlp", mlp_in="ln_1",
        qkv=("separate", ("attn.q_proj", "attn.k_proj", "attn.v_proj")), final_norm="transformer.ln_f",
        parallel=True,
    ),
    "mixtral": replace(_LLAMA, router="mlp.gate"),
    "qwen2_moe": replace(_LLAMA, router="mlp.gate"),     # + a sigmoid-gated shared expert inside mlp
    "qwen3_moe": replace(_LLAMA, router="mlp.gate"),     # + per-head QK-norm
    "gpt_oss": replace(_LLAMA, router="mlp.router"),     # + attention sinks, sliding layers, biases
}


def unsupported_message(model_type: str, cls: str) -> str:
    """What a model of an architecture :data:`ARCHS` does not list is told."""
    return (f"mechviz has no verified map for HuggingFace model_type {model_type!r} ({cls}). Supported model "
            f"types: {', '.join(ARCHS)}. Each map is checked against the HF model and a brute-force patching "
            "reference; one guessed for an architecture with unknown quirks (post-norms, soft-caps, sliding "
            "windows) gives wrong numbers with no error, so mechviz does not guess. Instead: open an issue "
            f"naming model_type {model_type!r} and its HF class, or load the model into TransformerLens and "
            "pass the HookedTransformer to mechviz.wrap.")
