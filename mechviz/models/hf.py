"""HuggingFace causal LMs: one declarative :class:`ArchSpec` per architecture, one generic adapter.

To support a new architecture, add an :class:`ArchSpec` to :data:`ARCHS`, naming where its
modules live. Nothing else in mechviz knows about architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Aborted, ModelAdapter, UnsupportedModelError
from .sites import Site


@dataclass(frozen=True)
class ArchSpec:
    """Where one architecture keeps what mechviz reads. Paths are attribute paths (dots).

    ``blocks``: the list of transformer blocks (from the CausalLM root). Inside a block:
    ``attn`` (its forward returns ``(output, weights)``), ``o_proj`` (its *input* is z),
    ``mlp``, ``mlp_in`` (the norm whose input is resid_mid in a sequential block). ``qkv`` is
    ``("split", path)`` for a fused [q|k|v] projection, ``("heads", path)`` for a fused projection
    laid out per head as [q k v], or ``("separate", (q_path, k_path, v_path))``.
    ``parallel``: config attribute that says attention and MLP read the same residual (or None).
    ``final_norm``: from the root, for the logit lens (the unembedding is HF's
    ``get_output_embeddings()``).
    """

    blocks: str
    attn: str
    o_proj: str
    mlp: str
    mlp_in: str
    qkv: tuple
    final_norm: str
    parallel: str | None = None


_LLAMA = ArchSpec(
    blocks="model.layers", attn="self_attn", o_proj="self_attn.o_proj", mlp="mlp",
    mlp_in="post_attention_layernorm",
    qkv=("separate", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    final_norm="model.norm",
)

#: model_type -> ArchSpec
ARCHS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        blocks="transformer.h", attn="attn", o_proj="attn.c_proj", mlp="mlp", mlp_in="ln_2",
        qkv=("split", "attn.c_attn"), final_norm="transformer.ln_f",
    ),
    "gpt_neox": ArchSpec(
        blocks="gpt_neox.layers", attn="attention", o_proj="attention.dense", mlp="mlp",
        mlp_in="post_attention_layernorm", qkv=("heads", "attention.query_key_value"),
        final_norm="gpt_neox.final_layer_norm", parallel="use_parallel_residual",
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
}


def _get(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class HFAdapter(ModelAdapter):
    """Adapter for a HuggingFace ``*ForCausalLM`` of a supported architecture.

    The model is put in eval mode and switched to eager attention (the only implementation that
    materialises attention weights), so that capturing attention never changes the logits.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = HFAdapter(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64)))
    >>> m.run([1, 2, 3], capture=["attn_pattern.1"])["attn_pattern.1"].shape
    torch.Size([4, 3, 3])
    """

    def __init__(self, model, tokenizer=None, name: str | None = None):
        cfg = model.config
        self.spec = ARCHS.get(cfg.model_type)
        if self.spec is None:
            raise UnsupportedModelError(
                f"mechviz has no adapter map for model_type {cfg.model_type!r} ({type(model).__name__}). "
                f"Supported HuggingFace architectures: {', '.join(sorted(ARCHS))}; or pass a TransformerLens "
                "HookedTransformer. To add one, write an ArchSpec in mechviz/models/hf.py."
            )
        self.model = model.eval()
        if getattr(cfg, "_attn_implementation", "eager") != "eager":
            model.set_attn_implementation("eager")
        self.tokenizer = tokenizer
        self.name = name or getattr(cfg, "_name_or_path", "") or cfg.model_type
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.d_vocab = cfg.vocab_size
        self.max_len = getattr(cfg, "max_position_embeddings", None)
        self.parallel = bool(self.spec.parallel and getattr(cfg, self.spec.parallel, False))
        self.blocks = _get(model, self.spec.blocks)

    def _forward(self, ids, sites: list[Site], abort):
        spec, T = self.spec, ids.numel()
        store: dict[str, torch.Tensor] = {}
        handles = []

        def keep(key, x, shape=None):
            x = x.detach()[0]
            store[key] = (x.reshape(T, *shape) if shape else x).float().cpu()

        def add(module, kind, fn):  # "pre" hooks see (module, args, kwargs); "post" see (module, args, out)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn))

        wanted: dict[int, set[str]] = {}
        for s in sites:
            wanted.setdefault(s.layer, set()).add(s.name)
            if s.name == "resid_mid" and self.parallel:  # derived: resid_pre + attn_out
                wanted[s.layer] |= {"_resid_pre", "_attn_out"}

        if abort is not None:
            def check(_m, _a, _k):
                if abort():
                    raise Aborted()
            for block in self.blocks:
                add(block, "pre", check)

        for layer, names in wanted.items():
            block = self.blocks[layer]
            def tag(n, layer=layer):
                return f"{n}.{layer}"
            if names & {"resid_pre", "_resid_pre"}:
                def pre(_m, args, kwargs, names=names, layer=layer):
                    h = args[0] if args else kwargs["hidden_states"]
                    for n in names & {"resid_pre", "_resid_pre"}:
                        keep(f"{n}.{layer}", h)
                add(block, "pre", pre)
            if "resid_post" in names:
                add(block, "post", lambda _m, _a, out, k=tag("resid_post"): keep(k, _first(out)))
            attn_names = names & {"attn_pattern", "attn_out", "_attn_out"}
            if attn_names:
                def on_attn(_m, _a, out, names=attn_names, layer=layer):
                    for n in names:
                        keep(f"{n}.{layer}", out[1] if n == "attn_pattern" else out[0])
                add(_get(block, spec.attn), "post", on_attn)
            if "mlp_out" in names:
                add(_get(block, spec.mlp), "post", lambda _m, _a, out, k=tag("mlp_out"): keep(k, _first(out)))
            if "resid_mid" in names and not self.parallel:
                add(_get(block, spec.mlp_in), "pre",
                    lambda _m, args, kwargs, k=tag("resid_mid"): keep(k, args[0] if args else kwargs["hidden_states"]))
            if "z" in names:
                add(_get(block, spec.o_proj), "pre",
                    lambda _m, args, kwargs, k=tag("z"): keep(k, args[0] if args else kwargs["input"],
                                                              (self.n_heads, self.d_head)))
            qkv_names = names & {"q", "k", "v"}
            if qkv_names:
                self._hook_qkv(block, layer, qkv_names, keep, add)

        try:
            out = self.model(input_ids=ids[None].to(self._device()), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        for layer, names in wanted.items():
            if "resid_mid" in names and self.parallel:
                store[f"resid_mid.{layer}"] = store[f"_resid_pre.{layer}"] + store[f"_attn_out.{layer}"]
        cache = {str(s): store[str(s)] for s in sites}
        return out.logits[0].detach().float().cpu(), cache

    def _hook_qkv(self, block, layer, names, keep, add):
        kind, where = self.spec.qkv
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        heads = {"q": H, "k": Hkv, "v": Hkv}
        if kind == "separate":
            for n, path in zip("qkv", where):
                if n in names:
                    add(_get(block, path), "post", lambda _m, _a, out, n=n: keep(f"{n}.{layer}", out, (heads[n], dh)))
            return

        def on_fused(_m, _a, out):
            x = out.detach()
            if kind == "split":      # [.., q(H*dh) | k | v]
                parts = x.split(H * dh, dim=-1)
            else:                    # "heads": [.., H, (q k v) * dh]
                parts = x.reshape(*x.shape[:-1], H, 3 * dh).split(dh, dim=-1)
            for n, p in zip("qkv", parts):
                if n in names:
                    keep(f"{n}.{layer}", p.contiguous(), (heads[n], dh))
        add(_get(block, where), "post", on_fused)

    def final_norm(self, resid):
        return _get(self.model, self.spec.final_norm)(resid.to(self._device(), self._dtype()))

    def unembed(self, x):
        return self.model.get_output_embeddings()(x)

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _device(self):
        return next(self.model.parameters()).device
