"""HuggingFace causal LMs: one generic adapter over the declarative maps in :mod:`.archs`.

Every site is read (and patched) through PyTorch hooks placed where the architecture's
:class:`~.archs.ArchSpec` says. Each pass checks that every hook it placed fired exactly once
(:class:`HookError` otherwise), so a map that no longer matches the model's forward fails loudly
instead of returning an empty or stale array.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from .archs import ARCHS, ArchSpec, unsupported_message
from .base import Aborted, ModelAdapter, StopForward, UnsupportedModelError
from .hooks import HookError, Hooks, Skip, first as _first
from .sites import MOE_SITES, READ_SITES, SITES, Site, SiteError, parse_sites

__all__ = ["HFAdapter", "HookError", "ARCHS", "ArchSpec"]


def _get(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


class HFAdapter(ModelAdapter):
    """Adapter for a HuggingFace ``*ForCausalLM`` of an architecture in :data:`~.archs.ARCHS`.

    The model is put in eval mode and switched to eager attention (the only implementation that
    materialises attention weights), so that capturing attention never changes the logits.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = HFAdapter(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64)))
    >>> m.run([1, 2, 3], capture=["attn_pattern.1"])["attn_pattern.1"].shape
    torch.Size([4, 3, 3])
    """

    def __init__(self, model, tokenizer=None, name: str | None = None):
        cfg = model.config
        self.spec: ArchSpec = ARCHS.get(cfg.model_type)
        if self.spec is None:
            raise UnsupportedModelError(unsupported_message(cfg.model_type, type(model).__name__))
        for attr, want in self.spec.requires:
            if getattr(cfg, attr, want) != want:
                raise UnsupportedModelError(
                    f"mechviz's map for {cfg.model_type!r} assumes config.{attr} = {want!r}; this model has "
                    f"{getattr(cfg, attr)!r}, which it has not been verified on: open an issue, or use TransformerLens")
        if not callable(getattr(model, "get_output_embeddings", None)) or model.get_output_embeddings() is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no language-model head (no unembedding to read logits from): load "
                "the causal-LM class, e.g. AutoModelForCausalLM.from_pretrained(...), not AutoModel")
        if any(p.device.type == "meta" for p in model.parameters()):
            raise UnsupportedModelError(
                f"{type(model).__name__}'s weights are on the meta device (not loaded): load them first, e.g. "
                "from_pretrained(...) without init_empty_weights, or for a model that does not fit use nnsight/NDIF")
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
        par = self.spec.parallel
        self.parallel = par if isinstance(par, bool) else bool(getattr(cfg, par, False))
        self.softcap = getattr(cfg, self.spec.final_softcap, None) if self.spec.final_softcap else None
        self.blocks = _get(model, self.spec.blocks)
        self._check_layout()
        # the forward keyword for a key/value cache: transformers 5.x renamed past_key_values to cache
        # (and warns on the old name); older versions, and models that declare neither, take past_key_values
        takes_cache = "cache" in inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if takes_cache else "past_key_values"

    def _check_layout(self):
        """Every module the map names exists, and the output projection is ``n_heads * d_head`` wide."""
        where = type(self.model).__name__
        try:
            _get(self.model, self.spec.final_norm)
            for block in self.blocks:
                for path in self.spec.block_paths():
                    _get(block, path)
        except AttributeError as exc:
            raise UnsupportedModelError(
                f"{where} does not have the modules mechviz's map for {self.model.config.model_type!r} names "
                f"({exc}): this transformers version lays it out differently; please open an issue") from None
        o_proj = _get(self.blocks[0], self.spec.o_proj)
        width = getattr(o_proj, "in_features", None)
        if width is not None and width != self.n_heads * self.d_head:
            raise UnsupportedModelError(f"{where}: o_proj reads {width} features, not n_heads x head_dim = "
                                        f"{self.n_heads} x {self.d_head}; the config does not describe the model")

    @property
    def sites(self) -> list[str]:
        return list(SITES) + list(READ_SITES) + (list(MOE_SITES) if self.spec.router else [])

    # -- where each site lives ----------------------------------------------------------------
    def _mod(self, layer: int, path: str):
        return _get(self.blocks[layer], path)

    def _site_point(self, layer: int, name: str):
        """Where patchable site ``name.layer`` lives: ``(module, "pre" | "post", view)``; the activation is
        the module's first input ("pre") or first output ("post"), and ``view(raw)`` is the site-shaped view
        ``[B, T, ...]`` of it (sharing storage, so writing into it edits the pass)."""
        block, spec = self.blocks[layer], self.spec
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        ident = lambda x: x  # noqa: E731
        if name == "resid_pre":
            return block, "pre", ident
        if name == "resid_post":
            return block, "post", ident
        if name == "attn_out":     # what is added to the residual: after the post-attention norm, if any
            return self._mod(layer, spec.attn_out_norm or spec.attn), "post", ident
        if name == "mlp_out":
            return self._mod(layer, spec.mlp_out_norm or spec.mlp), "post", ident
        if name == "z":
            return self._mod(layer, spec.o_proj), "pre", lambda x: x.unflatten(-1, (H, dh))
        if name in ("q", "k", "v"):
            i = "qkv".index(name)
            n_heads = H if name == "q" else Hkv
            kind, where = spec.qkv
            if kind == "separate":
                return self._mod(layer, where[i]), "post", lambda x: x.unflatten(-1, (n_heads, dh))
            if kind == "split":      # [.., q(H*dh) | k(Hkv*dh) | v(Hkv*dh)]
                lo = (0, H, H + Hkv)[i] * dh
                def part(x):
                    return x[..., lo:lo + n_heads * dh].unflatten(-1, (n_heads, dh))
                return self._mod(layer, where), "post", part
            return self._mod(layer, where), "post", lambda x: x.unflatten(-1, (H, 3, dh))[..., i, :]  # "heads"
        raise SiteError(f"site {name!r} cannot be patched or differentiated (supported: resid_pre, resid_mid, "
                        "resid_post, attn_out, mlp_out, z, q, k, v)")

    def _tap(self, layer: int, name: str):
        """How :meth:`run` reads site ``name.layer``: ``(module, kind, view, editable)``, with ``kind`` as
        in :meth:`Hooks.add`. Built on :meth:`_site_point`, plus the read-only sites."""
        spec = self.spec
        if name == "attn_pattern":
            return self._mod(layer, spec.attn), "post_all", (lambda out: out[1]), False
        if name == "resid_mid":  # sequential blocks only (parallel ones derive it): what the MLP (norm) reads
            return self._mod(layer, spec.mlp_in or spec.mlp), "pre", (lambda x: x), False
        if name == "mlp_in":     # the MLP module's own input: the pre-MLP norm's output
            return self._mod(layer, spec.mlp), "pre", (lambda x: x), False
        if name == "router":
            try:
                module = self._mod(layer, spec.router or "<none>")
            except AttributeError:
                raise SiteError(f"site router.{layer}: block {layer} of this model has no mixture-of-experts "
                                "router (a dense MLP)") from None
            return module, "post", (lambda x: x.reshape(1, -1, x.shape[-1])), False
        return (*self._site_point(layer, name), True)

    def _where(self, module) -> str:
        """The module's path in the model (for messages)."""
        if id(module) not in getattr(self, "_paths", {}):
            self._paths = {id(m): n for n, m in self.model.named_modules()}
        return self._paths.get(id(module), type(module).__name__)

    # -- one pass over one prompt -------------------------------------------------------------
    def _reads(self, sites: list[Site], edits: dict):
        """The module taps a pass needs, grouped by ``(id(module), kind)`` -> ``[module, kind, [(site, view)]]``,
        and the sites derived after it (parallel blocks have no resid_mid on their path: resid_pre + attn_out)."""
        derived = [s for s in sites if s.name == "resid_mid" and self.parallel]
        reads = {(s.layer, s.name) for s in sites if s not in derived}
        reads |= {(s.layer, n) for s in derived for n in ("resid_pre", "attn_out")}
        reads |= {(s.layer, s.name) for s in edits}
        groups: dict[tuple, list] = {}
        for layer, name in sorted(reads):
            module, kind, view, editable = self._tap(layer, name)
            site = Site(name, layer)
            if site in edits and not editable:
                raise SiteError(f"site {site} can be read but not edited in a HuggingFace model")
            groups.setdefault((id(module), kind), [module, kind, []])[2].append((site, view))
        return groups, derived

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        edits = edits or {}
        store: dict[str, torch.Tensor] = {}
        groups, derived = self._reads(sites, edits)

        # attention patterns of several layers are copied straight into one [layers, H, T, T] stack (the
        # cache holds its slices: Run.stack returns it without a second copy of the largest capture)
        att = sorted(s.layer for s in sites if s.name == "attn_pattern")
        stack = torch.empty(len(att), self.n_heads, len(ids), len(ids)) if len(att) > 1 else None
        slot = {layer: i for i, layer in enumerate(att)}

        def process(raw, taps):  # edit, then read, every site this module carries
            for site, view in taps:
                x = view(raw)
                if x is None:
                    raise HookError(f"site {site}: the attention module returned no weights")
                if site in edits:
                    x[...] = edits[site](x[0].clone()).reshape(x.shape[1:]).to(x.dtype)[None]
                if stack is not None and site.name == "attn_pattern" and x.shape[1:] == stack.shape[1:]:
                    store[str(site)] = stack[slot[site.layer]].copy_(x.detach()[0])
                    continue
                # a copy: later in-place edits (of the next block's input, say) must not change it
                store[str(site)] = x.detach()[0].float().cpu().clone()

        with Hooks() as hooks:
            if abort is not None:
                self._abort_hooks(abort, self.blocks, hooks)
            for module, kind, taps in groups.values():
                hooks.add(module, kind, lambda raw, taps=taps: process(raw, taps),
                          ", ".join(str(s) for s, _ in taps), self._where(module))
            out = self.model(input_ids=ids[None].to(self._device()), use_cache=False)
            hooks.check()
        for s in derived:
            store[str(s)] = store[f"resid_pre.{s.layer}"] + store[f"attn_out.{s.layer}"]
        return out.logits[0].detach().float().cpu(), {str(s): store[str(s)] for s in sites}

    def capture_batch(self, ids, site):
        (s,) = parse_sites(site, self.n_layers)
        ids = torch.as_tensor(ids).long()
        if (s.name == "resid_mid" and self.parallel) or s.name in ("router", "mlp_in") or ids.ndim != 2:
            return super().capture_batch(ids, site)  # derived / flattened over the batch / a shape error
        module, kind, view, _ = self._tap(s.layer, s.name)
        store = {}

        def grab(raw):  # the site is computed: keep it and stop the pass (later blocks never run)
            store["x"] = view(raw).detach()
            raise StopForward()
        with Hooks() as hooks, torch.inference_mode():
            hooks.add(module, kind, grab, str(s), self._where(module))
            try:
                self.model(input_ids=ids.to(self._device()), use_cache=False)
            except StopForward:
                pass
            hooks.check()
        return store["x"]

    @staticmethod
    def _abort_hooks(abort, blocks, hooks: Hooks):
        def check(_h):
            if abort():
                raise Aborted()
        for block in blocks:
            hooks.add(block, "pre", check)

    # -- batched patched passes ---------------------------------------------------------------
    def _run_to_stop(self, hooks: Hooks, store: dict, **kwargs):
        """Run the model until the last block has run (its output lands in ``store["final"]``), then check
        that every named hook fired once."""
        def stop(raw):
            store["final"] = raw
            raise StopForward()
        hooks.add(self.blocks[-1], "post", stop, "the last block's output", self._where(self.blocks[-1]))
        try:
            self.model(**kwargs)
        except StopForward:
            pass
        hooks.check()
        return store["final"]

    def _mlp_only_at(self, layer: int, idx: list[int], hooks: Hooks):
        """In block ``layer``, run the MLP (and its post-norm) only at positions ``idx``, others getting a
        zero MLP output: the last block's MLP is most of its work, and only the positions a metric reads
        matter there. Register before any edit of that block's ``mlp_out``, which then sees full rows."""
        idx_t, shape = torch.tensor(idx), {}

        def take(x):
            shape["x"] = x.shape
            return x[:, idx_t.to(x.device)]

        def scatter(out):
            full = out.new_zeros(*shape["x"][:2], out.shape[-1])
            full[:, idx_t.to(out.device)] = out
            return full
        mlp = self._mod(layer, self.spec.mlp)
        out_module = self._site_point(layer, "mlp_out")[0]
        hooks.add(mlp, "pre", take, "the last MLP's input", self._where(mlp))
        hooks.add(out_module, "post", scatter, "the last MLP's output", self._where(out_module))

    def _edit_hook(self, edit, start_pos: int, hooks: Hooks):
        name, layer = edit.site.name, edit.site.layer
        if name == "resid_mid":  # resid_pre + attn_out := value, by editing attn_out
            stash = {}
            hooks.add(self.blocks[layer], "pre", lambda h: stash.update(h=h), f"resid_pre.{layer} (for resid_mid)")
            module = self._site_point(layer, "attn_out")[0]
            hooks.add(module, "post", lambda a: edit.apply_resid_mid(a, stash["h"], start_pos), f"edit of {edit.site}",
                      self._where(module))
        else:
            module, kind, view = self._site_point(layer, name)
            hooks.add(module, kind, lambda x: edit.apply(view(x), start_pos), f"edit of {edit.site}",
                      self._where(module))

    def patch_base(self, ids):
        from transformers import DynamicCache

        # a cache of full layers even for sliding-window layers (whose cache would keep only the window):
        # forward_from resumes from any position, and the sliding mask is applied by absolute position
        cache, store, resid_pre = DynamicCache(), {}, []
        with Hooks() as hooks, torch.inference_mode():
            for i, block in enumerate(self.blocks):
                hooks.add(block, "pre", resid_pre.append, f"resid_pre.{i}")
            self._run_to_stop(hooks, store, input_ids=ids[None].to(self._device()), **{self._cache_kw: cache},
                              use_cache=True)
        kv = [(lay.keys, lay.values) for lay in cache.layers]
        if len(kv) != self.n_layers or any(k.shape[-2] != len(ids) for k, _ in kv):
            raise HookError(f"the key/value cache of the base pass holds {len(kv)} layers, not {self.n_layers} "
                            f"full ones of {len(ids)} positions")
        return {"ids": ids, "resid_pre": resid_pre, "kv": kv}

    def _resume_cache(self, base, n_rows: int, start_layer: int, start_pos: int):
        """Keys/values of the positions before ``start_pos`` (unchanged by any edit), from the base pass."""
        from transformers import DynamicCache

        if start_pos == 0:
            return None
        cache = DynamicCache()
        for i, (k, v) in enumerate(base["kv"]):
            k, v = k[:, :, :start_pos], v[:, :, :start_pos]
            if i >= start_layer:
                k, v = k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1)
            cache.update(k, v, i)
        return cache

    @contextmanager
    def _blocks_from(self, start_layer: int):
        """The model runs only blocks ``start_layer`` on: the earlier ones are swapped for :class:`~.hooks.Skip`
        (each block keeps its own layer index, which is what the key/value cache is indexed by)."""
        parent_path, _, attr = self.spec.blocks.rpartition(".")
        parent = _get(self.model, parent_path) if parent_path else self.model
        skip = Skip()
        setattr(parent, attr, torch.nn.ModuleList([skip] * start_layer + list(self.blocks)[start_layer:]))
        try:
            yield
        finally:
            setattr(parent, attr, self.blocks)

    def forward_from(self, base, n_rows, edits, start_layer=0, start_pos=0, abort=None, keep=None):
        ids, store = base["ids"], {}

        def expand(_h):  # the pass starts here, from the base pass's residual stream; one copy per row
            h = base["resid_pre"][start_layer][:, start_pos:]
            return h.expand(n_rows, *h.shape[1:]).clone()
        with Hooks() as hooks, torch.inference_mode():
            if abort is not None:
                self._abort_hooks(abort, self.blocks[start_layer:], hooks)
            hooks.add(self.blocks[start_layer], "pre", expand, f"resid_pre.{start_layer} (the pass's start)")
            if keep is not None:
                self._mlp_only_at(self.n_layers - 1, [p - start_pos for p in keep], hooks)
            for edit in edits:
                self._edit_hook(edit, start_pos, hooks)
            cache = self._resume_cache(base, n_rows, start_layer, start_pos)
            with self._blocks_from(start_layer):
                return self._run_to_stop(hooks, store, input_ids=ids[None, start_pos:].to(self._device()),
                                         **{self._cache_kw: cache}, use_cache=cache is not None)

    def grad_run(self, ids, sites, objective):
        captured, store = {}, {}
        with Hooks() as hooks, torch.enable_grad():
            hooks.add(self.blocks[0], "pre", lambda h: h.detach().requires_grad_())
            for s in sites:
                for name in ("resid_pre", "attn_out") if s.name == "resid_mid" else (s.name,):
                    module, kind, view = self._site_point(s.layer, name)
                    key = f"{name}.{s.layer}"
                    if key not in captured:
                        captured[key] = None
                        hooks.add(module, kind, lambda raw, key=key, view=view: captured.update({key: (raw, view)}),
                                  key, self._where(module))
            final = self._run_to_stop(hooks, store, input_ids=ids.to(self._device()), use_cache=False)
            keys = list(captured)
            grads = torch.autograd.grad(objective(final), [captured[k][0] for k in keys], allow_unused=True)
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

    # -- the rest of a block, token by token ----------------------------------------------------
    def _norm(self, layer: int, path: str | None, x):
        return x if path is None else self._mod(layer, path)(x)

    def attn_out_of_z(self, layer, z):
        """``attn_out_norm(o_proj(z))``: the output projection, then the post-attention norm if any."""
        z = z.to(self._device(), self._dtype()).flatten(-2)
        return self._norm(layer, self.spec.attn_out_norm, self._mod(layer, self.spec.o_proj)(z))

    def attn_out_nonlinear(self):
        norm = self.spec.attn_out_norm
        return None if norm is None else (f"{self.model.config.model_type} normalises each block's attention output "
                                          f"({norm}) before adding it to the residual stream")

    def pos_embed(self, n):
        if self.spec.pos_embed is None:
            return None
        with torch.inference_mode():
            return _get(self.model, self.spec.pos_embed)(torch.arange(n, device=self._device())).float().cpu()

    def finish_block(self, layer, resid_pre, attn_out):
        """``mid + mlp_out_norm(mlp(mlp_in(x)))`` with ``mid = resid_pre + attn_out`` and ``x = mid`` (or
        ``resid_pre`` in a parallel block); the MLP sees ``[N, 1, d]`` (MoE blocks want a sequence axis)."""
        spec, dev, dt = self.spec, self._device(), self._dtype()
        resid_pre, attn_out = resid_pre.to(dev, dt), attn_out.to(dev, dt)
        mid = resid_pre + attn_out
        h = self._norm(layer, spec.mlp_in, (resid_pre if self.parallel else mid)[:, None])
        mlp_out = self._norm(layer, spec.mlp_out_norm, _first(self._mod(layer, spec.mlp)(h)))
        return mid + mlp_out[:, 0]

    # -- unembedding ----------------------------------------------------------------------------
    def _capped(self, logits):
        """The final-logit soft-cap ``c * tanh(logits / c)`` where the model has one (Gemma 2), as HF applies it."""
        c = self.softcap
        return logits if not c else torch.tanh(logits / c) * c

    def unembed_tokens(self, x, token_ids):
        emb = self.model.get_output_embeddings()
        if not isinstance(emb, torch.nn.Linear):
            return super().unembed_tokens(x, token_ids)
        idx = torch.as_tensor(list(token_ids), device=emb.weight.device)
        bias = None if emb.bias is None else emb.bias[idx]
        x = x.to(emb.weight.device, emb.weight.dtype)
        return self._capped(torch.nn.functional.linear(x, emb.weight[idx], bias))

    def final_norm(self, resid):
        return _get(self.model, self.spec.final_norm)(resid.to(self._device(), self._dtype()))

    def unembed(self, x):
        """The model's own output head: the unembedding, then the final soft-cap where there is one, so that
        ``logits_of`` (the logit lens) and patching metrics see the logits the model outputs."""
        return self._capped(self.model.get_output_embeddings()(x))

    def unembed_linear(self, x):
        return self.model.get_output_embeddings()(x)

    def logits_into(self, resid, out):
        head = self.model.get_output_embeddings()
        W = getattr(head, "weight", None)
        if type(head) is not torch.nn.Linear or W.dtype != torch.float32 or W.device != out.device:
            return super().logits_into(resid, out)
        with torch.inference_mode():
            h = self.final_norm(resid)
            if len(h) < 32:         # a few rows (the lens' first stage): W @ h.T is ~3x faster than h @ W.T
                out.copy_((W @ h.t()).t())
                if head.bias is not None:
                    out.add_(head.bias)
            elif head.bias is None:   # what F.linear computes for a 2-D input, into `out`
                torch.mm(h, W.t(), out=out)
            else:
                torch.addmm(head.bias, h, W.t(), out=out)
            if self.softcap:
                out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _device(self):
        return next(self.model.parameters()).device
