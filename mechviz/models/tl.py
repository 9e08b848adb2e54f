"""TransformerLens adapters: :class:`HookNameAdapter`, what the TL 3 and TL 4 adapters share (every site is a
named hook point), and :class:`TLAdapter` for a TL 3.x ``HookedTransformer`` (hook names :data:`sites.TL_HOOKS`).
The TL 4 ``TransformerBridge`` adapter is :class:`mechviz.models.tl_bridge.TLBridgeAdapter`.

TransformerLens is never imported at module level here: it is an optional dependency.
"""

from __future__ import annotations

import torch

from .base import Aborted, ModelAdapter, StopForward
from .sites import TL_HOOKS, Site, SiteError, parse_sites


class HookNameAdapter(ModelAdapter):
    """A model whose sites are named hook points, read and edited through ``run_with_hooks`` and the
    ``hooks()`` context (TransformerLens' ``HookedTransformer`` and ``TransformerBridge`` alike).

    Subclasses set :attr:`HOOKS` (site -> hook-name template) and implement :meth:`_run_to_final`,
    :meth:`patch_base`, :meth:`forward_from`, :meth:`attn_out_of_z` and :meth:`_plain_blocks`.
    ``resid_mid`` of a parallel block (no hook carries it) is derived as ``resid_pre + attn_out``.
    """

    HOOKS: dict[str, str] = TL_HOOKS
    #: whether the resid_mid hook carries the residual stream itself (so editing it changes resid_post),
    #: rather than only what the MLP reads; where it does not, resid_mid is edited through attn_out
    #: and differentiated as resid_pre + attn_out
    MID_HOOK_IS_RESIDUAL = True

    def __init__(self, model, name: str | None = None):
        cfg = model.cfg
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.name = name or cfg.model_name
        self.n_layers, self.n_heads, self.d_model = cfg.n_layers, cfg.n_heads, cfg.d_model
        self.n_kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        self.d_head, self.d_vocab, self.max_len = cfg.d_head, cfg.d_vocab, cfg.n_ctx
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self.prepend_bos = bool(getattr(cfg, "default_prepend_bos", True))
        self._hook_points = set(model.hook_dict)  # a TransformerBridge builds hook_dict on every access
        # resid_mid set by changing attn_out so that resid_pre + attn_out takes the value (see base.Edit)
        self._mid_via_attn = self.parallel or not self.MID_HOOK_IS_RESIDUAL

    def _device(self):
        return self.model.cfg.device

    def _dtype(self):
        return self.model.cfg.dtype

    def _no_site(self, what: str) -> SiteError:
        return SiteError(f"site {what} does not exist in this TransformerLens model "
                         f"({self.name}; attn_only={self.model.cfg.attn_only})")

    def _hook_name(self, name: str, layer: int) -> str:
        if name not in self.HOOKS:
            raise SiteError(f"site {name}.{layer} is not read from {type(self).__name__} models: TransformerLens 3 has no "
                            "hook for the MLP's input after its norm's weights (ln2.hook_normalized comes before "
                            "them); load the model with HuggingFace (mechviz.Lab(hf_model, tokenizer)) to read it")
        hook = self.HOOKS[name].format(layer=layer)
        if name == "resid_mid" and self.parallel:
            raise SiteError(f"site resid_mid.{layer} has no hook in a parallel block ({self.name}): both norms read "
                            "resid_pre; it is read as resid_pre + attn_out and set through attn_out")
        if hook not in self._hook_points:
            raise self._no_site(f"{name}.{layer}")
        return hook

    def _abort_hooks(self, abort, layers) -> list:
        def check(x, hook):
            if abort():
                raise Aborted()
        return [(self._hook_name("resid_pre", lay), check) for lay in layers]

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        store: dict[str, torch.Tensor] = {}
        hooks = []
        for site, edit in (edits or {}).items():
            if site.name == "resid_mid" and self._mid_via_attn:
                stash = {}
                hooks.append((self._hook_name("resid_pre", site.layer), lambda x, hook, stash=stash: stash.update(h=x)))

                def on_attn(x, hook, edit=edit, stash=stash):
                    mid = edit((stash["h"] + x)[0].clone()).to(x.dtype)[None]
                    return mid - stash["h"]
                hooks.append((self._hook_name("attn_out", site.layer), on_attn))
                continue

            def fn(x, hook, edit=edit):
                return edit(x[0].clone()).to(x.dtype)[None]
            hooks.append((self._hook_name(site.name, site.layer), fn))

        def keep(key):
            def fn(x, hook):
                store[key] = x.detach()[0].float().cpu()
            return fn

        for s in sites:
            if s.name == "resid_mid" and self.parallel:  # no resid_mid hook in parallel blocks
                hooks.append((self._hook_name("resid_pre", s.layer), keep(f"_resid_pre.{s.layer}")))
                hooks.append((self._hook_name("attn_out", s.layer), keep(f"_attn_out.{s.layer}")))
            else:
                hooks.append((self._hook_name(s.name, s.layer), keep(str(s))))
        if abort is not None:
            hooks += self._abort_hooks(abort, range(self.n_layers))
        logits = self.model.run_with_hooks(ids[None].to(self._device()), fwd_hooks=hooks)
        for s in sites:
            if s.name == "resid_mid" and self.parallel and f"_resid_pre.{s.layer}" in store:
                store[str(s)] = store[f"_resid_pre.{s.layer}"] + store[f"_attn_out.{s.layer}"]
        missing = [str(s) for s in sites if str(s) not in store]
        if missing:  # the hook exists but this model never calls it (e.g. mlp_out in an attn-only model)
            raise SiteError(f"{self._no_site(missing[0])}: its hook never fired")
        return logits[0].detach().float().cpu(), {str(s): store[str(s)] for s in sites}

    def capture_batch(self, ids, site):
        (s,) = parse_sites(site, self.n_layers)
        ids = torch.as_tensor(ids).long()
        if (s.name == "resid_mid" and self.parallel) or ids.ndim != 2:
            return super().capture_batch(ids, site)
        store = {}

        def grab(x, hook):  # the site is computed: keep it and stop the pass (later blocks never run)
            store["x"] = x.detach()
            raise StopForward()
        try:
            with torch.inference_mode():
                self.model.run_with_hooks(ids.to(self._device()), fwd_hooks=[(self._hook_name(s.name, s.layer), grab)])
        except StopForward:
            pass
        if "x" not in store:
            raise SiteError(f"{self._no_site(str(s))}: its hook never fired")
        return store["x"]

    def final_norm(self, resid):
        ln = getattr(self.model, "ln_final", None)
        resid = resid.to(self._device(), self._dtype())
        return resid if ln is None else ln(resid)

    def unembed(self, x):
        return self.model.unembed(x)

    def unembed_tokens(self, x, token_ids):
        u = self.model.unembed
        W_U, b_U = u.W_U, u.b_U
        idx = torch.as_tensor(list(token_ids), device=W_U.device)
        return x.to(W_U.device, W_U.dtype) @ W_U[:, idx] + b_U[idx]

    # -- batched patched passes ---------------------------------------------------------------
    def _edit_hooks(self, edits, start_pos):
        hooks = []
        for edit in edits:
            name, layer = edit.site.name, edit.site.layer
            if name == "resid_mid" and self._mid_via_attn:  # edit attn_out instead
                stash = {}
                hooks.append((self._hook_name("resid_pre", layer), lambda x, hook, stash=stash: stash.update(h=x)))
                def on_attn(x, hook, e=edit, stash=stash):
                    e.apply_resid_mid(x, stash["h"], start_pos)
                    return x
                hooks.append((self._hook_name("attn_out", layer), on_attn))
            else:
                def fn(x, hook, e=edit):
                    e.apply(x, start_pos)
                    return x
                hooks.append((self._hook_name(name, layer), fn))
        return hooks

    def _run_to_final(self, x, hooks: list, **kwargs) -> torch.Tensor:
        """Run ``x`` (token ids ``[N, T]``, or with ``start_at_layer`` the residual entering that block)
        with ``hooks`` and return the residual stream after the last block ``[N, T, d]``."""
        raise NotImplementedError

    def grad_run(self, ids, sites, objective):
        captured, hooks = {}, [(self._hook_name("resid_pre", 0), lambda x, hook: x.detach().requires_grad_())]

        def capture(key):
            def fn(x, hook):
                captured[key] = x
                return x  # what runs on: a TL 4 hook sees a reshaped view, and the pass uses only what it returns
            return fn
        for s in sites:
            derived = s.name == "resid_mid" and self._mid_via_attn
            for name in ("resid_pre", "attn_out") if derived else (s.name,):
                hooks.append((self._hook_name(name, s.layer), capture(f"{name}.{s.layer}")))
        with torch.enable_grad():
            final = self._run_to_final(ids.to(self._device()), hooks)
            keys = list(captured)
            grads = torch.autograd.grad(objective(final), [captured[k] for k in keys], allow_unused=True)
        out = {}
        for key, g in zip(keys, grads):
            x = captured[key].detach()
            out[key] = (x.float().cpu(), (torch.zeros_like(x) if g is None else g).float().cpu())
        for s in sites:
            if str(s) not in out:  # resid_mid read as resid_pre + attn_out
                pre, attn = out[f"resid_pre.{s.layer}"], out[f"attn_out.{s.layer}"]
                out[str(s)] = (pre[0] + attn[0], attn[1])
        return {str(s): out[str(s)] for s in sites}

    def attn_out_nonlinear(self):
        if getattr(self.model.cfg, "use_normalization_before_and_after", False):
            return f"{self.name} normalises each block's attention output before adding it to the residual stream"
        return None

    def _plain_blocks(self) -> bool:
        """Whether every block is a pre-norm block with an MLP, as :meth:`finish_block` computes it."""
        return False

    def finish_block(self, layer, resid_pre, attn_out):
        if not self._plain_blocks():
            return None
        block, dev, dt = self.model.blocks[layer], self._device(), self._dtype()
        # the blocks' modules want [batch, pos, d]: one position per row
        resid_pre, attn_out = resid_pre.to(dev, dt)[:, None], attn_out.to(dev, dt)[:, None]
        mid = resid_pre + attn_out
        mlp_out = block.mlp(block.ln2(resid_pre if self.parallel else mid))
        return (mid + mlp_out)[:, 0]


