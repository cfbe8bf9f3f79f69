"""Masked next-token prediction (MNTP), LLM2Vec's first adaptation step: under bidirectional attention, a fraction
of the tokens is masked and token ``i`` is predicted from the hidden state at position ``i - 1`` by the backbone's
own LM head, so a decoder trained to predict the next token learns to use the context on both sides.

Masking follows BERT as LLM2Vec does: each eligible token (not special, not the first) is chosen with probability
``mask_probability``; a chosen token becomes the mask token 80 % of the time, a random token 10 % and stays as it
is 10 %. The masks of a batch are a function of ``(seed, step)`` alone, so a resumed run masks exactly as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..backbone import Attention, BackboneError, load_backbone, run_backbone
from ..model import Batch, EmbeddingConfig, EmbeddingModel, load_tokenizer

#: The mask token when the tokenizer has none (LLM2Vec's "blank" choice for Llama and Mistral tokenizers).
FALLBACK_MASK = "_"
#: Of the chosen tokens: the share replaced by the mask token, and the share replaced by a random token.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


@dataclass(frozen=True)
class MaskToken:
    """The token that stands for a masked one, and why it was chosen."""

    text: str
    id: int
    source: str


def choose_mask_token(tokenizer: PreTrainedTokenizerBase, spec: str) -> MaskToken:
    """``auto``: the tokenizer's mask token, else :data:`FALLBACK_MASK`; otherwise ``spec``, which must be one token."""
    if spec == "auto":
        if tokenizer.mask_token is not None and tokenizer.mask_token_id is not None:
            return MaskToken(str(tokenizer.mask_token), int(tokenizer.mask_token_id), "the tokenizer's mask token")
        spec, source = FALLBACK_MASK, f"{FALLBACK_MASK!r}: the tokenizer has no mask token (LLM2Vec's blank)"
    else:
        source = "mask_token of the config"
    vocab = tokenizer.get_vocab()
    if spec in vocab:
        return MaskToken(spec, int(vocab[spec]), source)
    ids = tokenizer.encode(spec, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"mask_token {spec!r} is {len(ids)} tokens for this tokenizer; give a single token")
    return MaskToken(spec, int(ids[0]), source)


def load_lm(backbone: str, dtype: str, attn_implementation: str | None = None) -> PreTrainedModel:
    """The backbone with its causal-LM head (tied to the input embeddings where the model ties them); a folder
    without head weights is refused (:func:`~poolattn.backbone.load_backbone`) rather than read with a random head."""
    model = load_backbone(backbone, dtype=dtype, attn_implementation=attn_implementation, causal_lm=True)
    if model.get_output_embeddings() is None:
        raise BackboneError(f"{backbone} has no LM head; masked next-token prediction needs one")
    return model


def logit_softcap(model: PreTrainedModel) -> float | None:
    """The final-logit soft cap of families that have one (Gemma 2), else None."""
    value = getattr(model.config, "final_logit_softcapping", None)
    return float(value) if value else None


