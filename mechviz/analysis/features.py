"""SAE features of a prompt: activations over tokens, top features, logit effects, and steering.

Steering edits the SAE's site in one forward pass (``adapter.run(..., edits=...)``): at each position
the residual (or whatever the site holds) gets ``(target - act) * d_f``, where ``act`` is the
feature's activation there, ``target`` the clamp ``value`` or ``scale * act``, and ``d_f`` the
feature's decoder direction (times the token's input scale for SAEs that normalise their inputs,
i.e. exactly ``decode(f') - decode(f)``). The SAE's reconstruction error is kept (only the feature's own share
changes), as in SAELens' steering with the error term, so ``scale=1`` is exactly the unsteered model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import Run
from ..saes.load import check_sae_fits
from .checks import positive_int
from ..saes.sae import SAE, SAEError


def needs(sae: SAE) -> list[str]:
    """The sites :func:`feature_summary` reads: the input site (and a transcoder's output site)."""
    return [sae.site] + ([sae.site_out] if sae.is_transcoder else [])


def feature_activations(sae: SAE, run: Run) -> np.ndarray:
    """SAE feature activations of every token, float32 ``[T, d_sae]`` (``run`` must hold ``sae.site``)."""
    return encode(sae, run)[1].float().cpu().numpy()


def encode(sae: SAE, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs [T, d_in], feature activations [T, d_sae])`` of ``sae`` on ``run``."""
    if not sae.site:
        raise SAEError("this SAE is not attached to a site: load_sae(..., site='resid_post.0')")
    x = run[sae.site].reshape(len(run.tokens), -1)
    return x, sae.encode(x)


def top_features(acts: np.ndarray, n: int = 10, by: str = "max") -> np.ndarray:
    """Ids (int64 ``[min(n, d_sae)]``) of the features with the largest ``by`` = ``"max"`` or ``"mean"``
    activation over the tokens of ``acts [T, d_sae]``, largest first (ties: lower id first).
    ``acts[:, top_features(acts, n)]`` is the tokens x top-features heatmap."""
    acts = np.asarray(acts)
    score = {"max": acts.max(0), "mean": acts.mean(0)}.get(by) if acts.size else np.zeros(acts.shape[-1])
    if score is None:
        raise ValueError(f"by must be 'max' or 'mean', got {by!r}")
    order = np.lexsort((np.arange(score.size), -score))
    return order[: max(0, min(int(n), score.size))].astype(np.int64)


@dataclass
class LogitEffects:
    """A feature's direct effect on the output logits: ``values [vocab]`` float32 and the ``k`` most
    promoted (largest first) and suppressed (most negative first) token ids, values and text."""

    feature: int
    values: np.ndarray
    promoted_ids: np.ndarray
    promoted_values: np.ndarray
    suppressed_ids: np.ndarray
    suppressed_values: np.ndarray
    promoted_strs: list[str]
    suppressed_strs: list[str]
    norm: bool

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in ("values", "promoted_ids", "promoted_values",
                                              "suppressed_ids", "suppressed_values")}


def _like_model(adapter, x: torch.Tensor) -> torch.Tensor:
    model = getattr(adapter, "model", None)
    p = next(model.parameters(), None) if model is not None else None
    return x if p is None else x.to(p.device, p.dtype)


def feature_logit_effects(sae: SAE, adapter, feature: int, k: int = 10, norm: bool = False) -> LogitEffects:
    """The tokens a feature promotes and suppresses: its decoder direction through the unembedding.

    ``norm=False`` (default, the standard "logit weights" of sae_vis / Neuronpedia): ``d_f @ W_U``,
    the unembedding's weights only (its bias cancels: ``unembed(d_f) - unembed(0)``); no final norm.
    On a TransformerLens model loaded with ``fold_ln=True``, ``W_U`` carries the final norm's gain
    (and centring), so values then differ from the HF model by that gain. ``norm=True``: the
    direction first goes through the model's final norm as if it were the whole residual,
    ``final_norm(d_f) - final_norm(0)`` (the gain, centring for LayerNorm, and a positive scale), i.e.
    the logit lens of ``d_f``: what a large clamp of the feature at the last layer tends to.
    Only for SAEs on ``d_model``-wide sites (residual, attn_out, mlp_out).
    """
    site = check_sae_fits(sae, adapter, allow_model_mismatch=True)
    if sae.d_in != adapter.d_model:
        raise SAEError(f"logit effects need an SAE on a d_model-wide site; {site} is {sae.d_in} wide")
    if not 0 <= int(feature) < sae.d_sae:
        raise IndexError(f"feature {feature} out of range: the SAE has {sae.d_sae} features")
    d = sae.directions()[int(feature)].float()
    with torch.inference_mode():
        x = _like_model(adapter, torch.stack([d, torch.zeros_like(d)]))
        if norm:
            x = adapter.final_norm(x)
        out = adapter.unembed_linear(x).float().cpu()
    values = (out[0] - out[1]).numpy()
    k = max(0, min(int(k), values.size))
    up = np.argsort(-values, kind="stable")[:k]
    down = np.argsort(values, kind="stable")[:k]
    strs = adapter.to_str_tokens(torch.from_numpy(np.concatenate([up, down])))
    return LogitEffects(feature=int(feature), values=values, promoted_ids=up, promoted_values=values[up],
                        suppressed_ids=down, suppressed_values=values[down], promoted_strs=strs[:k],
                        suppressed_strs=strs[k:], norm=norm)


def steering_edit(sae: SAE, feature: int, value=None, scale: float | None = None, positions=None):
    """The edit function (for ``adapter.run(edits={sae.site: fn})``) that clamps feature
    ``feature`` to ``value`` (a number, or one per token ``[T]``) or scales it by ``scale``, at every
    position or only at ``positions`` (indices or a boolean mask ``[T]``)."""
    if (value is None) == (scale is None):
        raise ValueError("give exactly one of value= (clamp the feature) or scale= (multiply it)")
    if not 0 <= int(feature) < sae.d_sae:
        raise IndexError(f"feature {feature} out of range: the SAE has {sae.d_sae} features")

    def target(act: torch.Tensor) -> torch.Tensor:
        if value is None:
            return act * float(scale)
        v = torch.as_tensor(np.asarray(value, dtype=np.float32), device=act.device).to(act.dtype)
        return (v.expand(len(act)) if v.ndim == 0 else v.reshape(len(act)))[:, None]

    def mask(T: int, device) -> torch.Tensor:
        m = torch.zeros(T, dtype=torch.bool, device=device)
        m[torch.as_tensor(np.asarray(positions), device=device)] = True
        return m

    return feature_edit(sae, [int(feature)], target, None if positions is None else mask)


def feature_edit(sae: SAE, features, target, mask=None):
    """The one steering arithmetic (single features here, several in
    :func:`~mechviz.analysis.generation.steering_edits`): an edit of ``sae.site`` that encodes ``x`` once,
    takes ``act [T, F]`` of ``features``, and returns ``x + sum_f (target(act) - act)[:, f] d_f * output_scale(x)``
    (in ``features`` order; positions where ``mask(T, device)`` is False unchanged)."""
    if sae.is_transcoder:
        raise SAEError(f"steering edits one site; a {sae.kind} reads {sae.site} and writes {sae.site_out}")
    feats = [int(f) for f in features]
    moved: dict = {}

    def edit(x: torch.Tensor) -> torch.Tensor:
        s = moved.get(x.device)
        if s is None:
            s = moved[x.device] = sae if sae.W_enc.device == x.device else sae.to(device=x.device)
        T = x.shape[0]
        flat = x.reshape(T, -1).to(s.W_enc.dtype)
        act = s.encode(flat)[:, torch.tensor(feats, device=x.device)]                  # [T, F]
        delta = target(act) - act
        if mask is not None:
            delta = torch.where(mask(T, x.device)[:, None], delta, torch.zeros_like(delta))
        change = sum(delta[:, i, None] * s.directions()[f] for i, f in enumerate(feats))
        out = flat + change * s.output_scale(flat)
        return out.reshape(x.shape).to(x.dtype)

    return edit


def steer(adapter, sae: SAE, prompt, feature: int, value=None, scale: float | None = None, *,
          positions=None, capture=(), allow_model_mismatch: bool = False) -> Run:
    """One forward pass of ``prompt`` with SAE feature ``feature`` clamped to ``value`` or scaled by
    ``scale`` at the SAE's site (see :func:`steering_edit`); returns the steered :class:`Run`
    (its ``logits`` give the new next-token distribution; pass ``capture=logit_lens.needs(L)`` to
    see the steered logit lens). Sites captured at or after the SAE's site show steered values.

    >>> run = steer(adapter, sae, "The cat sat on the", feature=12, value=20.0,
    ...             capture=logit_lens.needs(adapter.n_layers))                    # doctest: +SKIP
    """
    site = check_sae_fits(sae, adapter, allow_model_mismatch=allow_model_mismatch)
    edit = steering_edit(sae, feature, value=value, scale=scale, positions=positions)
    return adapter.run(prompt, capture=capture, edits={site: edit})


def next_token_probs(run: Run, position: int = -1) -> np.ndarray:
    """The model's next-token distribution at ``position`` (default: the last token), float32 ``[vocab]``."""
    return torch.softmax(run.logits[position].float(), dim=-1).numpy()


@dataclass
class FeatureSummary:
    """What the feature view shows for one prompt: the ``features`` (int64 ``[F]``: the top ``n``
    by max activation, then any extra ones asked for), their activations ``acts`` float32 ``[T, F]``
    over ``tokens``, each one's logit effects (``effect_ids`` int64 ``[F, 2, k]``, row 0 promoted,
    row 1 suppressed; ``effect_strs`` their text, ``effect_val`` float32), and the next-token
    distribution at the last position without (row 0) and with (row 1) steering: ``next_strs``
    ``[2, k]``, ``next_prob`` float32 ``[2, k]``. ``recon_error`` float32 ``[T]``: the SAE's
    relative reconstruction error ``|x - decode(encode(x))| / |x|`` at each token (a transcoder's: of its
    output site, ``|y - forward(x)| / |y|``)."""

    tokens: list[str]
    features: np.ndarray
    acts: np.ndarray
    effect_ids: np.ndarray
    effect_strs: np.ndarray
    effect_val: np.ndarray
    next_strs: np.ndarray
    next_prob: np.ndarray
    recon_error: np.ndarray
    sae_label: str
    steering: str = ""

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in ("features", "acts", "effect_ids", "effect_val", "next_prob",
                                              "recon_error")}

    def __repr__(self) -> str:
        return (f"FeatureSummary(tokens={len(self.tokens)}, features={self.features.tolist()}, "
                f"steering={self.steering or 'off'!r})")


