"""Position-weighted mean (SGPT): the k-th pooled token weighs k, so later tokens, which under causal
attention have seen more of the text, count more. Ranks count pooled tokens only, so padding on either side
and excluded instruction tokens change nothing."""

from __future__ import annotations

import torch

from .base import Pooler, PoolInput
from .registry import register


@register
class WeightedMeanPooler(Pooler):
    name = "weighted_mean"

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        mask = inputs.pool_mask.to(torch.float32)
        weights = mask.cumsum(-1) * mask
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
        return torch.einsum("bth,bt->bh", inputs.last_hidden.to(torch.float32), weights)
