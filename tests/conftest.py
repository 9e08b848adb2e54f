"""Shared fixtures: small random-weight models built from configs (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MECHVIZ_TORCH_THREADS", "1")))

VOCAB = 97


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["The cat sat on the mat.", "When Mary and John went to the store, John gave a drink to Mary."] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer()


def build_hf(arch: str, seed: int = 0):
    """A tiny random-weight HF causal LM of the given architecture."""
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                              LlamaForCausalLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=max(VOCAB, 300), bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=48, n_head=4, n_positions=64, **common))
    if arch in ("neox", "neox_seq"):
        return GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                                intermediate_size=96, max_position_embeddings=64,
                                                rotary_pct=0.5, use_parallel_residual=(arch == "neox"),
                                                **common))
    if arch == "llama_gqa":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=96,
                                            max_position_embeddings=64, **common))
    raise ValueError(arch)


HF_ARCHS = ["gpt2", "neox", "neox_seq", "llama_gqa"]


def tl_from_hf(model, tokenizer=None):
    """The same weights as a TransformerLens HookedTransformer, through TL's own config and weight
    converters (no folding or centring, so activations are comparable site by site)."""
    import tempfile

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained import weight_conversions as wc

    with tempfile.TemporaryDirectory() as d:
        model.config.architectures = [type(model).__name__]
        if model.config.model_type == "gpt2":  # TL reads GPT-2's legacy n_ctx, which transformers 5 dropped
            model.config.n_ctx = model.config.n_positions
        model.config.save_pretrained(d)
        cfg_dict = loading.convert_hf_model_config(d)
    cfg_dict.pop("original_architecture", None)
    cfg_dict.pop("tokenizer_name", None)  # else TL would try to load a tokenizer from that path
    cfg = HookedTransformerConfig(**cfg_dict, original_architecture=type(model).__name__, device="cpu")
    convert = {"gpt2": wc.convert_gpt2_weights, "gpt_neox": wc.convert_neox_weights,
               "llama": wc.convert_llama_weights}[model.config.model_type]
    tl = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(convert(model, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    return tl.eval()
