"""TransformerLens 4 ``TransformerBridge`` adapter: sites map to the bridge's canonical hook names
(:data:`sites.TL4_HOOKS`), and :func:`hf_to_bridge` bridges an HF model offline.

A ``TransformerBridge`` wraps a HuggingFace model in place: bridge components (``blocks.L.attn``,
``blocks.L.mlp``, ...) replace its submodules and carry the hook points, and the HF forward still
computes (unless ``enable_compatibility_mode()`` processes the weights, activations equal the HF
model's). The bridge also answers to TransformerLens 3's hook names, as aliases
(``blocks.L.hook_resid_pre`` is the hook point ``blocks.L.hook_in``); the adapter checks at
construction that every alias it knows points where :data:`~mechviz.models.sites.TL4_HOOKS` does,
so an architecture whose layout differs is refused rather than read at the wrong place.

How each adapter method is computed:

* ``run`` (capture, edits, abort between blocks), ``grad_run``, ``final_norm``, ``unembed``,
  ``unembed_tokens``: hooks and the bridge's own ``ln_final`` / ``unembed`` (shared with the TL 3
  adapter, :class:`mechviz.models.tl.HookNameAdapter`);
* ``patch_base`` / ``forward_from``: the bridge's ``start_at_layer`` (the residual entering a
  block) and, from a later position on, HuggingFace's ``DynamicCache`` filled with the base pass's
  keys and values (``past_key_values``). TL 4 still executes the blocks before ``start_at_layer``
  (their output is discarded), so a pass costs the whole stack; the result is exact. Where there is
  no cache to resume from, every position is recomputed (exact, slower): a bridge over a module that
  is not a HuggingFace ``PreTrainedModel`` (``boot_native``), and TL 4.3 with transformers >= 5.24,
  which hands most models' attention the cache as ``cache=`` (GPT-2, Llama and Mistral do; GPT-NeoX
  still as ``layer_past=``) while TL 4.3's attention bridges read ``past_key_values=`` or
  ``layer_past=``: the bridge then ignores the cache, and :meth:`TLBridgeAdapter.patch_base` sees it
  left empty. TransformerLens 3.x's ``TransformerBridge`` has no ``start_at_layer`` (it raises):
  there every pass runs from the tokens;
* ``finish_block`` / ``attn_out_of_z`` (the token-by-token shortcut for patches after a block's
  attention): only for the architectures whose block layout has been checked against HF
  (:data:`FINISH_BLOCK_ARCHS`); for any other they return None and the patching engine takes the
  general path (a pass from the patched block, editing the site itself).

TransformerLens is an optional dependency: it is imported only when a bridge is built here.
"""

from __future__ import annotations

import copy
import warnings

import torch

from .base import StopForward, UnsupportedModelError
from .sites import TL4_HOOKS, TL_HOOKS
from .tl import HookNameAdapter
from .tl_convert import check_tokenizer, model_name

#: Bridge architectures (``cfg.architecture``) whose blocks are pre-norm ``resid_pre + attn(ln1(resid_pre))``
#: then ``+ mlp(ln2(...))``, as :meth:`TLBridgeAdapter.finish_block` computes them, checked against the HF
#: adapter in tests/test_models_tl4.py.
FINISH_BLOCK_ARCHS = frozenset({"GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM"})


def hf_to_bridge(model, tokenizer=None):
    """A TransformerLens 4 ``TransformerBridge`` over a copy of HF causal LM ``model`` (same weights, in
    eval mode, eager attention), built offline: nothing is looked up on the hub.

    ``TransformerBridge.boot_transformers(name)`` loads the model (and its tokenizer) by name; this uses
    TL 4's ``transformer_lens.model_bridge.sources.build_bridge_from_module`` on a deep copy of the model
    (the bridge replaces a model's submodules in place, so ``model`` itself stays a plain HF model),
    with the architecture named by the model's class and its own config. No weight processing is
    applied, so every hook equals the HF model's site. ``tokenizer``: its HF tokenizer, loaded from a
    folder (TransformerLens reloads it from there with ``add_bos_token=True``), or None. The bridge's
    ``cfg.model_name`` is named as :func:`~mechviz.models.tl_convert.hf_to_tl` names its copy.

    >>> from mechviz.models.tl_bridge import hf_to_bridge      # doctest: +SKIP
    >>> bridge = hf_to_bridge(hf_model, tokenizer)             # doctest: +SKIP
    """
    try:
        from transformer_lens.model_bridge.sources import build_bridge_from_module
    except ImportError as exc:
        raise ImportError("a TransformerBridge needs the optional transformer-lens>=4 package: "
                          "pip install 'transformer-lens>=4.3,<5' (in a venv without sae-lens, which pins it below 4)"
                          ) from exc
    check_tokenizer(tokenizer)
    hf = copy.deepcopy(model).eval()
    hf.set_attn_implementation("eager")
    bridge = build_bridge_from_module(hf, type(model).__name__, hf_config=hf.config, tokenizer=tokenizer,
                                      model_name=model_name(model))
    return bridge.eval()


