"""Model adapters: one interface (:class:`ModelAdapter`) over HuggingFace and TransformerLens (3.x
``HookedTransformer``, 4.x ``TransformerBridge``) models.

>>> from mechviz.models import wrap                          # doctest: +SKIP
>>> adapter = wrap(hf_model, tokenizer)                      # doctest: +SKIP
>>> run = adapter.run("Hello world", capture=["resid_post"]) # doctest: +SKIP
"""

from __future__ import annotations

from .base import Aborted, ModelAdapter, PromptError, Run, UnsupportedModelError
from .hf import ARCHS, ArchSpec, HFAdapter
from .sites import SITES, TL4_HOOKS, TL_HOOKS, Site, SiteError, parse_sites

__all__ = ["wrap", "ModelAdapter", "HFAdapter", "NNsightAdapter", "TLAdapter", "TLBridgeAdapter", "Run", "Site", "SITES", "TL_HOOKS",
           "TL4_HOOKS", "ARCHS", "ArchSpec", "parse_sites", "SiteError", "PromptError", "UnsupportedModelError",
           "Aborted"]


def __getattr__(name):
    # imported lazily, though they import no TransformerLens themselves: it is an optional dependency
    if name == "TLAdapter":
        from .tl import TLAdapter
        return TLAdapter
    if name == "NNsightAdapter":
        from .nnsight import NNsightAdapter
        return NNsightAdapter
    if name == "TLBridgeAdapter":
        from .tl_bridge import TLBridgeAdapter
        return TLBridgeAdapter
    raise AttributeError(name)


def _transformer_lens_class(model) -> str | None:
    """The TransformerLens class ``model`` is (or derives from), by the names in its class hierarchy,
    so that telling the backends apart never imports TransformerLens."""
    for cls in type(model).__mro__:
        if (cls.__module__ or "").split(".")[0] == "transformer_lens" and cls.__name__ in (
                "TransformerBridge", "BridgeCore", "HookedTransformer"):
            return cls.__name__
    return None


def wrap(model, tokenizer=None, name: str | None = None, remote: bool = False) -> ModelAdapter:
    """Wrap a HuggingFace causal LM (with its tokenizer), a TransformerLens 3 ``HookedTransformer``, a
    TransformerLens 4 ``TransformerBridge`` (which carry their own tokenizers), or an nnsight ``LanguageModel`` /
    ``NNsight`` envoy of a HuggingFace causal LM (``remote=True``: run it on NDIF)."""
    if isinstance(model, ModelAdapter):
        return model
    from .nnsight import is_nnsight_model

    if is_nnsight_model(model):  # checked before the HF test: an envoy forwards .config to its module
        from .nnsight import NNsightAdapter
        return NNsightAdapter(model, tokenizer=tokenizer, name=name, remote=remote)
    if remote:
        raise UnsupportedModelError(f"remote=True runs nnsight models on NDIF; got a {type(model).__name__}: wrap "
                                    "it as nnsight.LanguageModel(repo_id) first")
    kind = _transformer_lens_class(model)
    if kind == "TransformerBridge":  # checked first: a bridge also has hook_dict and cfg
        from .tl_bridge import TLBridgeAdapter
        return TLBridgeAdapter(model, name=name)
    if kind == "BridgeCore":
        raise UnsupportedModelError(
            f"cannot wrap a {type(model).__name__}: a TransformerLens bridge with no local PyTorch module (vLLM, "
            "inspect) cannot be hooked block by block; pass a TransformerBridge")
    if kind == "HookedTransformer" or hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        from .tl import TLAdapter
        return TLAdapter(model, name=name)
    if hasattr(model, "config") and hasattr(model.config, "model_type"):
        return HFAdapter(model, tokenizer=tokenizer, name=name)
    raise UnsupportedModelError(
        f"cannot wrap a {type(model).__name__}: pass a HuggingFace *ForCausalLM model, a "
        "TransformerLens HookedTransformer, a TransformerLens 4 TransformerBridge or an nnsight LanguageModel"
    )
