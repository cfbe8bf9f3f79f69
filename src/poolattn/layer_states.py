"""One vector per text from a decoder layer's token states: the reductions a multilayer head pools and the
layer-wise analysis compares (``last``, ``mean``, ``mean_no_sink``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .pooling import PoolInput, last_token, masked_mean


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


LAYER_REDUCTIONS = ("last", "mean", "mean_no_sink")


def reduce_states(
    states: torch.Tensor,
    attention_mask: torch.Tensor,
    pool_mask: torch.Tensor,
    last_index: torch.Tensor,
    reduction: str,
) -> torch.Tensor:
    """One vector per text from a layer's token states (float32).

    ``last``: the final real token; ``mean``: masked mean over the pooled tokens; ``mean_no_sink``: the same mean
    without each sequence's first real token, the attention sink whose intermediate states carry massive
    activations (norms ~100× the other tokens' in SmolLM2 from layer 12 on) that would otherwise dominate the
    mean. A text left with no pooled token keeps its pooled tokens.
    """
    if reduction == "last":
        return last_token(states, last_index).float()
    if reduction == "mean":
        return masked_mean(states, pool_mask)
    if reduction == "mean_no_sink":
        return masked_mean(states, without_sink(attention_mask, pool_mask))
    raise ValueError(f"unknown layer reduction {reduction!r}; choose one of {LAYER_REDUCTIONS}")


def without_sink(attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """``pool_mask`` minus each row's first real token, unless nothing would be left."""
    first = attention_mask.long().argmax(dim=1)
    trimmed = pool_mask.bool().clone()
    trimmed[torch.arange(pool_mask.shape[0], device=pool_mask.device), first] = False
    keep_all = trimmed.sum(dim=1) == 0
    return torch.where(keep_all[:, None], pool_mask.bool(), trimmed)


def stack_layers(
    collected: dict[int, torch.Tensor],
    layers: Sequence[int],
    final_hidden: torch.Tensor,
    inputs: PoolInput,
    reduction: str,
) -> torch.Tensor:
    """(B, L, H) from the hooked layers plus the final-normed last layer."""
    vectors = [
        collected[layer]
        if layer in collected
        else reduce_states(final_hidden, inputs.attention_mask, inputs.pool_mask, inputs.last_index, reduction)
        for layer in layers
    ]
    return torch.stack(vectors, dim=1)