def feature_summary(sae: SAE, adapter, run: Run, base: Run | None = None, n: int = 12, k: int = 8, extra=(),
                    steering: str = "", effects: dict | None = None, encoded=None) -> FeatureSummary:
    """The :class:`FeatureSummary` of ``run`` (which holds ``sae.site``); ``base``: the unsteered
    run when ``run`` is steered; ``extra``: feature ids to include after the top ``n`` (ids < 0 are
    skipped); ``effects``: a dict caching :func:`feature_logit_effects` by ``(feature, k)`` across
    calls (they depend only on the weights); ``encoded``: :func:`encode` of ``sae`` on ``run``, when already made."""
    n, k = positive_int(n, "n"), positive_int(k, "k")
    x, f_acts = encoded if encoded is not None else encode(sae, run)  # the activations and the error both read it
    acts = f_acts.float().cpu().numpy()
    feats = [int(f) for f in top_features(acts, n)]
    feats += [int(f) for f in dict.fromkeys(extra) if 0 <= int(f) < sae.d_sae and int(f) not in feats]
    cache = {} if effects is None else effects
    eff = []
    for f in feats:
        if (f, k) not in cache:
            cache[(f, k)] = feature_logit_effects(sae, adapter, f, k=k)
        eff.append(cache[(f, k)])
    F, kk = len(feats), min(k, adapter.d_vocab)
    rows = [next_token_probs(base if base is not None else run), next_token_probs(run)]
    top = [np.argsort(-p, kind="stable")[:kk] for p in rows]
    with torch.inference_mode():
        xs = x.to(sae.W_enc.device, sae.W_enc.dtype)
        if sae.is_transcoder:   # its prediction of the output site, against what the model wrote there
            target = run[sae.site_out].reshape(len(run.tokens), -1).to(xs)
            recon = sae.decode(f_acts) + (xs @ sae.W_skip if sae.W_skip is not None else 0)
        else:
            target, recon = xs, sae.decode(f_acts, xs)
        err = ((target - recon).norm(dim=-1) / target.norm(dim=-1).clamp_min(1e-12)).float().cpu().numpy()
    return FeatureSummary(
        tokens=list(run.token_strs), features=np.asarray(feats, np.int64), acts=acts[:, feats],
        effect_ids=np.array([[e.promoted_ids, e.suppressed_ids] for e in eff], np.int64).reshape(F, 2, kk),
        effect_strs=np.array([[e.promoted_strs, e.suppressed_strs] for e in eff], dtype=object).reshape(F, 2, kk),
        effect_val=np.array([[e.promoted_values, e.suppressed_values] for e in eff], np.float32).reshape(F, 2, kk),
        next_strs=np.array([adapter.to_str_tokens(torch.from_numpy(t)) for t in top], dtype=object),
        next_prob=np.stack([p[t] for p, t in zip(rows, top)]).astype(np.float32),
        recon_error=err, sae_label=_label(sae), steering=steering)


def _label(sae: SAE) -> str:
    """How a view names a dictionary: site(s), architecture, kind, width."""
    where = f"{sae.site} -> {sae.site_out}" if sae.is_transcoder else sae.site
    kind = f" {sae.kind.replace('_', ' ')}" if sae.is_transcoder else ""
    return f"{where} · {sae.architecture}{kind} · {sae.d_sae} features"
