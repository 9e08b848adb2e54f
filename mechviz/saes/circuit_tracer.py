"""Per-layer transcoders in the layouts circuit-tracer (safety-research/circuit-tracer, 0.5) reads, as
mechviz :class:`~mechviz.saes.SAE` objects, from local files only (never the network).

A transcoder set is a folder (or a Hugging Face repo in the local hub cache) with a ``config.yaml``::

    model_name: google/gemma-2-2b
    model_kind: transcoder_set                 # cross_layer_transcoder: refused (see below)
    feature_input_hook: ln2.hook_normalized    # TransformerLens hook (under blocks.L.) the encoders read
    feature_output_hook: hook_mlp_out          # ... and the decoders write
    transcoders: [hf://org/repo/layer_0/.../params.npz, ...]   # optional: one file per layer, in order;
                                                                # else layer_0.safetensors, layer_1, ...

(circuit-tracer < 0.2's list of ``{id, layer, filepath}`` dicts is read too). Per-layer file layouts,
told apart by their content (circuit-tracer tells them by the repo's name)::

    layer_L.safetensors (circuit-tracer's own; Llama-3.2-1B, Qwen3, caches it writes):
        W_enc [d_sae, d_in] (encode = F.linear(x, W_enc, b_enc)), W_dec [d_sae, d_out] (circuit-tracer < 0.2:
        [d_out, d_sae]), b_enc, b_dec, optional activation_function.threshold (JumpReLU, else ReLU),
        optional W_skip [d_out, d_in] (skip = x @ W_skip.T)
    params.npz (Gemma Scope, Gemma-2-2B): W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold
    *.safetensors with w_enc (Gemma Scope 2): w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc, b_dec,
        threshold, optional affine_skip_connection [d_in, d_out] (skip = x @ A)

circuit-tracer computes ``f = act(x @ W_enc + b_enc)``, ``y = f @ W_dec + b_dec (+ skip)``; its JumpReLU is
``h * (h > threshold)``, which equals mechviz's ``relu(h) * (h > threshold)`` for thresholds >= 0 (a negative
threshold is refused). It zeroes every feature at position 0 (the BOS it prepends) in attribution; that is a
graph convention, not part of the transcoder.

Hooks -> mechviz sites (TransformerLens names, circuit-tracer builds its models with ``fold_ln=False``):

    mlp.hook_in          -> mlp_in.L   (the MLP's input: the pre-MLP norm's output, weights applied)
    ln2.hook_normalized  -> mlp_in.L   only with ``mlp_norm=``: TransformerLens hooks it *before* the norm's
                            weight and bias, so the encoder reads (mlp_in - b) / w; the loader folds w and b
                            into W_enc, b_enc (Gemma-2: w = 1 + the checkpoint's RMSNorm weight, b = 0)
    hook_resid_mid       -> resid_mid.L (before the pre-MLP norm)
    hook_mlp_out, mlp.hook_out -> mlp_out.L (what the block adds to the residual; mlp.hook_out is before any
                            post-MLP norm, so on Gemma-2/3 only hook_mlp_out is mlp_out)

Cross-layer transcoders (``model_kind: cross_layer_transcoder``, ``W_enc_L``/``W_dec_L`` files) are refused:
one mechviz SAE reads one site and writes one site, while a CLT feature writes to every later layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .releases import hub_cache_dir
from .sae import SAE, SAEError

#: circuit-tracer hook (under ``blocks.L.``) -> mechviz site name
INPUT_HOOKS = {"mlp.hook_in": "mlp_in", "ln2.hook_normalized": "mlp_in", "hook_resid_mid": "resid_mid"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out"}
#: circuit-tracer's shortcuts (``load_transcoder_from_hub``)
SHORTCUTS = {"gemma": "mwhanna/gemma-scope-transcoders", "llama": "mntss/transcoder-Llama-3.2-1B"}


# -- finding the files -------------------------------------------------------------------------------------
def _parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``(repo_id, path_in_repo, revision)`` of ``hf://org/repo/path?revision=R`` or ``org/repo[/sub][@R]``."""
    if ref.startswith("hf://"):
        m = re.fullmatch(r"hf://([^/]+/[^/?]+)(?:/([^?]*))?(?:\?revision=(.*))?", ref)
        if not m:
            raise SAEError(f"not a Hugging Face URI: {ref!r} (expected hf://org/repo/path[?revision=R])")
        return m.group(1), m.group(2) or None, m.group(3) or None
    path, _, rev = ref.partition("@")
    parts = path.split("/")
    if len(parts) < 2:
        raise SAEError(f"{ref!r} is neither a local folder nor a Hugging Face repo id (org/repo[/subfolder])")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, rev or None


