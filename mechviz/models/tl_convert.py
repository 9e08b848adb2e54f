"""A TransformerLens copy of a HuggingFace causal LM, made in memory from its weights (nothing downloaded).

``HookedTransformer.from_pretrained`` looks the model up by name on the hub; :func:`hf_to_tl` instead
reads the architecture from the model's own config and its weights from the model, through
TransformerLens' config and weight converters, so it works offline and on models that are on no hub.
No LayerNorm folding, weight centring or value-bias folding is applied: every activation equals the
HF model's at the same site (so an SAE trained on the HF model reads the same inputs).

TransformerLens is an optional dependency: it is imported when :func:`hf_to_tl` is called.
"""

from __future__ import annotations

import copy
import tempfile
import warnings

from .base import UnsupportedModelError

#: HF model_type -> name of TransformerLens' weight converter (``transformer_lens.pretrained.weight_conversions``)
CONVERTERS = {"gpt2": "convert_gpt2_weights", "gpt_neox": "convert_neox_weights", "llama": "convert_llama_weights"}

# TransformerLens picks some architectures by substrings of the model *name*, here the temporary
# folder's path; a path holding one of these would be misread
_NAME_TRIGGERS = ("llama", "gemma", "wav2vec2")


def _import_tl():
    try:
        import transformer_lens  # noqa: F401
    except ImportError as exc:
        raise ImportError("a TransformerLens copy of the model needs the optional transformer-lens package: "
                          "pip install transformer-lens (or mechviz-lab[tl])") from exc


def check_tokenizer(tokenizer) -> None:
    """TransformerLens (3 and 4) reloads a tokenizer from its folder: refuse one built in memory."""
    if tokenizer is not None and not getattr(tokenizer, "init_kwargs", {}).get("name_or_path"):
        raise ValueError("TransformerLens reloads the tokenizer it is given from its folder (with add_bos_token=True), "
                         "and this one was built in memory: save it (tokenizer.save_pretrained(folder)) and load it "
                         "from there, or pass tokenizer=None")


def model_name(model) -> str:
    """The name a TransformerLens copy gets: ``config.name_or_path`` without the organisation, else the model type."""
    return (getattr(model.config, "_name_or_path", "") or model.config.model_type).rstrip("/").rsplit("/", 1)[-1]


def hf_to_tl(model, tokenizer=None, *, device=None):
    """The same weights as a TransformerLens ``HookedTransformer``, in eval mode.

    ``model``: a HuggingFace ``GPT2LMHeadModel``, ``GPTNeoXForCausalLM`` or ``LlamaForCausalLM``
    (grouped-query attention included); it is not modified. ``tokenizer``: its HF tokenizer, attached
    to the copy (TransformerLens reloads it from its folder with ``add_bos_token=True``, locally, so
    it must have been loaded from one), or None. ``device``: where the copy lives (default: the
    model's device); its dtype is the model's.

    The copy is converted without LayerNorm folding, weight centring, unembedding centring or
    value-bias folding, so its logits and every hook's activation equal the HF model's (up to float
    rounding). Its ``cfg.model_name`` is the HF model's name (``config.name_or_path`` without the
    organisation, else its model_type), so SAEs that name the model fit both alike.

    TransformerLens 3 marks ``HookedTransformer`` deprecated in favour of ``TransformerBridge``; that
    one notice is silenced while the copy is built, since a ``HookedTransformer`` is what was asked for.

    >>> from mechviz.models.tl_convert import hf_to_tl          # doctest: +SKIP
    >>> tl = hf_to_tl(hf_model, tokenizer)                      # doctest: +SKIP
    """
    _import_tl()
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained import weight_conversions

    config = model.config
    if config.model_type not in CONVERTERS:
        raise UnsupportedModelError(
            f"hf_to_tl converts HuggingFace model types {', '.join(sorted(CONVERTERS))}; this model is "
            f"{config.model_type!r} ({type(model).__name__})")
    check_tokenizer(tokenizer)
    param = next(model.parameters())
    config = copy.deepcopy(config)  # TransformerLens reads the config from a folder; the copy is what we save
    config.architectures = [type(model).__name__]
    if config.model_type == "gpt2":  # TL reads GPT-2's legacy n_ctx, which transformers 5 dropped
        config.n_ctx = config.n_positions
    with tempfile.TemporaryDirectory(prefix="mechviz-tl-") as folder:
        if any(t in folder.lower() for t in _NAME_TRIGGERS):
            raise RuntimeError(f"the temporary folder {folder!r} contains one of {_NAME_TRIGGERS}, which "
                               "TransformerLens would read as an architecture name: set TMPDIR elsewhere")
        config.save_pretrained(folder)
        cfg_dict = loading.convert_hf_model_config(folder)
    cfg_dict.pop("original_architecture", None)
    cfg_dict.pop("tokenizer_name", None)  # else TL would load a tokenizer from the temporary folder
    name = model_name(model)
    cfg = HookedTransformerConfig(**cfg_dict, original_architecture=type(model).__name__, model_name=name,
                                  device=str(device or param.device), dtype=param.dtype,
                                  init_weights=False)  # every weight is loaded below
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        tl = HookedTransformer(cfg, tokenizer=tokenizer)
    state = getattr(weight_conversions, CONVERTERS[config.model_type])(model, cfg)
    tl.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False, refactor_factored_attn_matrices=False)
    return tl.eval()