class TLAdapter(HookNameAdapter):
    """Adapter for a TransformerLens 3.x ``HookedTransformer``.

    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig      # doctest: +SKIP
    >>> tl = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8,
    ...                        d_vocab=50, act_fn="gelu"))                             # doctest: +SKIP
    >>> TLAdapter(tl).run([1, 2, 3], capture=["z.0"])["z.0"].shape                  # doctest: +SKIP
    torch.Size([3, 4, 8])
    """

    HOOKS = TL_HOOKS

    def _run_to_final(self, x, hooks, **kwargs):
        with self.model.hooks(fwd_hooks=hooks):
            return self.model(x, stop_at_layer=self.n_layers, **kwargs)

    def patch_base(self, ids):
        keep = {self._hook_name(n, lay) for lay in range(self.n_layers) for n in ("resid_pre", "k", "v")}
        with torch.inference_mode():
            _, cache = self.model.run_with_cache(ids[None].to(self._device()), names_filter=lambda n: n in keep,
                                                 stop_at_layer=self.n_layers)
        get = lambda n, lay: cache[self._hook_name(n, lay)]  # noqa: E731
        return {"ids": ids, "resid_pre": [get("resid_pre", lay) for lay in range(self.n_layers)],
                "kv": [(get("k", lay), get("v", lay)) for lay in range(self.n_layers)]}

    def forward_from(self, base, n_rows, edits, start_layer=0, start_pos=0, abort=None, keep=None):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        resid = base["resid_pre"][start_layer][:, start_pos:]
        resid = resid.expand(n_rows, *resid.shape[1:]).clone()
        cache = None
        if start_pos > 0:  # keys/values of the unchanged positions come from the base pass
            cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, n_rows)
            for i in range(start_layer, self.n_layers):
                k, v = base["kv"][i]
                cache[i].past_keys = k[:, :start_pos].expand(n_rows, -1, -1, -1)
                cache[i].past_values = v[:, :start_pos].expand(n_rows, -1, -1, -1)
        hooks = self._edit_hooks(edits, start_pos)
        if abort is not None:
            hooks += self._abort_hooks(abort, range(start_layer, self.n_layers))
        with torch.inference_mode():
            return self._run_to_final(resid, hooks, start_at_layer=start_layer, past_kv_cache=cache)

    def _plain_blocks(self) -> bool:  # pre-norm blocks with an MLP, as finish_block computes them
        cfg = self.model.cfg
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
        return not (cfg.attn_only or getattr(cfg, "use_normalization_before_and_after", False)
                    or cfg.original_architecture in POST_NORM_ARCHITECTURES)

    def pos_embed(self, n):
        if self.model.cfg.positional_embedding_type != "standard" or not hasattr(self.model, "pos_embed"):
            return None
        with torch.inference_mode():
            ids = torch.zeros(1, n, dtype=torch.long, device=self._device())
            return self.model.pos_embed(ids)[0].float().cpu()

    def attn_out_of_z(self, layer, z):
        attn = self.model.blocks[layer].attn
        if getattr(self.model.cfg, "use_attn_result", False) or not hasattr(attn, "W_O"):
            return None
        return z.to(attn.W_O.device, attn.W_O.dtype).flatten(-2) @ attn.W_O.flatten(0, 1) + attn.b_O
