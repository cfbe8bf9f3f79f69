"""Last-layer trainable pooling (paper M2/M4): the Perceiver head over the last layer.

``inputs``: ``eos`` feeds only the final token's state (the paper under causal attention; with one key the
attention is trivial and the head acts as an MLP), ``tokens`` feeds every pooled token with a key padding mask
(the paper under bidirectional attention, minus its padding leak); ``auto`` picks as the paper did.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import PoolInput, last_token
from .perceiver import PerceiverPooler
from .registry import register

INPUTS = ("auto", "eos", "tokens")


@register
class TrainablePooler(PerceiverPooler):
    name = "trainable"

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        inputs = options.pop("inputs", "auto")
        if inputs not in INPUTS:
            raise ValueError(f"trainable pooling option 'inputs' must be one of {INPUTS}, got {inputs!r}")
        super().__init__(hidden_size, num_layers, attention, **options)
        self.inputs = ("eos" if attention == "causal" else "tokens") if inputs == "auto" else inputs

    @classmethod
    def option_space(cls) -> dict[str, tuple[Any, ...]]:
        return {**super().option_space(), "inputs": INPUTS}

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        if self.inputs == "eos":
            states = last_token(inputs.last_hidden, inputs.last_index).unsqueeze(1)
            return self.attend(states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device))
        return self.attend(inputs.last_hidden, inputs.pool_mask)
