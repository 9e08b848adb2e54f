"""Shared fixtures: small random-weight models built from configs (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

# the HF -> TransformerLens converter the tests compare against (TransformerLens is imported when it is called)
from mechviz.models.tl_convert import hf_to_tl as tl_from_hf  # noqa: F401

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
