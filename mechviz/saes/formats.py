"""Turn SAELens-style weights and config into an :class:`SAE`: every architecture and kind SAELens 6
saves for inference, its input normalisations, and the checks that make a bad file fail when loading.

Config keys read (SAELens 6 ``cfg.json``, pre-6.0 flat configs, or a plain dict)::

    architecture: standard | topk | abstopk | jumprelu | gated            (kind "sae")
                  transcoder | skip_transcoder | jumprelu_transcoder | jumprelu_skip_transcoder
                  batchtopk | matryoshka_batchtopk (a training save: converted to jumprelu exactly as
                  sae_lens' save_inference_model does; their inference saves already say jumprelu)
    d_in, d_sae, d_out (transcoders), k, rescale_acts_by_decoder_norm, apply_b_dec_to_input,
    normalize_activations: none | constant_norm_rescale | layer_norm | expected_average_only_in
    metadata: model_name, hook_name, hook_name_out, hook_head_index, neuronpedia_id

Weights: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``; ``threshold``
(or ``log_threshold``) for jumprelu; ``b_gate``, ``r_mag``, ``b_mag`` for gated; ``W_skip [d_out, d_in]``
(SAELens' layout, transposed here) for skip transcoders; ``topk_threshold`` for a batchtopk training save.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..models.sites import TL4_HOOKS, TL_HOOKS
from .sae import SAE, SAEError

#: SAELens architecture -> (mechviz encoder, kind)
ARCH_MAP = {
    "standard": ("relu", "sae"), "relu": ("relu", "sae"), "topk": ("topk", "sae"), "abstopk": ("abstopk", "sae"),
    "jumprelu": ("jumprelu", "sae"), "gated": ("gated", "sae"),
    "transcoder": ("relu", "transcoder"), "skip_transcoder": ("relu", "skip_transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"), "jumprelu_skip_transcoder": ("jumprelu", "skip_transcoder"),
}
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")

_WEIGHT_KEYS = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "scaling_factor",
                "finetuning_scaling_factor", "W_skip", "b_gate", "r_mag", "b_mag", "topk_threshold"}

#: TransformerLens hook name pattern -> canonical site name, built from sites.TL_HOOKS and TL4_HOOKS (the one
#: place); TransformerLens 4 names the MLP's input ``blocks.L.mlp.hook_in``
_HOOK_PATTERNS = [(re.compile("^" + re.escape(tmpl).replace(re.escape("{layer}"), r"(\d+)") + "$"), name)
                  for hooks in (TL_HOOKS, TL4_HOOKS, {"mlp_in": "blocks.{layer}.mlp.hook_in"})
                  for name, tmpl in hooks.items()]


def hook_to_site(hook_name: str | None) -> str | None:
    """Canonical site for a TransformerLens hook name, or None if it has none.

    >>> hook_to_site("blocks.1.hook_resid_post")
    'resid_post.1'
    """
    for pattern, name in _HOOK_PATTERNS:
        m = pattern.match(hook_name or "")
        if m:
            return f"{name}.{int(m.group(1))}"
    return None


def _get(cfg: Mapping, key: str, default=None):
    """A config value: top-level first (pre-6.0 SAELens and plain dicts), then ``metadata``."""
    if cfg.get(key) is not None:
        return cfg[key]
    meta = cfg.get("metadata") or {}
    return meta.get(key, default) if isinstance(meta, Mapping) else default


def _architecture(cfg: Mapping) -> tuple[str, str, Any]:
    """``(saelens_architecture, kind, k)`` from the config, pre-6.0 ``activation_fn`` included."""
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = cfg.get("k")
    if act_fn == "topk" or (act_fn is None and arch == "topk"):
        arch = "topk" if arch in ("standard", "topk") else arch
        k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
    elif act_fn not in (None, "relu"):
        raise SAEError(f"unsupported SAE activation_fn {act_fn!r}: mechviz encodes relu, topk and jumprelu")
    if arch in BATCH_TOPK:
        return arch, "sae", k
    if arch not in ARCH_MAP:
        raise SAEError(f"unsupported SAE architecture {arch!r}: mechviz encodes {', '.join(ARCH_MAP)} "
                       f"(and {', '.join(BATCH_TOPK)} as saved for inference)")
    return arch, ARCH_MAP[arch][1], k


def _batch_topk_to_jumprelu(state: dict, cfg: Mapping, arch: str) -> dict:
    """A batchtopk training save as sae_lens' ``save_inference_model`` writes it: a JumpReLU SAE whose
    threshold is the learned global ``topk_threshold``, decoder norms folded in first when
    ``rescale_acts_by_decoder_norm``."""
    if "topk_threshold" not in state:
        raise SAEError(f"a {arch} save without topk_threshold: save it for inference with sae_lens' "
                       "save_inference_model (which writes a jumprelu SAE) and load that")
    state = dict(state)
    thr = float(state.pop("topk_threshold"))
    if cfg.get("rescale_acts_by_decoder_norm", True):
        norm = state["W_dec"].norm(dim=-1)
        state["b_enc"], state["W_dec"] = state["b_enc"] * norm, state["W_dec"] / norm[:, None]
        state["W_enc"] = state["W_enc"] * norm[None, :]
    state["threshold"] = torch.full_like(state["b_enc"], thr)
    return state


def _normalisation(cfg: Mapping, norm_scaling_factor) -> tuple[str, float | None]:
    """``(runtime normalisation, factor to fold)``."""
    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm is False:
        norm = "none"
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise SAEError("this SAE was trained on inputs scaled by a dataset-wide factor "
                           "(normalize_activations='expected_average_only_in') that is not folded into its "
                           "weights and not saved with them: pass load_sae(..., norm_scaling_factor=F), F = "
                           "sqrt(d_in) / (mean ||x|| of the training activations) (sae_lens' ActivationScaler."
                           "scaling_factor; a training checkpoint keeps it in activation_scaler.json, which "
                           "load_sae reads when it sits next to cfg.json; SAELens releases list it in "
                           "pretrained_saes.yaml as norm_scaling_factor)")
        return "none", float(norm_scaling_factor)
    if norm_scaling_factor is not None:
        raise SAEError(f"norm_scaling_factor={norm_scaling_factor} was given, but this SAE's config says "
                       f"normalize_activations={norm!r}: nothing to scale (already folded?)")
    if norm == "covariance_whitening":
        raise SAEError("this SAE expects whitened inputs (normalize_activations='covariance_whitening') and the "
                       "whitening is not folded into its weights: fold it in sae_lens with "
                       "sae.fold_activation_whitening(mean, matrix, inverse_matrix) (from the training "
                       "checkpoint's activation_whitening.safetensors) and save again")
    if norm not in ("none", "constant_norm_rescale", "layer_norm"):
        raise SAEError(f"unsupported normalize_activations {norm!r}: mechviz applies none, constant_norm_rescale, "
                       "layer_norm and (with its scaling factor) expected_average_only_in")
    return norm, None


def _check_widths(state: Mapping[str, torch.Tensor], cfg: Mapping, kind: str) -> None:
    """The config's d_in / d_sae / d_out against the weights, and the weights against each other."""
    W_enc, W_dec = state["W_enc"], state["W_dec"]
    shapes = ", ".join(f"{n} {tuple(state[n].shape)}" for n in ("W_enc", "W_dec", "b_dec", "W_skip") if n in state)
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise SAEError(f"W_enc and W_dec must be matrices ({shapes})")
    got = {"d_in": W_enc.shape[0], "d_sae": W_enc.shape[1],
           "d_out": W_dec.shape[-1] if kind != "sae" else W_enc.shape[0]}
    for dim in ("d_in", "d_sae") + (("d_out",) if kind != "sae" else ()):
        if cfg.get(dim) is not None and int(cfg[dim]) != int(got[dim]):
            raise SAEError(f"config says {dim}={cfg[dim]} but the weights are {dim}={got[dim]} ({shapes})")
    if W_dec.shape[0] != W_enc.shape[1] or (kind == "sae" and W_dec.shape[1] != W_enc.shape[0]):
        want = (got["d_sae"], got["d_out"])
        raise SAEError(f"W_dec is {tuple(W_dec.shape)} but W_enc {tuple(W_enc.shape)} needs W_dec {want} ({shapes})")


