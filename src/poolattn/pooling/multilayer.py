"""Multi-layer trainable pooling (paper M3/M5): one vector per decoder layer — the last token under causal
attention, the masked mean under bidirectional — plus a learned additive layer embedding, then the Perceiver
head over those layer tokens. The model collects each layer's vector as the layer runs (no layer's token states
are kept); the last layer's vector comes from the final-normed output, as in ``output_hidden_states``.

Options: ``layers`` (1-based indices, negatives count from the end; default all 1..L); ``layer_pooling``
(``auto`` | ``last`` | ``mean`` | ``mean_no_sink``; ``auto`` is ``last`` under causal attention and
``mean_no_sink`` under bidirectional: the masked mean without the first token, the attention sink whose massive
activations otherwise swamp every text's mean); ``layer_norm`` (``rms``: scale each layer's vector to unit RMS
before the layer embedding is added, so the residual stream's growth from layer to layer does not drown the
layer embedding; ``none``); plus the head sizes. The paper's exact heads are ``layer_norm="none"`` under causal
attention (M3) and ``layer_pooling="mean", layer_norm="none"`` under bidirectional attention (M5); on SmolLM2 the
latter collapses every text onto nearly one vector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PoolInput
from .perceiver import PerceiverPooler
from .registry import register

LAYER_POOLING = ("auto", "last", "mean", "mean_no_sink")
LAYER_NORMS = ("rms", "none")


@register
class MultiLayerPooler(PerceiverPooler):
    name = "multilayer"
    needs_layers = True

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        layers = options.pop("layers", None)
        reduction = options.pop("layer_pooling", "auto")
        if reduction not in LAYER_POOLING:
            raise ValueError(f"multilayer option 'layer_pooling' must be one of {LAYER_POOLING}, got {reduction!r}")
        layer_norm = options.pop("layer_norm", "rms")
        if layer_norm not in LAYER_NORMS:
            raise ValueError(f"multilayer option 'layer_norm' must be one of {LAYER_NORMS}, got {layer_norm!r}")
        super().__init__(hidden_size, num_layers, attention, **options)
        self.layers = normalise_layers(layers, num_layers)
        self.reduction = reduction
        self.layer_norm = layer_norm
        self.layer_embedding = nn.Parameter(torch.randn(len(self.layers), hidden_size))

    @classmethod
    def option_space(cls) -> dict[str, tuple[Any, ...]]:
        return {**super().option_space(), "layer_pooling": LAYER_POOLING, "layer_norm": LAYER_NORMS}

    def selected_layers(self) -> list[int]:
        return self.layers

    def layer_reduction(self) -> str:
        if self.reduction != "auto":
            return self.reduction
        return "last" if self.attention == "causal" else "mean_no_sink"

    def forward(self, inputs: PoolInput) -> torch.Tensor:
        if inputs.layer_vectors is None:
            raise RuntimeError("multilayer pooling needs the per-layer vectors collected during the forward pass")
        states = inputs.layer_vectors.to(self.layer_embedding.dtype)
        if self.layer_norm == "rms":
            states = states * torch.rsqrt(states.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        states = states + self.layer_embedding
        mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        return self.attend(states, mask)


def normalise_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """Validate a layer selection and turn it into sorted, unique 1-based indices."""
    if layers is None:
        return list(range(1, num_layers + 1))
    if not layers:
        raise ValueError("multilayer option 'layers' must not be empty")
    out = []
    for layer in layers:
        if not isinstance(layer, int) or layer == 0 or not -num_layers <= layer <= num_layers:
            raise ValueError(f"layer {layer!r} is out of range: use 1..{num_layers} or -1..-{num_layers}")
        out.append(layer if layer > 0 else num_layers + 1 + layer)
    return sorted(set(out))
