"""mechviz's bundled default model zoo.

``mechviz/zoo/default`` ships a small GPT-2 style causal LM (HF ``GPT2LMHeadModel``, 4 layers),
its ByteLevel BPE tokenizer and a TopK SAE (SAELens on-disk format) on one residual-stream
site, all trained from scratch by ``scripts/train_default_model.py`` on offline corpora
(Brown corpus, King James Bible, Python's pydoc topics; see ``default/LICENSES.md``).
``default/saes/resid_post.<L>`` (a TopK SAE per layer; ``resid_post.1`` is ``default/sae``) and
``default/transcoders/mlp.<L>`` (a per-layer JumpReLU transcoder from the MLP's input, ``ln_2``'s
output, to ``mlp_out.<L>``), SAELens 6 folders, are trained by ``scripts/train_default_dictionaries.py``.
Quality numbers are in ``default/metrics.json`` (``scripts/measure_default_model.py``).

This module does not import torch/transformers at import time.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
MODEL_DIR = DEFAULT_DIR / "model"
SAE_DIR = DEFAULT_DIR / "sae"
#: one TopK SAE per layer: ``SAES_DIR / "resid_post.<L>"``
SAES_DIR = DEFAULT_DIR / "saes"
#: one per-layer transcoder per layer (reads ``ln_2``'s output, writes ``mlp_out.<L>``): ``TRANSCODERS_DIR / "mlp.<L>"``
TRANSCODERS_DIR = DEFAULT_DIR / "transcoders"
METRICS_PATH = DEFAULT_DIR / "metrics.json"

#: the bundled model's name: what its SAE's config records as ``model_name``, and what
#: :func:`load_default_model` names the model, so that :func:`mechviz.saes.check_sae_fits` accepts the pair
MODEL_NAME = "mechviz-default"
#: canonical mechviz site name of the bundled SAE (raw residual stream after block 1)
DEFAULT_SAE_SITE = "resid_post.1"
#: the TransformerLens-style hook name of that site (also stored in the SAE's cfg.json)
DEFAULT_SAE_HOOK = "blocks.1.hook_resid_post"

__all__ = [
    "DEFAULT_DIR",
    "MODEL_DIR",
    "SAE_DIR",
    "SAES_DIR",
    "TRANSCODERS_DIR",
    "dictionary_dirs",
    "METRICS_PATH",
    "MODEL_NAME",
    "DEFAULT_SAE_SITE",
    "DEFAULT_SAE_HOOK",
    "load_default_model",
    "load_default_sae",
    "load_metrics",
]


BACKENDS = ("hf", "transformer_lens")
N_LAYERS = 4


def dictionary_dirs(which: str = "default") -> list[Path]:
    """The bundled dictionaries' folders: ``"default"`` the SAE on ``resid_post.1``; ``"layers"`` an SAE per
    layer (``resid_post.0..3``); ``"transcoders"`` a transcoder per layer (``mlp_in.L -> mlp_out.L``);
    ``"all"`` the SAEs then the transcoders.

    >>> [p.name for p in dictionary_dirs("all")]
    ['resid_post.0', 'resid_post.1', 'resid_post.2', 'resid_post.3', 'mlp.0', 'mlp.1', 'mlp.2', 'mlp.3']
    """
    layers = [SAES_DIR / f"resid_post.{layer}" for layer in range(N_LAYERS)]
    transcoders = [TRANSCODERS_DIR / f"mlp.{layer}" for layer in range(N_LAYERS)]
    table = {"default": [SAE_DIR], "layers": layers, "transcoders": transcoders, "all": layers + transcoders}
    if which not in table:
        raise ValueError(f"which must be one of {', '.join(map(repr, table))}, not {which!r}")
    return table[which]


def load_default_model(device: str = "cpu", attn_implementation: str | None = None, backend: str = "hf"):
    """Return ``(model, tokenizer)``: the bundled model (eval mode) and its tokenizer, offline.

    ``backend="hf"`` (default): the HuggingFace ``GPT2LMHeadModel``, loaded with the regular HF
    loaders from :data:`MODEL_DIR` (``local_files_only=True``), and its tokenizer. Pass
    ``attn_implementation="eager"`` if you need attention weights from HF directly
    (``output_attentions=True``; mechviz switches to eager attention itself).

    ``backend="transformer_lens"``: the same weights as a TransformerLens ``HookedTransformer``
    (needs the optional ``transformer-lens`` package), converted in memory by
    :func:`mechviz.models.tl_convert.hf_to_tl` without LayerNorm folding or centring, so every hook
    equals the HF model's site and the bundled SAE (trained on the raw HF residual stream) applies;
    the tokenizer returned is the one attached to it (``model.tokenizer``, which TransformerLens
    reloads from the same folder with ``add_bos_token=True``).

    Either model is named :data:`MODEL_NAME` (``"mechviz-default"``, the name in the SAE's config),
    so ``mechviz.Lab(*load_default_model(backend=...), sae=SAE_DIR)`` works. Nothing is downloaded
    and no progress bar is drawn (transformers' "Loading weights" bar is off for this call only).

    >>> import mechviz, mechviz.zoo
    >>> model, tokenizer = mechviz.zoo.load_default_model()
    >>> mechviz.wrap(model, tokenizer).name
    'mechviz-default'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "transformer_lens" and attn_implementation is not None:
        raise ValueError("attn_implementation applies to the HF backend only (backend='hf')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"local_files_only": True}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    with _no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), **kw)
    model.config.name_or_path = model.name_or_path = MODEL_NAME  # was the folder's path
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)
    if backend == "transformer_lens":
        from ..models.tl_convert import hf_to_tl

        model = hf_to_tl(model, tokenizer)
        return model, model.tokenizer
    return model, tokenizer


@contextmanager
def _no_progress_bars():
    """transformers' own progress bars off inside the block, and as they were afterwards. With
    ``set_tqdm_hook`` (transformers 5.x) a hook is swapped in and the previous one put back: the user's
    setting and huggingface_hub's bars are untouched. Older versions: the global switch, turned back on."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is not None:  # transformers 5.x: a hook on transformers' tqdm factory, handing back the previous one
        previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
        try:
            yield
        finally:
            set_hook(previous)
        return
    enabled = hf_logging.is_progress_bar_enabled()  # older versions: the global switch, switched back
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_default_sae(device: str = "cpu"):
    """Return the bundled ``sae_lens.SAE`` (needs the optional ``sae-lens`` dependency)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(SAE_DIR), device=device)


def load_metrics() -> dict:
    """The recorded quality metrics (``default/metrics.json``), or ``{}`` if absent."""
    if not METRICS_PATH.exists():
        return {}
    return json.loads(METRICS_PATH.read_text())
