"""Load SAEs (SAELens on-disk folders, ``sae_lens`` objects, SAELens releases from a local copy, state dict
+ config) and check they fit a model.

The SAELens 6 on-disk format is a folder with ``cfg.json`` and ``sae_weights.safetensors`` (what every
``sae_lens`` SAE's ``save_model`` / ``save_inference_model`` writes; see :mod:`mechviz.saes.formats` for
the architectures and keys read). Pre-6.0 configs (flat keys, ``hook_point``, ``activation_fn`` +
``activation_fn_kwargs.k``) are read too. Weights are read with ``safetensors`` only, never with pickle.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping

from ..models import sites
from ..models.sites import SiteError, parse_sites
from .formats import hook_to_site, sae_from_state_dict
from .sae import SAE, SAEError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SCALER_FILENAME = "activation_scaler.json"   # sae_lens' training checkpoints: {"scaling_factor": ...}

__all__ = ["load_sae", "sae_from_state_dict", "hook_to_site", "check_sae_fits", "site_width"]


def load_sae(source=None, *, site: str | None = None, release: str | None = None, sae_id: str | None = None,
             root=None, norm_scaling_factor: float | None = None) -> SAE:
    """Load an SAE (or transcoder) from any of:

    - a folder in SAELens' on-disk format (``cfg.json`` + ``sae_weights.safetensors``), or either
      file in it;
    - an ``sae_lens`` SAE or transcoder object, inference or training (a training SAE is read in the
      inference form its own ``save_inference_model`` would write; sae_lens is not imported here);
    - a SAELens release: ``release=..., sae_id=...`` or a tuple ``(release, sae_id)``, resolved with
      sae_lens' bundled registry against a local copy only (``root=`` a folder holding the release's
      files, else the Hugging Face hub cache), never the network (see :mod:`mechviz.saes.releases`);
    - a tuple ``(state_dict, cfg_dict)``: tensors named as SAELens names them, and a config in SAELens'
      keys or simply ``{"architecture": "relu" | "topk" | "jumprelu" | ..., "k": .., "site": "resid_post.1",
      "model_name": ..}``;
    - an :class:`SAE` (returned as is, or re-attached to ``site``).

    ``site`` (canonical, e.g. ``"resid_post.1"``) overrides the site read from the config (the
    config's ``site``, else its TransformerLens ``hook_name`` mapped through ``sites.TL_HOOKS``).
    ``norm_scaling_factor``: the dataset-wide input scale of an SAE trained with
    ``normalize_activations="expected_average_only_in"`` when its folder or release does not say it;
    it is folded into the weights as sae_lens' ``fold_activation_norm_scaling_factor`` does.

    >>> sae = load_sae("path/to/sae_folder")                                        # doctest: +SKIP
    >>> sae = load_sae(sae_lens_sae, site="resid_post.3")                           # doctest: +SKIP
    >>> sae = load_sae(release="gemma-scope-2b-pt-res-canonical",
    ...                sae_id="layer_12/width_16k/canonical")                       # doctest: +SKIP
    """
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(s, str) for s in source):
        if release is not None or sae_id is not None:
            raise SAEError("give the release either as a (release, sae_id) tuple or as release=, sae_id=, not both")
        release, sae_id = source
        source = None
    if release is not None or sae_id is not None:
        if source is not None or release is None or sae_id is None:
            raise SAEError("a SAELens release needs both release= and sae_id= (and no other source)")
        from .releases import load_release

        return load_release(release, sae_id, root=root, site=site, norm_scaling_factor=norm_scaling_factor)
    if root is not None:
        raise SAEError("root= is where a release's files are: pass it with release= and sae_id=")
    if isinstance(source, SAE):
        if norm_scaling_factor is not None:
            raise SAEError("norm_scaling_factor applies when loading from a folder, object or state dict, "
                           "not to an SAE already built")
        return source.at(site) if site else source
    if isinstance(source, (str, os.PathLike)):
        return load_folder(Path(source), site=site, norm_scaling_factor=norm_scaling_factor)
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Mapping):
        state, cfg = dict(source[0]), dict(source[1] or {})
    elif hasattr(source, "cfg") and hasattr(source, "state_dict"):
        state, cfg = _read_sae_lens_object(source)
    else:
        raise SAEError(f"cannot load an SAE from a {type(source).__name__}: pass a SAELens folder "
                       "(cfg.json + sae_weights.safetensors), an sae_lens SAE, release=/sae_id=, "
                       "or (state_dict, cfg_dict)")
    return sae_from_state_dict(state, cfg, site=site, norm_scaling_factor=norm_scaling_factor)


def load_folder(path: Path, *, site: str | None = None, norm_scaling_factor: float | None = None,
                cfg_overrides: Mapping | None = None) -> SAE:
    """An SAE from a SAELens folder; a bad file fails here, its message naming the file."""
    path = Path(path)
    state, cfg, w_path = _read_folder(path)
    cfg.update(cfg_overrides or {})
    folder = w_path.parent
    if norm_scaling_factor is None and cfg.get("normalize_activations") in ("expected_average_only_in", True):
        norm_scaling_factor = _saved_scaling_factor(folder)
    try:
        return sae_from_state_dict(state, cfg, site=site, norm_scaling_factor=norm_scaling_factor)
    except SAEError as exc:
        raise SAEError(f"{w_path} (config {folder / CFG_FILENAME}): {exc}") from None


def _saved_scaling_factor(folder: Path) -> float | None:
    scaler = folder / SCALER_FILENAME
    if not scaler.exists():
        return None
    with open(scaler) as f:
        value = json.load(f).get("scaling_factor")
    return None if value is None else float(value)


def _read_folder(path: Path) -> tuple[dict, dict, Path]:
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
    with open(cfg_path) as f:
        cfg = json.load(f)
    return read_safetensors(w_path), cfg, w_path


def read_safetensors(w_path: Path) -> dict:
    """The tensors of a safetensors file; a pickle or zip under that name is named, never unpickled."""
    from safetensors.torch import load_file

    try:
        return load_file(str(w_path), device="cpu")
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
    state = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    if hasattr(obj, "process_state_dict_for_saving_inference") and hasattr(cfg_obj, "get_inference_sae_cfg_dict"):
        # a training SAE: its inference form, exactly as its own save_inference_model writes it
        obj.process_state_dict_for_saving_inference(state)
        cfg = cfg_obj.get_inference_sae_cfg_dict()
    else:
        if hasattr(obj, "process_state_dict_for_saving"):
            obj.process_state_dict_for_saving(state)
        cfg = cfg_obj.to_dict() if hasattr(cfg_obj, "to_dict") else dict(vars(cfg_obj))
    if "architecture" not in cfg and hasattr(cfg_obj, "architecture"):
        cfg["architecture"] = cfg_obj.architecture()
    meta = cfg.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        cfg["metadata"] = dict(meta.to_dict() if hasattr(meta, "to_dict") else vars(meta))
    return {k: v.detach() for k, v in state.items()}, cfg


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
    for a transcoder that its output site exists and is ``d_out`` wide, and, when the SAE's config
    names the model it was trained on, that it is this model (unless ``allow_model_mismatch=True``).
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
    if sae.is_transcoder and sae.site_out:
        try:
            (out,) = parse_sites(sae.site_out, adapter.n_layers)
        except (SiteError, ValueError) as exc:
            raise SAEError(f"the transcoder's output site {sae.site_out!r} does not exist in {adapter.name}: "
                           f"{exc}") from None
        if sae.d_out != site_width(adapter, out.name):
            raise SAEError(f"transcoder output width d_out={sae.d_out} does not match site {out} of {adapter.name}, "
                           f"which is {site_width(adapter, out.name)} wide")
    if sae.model_name and adapter.name and not _same_model(sae.model_name, adapter.name) and not allow_model_mismatch:
        raise SAEError(f"this SAE was trained on {sae.model_name!r} but the model is {adapter.name!r}; its features "
                       "would be meaningless here. If they are the same model under another name, pass "
                       "allow_model_mismatch=True")
    return str(site)