def _repo_roots(repo_id: str, revision: str | None, root) -> list[Path]:
    """Folders that may hold a copy of the repo: ``root`` (the repo's layout, or ``root/org/repo``), else the
    hub cache's snapshots (the revision asked for, else refs/main, then newest first)."""
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / repo_id]
    repo_dir = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snaps, revs = repo_dir / "snapshots", []
    for ref in [revision or "main"]:   # a revision asked for is never swapped for another
        p = repo_dir / "refs" / ref
        revs.append(p.read_text().strip() if p.exists() else ref)
    if snaps.is_dir() and not revision:
        revs += sorted((p.name for p in snaps.iterdir()), key=lambda n: -(snaps / n).stat().st_mtime)
    return [snaps / r for r in dict.fromkeys(revs)]


def _offline_error(what: str, repo_id: str, where: Sequence[Path], root) -> SAEError:
    place = "under root=" if root is not None else "in the Hugging Face hub cache"
    return SAEError(f"{what} of {repo_id!r} is not available offline: looked {place} at "
                    f"{', '.join(str(p) for p in where) or '(no snapshot)'}. On a machine with network access run "
                    f"`hf download {repo_id}` (add --local-dir DIR and pass root=DIR, or copy the hub cache "
                    "over and set HF_HUB_CACHE); mechviz never downloads")


def _find_config(source, root) -> tuple[Path, str | None]:
    """The config.yaml of ``source`` and the repo id it came from (None for a local folder)."""
    p = Path(str(source)).expanduser()
    if p.is_file():
        return p, None
    if p.is_dir():
        if (p / "config.yaml").exists():
            return p / "config.yaml", None
        raise SAEError(f"{p} has no config.yaml: a circuit-tracer transcoder set is a folder with config.yaml "
                       "(model_kind, feature_input_hook, feature_output_hook) and its layer files")
    repo_id, sub, rev = _parse_ref(SHORTCUTS.get(str(source), str(source)))
    tried = []
    for base in _repo_roots(repo_id, rev, root):
        cfg = base / sub / "config.yaml" if sub else base / "config.yaml"
        tried.append(cfg)
        if cfg.exists():
            return cfg, repo_id
    raise _offline_error("config.yaml", repo_id, tried, root)


def _resolve_file(entry: str, folder: Path, root) -> Path:
    """A ``transcoders:`` entry: a local path (absolute, or relative to the config's folder) or an hf:// URI
    looked up next to the config, under ``root`` or in the hub cache."""
    if not entry.startswith("hf://"):
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else folder / p
        if not p.exists():
            raise SAEError(f"transcoder file {entry!r} not found (looked at {p})")
        return p
    repo_id, path, rev = _parse_ref(entry)
    if not path:
        raise SAEError(f"{entry!r} names a repo but no file in it")
    tried = [folder / path, folder / Path(path).name]
    tried += [base / path for base in _repo_roots(repo_id, rev, root)]
    for p in tried:
        if p.exists():
            return p
    raise _offline_error(path, repo_id, tried, root)


def _layer_files(cfg: dict, folder: Path, root) -> list[Path]:
    entries = cfg.get("transcoders")
    if entries:
        if all(isinstance(e, dict) for e in entries):   # circuit-tracer < 0.2: [{id, layer, filepath}]
            layers = sorted(int(e["layer"]) for e in entries)
            if layers != list(range(len(entries))):
                raise SAEError(f"config.yaml's transcoders cover layers {layers}: circuit-tracer needs exactly "
                               "one per layer from 0 up")
            entries = [e["filepath"] for e in sorted(entries, key=lambda e: int(e["layer"]))]
        return [_resolve_file(str(e), folder, root) for e in entries]
    files = {int(m.group(1)): p for p in folder.glob("layer_*.safetensors")
             if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
    if not files:
        raise SAEError(f"{folder} has no layer_<L>.safetensors files and config.yaml lists no transcoders")
    if sorted(files) != list(range(len(files))):
        raise SAEError(f"{folder} has layer files for layers {sorted(files)}: circuit-tracer needs exactly one "
                       "per layer from 0 up (layer_0.safetensors, layer_1, ...)")
    return [files[i] for i in range(len(files))]


# -- reading one layer ------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.asarray(data[k])) for k in data.files}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    raise SAEError(f"{path.name}: unknown transcoder file type (circuit-tracer reads .safetensors and "
                   "Gemma Scope's params.npz)")


