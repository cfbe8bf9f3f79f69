"""Mean pooling over the pooled tokens of the last layer."""

from __future__ import annotations

import torch

from .base import Pooler, PoolInput, masked_mean
from .registry import register


@register
class MeanPooler(Pooler):
    name = "mean"

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        return masked_mean(inputs.last_hidden, inputs.pool_mask)
