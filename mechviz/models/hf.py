"""HuggingFace causal LMs: one declarative :class:`ArchSpec` per architecture, one generic adapter.

To support a new architecture, add an :class:`ArchSpec` to :data:`ARCHS`, naming where its
modules live. Nothing else in mechviz knows about architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Aborted, ModelAdapter, UnsupportedModelError
from .sites import Site, SiteError


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


def _get_input(value):
    args, kwargs = value
    return args[0] if args else kwargs["hidden_states"]


def _put_input(value, x):
    args, kwargs = value
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


_INPUT = (_get_input, _put_input)  # a pre-hook's (args, kwargs): the module's first input


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

    # -- where each site is read: (module, "pre" | "post", get, put) -------------------------
    def _tap(self, layer: int, name: str):
        """How to read (and write) site ``name`` in block ``layer``: the module, the hook kind, a
        getter from the hooked value to a ``[1, T, ...]`` tensor and a putter writing one back
        (``None`` where writing would not change the computation)."""
        block, spec = self.blocks[layer], self.spec
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        first = (_first, lambda v, x: (x, *v[1:]) if isinstance(v, tuple) else x)
        if name == "resid_pre":
            return block, "pre", *_INPUT
        if name == "resid_post":
            return block, "post", *first
        if name == "attn_out":
            return _get(block, spec.attn), "post", *first
        if name == "attn_pattern":
            return _get(block, spec.attn), "post", (lambda v: v[1]), None
        if name == "mlp_out":
            return _get(block, spec.mlp), "post", *first
        if name == "resid_mid":
            return _get(block, spec.mlp_in), "pre", _INPUT[0], None
        if name == "z":
            return _get(block, spec.o_proj), "pre", *_INPUT
        kind, where = spec.qkv
        i = "qkv".index(name)
        if kind == "separate":
            return _get(block, where[i]), "post", (lambda v: v), (lambda v, x: x)
        if kind == "split":  # [.., q(H*dh) | k(Hkv*dh) | v(Hkv*dh)]
            sizes = [H * dh, Hkv * dh, Hkv * dh]
            lo, hi = sum(sizes[:i]), sum(sizes[:i + 1])
            return (_get(block, where), "post", (lambda v: v[..., lo:hi]),
                    (lambda v, x: torch.cat([v[..., :lo], x, v[..., hi:]], dim=-1)))

        def get_heads(v):  # "heads": [.., H, (q k v) * dh]
            return v.reshape(*v.shape[:-1], H, 3 * dh)[..., i * dh:(i + 1) * dh]

        def put_heads(v, x):
            w = v.reshape(*v.shape[:-1], H, 3 * dh).clone()
            w[..., i * dh:(i + 1) * dh] = x
            return w.reshape(v.shape)
        return _get(block, where), "post", get_heads, put_heads

    def _site_shape(self, name: str):
        """Per-token shape of a site when it differs from the module's flat output."""
        return {"q": (self.n_heads, self.d_head), "k": (self.n_kv_heads, self.d_head),
                "v": (self.n_kv_heads, self.d_head), "z": (self.n_heads, self.d_head)}.get(name)

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        edits = edits or {}
        T = ids.numel()
        store: dict[str, torch.Tensor] = {}
        # parallel blocks have no resid_mid on their path: derive it as resid_pre + attn_out
        derived = [s for s in sites if s.name == "resid_mid" and self.parallel]
        reads = {(s.layer, s.name) for s in sites if s not in derived}
        reads |= {(s.layer, n) for s in derived for n in ("resid_pre", "attn_out")}
        reads |= {(s.layer, s.name) for s in edits}
        groups: dict[tuple, list] = {}
        for layer, name in sorted(reads):
            module, kind, get, put = self._tap(layer, name)
            site = Site(name, layer)
            if site in edits and put is None:
                raise SiteError(f"site {site} can be read but not edited in a HuggingFace model")
            groups.setdefault((id(module), kind), [module, kind, []])[2].append((site, get, put))

        def process(value, taps):  # edit, then read, every site this module carries
            for site, get, put in taps:
                x = get(value)
                shape = self._site_shape(site.name)
                if site in edits:
                    new = edits[site]((x[0].reshape(T, *shape) if shape else x[0]).clone())
                    value = put(value, new.reshape(x.shape[1:]).to(x.dtype)[None])
                    x = get(value)
                store[str(site)] = (x.detach()[0].reshape(T, *shape) if shape else x.detach()[0]).float().cpu()
            return value

        handles = []
        if abort is not None:
            def check(_m, _a, _k):
                if abort():
                    raise Aborted()
            handles += [block.register_forward_pre_hook(check, with_kwargs=True) for block in self.blocks]
        for module, kind, taps in groups.values():
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, kwargs, taps=taps: process((args, kwargs), taps), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(lambda _m, _a, out, taps=taps: process(out, taps)))
        try:
            out = self.model(input_ids=ids[None].to(self._device()), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        for s in derived:
            store[str(s)] = store[f"resid_pre.{s.layer}"] + store[f"attn_out.{s.layer}"]
        return out.logits[0].detach().float().cpu(), {str(s): store[str(s)] for s in sites}

    def final_norm(self, resid):
        return _get(self.model, self.spec.final_norm)(resid.to(self._device(), self._dtype()))

    def unembed(self, x):
        return self.model.get_output_embeddings()(x)

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _device(self):
        return next(self.model.parameters()).device
