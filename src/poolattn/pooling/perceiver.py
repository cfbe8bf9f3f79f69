"""The paper's trainable pooling head: latent queries cross-attend over a set of states, then the latents are
averaged (a Perceiver resampler). Shared by ``trainable`` (last layer) and ``multilayer``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler
from .cross_attention import CrossAttentionBlock, resolve_size


class PerceiverPooler(Pooler):
    """Base of the Perceiver-style poolers: owns the latents and the cross-attention block."""

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        self.size = resolve_size("perceiver", hidden_size, options)
        super().__init__(hidden_size, num_layers, attention, **options)
        self.latents = nn.Parameter(torch.randn(self.size.n_latents, hidden_size))
        self.block = CrossAttentionBlock(hidden_size, self.size)

    def attend(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, N, H), mask (B, N) -> mean over latents (B, H), in float32."""
        latents = self.latents.unsqueeze(0).expand(states.shape[0], -1, -1)
        return self.block(latents, states.to(self.latents.dtype), mask).mean(dim=1)
