"""The local replacement model of one prompt, for any architecture mechviz maps (:mod:`mechviz.models.archs`).

A copy of the HF model (float64 by default) is run with hooks placed from the adapter's
:class:`~mechviz.models.archs.ArchSpec`, never from the architecture's name:

* the residual stream entering block 0 (``resid_pre.0``: token embedding, plus positions or Gemma's
  ``sqrt(d)`` scale, whatever the model does) is replaced by a given tensor ``emb``;
* attention goes through one registered attention function (transformers' ``AttentionInterface``) that
  calls the model's own eager attention on the recording run and, frozen, applies the recorded patterns
  to the live values (queries and keys frozen; per-head mask on the value/output path for edge heads);
* every norm outside the attention modules (pre-norms, sandwich post-attention norms, the final norm) has
  its scale frozen: its form (LayerNorm, RMSNorm ``w * x / rms``, Gemma's ``(1 + w) * x / rms``) is
  identified on the recording run by recomputing the module's own output (a form that does not match is
  refused, naming the module);
* each MLP branch's output (the ``mlp_out`` site: after any post-norm) is replaced by what a callback
  returns from the branch's input (``mlp_in``): a fixed tensor (the linear replacement) or the transcoder
  recomputed (interventions);
* logits are read from the unembedding's output (before any final soft-cap) at the last position.
"""

from __future__ import annotations

import copy
import sys
import weakref

import torch

_NAME = "mechviz_graph"
_ACTIVE = weakref.WeakValueDictionary()  # id(model copy) -> its Replacement (the attention function's dispatch)


