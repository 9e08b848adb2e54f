"""HuggingFace causal LMs: one declarative :class:`ArchSpec` per architecture, one generic adapter.

To support a new architecture, add an :class:`ArchSpec` to :data:`ARCHS`, naming where its
modules live. Nothing else in mechviz knows about architectures.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .base import Aborted, ModelAdapter, StopForward, UnsupportedModelError
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
        # the forward keyword for a key/value cache: transformers 5.x renamed past_key_values to cache
        # (and warns on the old name); older versions, and models that declare neither, take past_key_values
        takes_cache = "cache" in inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if takes_cache else "past_key_values"

    # -- where each site is read: (module, "pre" | "post", get, put) -------------------------
    def _tap(self, layer: int, name: str):
        """How :meth:`run` reads (and writes) site ``name`` in block ``layer``: the module, the hook
        kind, ``get(value)`` giving the site-shaped ``[1, T, ...]`` view of the hooked value and
        ``put(value, x)`` writing ``x`` through that view (``None`` where writing would not change the
        computation). Built on :meth:`_site_point`, the one map from sites to modules."""
        block, spec = self.blocks[layer], self.spec
        if name == "attn_pattern":
            return _get(block, spec.attn), "post", (lambda v: v[1]), None
        if name == "resid_mid":  # sequential blocks only (parallel ones derive it); what the MLP reads
            return _get(block, spec.mlp_in), "pre", _get_input, None
        module, kind, view = self._site_point(layer, name)
        raw = _get_input if kind == "pre" else _first

        def put(value, x):
            view(raw(value))[...] = x
            return value
        return module, kind, (lambda value: view(raw(value))), put

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        edits = edits or {}
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
                if site in edits:
                    value = put(value, edits[site](x[0].clone()).reshape(x.shape[1:]).to(x.dtype)[None])
                    x = get(value)
                # a copy: later in-place edits (of the next block's input, say) must not change it
                store[str(site)] = x.detach()[0].float().cpu().clone()
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

    # -- batched patched passes ---------------------------------------------------------------
    def _site_point(self, layer: int, name: str):
        """Where site ``name.layer`` lives: ``(module, "pre" | "post", view)``; the activation is the
        module's first input ("pre") or output ("post"), and ``view(raw)`` is the site-shaped view
        ``[B, T, ...]`` of it (sharing storage, so writing into it edits the pass)."""
        block, spec = self.blocks[layer], self.spec
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        ident = lambda x: x  # noqa: E731
        if name == "resid_pre":
            return block, "pre", ident
        if name == "resid_post":
            return block, "post", ident
        if name == "attn_out":
            return _get(block, spec.attn), "post", ident
        if name == "mlp_out":
            return _get(block, spec.mlp), "post", ident
        if name == "z":
            return _get(block, spec.o_proj), "pre", lambda x: x.unflatten(-1, (H, dh))
        if name in ("q", "k", "v"):
            i = "qkv".index(name)
            n_heads = H if name == "q" else Hkv
            kind, where = spec.qkv
            if kind == "separate":
                return _get(block, where[i]), "post", lambda x: x.unflatten(-1, (n_heads, dh))
            if kind == "split":      # [.., q(H*dh) | k(Hkv*dh) | v(Hkv*dh)]
                lo = (0, H, H + Hkv)[i] * dh
                return _get(block, where), "post", lambda x: x[..., lo:lo + n_heads * dh].unflatten(-1, (n_heads, dh))
            return _get(block, where), "post", lambda x: x.unflatten(-1, (H, 3, dh))[..., i, :]  # "heads"
        raise SiteError(f"site {name!r} cannot be patched or differentiated (supported: resid_pre, resid_mid, "
                        "resid_post, attn_out, mlp_out, z, q, k, v)")

    @staticmethod
    def _hook_point(module, kind: str, fn, handles: list):
        """Register ``fn(raw) -> replacement or None`` on a module's first input or its output."""
        if kind == "pre":
            def pre(_m, args, kwargs):
                key = None if args else next((k for k in ("hidden_states", "input") if k in kwargs),
                                             next(iter(kwargs)))
                raw = args[0] if args else kwargs[key]
                new = fn(raw)
                if new is None:
                    return None
                if args:
                    return (new,) + tuple(args[1:]), kwargs
                return args, {**kwargs, key: new}
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(_m, _a, out):
                raw = _first(out)
                new = fn(raw)
                if new is None:
                    return None
                return (new,) + tuple(out[1:]) if isinstance(out, (tuple, list)) else new
            handles.append(module.register_forward_hook(post))

    def _mlp_only_at(self, block, idx: list[int], handles: list):
        """In ``block``, run the MLP only at positions ``idx`` (others get a zero MLP output): the
        last block's MLP is most of its work, and only the positions a metric reads matter there."""
        idx_t = torch.tensor(idx)
        shape = {}

        def take(x):
            shape["x"] = x.shape
            return x[:, idx_t.to(x.device)]

        def scatter(out):
            full = out.new_zeros(*shape["x"][:2], out.shape[-1])
            full[:, idx_t.to(out.device)] = out
            return full
        self._hook_point(_get(block, self.spec.mlp_in), "pre", take, handles)
        self._hook_point(_get(block, self.spec.mlp), "post", scatter, handles)

    def _stop_after_last_block(self, store: dict, handles: list):
        def stop(raw):
            store["final"] = raw
            raise StopForward()
        self._hook_point(self.blocks[-1], "post", stop, handles)

    def patch_base(self, ids):
        from transformers import DynamicCache

        cache, store, handles, resid_pre = DynamicCache(config=self.model.config), {}, [], []
        for block in self.blocks:
            self._hook_point(block, "pre", resid_pre.append, handles)
        self._stop_after_last_block(store, handles)
        try:
            with torch.inference_mode():
                self.model(input_ids=ids[None].to(self._device()), **{self._cache_kw: cache}, use_cache=True)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return {"ids": ids, "resid_pre": resid_pre, "kv": [(lay.keys, lay.values) for lay in cache.layers]}

    def forward_from(self, base, n_rows, edits, start_layer=0, start_pos=0, abort=None, keep=None):
        from transformers import DynamicCache

        ids, handles, store = base["ids"], [], {}
        if abort is not None:
            def check(_h):
                if abort():
                    raise Aborted()
            for block in self.blocks[start_layer:]:
                self._hook_point(block, "pre", check, handles)

        def expand(_h):  # the pass starts here, from the base pass's residual stream; one copy per row
            h = base["resid_pre"][start_layer][:, start_pos:]
            return h.expand(n_rows, *h.shape[1:]).clone()
        self._hook_point(self.blocks[start_layer], "pre", expand, handles)
        for edit in edits:
            name, layer = edit.site.name, edit.site.layer
            if name == "resid_mid":  # resid_pre + attn_out := value, by editing attn_out
                stash = {}
                self._hook_point(self.blocks[layer], "pre", lambda h, stash=stash: stash.update(h=h), handles)
                self._hook_point(_get(self.blocks[layer], self.spec.attn), "post",
                                 lambda a, e=edit, stash=stash: e.apply_resid_mid(a, stash["h"], start_pos), handles)
            else:
                module, kind, view = self._site_point(layer, name)
                self._hook_point(module, kind, lambda x, e=edit, view=view: e.apply(view(x), start_pos), handles)
        if keep is not None:
            self._mlp_only_at(self.blocks[-1], [p - start_pos for p in keep], handles)
        self._stop_after_last_block(store, handles)
        cache = None
        if start_pos > 0:  # keys/values of the unchanged positions come from the base pass
            cache = DynamicCache(config=self.model.config)
            for i, (k, v) in enumerate(base["kv"]):
                k, v = k[:, :, :start_pos], v[:, :, :start_pos]
                if i >= start_layer:
                    k, v = k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1)
                cache.update(k, v, i)
        # the blocks before start_layer are skipped: the model iterates over a list holding only the later
        # ones (each block keeps its own layer index, which is what the key/value cache is indexed by)
        parent_path, _, attr = self.spec.blocks.rpartition(".")
        parent = _get(self.model, parent_path) if parent_path else self.model
        try:
            setattr(parent, attr, torch.nn.ModuleList(list(self.blocks)[start_layer:]))
            with torch.inference_mode():
                self.model(input_ids=ids[None, start_pos:].to(self._device()), **{self._cache_kw: cache},
                           use_cache=cache is not None)
        except StopForward:
            pass
        finally:
            setattr(parent, attr, self.blocks)
            for h in handles:
                h.remove()
        return store["final"]

    def grad_run(self, ids, sites, objective):
        captured, handles, store = {}, [], {}
        self._hook_point(self.blocks[0], "pre", lambda h: h.detach().requires_grad_(), handles)

        def capture(key, view):
            def fn(raw):
                captured[key] = (raw, view)
            return fn
        for s in sites:
            names = ("resid_pre", "attn_out") if s.name == "resid_mid" else (s.name,)
            for name in names:
                module, kind, view = self._site_point(s.layer, name)
                self._hook_point(module, kind, capture(f"{name}.{s.layer}", view), handles)
        self._stop_after_last_block(store, handles)
        with torch.enable_grad():
            try:
                self.model(input_ids=ids.to(self._device()), use_cache=False)
            except StopForward:
                pass
            finally:
                for h in handles:
                    h.remove()
            keys = list(captured)
            grads = torch.autograd.grad(objective(store["final"]), [captured[k][0] for k in keys],
                                        allow_unused=True)
        out = {}
        for key, g in zip(keys, grads):
            raw, view = captured[key]
            g = torch.zeros_like(raw) if g is None else g
            out[key] = (view(raw.detach()).float().cpu(), view(g).float().cpu())
        for s in sites:
            if s.name == "resid_mid":
                pre, attn = out[f"resid_pre.{s.layer}"], out[f"attn_out.{s.layer}"]
                out[str(s)] = (pre[0] + attn[0], attn[1])
        return {str(s): out[str(s)] for s in sites}

    def attn_out_of_z(self, layer, z):
        o_proj = _get(self.blocks[layer], self.spec.o_proj)
        return o_proj(z.to(self._device(), self._dtype()).flatten(-2))

    def finish_block(self, layer, resid_pre, attn_out):
        block, dev, dt = self.blocks[layer], self._device(), self._dtype()
        resid_pre, attn_out = resid_pre.to(dev, dt), attn_out.to(dev, dt)
        mid = resid_pre + attn_out
        mlp_out = _first(_get(block, self.spec.mlp)(_get(block, self.spec.mlp_in)(resid_pre if self.parallel else mid)))
        return mid + mlp_out

    def unembed_tokens(self, x, token_ids):
        emb = self.model.get_output_embeddings()
        if not isinstance(emb, torch.nn.Linear):
            return super().unembed_tokens(x, token_ids)
        idx = torch.as_tensor(list(token_ids), device=emb.weight.device)
        bias = None if emb.bias is None else emb.bias[idx]
        return torch.nn.functional.linear(x.to(emb.weight.device, emb.weight.dtype), emb.weight[idx], bias)

    def final_norm(self, resid):
        return _get(self.model, self.spec.final_norm)(resid.to(self._device(), self._dtype()))

    def unembed(self, x):
        return self.model.get_output_embeddings()(x)

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _device(self):
        return next(self.model.parameters()).device