def _expect(state: dict, name: str, shape: tuple, path: Path, layout: str) -> torch.Tensor:
    if name not in state:
        raise SAEError(f"{path.name} ({layout}): weight {name!r} missing (have {sorted(state)})")
    t = state[name]
    if tuple(t.shape) != shape:
        raise SAEError(f"{path.name} ({layout}): {name} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _layer_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """mechviz-oriented weights (W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_in, d_out]) and the
    layout's name."""
    raw = _read(path)
    if any(k.startswith(("W_enc_", "W_dec_")) for k in raw):
        raise _clt_error(path.name)
    if "w_enc" in raw:   # Gemma Scope 2
        layout, known = "Gemma Scope 2", {"w_enc", "w_dec", "b_enc", "b_dec", "threshold", "affine_skip_connection"}
        d_in, d_sae = raw["w_enc"].shape if raw["w_enc"].ndim == 2 else (-1, -1)
        d_out = raw["b_dec"].shape[0] if "b_dec" in raw else -1
        out = {"W_enc": _expect(raw, "w_enc", (d_in, d_sae), path, layout),
               "W_dec": _expect(raw, "w_dec", (d_sae, d_out), path, layout),
               "threshold": _expect(raw, "threshold", (d_sae,), path, layout)}
        if "affine_skip_connection" in raw:
            out["W_skip"] = _expect(raw, "affine_skip_connection", (d_in, d_out), path, layout)
    elif path.suffix == ".npz":   # Gemma Scope: W_enc stored [d_in, d_sae]
        layout, known = "Gemma Scope params.npz", {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
        W_enc = _expect(raw, "W_enc", tuple(raw["W_enc"].shape) if "W_enc" in raw else (), path, layout)
        if W_enc.ndim != 2:
            raise SAEError(f"{path.name} ({layout}): W_enc must be a matrix, got shape {tuple(W_enc.shape)}")
        d_in, d_sae = W_enc.shape
        d_out = raw["b_dec"].shape[0] if "b_dec" in raw else -1
        out = {"W_enc": W_enc, "W_dec": _expect(raw, "W_dec", (d_sae, d_out), path, layout),
               "threshold": _expect(raw, "threshold", (d_sae,), path, layout)}
    else:   # circuit-tracer's own: W_enc [d_sae, d_in]
        layout = "circuit-tracer layer file"
        known = {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "threshold", "W_skip"}
        if "log_thresholds" in raw or "log_threshold" in raw:
            raise SAEError(f"{path.name}: log thresholds are not a circuit-tracer layout (it refuses them too)")
        for name in ("b_enc", "b_dec", "W_enc", "W_dec"):
            if name not in raw:
                raise SAEError(f"{path.name} ({layout}): weight {name!r} missing (have {sorted(raw)})")
        d_sae, d_out = raw["b_enc"].shape[0], raw["b_dec"].shape[0]
        W_enc = raw["W_enc"]
        if W_enc.ndim != 2 or W_enc.shape[0] != d_sae:
            raise SAEError(f"{path.name} ({layout}): W_enc has shape {tuple(W_enc.shape)}, expected "
                           f"[d_sae={d_sae}, d_in] (circuit-tracer stores it as F.linear's weight)")
        d_in = W_enc.shape[1]
        W_dec = raw["W_dec"]
        if tuple(W_dec.shape) == (d_out, d_sae) and d_out != d_sae:   # circuit-tracer < 0.2 stored W_dec.T
            W_dec = W_dec.T
        out = {"W_enc": W_enc.T, "W_dec": _expect({"W_dec": W_dec}, "W_dec", (d_sae, d_out), path, layout)}
        thr = raw.get("activation_function.threshold", raw.get("threshold"))
        if thr is not None:
            out["threshold"] = _expect({"threshold": thr}, "threshold", (d_sae,), path, layout)
        if "W_skip" in raw:
            out["W_skip"] = _expect(raw, "W_skip", (d_out, d_in), path, layout).T
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SAEError(f"{path.name} ({layout}): unexpected weights {unknown}: refusing to guess how to use them")
    out["b_enc"] = _expect(raw, "b_enc", (out["W_enc"].shape[1],), path, layout)
    out["b_dec"] = _expect(raw, "b_dec", (out["W_dec"].shape[1],), path, layout)
    if "threshold" in out and bool((out["threshold"] < 0).any()):
        raise SAEError(f"{path.name}: negative JumpReLU thresholds: circuit-tracer would pass negative "
                       "activations through (h * (h > threshold)); mechviz's JumpReLU cannot represent that")
    return out, layout


def _clt_error(where: str) -> SAEError:
    return SAEError(f"{where}: a cross-layer transcoder (CLT). mechviz's SAE reads one site and writes one site, "
                    "while a CLT feature writes to every later layer's MLP output, so mechviz cannot load it as "
                    "per-layer transcoders without changing what it computes; use a per-layer transcoder set")


def _fold_norm(w: dict, norm, layer: int) -> None:
    """Fold the pre-MLP norm's affine map (mlp_in = n * weight + bias) into an encoder that reads n."""
    weight, bias = (norm, None) if torch.is_tensor(norm) or isinstance(norm, np.ndarray) else norm
    weight = torch.as_tensor(weight, dtype=torch.float64)
    bias = torch.zeros_like(weight) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    d_in = w["W_enc"].shape[0]
    if weight.shape != (d_in,) or bias.shape != (d_in,):
        raise SAEError(f"mlp_norm[{layer}]: weight and bias must be [{d_in}] vectors, got {tuple(weight.shape)} "
                       f"and {tuple(bias.shape)}")
    if bool((weight == 0).any()):
        raise SAEError(f"mlp_norm[{layer}] has zero weights: the normalised input cannot be recovered from mlp_in")
    W = w["W_enc"].to(torch.float64)
    w["b_enc"] = (w["b_enc"].to(torch.float64) - (bias / weight) @ W)
    w["W_enc"] = W / weight[:, None]


def mlp_norm_weights(model) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer, the pre-MLP norm's effective ``(weight, bias)`` of a HuggingFace causal LM (or a mechviz adapter
    wrapping one), so that ``mlp_in = normalised * weight + bias``: what ``load_circuit_tracer_transcoders(...,
    mlp_norm=...)`` needs for sets that read ``ln2.hook_normalized``. GPT-2's ``ln_2``; Gemma-2/3's
    ``pre_feedforward_layernorm`` (weight ``1 + w``, as Gemma's RMSNorm applies it); otherwise the
    ``post_attention_layernorm`` (Llama, Qwen, Gemma 1, ...). Bias None for an RMSNorm."""
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "model", None), torch.nn.Module):
        model = model.model   # a mechviz adapter
    base = getattr(model, "transformer", None) or getattr(model, "model", None) or model
    layers = getattr(base, "h", None) if hasattr(base, "h") else getattr(base, "layers", None)
    if layers is None:
        raise SAEError(f"cannot find the transformer blocks of {type(model).__name__}: pass mlp_norm yourself")
    out = []
    for i, block in enumerate(layers):
        norm = next((getattr(block, n) for n in ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm")
                     if hasattr(block, n)), None)
        if norm is None or getattr(norm, "weight", None) is None:
            raise SAEError(f"layer {i} of {type(model).__name__}: no pre-MLP norm with a weight found (looked for "
                           "ln_2, pre_feedforward_layernorm, post_attention_layernorm): pass mlp_norm yourself")
        w = norm.weight.detach().float()
        if type(norm).__name__.startswith("Gemma"):   # Gemma's RMSNorm multiplies by (1 + weight)
            w = 1 + w
        b = getattr(norm, "bias", None)
        out.append((w, None if b is None else b.detach().float()))
    return out


# -- the loader --------------------------------------------------------------------------------------------
def load_circuit_tracer_transcoders(source, *, root=None, device=None, dtype=None,
                                    mlp_norm=None) -> list[SAE]:
    """One :class:`SAE` per layer (kind ``"transcoder"`` or ``"skip_transcoder"``) from a circuit-tracer
    transcoder set: a local folder or config.yaml, a Hugging Face repo id (``org/repo[/subfolder][@rev]``,
    or circuit-tracer's ``"gemma"`` / ``"llama"``) found under ``root`` or in the local hub cache. See the
    module docstring for the layouts and sites. ``mlp_norm``: per layer, the pre-MLP norm's ``weight`` or
    ``(weight, bias)`` (needed when the set reads ``ln2.hook_normalized``; :func:`mlp_norm_weights` reads them off
    an HF model). ``dtype``: default float32.

    >>> import pathlib, tempfile, torch, yaml
    >>> from safetensors.torch import save_file
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.yaml").write_text(yaml.safe_dump({"model_kind": "transcoder_set",
    ...     "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}))
    >>> save_file({"W_enc": torch.eye(4), "W_dec": 2 * torch.eye(4), "b_enc": torch.zeros(4),
    ...            "b_dec": torch.zeros(4)}, str(d / "layer_0.safetensors"))
    >>> tcs = load_circuit_tracer_transcoders(d)
    >>> tcs
    [SAE(transcoder, relu, d_in=4, d_sae=4, site='mlp_in.0', site_out='mlp_out.0', d_out=4)]
    >>> tcs[0].forward(torch.tensor([1., -1., 0., 3.]))
    tensor([2., 0., 0., 6.])
    """
    import yaml

    cfg_path, repo_id = _find_config(source, root)
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SAEError(f"{cfg_path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEError(f"{cfg_path}: expected a mapping (model_kind, feature_input_hook, ...)")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind == "cross_layer_transcoder":
        raise _clt_error(str(cfg_path))
    if kind != "transcoder_set":
        raise SAEError(f"{cfg_path}: unknown model_kind {kind!r} (circuit-tracer knows transcoder_set and "
                       "cross_layer_transcoder)")
    hook_in, hook_out = cfg.get("feature_input_hook"), cfg.get("feature_output_hook")
    if hook_in not in INPUT_HOOKS or hook_out not in OUTPUT_HOOKS:
        raise SAEError(f"{cfg_path}: feature_input_hook {hook_in!r} / feature_output_hook {hook_out!r}: mechviz "
                       f"maps inputs {sorted(INPUT_HOOKS)} and outputs {sorted(OUTPUT_HOOKS)}")
    files = _layer_files(cfg, cfg_path.parent, root)
    if hook_in == "ln2.hook_normalized":
        if mlp_norm is None:
            raise SAEError(f"{cfg_path}: these transcoders read ln2.hook_normalized, the pre-MLP norm's output "
                           "before its weight (and bias): pass mlp_norm=[weight or (weight, bias) per layer] to "
                           "fold it in so they read mechviz's mlp_in (Gemma-2: weight = 1 + the RMSNorm weight)")
        if len(mlp_norm) != len(files):
            raise SAEError(f"mlp_norm has {len(mlp_norm)} entries for {len(files)} layers")
    dtype = dtype or torch.float32
    saes, d_sae = [], None
    for layer, path in enumerate(files):
        w, layout = _layer_weights(path)
        if hook_in == "ln2.hook_normalized":
            _fold_norm(w, mlp_norm[layer], layer)
        if d_sae is not None and w["W_enc"].shape[1] != d_sae:
            raise SAEError(f"{path.name}: {w['W_enc'].shape[1]} features, layer 0 has {d_sae}: circuit-tracer "
                           "needs one width for the whole set")
        d_sae = w["W_enc"].shape[1]
        info: dict[str, Any] = {"format": "circuit-tracer", "layout": layout, "file": str(path), "layer": layer,
                                "feature_input_hook": hook_in, "feature_output_hook": hook_out,
                                "repo_id": repo_id, "scan": cfg.get("scan")}
        sae = SAE(W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
                  architecture="jumprelu" if "threshold" in w else "relu", threshold=w.get("threshold"),
                  apply_b_dec_to_input=False, kind="skip_transcoder" if "W_skip" in w else "transcoder",
                  W_skip=w.get("W_skip"), site=f"{INPUT_HOOKS[hook_in]}.{layer}",
                  site_out=f"{OUTPUT_HOOKS[hook_out]}.{layer}", hook_name=f"blocks.{layer}.{hook_in}",
                  hook_name_out=f"blocks.{layer}.{hook_out}", model_name=cfg.get("model_name"), cfg=info)
        saes.append(sae.to(device=device, dtype=dtype))
    return saes
