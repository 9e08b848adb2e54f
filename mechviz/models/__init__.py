"""Model adapters: one interface (:class:`ModelAdapter`) over HuggingFace and TransformerLens models.

>>> from mechviz.models import wrap                          # doctest: +SKIP
>>> adapter = wrap(hf_model, tokenizer)                      # doctest: +SKIP
>>> run = adapter.run("Hello world", capture=["resid_post"]) # doctest: +SKIP
"""

from __future__ import annotations

from .base import Aborted, ModelAdapter, PromptError, Run, UnsupportedModelError
from .hf import ARCHS, ArchSpec, HFAdapter
from .sites import SITES, TL_HOOKS, Site, SiteError, parse_sites

__all__ = ["wrap", "ModelAdapter", "HFAdapter", "TLAdapter", "Run", "Site", "SITES", "TL_HOOKS", "ARCHS",
           "ArchSpec", "parse_sites", "SiteError", "PromptError", "UnsupportedModelError", "Aborted"]


def __getattr__(name):
    if name == "TLAdapter":  # imported lazily: transformer_lens is an optional dependency
        from .tl import TLAdapter
        return TLAdapter
    raise AttributeError(name)


def wrap(model, tokenizer=None, name: str | None = None) -> ModelAdapter:
    """Wrap a HuggingFace causal LM (with its tokenizer) or a TransformerLens ``HookedTransformer``."""
    if isinstance(model, ModelAdapter):
        return model
    if type(model).__name__ == "HookedTransformer" or hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        from .tl import TLAdapter
        return TLAdapter(model, name=name)
    if hasattr(model, "config") and hasattr(model.config, "model_type"):
        return HFAdapter(model, tokenizer=tokenizer, name=name)
    raise UnsupportedModelError(
        f"cannot wrap a {type(model).__name__}: pass a HuggingFace *ForCausalLM model or a "
        "TransformerLens HookedTransformer"
    )