class TLBridgeAdapter(HookNameAdapter):
    """Adapter for a TransformerLens 4 ``TransformerBridge`` (one with a local PyTorch module: not a
    vLLM/inspect ``RemoteBridge``). See the module docstring for what each method runs.

    >>> from mechviz.models.tl_bridge import TLBridgeAdapter, hf_to_bridge          # doctest: +SKIP
    >>> TLBridgeAdapter(hf_to_bridge(hf_model)).run([1, 2, 3], capture=["z.0"])     # doctest: +SKIP
    """

    HOOKS = TL4_HOOKS
    # blocks.L.ln2.hook_in is the second norm's input: the HF block adds the MLP output to its own copy of
    # the residual, so an edit there would reach the MLP only
    MID_HOOK_IS_RESIDUAL = False

    def __init__(self, model, name: str | None = None):
        super().__init__(model, name)
        self._check_aliases()
        hf = getattr(model, "original_model", None)
        self._hf_config = getattr(hf, "config", None) if _is_hf_model(hf) else None
        self._resumable = True  # the bridge can start a pass at a block (start_at_layer): TL >= 4

    def _check_aliases(self) -> None:
        """Every TL 3 alias the bridge registers must be the very hook point its TL4_HOOKS name is."""
        hooks = self.model.hook_dict
        for layer in range(self.n_layers):
            for site, alias in TL_HOOKS.items():
                old, new = alias.format(layer=layer), TL4_HOOKS[site].format(layer=layer)
                if old in hooks and hooks.get(new) is not hooks[old]:
                    found = getattr(hooks[old], "name", None)
                    raise UnsupportedModelError(
                        f"this TransformerBridge ({self.model.cfg.architecture}) puts site {site}.{layer} "
                        f"(TransformerLens alias {old}) at {found}, not at {new} where mechviz reads it "
                        "(mechviz.models.sites.TL4_HOOKS): this architecture's layout is not supported")

    def _stop_hook(self, store: dict):
        def stop(x, hook):
            store["final"] = x
            raise StopForward()
        return (self._hook_name("resid_post", self.n_layers - 1), stop)

    def _run_to_final(self, x, hooks, **kwargs):
        store: dict = {}
        with self.model.hooks(fwd_hooks=[*hooks, self._stop_hook(store)]), warnings.catch_warnings():
            # the bridge hands transformers the cache as past_key_values, which 5.24 deprecates (for cache=)
            warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
            try:
                self.model(x, **kwargs)
            except StopForward:
                pass
        return store["final"]

    def _new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self._hf_config)

    def patch_base(self, ids):
        resid_pre = {}

        def keep(layer):
            def fn(x, hook):
                resid_pre[layer] = x
            return fn
        hooks = [(self._hook_name("resid_pre", lay), keep(lay)) for lay in range(self.n_layers)]
        cache = self._new_cache() if self._hf_config is not None else None
        with torch.inference_mode():
            self._run_to_final(ids[None].to(self._device()), hooks, past_key_values=cache)
        kv = None
        # TL 4.3's attention bridges take the cache from the keyword past_key_values (or layer_past);
        # transformers >= 5.24 hands it to the blocks as cache, and the bridge then ignores it: an empty
        # cache here means a resumed pass could not see the earlier positions, so none is resumed
        if cache is not None and cache.get_seq_length() == len(ids):
            kv = [(lay.keys, lay.values) for lay in cache.layers]
        return {"ids": ids, "resid_pre": [resid_pre[lay] for lay in range(self.n_layers)], "kv": kv}

    def forward_from(self, base, n_rows, edits, start_layer=0, start_pos=0, abort=None, keep=None):
        hooks = []
        if abort is not None:
            hooks += self._abort_hooks(abort, range(start_layer, self.n_layers))
        if not self._resumable:  # every block and every position, from the tokens
            ids = base["ids"][None].expand(n_rows, -1).to(self._device())
            with torch.inference_mode():
                return self._run_to_final(ids, hooks + self._edit_hooks(edits, 0))[:, start_pos:]
        cache, skip = None, 0
        if base["kv"] is None:  # no keys/values to resume from: every position is recomputed
            start_pos, skip = 0, start_pos
        elif start_pos > 0:  # keys/values of the unchanged positions come from the base pass
            cache = self._new_cache()
            for i, (k, v) in enumerate(base["kv"]):  # every layer: TL 4 also runs the blocks before start_layer
                cache.update(k[:, :, :start_pos].expand(n_rows, -1, -1, -1),
                             v[:, :, :start_pos].expand(n_rows, -1, -1, -1), i)
        resid = base["resid_pre"][start_layer][:, start_pos:]
        resid = resid.expand(n_rows, *resid.shape[1:]).clone()
        try:
            with torch.inference_mode():
                final = self._run_to_final(resid, hooks + self._edit_hooks(edits, start_pos),
                                           start_at_layer=start_layer, past_key_values=cache)
        except NotImplementedError:  # TransformerLens 3.x's bridge has no start_at_layer (it raises up front)
            self._resumable = False
            return self.forward_from(base, n_rows, edits, start_layer, start_pos + skip, abort, keep)
        return final[:, skip:]

    def _plain_blocks(self) -> bool:
        cfg = self.model.cfg
        return cfg.architecture in FINISH_BLOCK_ARCHS and not cfg.attn_only

    def attn_out_of_z(self, layer, z):
        cfg = self.model.cfg
        if cfg.architecture not in FINISH_BLOCK_ARCHS or getattr(cfg, "use_attn_result", False):
            return None
        o = self.model.blocks[layer].attn.o  # the output projection; its input is z, [batch, pos, H * d_head]
        return o(z.to(self._device(), self._dtype()).flatten(-2)[:, None])[:, 0]


def _is_hf_model(module) -> bool:
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(module).__mro__)
