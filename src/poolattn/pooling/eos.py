"""EOS / last-token pooling: the final real token of the last layer."""

from __future__ import annotations

import torch

from .base import Pooler, PoolInput, last_token
from .registry import register


@register
class EosPooler(Pooler):
    name = "eos"

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        return last_token(inputs.last_hidden, inputs.last_index).float()
