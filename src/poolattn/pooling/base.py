"""What every pooler receives and the shared masked reductions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class PoolInput:
    """Backbone outputs handed to a pooler.

    ``pool_mask`` marks the tokens a pooler may read (real tokens, minus instruction tokens when those are
    excluded); ``last_index`` is the position of each text's final real token (its EOS).
    """

    last_hidden: torch.Tensor  # (B, T, H), final-normed last layer
    attention_mask: torch.Tensor  # (B, T)
    pool_mask: torch.Tensor  # (B, T) bool
    last_index: torch.Tensor  # (B,)
    layer_vectors: torch.Tensor | None = None  # (B, L, H), one pooled vector per selected layer


def last_token(states: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """States at each row's final real token: (B, T, H) -> (B, H)."""
    return states[torch.arange(states.shape[0], device=states.device), last_index]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is true: (B, T, H) -> (B, H), computed in float32."""
    weights = mask.to(torch.float32)
    summed = torch.einsum("bth,bt->bh", states.to(torch.float32), weights)
    return summed / weights.sum(-1, keepdim=True).clamp(min=1.0)


class Pooler(nn.Module):
    """Base class: turns backbone outputs into one vector per text.

    Subclasses set ``name``; ``needs_layers`` asks the model to collect one reduced vector per decoder layer
    while the forward pass runs (so no layer's token states are kept).
    """

    name: ClassVar[str]
    needs_layers: ClassVar[bool] = False

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        super().__init__()
        if options:
            raise ValueError(f"pooling {self.name!r} takes no options, got {sorted(options)}")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.attention = attention

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    @classmethod
    def option_space(cls) -> dict[str, tuple[Any, ...]]:
        """Every value of each option that takes one of a set of values (sizes and layer lists excepted)."""
        return {}

    def selected_layers(self) -> list[int]:
        """1-based indices of the decoder layers whose vectors this pooler needs (none by default)."""
        return []

    def layer_reduction(self) -> str:
        """How a layer's token states become one vector: ``last`` token or ``mean`` over pooled tokens."""
        return "last" if self.attention == "causal" else "mean"

    def forward(self, inputs: PoolInput) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
