"""NV-Embed latent attention pooling: token states are the queries, a trainable latent array is both keys and
values; GEGLU MLP with residuals; then the masked mean over tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler, PoolInput, masked_mean
from .cross_attention import PRESETS, CrossAttentionBlock, resolve_size
from .registry import register


@register
class LatentAttentionPooler(Pooler):
    name = "latent"

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        self.size = resolve_size("latent", hidden_size, options)
        super().__init__(hidden_size, num_layers, attention, **options)
        self.latents = nn.Parameter(torch.randn(self.size.n_latents, hidden_size))
        self.block = CrossAttentionBlock(hidden_size, self.size)

    @classmethod
    def option_space(cls) -> dict[str, tuple[Any, ...]]:
        return {"preset": tuple(PRESETS["latent"])}

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        states = inputs.last_hidden.to(self.latents.dtype)
        context = self.latents.unsqueeze(0).expand(states.shape[0], -1, -1)
        return masked_mean(self.block(states, context), inputs.pool_mask)