def eligible_positions(batch: Batch, special_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool: real tokens that may be masked (not special, not the first, which has no predecessor)."""
    eligible = batch.attention_mask.bool() & ~torch.isin(batch.input_ids, torch.tensor(list(special_ids)))
    eligible[:, 0] = False
    return eligible


def mask_batch(
    batch: Batch,
    *,
    probability: float,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    seed: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrupted input ids and the (B, T) bool of masked positions; a function of ``seed`` alone. At least one
    token of the batch is chosen (so the loss is defined)."""
    rng = np.random.default_rng(list(seed))
    eligible = eligible_positions(batch, special_ids)
    shape = tuple(eligible.shape)
    chosen = torch.from_numpy(rng.random(shape) < probability) & eligible
    if not chosen.any():
        candidates = eligible.nonzero()
        if len(candidates) == 0:
            raise ValueError("no token of the batch can be masked (texts of special tokens only?)")
        row, col = candidates[int(rng.integers(len(candidates)))]
        chosen[row, col] = True
    draw = torch.from_numpy(rng.random(shape))
    random_ids = torch.from_numpy(rng.integers(0, vocab_size, shape))
    ids = batch.input_ids.clone()
    to_mask = chosen & (draw < MASK_SHARE)
    to_random = chosen & (draw >= MASK_SHARE) & (draw < MASK_SHARE + RANDOM_SHARE)
    ids[to_mask] = mask_id
    ids[to_random] = random_ids[to_random]
    return ids, chosen


class MaskedLM(nn.Module):
    """MNTP over an :class:`EmbeddingModel`'s backbone (it may carry a LoRA adapter) and the frozen LM head of its
    causal LM; ``attention = "causal"`` scores the same masked inputs without the adaptation's attention."""

    def __init__(
        self,
        model: EmbeddingModel,
        head: nn.Module,
        mask: MaskToken,
        softcap: float | None = None,
        attention: Attention = "bidirectional",
    ) -> None:
        super().__init__()
        self.model, self.mask, self.softcap, self.attention = model, mask, softcap, attention
        object.__setattr__(self, "head", head)  # shared with the embeddings where tied: not a trainable submodule
        tokenizer = model.tokenizer
        self.special_ids = sorted(set(tokenizer.all_special_ids) | {mask.id} - {None})  # type: ignore[operator]
        self.vocab_size = min(len(tokenizer), int(head.weight.shape[0]))

    def batch(self, texts: Sequence[str]) -> Batch:
        return self.model.tokenize(list(texts))

    def corrupt(self, batch: Batch, probability: float, seed: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_batch(
            batch,
            probability=probability,
            mask_id=self.mask.id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            seed=seed,
        )

    def logits(self, batch: Batch, ids: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, V) for the M chosen positions, each from the state one position earlier, and their labels."""
        device = self.model.device
        states = run_backbone(self.model.backbone, ids.to(device), batch.attention_mask.to(device), self.attention)
        rows, cols = chosen.nonzero(as_tuple=True)
        previous = states[rows.to(device), (cols - 1).to(device)]
        logits = self.head(previous.to(self.head.weight.dtype)).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits, batch.input_ids[rows, cols].to(device)

    def loss(self, batch: Batch, probability: float, seed: Sequence[int]) -> tuple[torch.Tensor, int, int]:
        """Mean cross-entropy over the masked tokens, the number predicted right and the number masked."""
        ids, chosen = self.corrupt(batch, probability, seed)
        logits, labels = self.logits(batch, ids, chosen)
        correct = int((logits.argmax(-1) == labels).sum())
        return F.cross_entropy(logits, labels), correct, len(labels)


def open_masked_lm(
    backbone: str,
    *,
    dtype: str = "float32",
    max_length: int = 64,
    mask_token: str = "auto",
    device: torch.device | str = "cpu",
) -> tuple[PreTrainedModel, MaskedLM]:
    """A backbone folder (or hub id) as a causal LM (its head frozen) and its bidirectional :class:`MaskedLM`."""
    causal = load_lm(backbone, dtype).to(device)
    causal.requires_grad_(False)
    tokenizer = load_tokenizer(backbone)
    design = EmbeddingConfig(
        backbone=backbone, attention="bidirectional", pooling="mean", dtype=dtype, max_length=max_length
    )
    model = EmbeddingModel(design, causal.base_model, tokenizer).to(device)
    mask = choose_mask_token(tokenizer, mask_token)
    return causal, MaskedLM(model, causal.get_output_embeddings(), mask, logit_softcap(causal))


@torch.no_grad()
def masked_metrics(
    lm: MaskedLM, texts: Sequence[str], probability: float, seed: int, batch_size: int = 16
) -> dict[str, float | int]:
    """Masked-token loss (mean over tokens) and top-1 accuracy on ``texts``, dropout off, with the same masks for
    the same texts, settings and seed whatever the weights (so two models compare on identical inputs)."""
    if not texts:
        raise ValueError("no texts to measure masked-token prediction on")
    was_training = lm.model.training
    lm.model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        for start in range(0, len(texts), batch_size):
            batch = lm.batch(texts[start : start + batch_size])
            ids, chosen = lm.corrupt(batch, probability, (seed, 1, start))
            logits, labels = lm.logits(batch, ids, chosen)
            total += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += len(labels)
    finally:
        lm.model.train(was_training)
    return {"loss": total / count, "accuracy": correct / count, "masked_tokens": count, "texts": len(texts)}