def sae_from_state_dict(state: Mapping[str, Any], cfg: Mapping[str, Any], *, site: str | None = None,
                        norm_scaling_factor: float | None = None) -> SAE:
    """Build an :class:`SAE` from SAELens-style weights and config (see the module docstring and
    :func:`mechviz.saes.load_sae`).

    >>> import torch
    >>> state = {"W_enc": torch.eye(3), "b_enc": torch.zeros(3), "W_dec": torch.eye(3), "b_dec": torch.zeros(3)}
    >>> sae_from_state_dict(state, {"architecture": "standard", "hook_name": "blocks.0.hook_resid_pre"})
    SAE(relu, d_in=3, d_sae=3, site='resid_pre.0')
    """
    cfg = dict(cfg)
    arch, kind, k = _architecture(cfg)
    norm, factor = _normalisation(cfg, norm_scaling_factor)
    for key in ("hook_head_index", "hook_head_index_out"):
        if _get(cfg, key) is not None:
            raise SAEError(f"this SAE reads or writes a single attention head ({key}={_get(cfg, key)}); mechviz "
                           "attaches SAEs to whole sites only")

    state = {k_: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)).detach() for k_, v in state.items()}
    unknown = sorted(set(state) - _WEIGHT_KEYS)
    if unknown:
        raise SAEError(f"unexpected SAE weights {unknown} for a {arch} SAE (expected W_enc, b_enc, W_dec, b_dec "
                       "and the architecture's own): refusing to guess how to use them")
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in state:
            if not torch.allclose(state[key].float(), torch.ones_like(state[key].float())):
                raise SAEError(f"this SAE has a {key} that is not all ones; fold it into W_dec first")
            del state[key]
    needed = ("W_enc", "W_dec", "b_dec") + (("b_gate", "r_mag", "b_mag") if arch == "gated" else ("b_enc",))
    missing = [n for n in needed if n not in state]
    if missing:
        raise SAEError(f"SAE weights {missing} missing for a {arch} SAE (have {sorted(state)})")
    _check_widths(state, cfg, kind)
    if arch in BATCH_TOPK:
        state, arch = _batch_topk_to_jumprelu(state, cfg, arch), "jumprelu"
    encoder = ARCH_MAP[arch][0]
    if "log_threshold" in state:
        log_thr = state.pop("log_threshold")
        state.setdefault("threshold", torch.exp(log_thr))
    if encoder != "jumprelu" and "threshold" in state:
        raise SAEError(f"the weights hold a threshold but the config says architecture {arch!r}")
    if "W_skip" in state:
        state["W_skip"] = state["W_skip"].T   # SAELens: [d_out, d_in], out = x @ W_skip.T
    if factor is not None:   # sae_lens' fold_activation_norm_scaling_factor
        state["W_enc"], state["W_dec"], state["b_dec"] = (state["W_enc"] * factor, state["W_dec"] / factor,
                                                          state["b_dec"] / factor)
        cfg["folded_norm_scaling_factor"] = factor

    hook_name = _get(cfg, "hook_name") or _get(cfg, "hook_point")
    hook_out = _get(cfg, "hook_name_out")
    site = site or _get(cfg, "site") or _get(cfg, "mechviz_site") or hook_to_site(hook_name)
    site_out = _get(cfg, "site_out") or hook_to_site(hook_out)
    default_b_dec_in = kind == "sae"
    return SAE(W_enc=state["W_enc"], b_enc=state.get("b_enc"), W_dec=state["W_dec"], b_dec=state["b_dec"],
               architecture=encoder, k=k, threshold=state.get("threshold"),
               apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", default_b_dec_in)),
               rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False))
               and encoder in ("topk", "abstopk"),
               normalize=norm, site=site, hook_name=hook_name, model_name=_get(cfg, "model_name"), cfg=cfg,
               kind=kind, site_out=site_out if kind != "sae" else None, hook_name_out=hook_out,
               W_skip=state.get("W_skip"), b_gate=state.get("b_gate"), r_mag=state.get("r_mag"),
               b_mag=state.get("b_mag"), neuronpedia_id=_get(cfg, "neuronpedia_id"))
