"""Tiny random-initialised decoders with a small trained tokenizer: the fastest models for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pooling and attention decide how a decoder becomes an embedding model.",
    "Instruct: Retrieve semantically similar text.\nQuery: what is a cat?",
    "Bidirectional attention removes the causal mask; the padding mask stays.",
    "Numbers 0123456789 and punctuation ,.;:!?'\"()[]{} appear too.",
] * 4

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8, "sliding_window": 4},
    "phi3": {"pad_token_id": 0},
    "gpt2": {},
}
#: families transformers offers no SDPA kernel for
EAGER_ONLY = {"gemma2"}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that prepends <s> like Llama's."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_config(family: str, **overrides):
    if family == "gpt2":
        kw = dict(n_embd=32, n_layer=3, n_head=4, n_positions=256, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    else:
        kw = {**COMMON, **FAMILIES[family], "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    kw.update(overrides)
    return AutoConfig.for_model(family, **kw)


def save_tiny(folder: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a random model of ``family`` and the tokenizer into ``folder``."""
    torch.manual_seed(seed)
    AutoModel.from_config(make_config(family, **overrides)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