def _get(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: the model's eager attention (recording, unfrozen) or frozen patterns."""
    rep = _ACTIVE[module._mechviz_owner]
    l = rep._layer_of[id(module)]  # noqa: E741
    if rep._mode in ("record", "free"):
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise NotImplementedError(f"attribution graphs need {type(module).__name__}'s eager attention function")
        out, w = eager(module, query, key, value, attention_mask, **kwargs)
        if rep._mode == "record":
            rep.A[l] = w.detach()[0]
        return out, w
    A = rep.A[l]
    v = value.repeat_interleave(A.shape[0] // value.shape[1], dim=1)                      # [B, H, T, dh]
    z = A @ v
    if rep._head_mask is not None:
        z = z * rep._head_mask[:, l, :, None, None]
    return z.transpose(1, 2).contiguous(), A


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(_NAME, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_NAME, eager_mask)


def _norm_form(mod, x, y):
    """``(kind, weight, bias, scale [T, 1], correction)`` of a norm module from its input and output on the recording
    run. ``correction``: the module's output minus the formula's (HF's RMSNorms compute in float32 even in a
    float64 model: ~1e-7), a constant added so the frozen norm passes exactly through the real run."""
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    eps = getattr(mod, "eps", getattr(mod, "variance_epsilon", None))
    if eps is None:
        raise NotImplementedError(f"norm module {type(mod).__name__} has no eps: attribution graphs cannot "
                                  "freeze its scale")
    w1 = 1 if w is None else w
    b1 = 0 if b is None else b
    xc = x - x.mean(-1, keepdim=True)
    s_ln = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    s_rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    tol = 1e-6 if x.dtype == torch.float64 else 1e-3
    cands = [("layer", w1, b1, s_ln, xc / s_ln * w1 + b1), ("rms", w1, 0, s_rms, x / s_rms * w1)]
    if w is not None:
        cands.append(("rms", 1 + w, 0, s_rms, x / s_rms * (1 + w)))
    for kind, ww, bb, s, yc in cands:
        if (yc - y).abs().max() <= tol * (1 + y.abs().max()):
            return kind, ww, bb, s.detach(), (y - yc).detach()[0]
    raise NotImplementedError(f"norm module {type(mod).__name__} is not a LayerNorm, an RMSNorm (w * x / rms) or "
                              "Gemma's (1 + w) RMSNorm: attribution graphs cannot freeze its scale")


class Replacement:
    """The replacement model of ``ids`` on ``adapter``'s model (a private copy in ``dtype``). After construction,
    ``emb [T, d]``, ``mlp_in``/``mlp_out [L, T, d]`` (the real run's), ``logits [V]`` (last position, output:
    soft-cap included) and ``A[l] [H, T, T]`` hold the recording run. :meth:`run` is the frozen linear model,
    :meth:`forward` the model with any MLP replacement, frozen or not."""

    def __init__(self, adapter, ids: torch.Tensor, dtype=torch.float64):
        spec = adapter.spec
        if spec.router:
            raise NotImplementedError(f"attribution graphs replace each dense MLP by a transcoder; model_type "
                                      f"{adapter.model.config.model_type!r} has mixture-of-experts blocks")
        _register()
        m = copy.deepcopy(adapter.model).to(dtype).eval().requires_grad_(False)
        m.config._attn_implementation = _NAME
        for c in (getattr(m.config, "text_config", None),):
            if c is not None:
                c._attn_implementation = _NAME
        self.model, self.spec, self.ids = m, spec, ids.reshape(-1).cpu()
        self.blocks = list(_get(m, spec.blocks))
        self.n_layers = len(self.blocks)
        self.n_heads = adapter.n_heads
        self.A: list = [None] * self.n_layers
        self._layer_of = {}
        self._mode, self._head_mask, self._emb, self._mlp = "record", None, None, None
        self._mi: dict[int, torch.Tensor] = {}
        self._rec: dict = {}
        self._norms: dict[int, tuple] = {}
        for l, blk in enumerate(self.blocks):  # noqa: E741
            attn = _get(blk, spec.attn)
            attn._mechviz_owner = id(m)
            self._layer_of[id(attn)] = l
            _get(blk, spec.mlp).register_forward_pre_hook(self._mlp_in_hook(l))
            _get(blk, spec.mlp_out_norm or spec.mlp).register_forward_hook(self._mlp_out_hook(l))
            skip = {id(_get(blk, p)) for p in (spec.mlp_out_norm,) if p}
            for name, mod in blk.named_modules():
                inside_attn = name == spec.attn or name.startswith(spec.attn + ".")
                if "norm" in type(mod).__name__.lower() and not inside_attn and id(mod) not in skip:
                    mod.register_forward_hook(self._norm_hook(f"{spec.blocks}.{l}.{name}"))
        _get(m, spec.final_norm).register_forward_hook(self._norm_hook(spec.final_norm))
        self.blocks[0].register_forward_pre_hook(self._emb_hook, with_kwargs=True)
        m.get_output_embeddings().register_forward_hook(self._logits_hook)
        _ACTIVE[id(m)] = self
        with torch.no_grad():
            out = m(input_ids=self.ids[None], use_cache=False, logits_to_keep=1)
        self.logits = out.logits[0, -1].detach()
        self.emb = self._rec["emb"]
        self.mlp_in = torch.stack([self._rec[f"mlp_in.{l}"] for l in range(self.n_layers)])
        self.mlp_out = torch.stack([self._rec[f"mlp_out.{l}"] for l in range(self.n_layers)])
        self._pre_cap = self._rec["logits"]
        if any(a is None for a in self.A):
            raise NotImplementedError("attribution graphs could not record every layer's attention pattern")

    # hooks -------------------------------------------------------------------------------------------
    def _emb_hook(self, mod, args, kwargs):
        if self._mode == "record":
            x = args[0] if args else kwargs["hidden_states"]
            self._rec["emb"] = x.detach()[0]
            return None
        if args:
            return (self._emb,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._emb}

    def _mlp_in_hook(self, l):
        def hook(mod, args):
            self._mi[l] = args[0]
        return hook

    def _mlp_out_hook(self, l):
        def hook(mod, args, out):
            if self._mode == "record":
                self._rec[f"mlp_in.{l}"] = self._mi[l].detach()[0]
                self._rec[f"mlp_out.{l}"] = (out[0] if isinstance(out, tuple) else out).detach()[0]
                return None
            return self._mlp(l, self._mi[l])
        return hook

    def _norm_hook(self, key):
        def hook(mod, args, out):
            x = args[0]
            if self._mode == "record":
                if key in self._rec:
                    raise NotImplementedError(f"norm {key} runs twice per forward pass: attribution graphs "
                                              "cannot freeze its scale")
                self._rec[key] = True
                self._norms[key] = _norm_form(mod, x.detach(), out.detach())
                return None
            if self._mode == "free":
                return None
            kind, w, b, s, corr = self._norms[key]
            return ((x - x.mean(-1, keepdim=True)) if kind == "layer" else x) / s[0] * w + b + corr
        return hook

    def _logits_hook(self, mod, args, out):
        self._rec["logits"] = out[:, -1]

    # runs --------------------------------------------------------------------------------------------
    def _call(self, emb, mlp, mode, head_mask=None):
        batched = emb.ndim == 3
        emb = emb if batched else emb[None]
        self._mode, self._emb = mode, emb
        self._mlp = mlp if batched else (lambda l, mi: mlp(l, mi[0])[None])
        self._head_mask = None if head_mask is None else (head_mask if batched else head_mask[None])
        ids = self.ids[None].expand(emb.shape[0], -1)
        try:
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            pre = self._rec.pop("logits")
            ins = torch.stack([self._mi[l] for l in range(self.n_layers)], 1)           # [B, L, T, d]
        finally:
            self._mode, self._emb, self._mlp, self._head_mask = "record-done", None, None, None
            self._mi.clear()
        pre = pre - pre.mean(-1, keepdim=True)
        res = ins, pre, out.logits[:, -1]
        return res if batched else tuple(r[0] for r in res)

    def run(self, emb: torch.Tensor, add: torch.Tensor, head_mask: torch.Tensor | None = None, skip=None):
        """The frozen linear model: ``emb [..., T, d]``, each MLP's output ``add [..., L, T, d]`` (plus
        ``mlp_in @ skip[l]`` where ``skip[l]`` is a skip transcoder's ``W_skip``), ``head_mask [..., L, H]``.
        Returns (mlp_in ``[..., L, T, d]``, demeaned last-position logits before any soft-cap ``[..., V]``)."""
        skip = skip if skip is not None else getattr(self, "skip", None)

        def mlp(l, mi):  # noqa: E741
            y = add[..., l, :, :]
            return y + mi @ skip[l] if skip is not None and skip[l] is not None else y

        ins, pre, _ = self._call(emb, mlp, "frozen", head_mask)
        return ins, pre

    def forward(self, emb: torch.Tensor, mlp, freeze: bool = True):
        """The model on ``emb [T, d]`` with each MLP's output ``mlp(layer, mlp_in [T, d]) -> [T, d]`` (any
        function), attention patterns and norm scales frozen (``freeze``) or recomputed. Returns (mlp_in
        ``[L, T, d]``, demeaned last logits before any soft-cap ``[V]``, output logits ``[V]``)."""
        return self._call(emb, mlp, "frozen" if freeze else "free")
