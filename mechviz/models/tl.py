"""TransformerLens ``HookedTransformer`` adapter: sites map to TL hook names (:data:`sites.TL_HOOKS`)."""

from __future__ import annotations

import torch

from .base import Aborted, ModelAdapter
from .sites import TL_HOOKS, Site, SiteError


class TLAdapter(ModelAdapter):
    """Adapter for a TransformerLens ``HookedTransformer``.

    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig      # doctest: +SKIP
    >>> tl = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8,
    ...                        d_vocab=50, act_fn="gelu"))                             # doctest: +SKIP
    >>> TLAdapter(tl).run([1, 2, 3], capture=["z.0"])["z.0"].shape                  # doctest: +SKIP
    torch.Size([3, 4, 8])
    """

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

    def _hook_name(self, name: str, layer: int) -> str:
        hook = TL_HOOKS[name].format(layer=layer)
        if hook not in self.model.hook_dict:
            raise SiteError(f"site {name}.{layer} does not exist in this TransformerLens model "
                            f"({self.name}; attn_only={self.model.cfg.attn_only})")
        return hook

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        store: dict[str, torch.Tensor] = {}
        hooks = []
        for site, edit in (edits or {}).items():
            def fn(x, hook, edit=edit):
                return edit(x[0].clone()).to(x.dtype)[None]
            hooks.append((self._hook_name(site.name, site.layer), fn))

        def keep(key):
            def fn(x, hook):
                store[key] = x.detach()[0].float().cpu()
            return fn

        for s in sites:
            if s.name == "resid_mid" and self.parallel:  # TL has no resid_mid hook in parallel blocks
                hooks.append((self._hook_name("resid_pre", s.layer), keep(f"_resid_pre.{s.layer}")))
                hooks.append((self._hook_name("attn_out", s.layer), keep(f"_attn_out.{s.layer}")))
            else:
                hooks.append((self._hook_name(s.name, s.layer), keep(str(s))))
        if abort is not None:
            def check(x, hook):
                if abort():
                    raise Aborted()
            hooks += [(TL_HOOKS["resid_pre"].format(layer=layer), check) for layer in range(self.n_layers)]
        logits = self.model.run_with_hooks(ids[None].to(self.model.cfg.device), fwd_hooks=hooks)
        for s in sites:
            if s.name == "resid_mid" and self.parallel:
                store[str(s)] = store[f"_resid_pre.{s.layer}"] + store[f"_attn_out.{s.layer}"]
        missing = [str(s) for s in sites if str(s) not in store]
        if missing:  # the hook exists but this model never calls it (e.g. mlp_out in an attn-only model)
            raise SiteError(f"site {missing[0]} does not exist in this TransformerLens model "
                            f"({self.name}; attn_only={self.model.cfg.attn_only}): its hook never fired")
        return logits[0].detach().float().cpu(), {str(s): store[str(s)] for s in sites}

    def final_norm(self, resid):
        ln = getattr(self.model, "ln_final", None)
        resid = resid.to(self.model.cfg.device)
        return resid if ln is None else ln(resid)

    def unembed(self, x):
        return self.model.unembed(x)
