"""Direct logit attribution: how much each head, each MLP and the embedding write, directly, into one
logit (or a logit difference) at one position, through the final norm with its statistics frozen.

The final residual stream at position ``p`` is a sum of parts::

    resid_post.{L-1} = embed (+ pos_embed) + sum_l (attn_out.l + mlp_out.l)
    attn_out.l       = sum_h z.l[:, h] @ W_O[l, h] + b_O[l]

(the same in sequential and parallel blocks). The final norm ``w * P(x) / s(x) + b`` (``P`` centres for a
LayerNorm, is the identity for an RMSNorm) is linear in ``x`` once its scale ``s`` is frozen at the
value it takes on the whole residual; each part ``c`` then contributes ``(w * P(c) / s) . dW_U`` with
``dW_U = W_U[:, answer] - W_U[:, wrong]``. This is TransformerLens' ``cache.logit_attrs(stack)`` /
``cache.stack_head_results(apply_ln=True)`` on a model with its LayerNorm folded (``fold_ln=True``: ``w``
folded into ``W_U``); the parts sum to the logit difference less ``bias`` (the final norm's bias and the
unembedding bias, which belong to no component). Logits are those before any final soft-cap (Gemma 2).

The norm is read from the model's own final-norm module (:func:`final_norm_map`), never re-implemented
per architecture, and its scale at ``p`` from the module's own output on the residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.base import Run
from .checks import token_id


def needs(n_layers: int, by_source: bool = False) -> list[str]:
    """The sites :func:`direct_logit_attribution` reads (``by_source`` adds values and patterns)."""
    sites = ["resid_pre.0", f"resid_post.{n_layers - 1}"]
    for layer in range(n_layers):
        sites += [f"z.{layer}", f"attn_out.{layer}", f"mlp_out.{layer}"]
        sites += [f"v.{layer}", f"attn_pattern.{layer}"] if by_source else []
    return sites


@dataclass
class NormMap:
    """The final norm with frozen statistics: ``norm(x) = w * P(x) / scale + b`` at the residual it was
    measured on (``center``: ``P`` subtracts the mean, a LayerNorm; else an RMSNorm or no norm)."""

    center: bool
    w: np.ndarray      # [d]
    b: np.ndarray      # [d]
    scale: np.ndarray  # [n]: one per residual row given


def final_norm_map(adapter, resid: torch.Tensor) -> NormMap:
    """Measure the model's final norm from its own module (``adapter.final_norm``): its weight, bias and
    whether it centres, from probes ``k * a`` (``a`` = +-1 alternating, ``k`` = 100, so ``eps`` is
    negligible), and the scale it applies to each row of ``resid`` ``[n, d]`` from its output there
    (least squares of ``norm(x) - b`` on ``w * P(x)``). A final norm that is none of LayerNorm,
    RMSNorm or absent is refused."""
    d, k = adapter.d_model, 100.0
    a = torch.ones(d, dtype=torch.float64)
    a[1::2] = -1
    probes = torch.stack([k * a, -k * a, 2 * k * a, k * a + k])
    with torch.inference_mode():
        out = adapter.final_norm(torch.cat([probes.float(), resid.float()])).double().cpu()
    fx, fneg, f2x, fshift, y = out[0], out[1], out[2], out[3], out[4:]
    x = resid.double().cpu()
    near = lambda p, q: bool(((p - q).abs() <= 1e-2 * (1 + q.abs().max())).all())  # noqa: E731
    if not near(f2x, fx):  # not scale-invariant: no norm at all (TL normalization_type None), or refused
        if near(fx, k * a) and near(f2x, 2 * k * a):
            return NormMap(False, np.ones(d), np.zeros(d), np.ones(len(x)))
        raise ValueError("the model's final norm is neither a LayerNorm nor an RMSNorm (it is not invariant to "
                         "the residual's scale): direct logit attribution cannot freeze it into a linear map")
    center = near(fshift, fx)
    P = (lambda v: v - v.mean(-1, keepdim=True)) if center else (lambda v: v)  # noqa: E731
    b = (fx + fneg) / 2
    pa = P(k * a)
    w = (fx - b) * pa.pow(2).mean().sqrt() / pa
    u = w * P(x)
    scale = (u * u).sum(-1) / (u * (y - b)).sum(-1)
    err = (u / scale[:, None] + b - y).abs().max()
    if not bool(err <= 1e-3 * (1 + y.abs().max())):
        raise ValueError(f"the model's final norm does not act as w * P(x) / s + b on its residual (off by {err:.3g}): "
                         "direct logit attribution cannot freeze it into a linear map")
    return NormMap(center, w.numpy(), b.numpy(), scale.numpy())


@dataclass
class DLA:
    """Direct logit attribution of one prompt at one position (``position``, absolute), to the logit of
    ``answer`` (minus that of ``wrong`` when given). Every number is in logits, frozen-scale.

    ``heads`` ``[L, H]``: each head's direct contribution (None, with the reason in ``heads_note``,
    where the attention output is not linear in the heads: a post-attention norm); ``heads_by_source``
    ``[L, H, T]``: each head's contribution split over the source tokens it read (sums to ``heads``;
    None unless asked); ``attn_bias`` ``[L]``: the output projection's bias; ``attn`` and ``mlp``
    ``[L]``: whole blocks; ``embed`` (and ``pos_embed``, None without learned positions); ``bias``: the
    final norm's and the unembedding's biases. ``components`` with ``component_labels`` is TL's
    ``decompose_resid`` order (``embed``, ``pos_embed``, ``0_attn_out``, ``0_mlp_out``, ...);
    ``accumulated`` with ``accumulated_labels`` the residual stream before and inside each block
    (``0_pre``, ``0_mid``, ..., ``final_post``: cumulative sums of the components, as TL's
    ``accumulated_resid(incl_mid=True)`` through ``logit_attrs``). ``total``: the model's own logit
    (difference) there, before any soft-cap: ``components.sum() + bias``. ``scale``: the final norm's
    scale at ``position``."""

    answer: int
    wrong: int | None
    position: int
    label: str
    token_strs: list[str]
    heads: np.ndarray | None
    attn_bias: np.ndarray | None
    attn: np.ndarray
    mlp: np.ndarray
    embed: float
    pos_embed: float | None
    bias: float
    total: float
    scale: float
    heads_by_source: np.ndarray | None = None
    heads_note: str = ""
    components: np.ndarray = field(init=False)
    component_labels: list[str] = field(init=False)
    accumulated: np.ndarray = field(init=False)
    accumulated_labels: list[str] = field(init=False)

    def __post_init__(self):
        L = len(self.attn)
        labels = ["embed"] + (["pos_embed"] if self.pos_embed is not None else [])
        values = [self.embed] + ([self.pos_embed] if self.pos_embed is not None else [])
        acc, acc_labels, run = [], [], sum(values)
        for layer in range(L):
            labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
            values += [self.attn[layer], self.mlp[layer]]
            acc += [run, run + self.attn[layer]]
            acc_labels += [f"{layer}_pre", f"{layer}_mid"]
            run += self.attn[layer] + self.mlp[layer]
        self.components, self.component_labels = np.array(values, np.float64), labels
        self.accumulated, self.accumulated_labels = np.array(acc + [run], np.float64), acc_labels + ["final_post"]

    def __repr__(self) -> str:
        return (f"DLA({self.label} at position {self.position}: total={self.total:.4g}, "
                f"heads={'none' if self.heads is None else self.heads.shape})")


def _direction(adapter, like: torch.Tensor, answer: int, wrong: int | None) -> tuple[np.ndarray, float]:
    """``W_U[:, answer] - W_U[:, wrong]`` ``[d]`` and the unembedding bias difference, from the model's own
    (linear) unembedding: its gradient and its value at zero."""
    x = torch.zeros_like(like[:1]).requires_grad_(True)
    with torch.enable_grad():
        out = adapter.unembed_linear(x)[0].double()
        m = out[answer] - (out[wrong] if wrong is not None else 0)
        (g,) = torch.autograd.grad(m, x)
    return g[0].double().cpu().numpy(), float(m.detach())


def _head_directions(adapter, layer: int, v: np.ndarray) -> np.ndarray | None:
    """``W_O[layer, h] @ v`` for every head ``[H, d_head]``, from the model's own output projection
    (``attn_out_of_z``); None where the backend cannot compute it."""
    H, dh = adapter.n_heads, adapter.d_head
    z = torch.zeros(1, H, dh, requires_grad=True)
    with torch.enable_grad():
        out = adapter.attn_out_of_z(layer, z)
        if out is None:
            return None
        (g,) = torch.autograd.grad((out[0].double() * torch.as_tensor(v, device=out.device)).sum(), z)
    return g.double().numpy()[0]


def direct_logit_attribution(adapter, run: Run, answer, wrong=None, position: int = -1,
                             by_source: bool = False) -> DLA:
    """Direct logit attribution of ``run`` (which captured :func:`needs`) at token ``position`` to the
    logit of ``answer`` (a token id or one-token text), minus that of ``wrong`` when given. See :class:`DLA`.

    >>> run = adapter.run("When Mary and John went to the store, John gave a drink to",
    ...                   capture=needs(adapter.n_layers))                       # doctest: +SKIP
    >>> dla = direct_logit_attribution(adapter, run, " Mary", " John")          # doctest: +SKIP
    >>> dla.heads.shape, dla.components.sum() + dla.bias - dla.total            # doctest: +SKIP
    ((12, 12), 0.0)
    """
    L, T = adapter.n_layers, len(run.token_strs)
    if not -T <= position < T:
        raise ValueError(f"position {position} is outside the prompt's {T} tokens")
    p = position % T
    ans, wr = token_id(adapter, answer), (None if wrong is None else token_id(adapter, wrong, "wrong answer"))
    if ans == wr:
        raise ValueError("answer and wrong are the same token: their logit difference is zero")
    x = run[f"resid_post.{L - 1}"][p]
    norm = final_norm_map(adapter, x[None])
    s = float(norm.scale[0])
    with torch.inference_mode():
        like = adapter.final_norm(x[None].float())
    du, dbias = _direction(adapter, like, ans, wr)
    v = norm.w * du
    if norm.center:  # P(c) . v == c . P(v): centre the direction once
        v = v - v.mean()
    dot = lambda site: float(run[site][p].double().numpy() @ v) / s  # noqa: E731
    attn = np.array([dot(f"attn_out.{lay}") for lay in range(L)])
    mlp = np.array([dot(f"mlp_out.{lay}") for lay in range(L)])
    pe = adapter.pos_embed(T)
    pos = None if pe is None else float(pe[p].double().numpy() @ v) / s
    embed = dot("resid_pre.0") - (pos or 0.0)
    y = like.double().cpu().numpy()[0]
    total = float(y @ du) + dbias
    bias = float(norm.b @ du) + dbias

    heads = attn_bias = by_src = None
    note = adapter.attn_out_nonlinear() or ""
    if note:
        note += ": per-head attribution would not be linear, so only whole attention blocks are attributed"
    else:
        dirs = [_head_directions(adapter, lay, v / s) for lay in range(L)]
        if any(d is None for d in dirs):
            note = f"{type(adapter).__name__} cannot apply a block's output projection on its own"
        else:
            heads = np.stack([np.einsum("hd,hd->h", run[f"z.{lay}"][p].double().numpy(), g)
                              for lay, g in enumerate(dirs)])
            attn_bias = attn - heads.sum(1)
            if by_source:
                by_src = np.stack([_by_source(adapter, run, lay, p, g) for lay, g in enumerate(dirs)])
                err = np.abs(by_src.sum(-1) - heads).max()
                if err > 1e-4 * (1 + np.abs(heads).max()):
                    raise ValueError(f"z is not pattern @ v in this model (off by {err:.3g}): heads cannot be "
                                     "split by source token")
    label = _label(adapter, ans, wr)
    return DLA(ans, wr, p, label, list(run.token_strs), heads, attn_bias, attn, mlp, embed, pos, bias, total, s,
               by_src, note)


def _by_source(adapter, run: Run, layer: int, p: int, g: np.ndarray) -> np.ndarray:
    """One layer's heads split by source token ``[H, T]``: ``A[h, p, src] * (v[src, kv(h)] . g[h])``."""
    A = run[f"attn_pattern.{layer}"][:, p].double().numpy()          # [H, T]
    vals = run[f"v.{layer}"].double().numpy()                         # [T, H_kv, d_head]
    kv = np.arange(adapter.n_heads) // (adapter.n_heads // adapter.n_kv_heads)
    return A * np.einsum("thd,hd->ht", vals[:, kv], g)


def _label(adapter, ans: int, wrong: int | None) -> str:
    name = lambda i: repr(adapter.to_str_tokens([i])[0])  # noqa: E731
    return f"logit {name(ans)}" + ("" if wrong is None else f" - logit {name(wrong)}")
