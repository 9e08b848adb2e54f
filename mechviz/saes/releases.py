"""SAELens releases, resolved offline: ``release`` + ``sae_id`` mapped through sae_lens' bundled registry
(``pretrained_saes.yaml``, the table ``SAE.from_pretrained`` reads) to a Hugging Face repo and a path in
it, then read from a local copy only, never the network:

1. ``root=``: a folder holding the release's files: the repo's layout (``root/{path}/...``) or the SAE's own
   folder (``root/cfg.json`` ...);
2. else the local Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``): ``models--{org}--{name}/snapshots/{revision}/{path}``, the revision
   ``refs/main`` names first, then any other snapshot that holds the files.

Release formats read (sae_lens' ``conversion_func``):

* none / ``sae_lens``: ``{path}/cfg.json`` + ``{path}/sae_weights.safetensors``;
* ``gemma_2`` (Gemma Scope) and ``gemma_2_transcoder``: ``{path}/params.npz`` (read with numpy,
  ``allow_pickle=False``), its config built by sae_lens' own config function for that release;
* ``gemma_3`` (Gemma Scope 2) SAEs and per-layer transcoders: ``{path}/params.safetensors`` (+ an
  optional ``{path}/config.json``); not the cross-layer (``clt``) ones.

Other converters (dictionary_learning, llama_scope, sparsify, ...) are refused with what to do instead
(load once with sae_lens on a networked machine, ``save_model`` and load that folder).

>>> from mechviz.saes import load_sae
>>> sae = load_sae(release="gemma-scope-2b-pt-res-canonical",
...                sae_id="layer_12/width_16k/canonical")                # doctest: +SKIP
>>> sae.neuronpedia_id                                                  # doctest: +SKIP
'gemma-2-2b/12-gemmascope-res-16k'
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sae import SAE, SAEError

SUPPORTED_CONVERSIONS = (None, "sae_lens", "gemma_2", "gemma_2_transcoder", "gemma_3")


@dataclass(frozen=True)
class Release:
    """One registry entry: where ``release``/``sae_id`` lives on the hub and what sae_lens knows of it."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    conversion: str | None
    neuronpedia_id: str | None = None
    norm_scaling_factor: float | None = None
    config_overrides: dict = field(default_factory=dict)

    def files(self) -> list[str]:
        """The files (relative to the repo) this release's loader reads; the first ones are required."""
        if self.conversion in (None, "sae_lens"):
            return [f"{self.path}/cfg.json", f"{self.path}/sae_weights.safetensors"]
        if self.conversion in ("gemma_2", "gemma_2_transcoder"):
            return [f"{self.path}/params.npz"]
        return [f"{self.path}/params.safetensors"]

    def download_command(self, cli: str = "hf") -> str:
        """What to run on a networked machine (``hf``; huggingface_hub < 1.0 calls it ``huggingface-cli``)."""
        return f'{cli} download {self.repo_id} --include "{self.path}/*"'


@lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    """sae_lens' bundled ``pretrained_saes.yaml``, read without importing sae_lens (which is slow)."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SAEError("SAELens releases are resolved with sae_lens' registry: pip install sae-lens "
                       "(or mechviz-lab[saelens])")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _close(word: str, options, what: str) -> str:
    near = difflib.get_close_matches(word, list(options), n=5, cutoff=0.5)
    return f"; close {what}: {', '.join(repr(n) for n in near)}" if near else ""


def resolve(release: str, sae_id: str) -> Release:
    """The registry entry for ``release``/``sae_id`` (no file is read but sae_lens' registry).

    >>> r = resolve("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    >>> r.repo_id, r.path, r.neuronpedia_id
    ('google/gemma-scope-2b-pt-res', 'layer_12/width_16k/average_l0_82', 'gemma-2-2b/12-gemmascope-res-16k')
    """
    registry = _registry()
    if release not in registry:
        raise SAEError(f"unknown SAELens release {release!r}{_close(release, registry, 'releases')} "
                       f"(sae_lens' registry lists {len(registry)} releases)")
    entry = registry[release]
    saes = {s["id"]: s for s in entry["saes"]}
    if sae_id not in saes:
        raise SAEError(f"release {release!r} has no SAE {sae_id!r}{_close(sae_id, saes, 'ids')} "
                       f"({len(saes)} ids, e.g. {list(saes)[:3]})")
    s = saes[sae_id]
    return Release(release=release, sae_id=sae_id, repo_id=entry["repo_id"], path=str(s["path"]),
                   conversion=entry.get("conversion_func"), neuronpedia_id=s.get("neuronpedia"),
                   norm_scaling_factor=s.get("norm_scaling_factor"),
                   config_overrides=dict(entry.get("config_overrides") or {}))


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub finds it (read from the environment now)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _find_local(rel: Release, root) -> tuple[Path, list[Path]]:
    """The folder holding the release's files, or SAEError saying where they were expected."""
    needed = rel.files()
    if root is not None:
        root = Path(root).expanduser()
        candidates = [root / rel.path, root]   # the repo's layout, or the SAE's own folder
        expected = root / rel.path
    else:
        repo_dir = hub_cache_dir() / f"models--{rel.repo_id.replace('/', '--')}"
        snapshots = repo_dir / "snapshots"
        main = repo_dir / "refs" / "main"
        revs = [main.read_text().strip()] if main.exists() else []
        if snapshots.is_dir():
            revs += sorted((p.name for p in snapshots.iterdir() if p.name not in revs),
                           key=lambda n: -(snapshots / n).stat().st_mtime)
        candidates = [snapshots / r / rel.path for r in revs]
        expected = snapshots / (revs[0] if revs else "<revision>") / rel.path
    for folder in candidates:   # every file a release's loader reads sits in its path's folder
        files = [folder / Path(f).name for f in needed]
        if all(p.exists() for p in files):
            return folder, files
    where = "under root=" if root is not None else "in the Hugging Face hub cache"
    raise SAEError(f"SAELens release {rel.release!r} / {rel.sae_id!r} is not available offline: it is "
                   f"{', '.join(Path(f).name for f in needed)} under {rel.path!r} in the Hugging Face repo "
                   f"{rel.repo_id!r}, expected {where} at {expected}. On a machine with network access run\n"
                   f"    {rel.download_command()}\n"
                   f"(huggingface_hub < 1.0: {rel.download_command('huggingface-cli')}; add --local-dir DIR and "
                   f"pass root=DIR, or copy the hub cache over and set HF_HUB_CACHE); mechviz never downloads")


def load_release(release: str, sae_id: str, *, root=None, site: str | None = None,
                 norm_scaling_factor: float | None = None) -> SAE:
    """An SAE of a SAELens release from a local copy (see the module docstring)."""
    from .formats import sae_from_state_dict
    from .load import load_folder, read_safetensors

    rel = resolve(release, sae_id)
    if rel.conversion not in SUPPORTED_CONVERSIONS:
        raise SAEError(f"release {release!r} is stored in a format sae_lens converts with its "
                       f"{rel.conversion!r} loader, which mechviz does not read (it reads "
                       f"{', '.join(c or 'sae_lens' for c in SUPPORTED_CONVERSIONS[1:])}): on a machine with "
                       f"network access run sae_lens.SAE.from_pretrained({release!r}, {sae_id!r}) and "
                       "save_model(folder), then load_sae(folder)")
    if rel.conversion == "gemma_3" and "clt" in rel.path:
        raise SAEError(f"{release!r} / {sae_id!r} is a cross-layer transcoder (clt), not a single-site dictionary: "
                       "mechviz does not load it")
    folder, files = _find_local(rel, root)
    overrides = dict(rel.config_overrides)
    if rel.neuronpedia_id:
        overrides["neuronpedia_id"] = rel.neuronpedia_id

    def factor(cfg_norm):   # the registry's factor only where the config asks for one; the user's always
        if norm_scaling_factor is not None or cfg_norm not in ("expected_average_only_in", True):
            return norm_scaling_factor
        return rel.norm_scaling_factor

    if rel.conversion in (None, "sae_lens"):
        with open(files[0]) as f:
            cfg_norm = {**json.load(f), **overrides}.get("normalize_activations")
        sae = load_folder(folder, site=site, norm_scaling_factor=factor(cfg_norm), cfg_overrides=overrides)
    else:
        try:
            if rel.conversion == "gemma_3":
                cfg, state = _gemma_3(rel, folder, files[0], read_safetensors, overrides)
            else:
                cfg, state = _gemma_2(rel, files[0], overrides)
            sae = sae_from_state_dict(state, cfg, site=site,
                                      norm_scaling_factor=factor(cfg.get("normalize_activations")))
        except SAEError as exc:
            raise SAEError(f"{files[0]}: {exc}") from None
    sae.cfg["release"], sae.cfg["sae_id"] = release, sae_id
    return sae


def _gemma_2(rel: Release, npz: Path, overrides: dict) -> tuple[dict, dict]:
    """Gemma Scope (``params.npz``) as sae_lens' gemma_2 / gemma_2_transcoder loaders convert it."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    get_cfg = (loaders.get_gemma_2_config_from_hf if rel.conversion == "gemma_2"
               else loaders.get_gemma_2_transcoder_config_from_hf)
    cfg = get_cfg(rel.repo_id, rel.path, "cpu", False, overrides)   # pure: builds the config from the names
    names = {"w_enc": "W_enc", "wenc": "W_enc", "w_e": "W_enc", "w_dec": "W_dec", "wdec": "W_dec", "w_d": "W_dec",
             "b_enc": "b_enc", "benc": "b_enc", "b_e": "b_enc", "b_dec": "b_dec", "bdec": "b_dec", "b_d": "b_dec",
             "threshold": "threshold", "scaling_factor": "scaling_factor"}
    state = {}
    with np.load(npz, allow_pickle=False) as data:
        for key in data.files:
            if key.lower() not in names:
                raise SAEError(f"unexpected array {key!r} in {npz.name} (have {data.files})")
            state[names[key.lower()]] = torch.tensor(data[key], dtype=torch.float32)
    if rel.conversion == "gemma_2" and "embedding" in rel.path:   # as sae_lens: trained on embed * sqrt(d_model)
        state["W_enc"] = state["W_enc"] / np.sqrt(cfg["d_in"])
        state["W_dec"] = state["W_dec"] * np.sqrt(cfg["d_in"])
    return cfg, state


def _gemma_3(rel: Release, folder: Path, weights: Path, read_safetensors, overrides: dict) -> tuple[dict, dict]:
    """Gemma Scope 2 (``params.safetensors``) as sae_lens' gemma_3 loader converts it (its config from
    ``config.json`` when present, else from the names, as sae_lens does; shapes from the local file)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    raw_path = folder / "config.json"
    if raw_path.exists():
        raw = json.loads(raw_path.read_text())
    elif hasattr(loaders, "_infer_gemma_3_raw_cfg_dict"):   # as sae_lens does when the repo has no config.json
        raw = loaders._infer_gemma_3_raw_cfg_dict(rel.repo_id, rel.path)
    else:
        raise SAEError(f"{raw_path} missing (and this sae_lens cannot infer it): download it with the weights")
    if raw.get("architecture") != "jump_relu":
        raise SAEError(f"unexpected architecture in Gemma Scope 2 config: {raw.get('architecture')!r}")
    layer = int(re.search(r"layer_(\d+)", rel.path).group(1))
    transcoder = "transcoder" in rel.path
    hook = next((h for key, h in (("resid_post", "hook_resid_post"), ("attn_out", "attn.hook_z"),
                                  ("mlp_out", "hook_mlp_out"), ("transcoder", "hook_mlp_in")) if key in rel.path), None)
    if hook is None:
        raise SAEError(f"cannot tell the hook of Gemma Scope 2 path {rel.path!r}")
    raw_state = read_safetensors(weights)
    state = {"W_enc": raw_state["w_enc"], "W_dec": raw_state["w_dec"], "b_enc": raw_state["b_enc"],
             "b_dec": raw_state["b_dec"], "threshold": raw_state["threshold"]}
    if "affine_skip_connection" in raw_state:   # stored [d_in, d_out]; SAELens' W_skip is [d_out, d_in]
        state["W_skip"] = raw_state["affine_skip_connection"].T
    model_name = raw["model_name"] if "google" in raw["model_name"] else "google/" + raw["model_name"]
    model_name = model_name.replace("-v3", "-3")
    if "270m" in model_name:
        model_name = model_name.replace("-pt", "")
    cfg = {"architecture": "jumprelu", "d_in": state["W_enc"].shape[0], "d_sae": state["W_enc"].shape[1],
           "model_name": model_name, "hook_name": f"blocks.{layer}.{hook}", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "hf_hook_name": raw.get("hf_hook_point_in")}
    if transcoder:
        cfg.update(architecture="jumprelu_skip_transcoder" if raw.get("affine_connection", False)
                   else "jumprelu_transcoder", d_out=state["W_dec"].shape[-1],
                   hook_name_out=f"blocks.{layer}.hook_mlp_out", hf_hook_name_out=raw.get("hf_hook_point_out"))
    cfg.update(overrides)
    return cfg, state
