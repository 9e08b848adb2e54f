"""Load SAEs (SAELens on-disk folders, ``sae_lens`` objects, state dict + config) and check they fit a model.

The SAELens 6 on-disk format is a folder with ``cfg.json`` and ``sae_weights.safetensors``::

    cfg.json: {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
               "reshape_activations", "architecture": "standard" | "topk" | "jumprelu" | ...,
               "k" (topk), "rescale_acts_by_decoder_norm" (topk),
               "metadata": {"model_name", "hook_name", "hook_head_index", "sae_lens_version", ...}}
    sae_weights.safetensors: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
                             threshold [d_sae] (jumprelu; older files: log_threshold)

Pre-6.0 configs (flat keys, ``hook_point``, ``activation_fn`` + ``activation_fn_kwargs.k``) are read
too. Weights are read with ``safetensors`` only, never with pickle.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from ..models import sites
from ..models.sites import TL_HOOKS, SiteError, parse_sites
from .sae import SAE, SAEError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

#: TransformerLens hook name pattern -> canonical site name, built from sites.TL_HOOKS (the one place)
_HOOK_PATTERNS = [(re.compile("^" + re.escape(tmpl).replace(re.escape("{layer}"), r"(\d+)") + "$"), name)
                  for name, tmpl in TL_HOOKS.items()]

_WEIGHT_KEYS = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "scaling_factor",
                "finetuning_scaling_factor"}


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


def load_sae(source, *, site: str | None = None) -> SAE:
    """Load an SAE from any of:

    - a folder in SAELens' on-disk format (``cfg.json`` + ``sae_weights.safetensors``), or either
      file in it;
    - an ``sae_lens`` SAE object (``StandardSAE``, ``TopKSAE``, ``JumpReLUSAE`` or their training
      versions; read through its ``cfg`` and ``state_dict()``, sae_lens is not imported here);
    - a tuple ``(state_dict, cfg_dict)``: tensors named as above, and a config in SAELens' keys or
      simply ``{"architecture": "relu" | "topk" | "jumprelu", "k": .., "site": "resid_post.1",
      "model_name": ..}``;
    - an :class:`SAE` (returned as is, or re-attached to ``site``).

    ``site`` (canonical, e.g. ``"resid_post.1"``) overrides the site read from the config (the
    config's ``site``, else its TransformerLens ``hook_name`` mapped through ``sites.TL_HOOKS``).

    >>> sae = load_sae("path/to/sae_folder")                       # doctest: +SKIP
    >>> sae = load_sae(sae_lens_sae, site="resid_post.3")          # doctest: +SKIP
    """
    if isinstance(source, SAE):
        return source.at(site) if site else source
    if isinstance(source, (str, os.PathLike)):
        state, cfg = _read_folder(Path(source))
    elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Mapping):
        state, cfg = dict(source[0]), dict(source[1] or {})
    elif hasattr(source, "cfg") and hasattr(source, "state_dict"):
        state, cfg = _read_sae_lens_object(source)
    else:
        raise SAEError(f"cannot load an SAE from a {type(source).__name__}: pass a SAELens folder "
                       "(cfg.json + sae_weights.safetensors), an sae_lens SAE, or (state_dict, cfg_dict)")
    return sae_from_state_dict(state, cfg, site=site)


def _read_folder(path: Path) -> tuple[dict, dict]:
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt"):
            raise SAEError(f"{path.name}: mechviz reads SAE weights from safetensors only (pickle files can run "
                           "code); convert it, e.g. with sae_lens' save_model")
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"no SAE folder at {path}")
    cfg_path, w_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    missing = [p.name for p in (cfg_path, w_path) if not p.exists()]
    if missing:
        have = sorted(p.name for p in path.iterdir())[:10]
        raise FileNotFoundError(f"{path} is not a SAELens SAE folder: {', '.join(missing)} missing "
                                f"(it holds {have}); expected {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    from safetensors.torch import load_file

    with open(cfg_path) as f:
        cfg = json.load(f)
    try:
        return load_file(str(w_path), device="cpu"), cfg
    except Exception as exc:  # safetensors' own message ("header too large") does not say what the file is
        with open(w_path, "rb") as f:
            head = f.read(4)
        what = ("a zip archive (torch.save's format)" if head.startswith(b"PK") else
                "a pickle" if head[:1] == b"\x80" else "not a safetensors file")
        raise SAEError(f"{w_path.name} is {what}, not safetensors ({exc}): mechviz never unpickles SAE "
                       "weights (pickle files can run code); re-save it with safetensors, e.g. sae_lens' "
                       "save_model or safetensors.torch.save_file") from None


def _read_sae_lens_object(obj) -> tuple[dict, dict]:
    cfg_obj = obj.cfg
    cfg = cfg_obj.to_dict() if hasattr(cfg_obj, "to_dict") else dict(vars(cfg_obj))
    if "architecture" not in cfg and hasattr(cfg_obj, "architecture"):
        cfg["architecture"] = cfg_obj.architecture()
    meta = cfg.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        cfg["metadata"] = dict(meta.to_dict() if hasattr(meta, "to_dict") else vars(meta))
    state = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    return state, cfg


def _get(cfg: Mapping, key: str, default=None):
    """A config value: top-level first (pre-6.0 SAELens and plain dicts), then ``metadata``."""
    if cfg.get(key) is not None:
        return cfg[key]
    meta = cfg.get("metadata") or {}
    return meta.get(key, default) if isinstance(meta, Mapping) else default


def sae_from_state_dict(state: Mapping[str, Any], cfg: Mapping[str, Any], *, site: str | None = None) -> SAE:
    """Build an :class:`SAE` from SAELens-style weights and config (see :func:`load_sae`)."""
    cfg = dict(cfg)
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = cfg.get("k")
    if act_fn == "topk" or (act_fn is None and arch == "topk"):
        arch = "topk"
        k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
    elif act_fn not in (None, "relu"):
        raise SAEError(f"unsupported SAE activation_fn {act_fn!r}: mechviz encodes relu, topk and jumprelu")
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        raise SAEError(f"a {arch} SAE encodes per batch; save it for inference (sae_lens converts it to "
                       "jumprelu with save_inference_model) and load that")
    if arch not in ("standard", "relu", "topk", "jumprelu"):
        raise SAEError(f"unsupported SAE architecture {arch!r}: mechviz encodes standard (relu), topk and jumprelu")

    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm not in ("none", False, "constant_norm_rescale", "layer_norm"):
        raise SAEError(f"this SAE expects inputs normalised with {norm!r}, which is not folded into its weights "
                       "(SAELens would silently encode unnormalised inputs): fold it first (in sae_lens: "
                       "sae.fold_activation_norm_scaling_factor(factor) or fold_activation_whitening) and save again")
    head = _get(cfg, "hook_head_index")
    if head is not None:
        raise SAEError(f"this SAE reads a single attention head (hook_head_index={head}); mechviz attaches SAEs "
                       "to whole sites only")

    state = {k_: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)) for k_, v in state.items()}
    unknown = sorted(set(state) - _WEIGHT_KEYS)
    if unknown:
        raise SAEError(f"unexpected SAE weights {unknown} for a {arch} SAE (expected W_enc, b_enc, W_dec, b_dec"
                       f"{', threshold' if arch == 'jumprelu' else ''}): refusing to guess how to use them")
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in state:
            if not torch.allclose(state[key].float(), torch.ones_like(state[key].float())):
                raise SAEError(f"this SAE has a {key} that is not all ones; fold it into W_dec first")
            del state[key]
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in state]
    if missing:
        raise SAEError(f"SAE weights {missing} missing (have {sorted(state)})")
    threshold = state.get("threshold")
    if threshold is None and "log_threshold" in state:
        threshold = torch.exp(state["log_threshold"])
    if arch != "jumprelu" and threshold is not None:
        raise SAEError(f"the weights hold a threshold but the config says architecture {arch!r}")

    for dim, got in (("d_in", state["W_enc"].shape[0]), ("d_sae", state["W_enc"].shape[-1])):
        if cfg.get(dim) is not None and int(cfg[dim]) != int(got):
            raise SAEError(f"config says {dim}={cfg[dim]} but W_enc is {tuple(state['W_enc'].shape)}")

    hook_name = _get(cfg, "hook_name") or _get(cfg, "hook_point")
    site = site or _get(cfg, "site") or _get(cfg, "mechviz_site") or hook_to_site(hook_name)
    return SAE(W_enc=state["W_enc"], b_enc=state["b_enc"], W_dec=state["W_dec"], b_dec=state["b_dec"],
               architecture=arch, k=k, threshold=threshold,
               apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
               rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
               normalize="none" if norm is False else norm,
               site=site, hook_name=hook_name, model_name=_get(cfg, "model_name"), cfg=cfg)


# -- fitting an SAE to a model -----------------------------------------------------------------

def site_width(adapter, name: str) -> int:
    """The per-token width an SAE on site ``name`` of this model reads (``z``/``q`` flattened over heads)."""
    width = sites.site_width(adapter, name)
    if width is None:
        raise SAEError(f"an SAE cannot read site {name!r} (attention patterns are not per-token vectors)")
    return width


#: model-name aliases common in SAE configs (SAELens' GPT-2 small SAEs say "gpt2-small")
_MODEL_ALIASES = {"gpt2-small": "gpt2"}


def _model_keys(name: str) -> set[str]:
    base = str(name).strip().rstrip("/").rsplit("/", 1)[-1]
    keys = {base.lower(), _MODEL_ALIASES.get(base.lower(), base.lower())}
    tl = sys.modules.get("transformer_lens.loading_from_pretrained")
    if tl is not None:  # TL's aliases, only if TransformerLens is already loaded (it is slow to import)
        for cand in {str(name), base}:
            try:
                keys.add(tl.get_official_model_name(cand).rsplit("/", 1)[-1].lower())
            except Exception:
                pass
    return keys


def _same_model(a: str, b: str) -> bool:
    """Same model up to the organisation prefix and known aliases ("openai-community/gpt2" ==
    "gpt2" == "gpt2-small"; "EleutherAI/pythia-70m" == "pythia-70m" != "pythia-70m-deduped")."""
    return bool(_model_keys(a) & _model_keys(b))


def check_sae_fits(sae: SAE, adapter, *, allow_model_mismatch: bool = False) -> str:
    """Raise :class:`SAEError` unless ``sae`` fits ``adapter``; return the SAE's site.

    Checks that the SAE has a site, that the model has it, that the SAE's width ``d_in`` equals
    the site's width (``d_model`` for residual/attn_out/mlp_out, ``n_heads * d_head`` for ``z``),
    and, when the SAE's config names the model it was trained on, that it is this model (unless
    ``allow_model_mismatch=True``).
    """
    if not sae.site:
        hint = f" (its hook {sae.hook_name!r} has no mechviz site)" if sae.hook_name else ""
        raise SAEError(f"this SAE is not attached to a site{hint}: pass site=, e.g. load_sae(..., site='resid_post.0')")
    try:
        (site,) = parse_sites(sae.site, adapter.n_layers)
    except (SiteError, ValueError) as exc:
        raise SAEError(f"the SAE's site {sae.site!r} does not exist in {adapter.name}: {exc}") from None
    if str(site) != sae.site:
        raise SAEError(f"the SAE's site must name one layer, e.g. '{site.name}.0'; got {sae.site!r}")
    width = site_width(adapter, site.name)
    if sae.d_in != width:
        raise SAEError(f"SAE width d_in={sae.d_in} does not match site {site} of {adapter.name}, which is "
                       f"{width} wide: this SAE was trained on another site or model")
    if sae.model_name and adapter.name and not _same_model(sae.model_name, adapter.name) and not allow_model_mismatch:
        raise SAEError(f"this SAE was trained on {sae.model_name!r} but the model is {adapter.name!r}; its features "
                       "would be meaningless here. If they are the same model under another name, pass "
                       "allow_model_mismatch=True")
    return str(site)
