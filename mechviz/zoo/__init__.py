"""mechviz's bundled default model zoo.

``mechviz/zoo/default`` ships a small GPT-2 style causal LM (HF ``GPT2LMHeadModel``, 4 layers),
its ByteLevel BPE tokenizer and a TopK SAE (SAELens on-disk format) on one residual-stream
site, all trained from scratch by ``scripts/train_default_model.py`` on offline corpora
(Brown corpus, King James Bible, Python's pydoc topics; see ``default/LICENSES.md``).
Quality numbers are in ``default/metrics.json`` (``scripts/measure_default_model.py``).

This module does not import torch/transformers at import time.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
MODEL_DIR = DEFAULT_DIR / "model"
SAE_DIR = DEFAULT_DIR / "sae"
METRICS_PATH = DEFAULT_DIR / "metrics.json"

#: canonical mechviz site name of the bundled SAE (raw residual stream after block 1)
DEFAULT_SAE_SITE = "resid_post.1"
#: the TransformerLens-style hook name of that site (also stored in the SAE's cfg.json)
DEFAULT_SAE_HOOK = "blocks.1.hook_resid_post"

__all__ = [
    "DEFAULT_DIR",
    "MODEL_DIR",
    "SAE_DIR",
    "METRICS_PATH",
    "DEFAULT_SAE_SITE",
    "DEFAULT_SAE_HOOK",
    "load_default_model",
    "load_default_sae",
    "load_metrics",
]


def load_default_model(device: str = "cpu", attn_implementation: str | None = None):
    """Return ``(model, tokenizer)``: the bundled GPT2LMHeadModel (eval mode) and its tokenizer.

    Loaded with the regular HF loaders from :data:`MODEL_DIR` (``local_files_only=True``,
    no network).  Pass ``attn_implementation="eager"`` if you need attention weights
    (``output_attentions=True``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"local_files_only": True}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), **kw)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)
    return model, tokenizer


def load_default_sae(device: str = "cpu"):
    """Return the bundled ``sae_lens.SAE`` (needs the optional ``sae-lens`` dependency)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(SAE_DIR), device=device)


def load_metrics() -> dict:
    """The recorded quality metrics (``default/metrics.json``), or ``{}`` if absent."""
    if not METRICS_PATH.exists():
        return {}
    return json.loads(METRICS_PATH.read_text())
