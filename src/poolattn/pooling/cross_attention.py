"""The cross-attention block shared by the trainable heads, and their size presets.

``queries`` attend over ``context``; both are pre-normed, the attention output is added to the raw queries, then
a GEGLU feed-forward with its own residual. The Perceiver head (paper M2–M5) uses trainable latents as queries
and token (or layer) states as context; NV-Embed's latent attention uses token states as queries and trainable
latents as context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadSize:
    """Sizes of a trainable head."""

    n_latents: int
    heads: int
    head_dim: int
    mlp_ratio: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def paper_perceiver(hidden: int) -> HeadSize:
    """The paper's head (768 latents, 32 heads of dim 2048 at H=4096), ratios kept for any hidden size."""
    return HeadSize(n_latents=max(1, round(768 * hidden / 4096)), heads=32, head_dim=max(1, hidden // 2), mlp_ratio=4)


def paper_latent(hidden: int) -> HeadSize:
    """NV-Embed's latent attention (512 latents, 8 heads of dim 4096 at H=4096), ratios kept."""
    return HeadSize(n_latents=max(1, round(512 * hidden / 4096)), heads=8, head_dim=hidden, mlp_ratio=4)


def compact(hidden: int) -> HeadSize:
    """A small head that trains in minutes on a CPU."""
    return HeadSize(n_latents=32, heads=8, head_dim=max(1, hidden // 8), mlp_ratio=2)


PRESETS = {
    "perceiver": {"paper": paper_perceiver, "compact": compact},
    "latent": {"paper": paper_latent, "compact": compact},
}


def resolve_size(family: str, hidden: int, options: dict[str, Any]) -> HeadSize:
    """A preset (``paper`` or ``compact``) with any explicit size options laid over it."""
    preset = options.pop("preset", "compact")
    if preset not in PRESETS[family]:
        raise ValueError(f"unknown head preset {preset!r}; choose one of {sorted(PRESETS[family])}")
    size = PRESETS[family][preset](hidden).as_dict()
    for key in list(size):
        if key in options:
            value = options.pop(key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"head option {key!r} must be a positive integer, got {value!r}")
            size[key] = value
    return HeadSize(**size)


class GEGLU(nn.Module):
    """x · gelu(gate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class CrossAttentionBlock(nn.Module):
    """Pre-norm multi-head cross-attention + GEGLU feed-forward, both residual; no projection biases."""

    def __init__(self, dim: int, size: HeadSize) -> None:
        super().__init__()
        inner = size.heads * size.head_dim
        self.heads, self.head_dim = size.heads, size.head_dim
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        hidden = size.mlp_ratio * dim
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * hidden), GEGLU(), nn.Linear(hidden, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, Q, D), context (B, K, D), context_mask (B, K) true = attend -> (B, Q, D)."""
        q = self._split(self.to_q(self.norm_queries(queries)))
        k, v = (self._split(t) for t in self.to_kv(self.norm_context(context)).chunk(2, dim=-1))
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = attended.shape
        x = self.to_out(attended.transpose(1, 2).reshape(b, n, -1)) + queries
        return self.ff(x) + x
