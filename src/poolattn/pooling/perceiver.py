"""The paper's trainable pooling head: latent queries cross-attend over a set of states, then the latents are
averaged (a Perceiver resampler). Shared by ``trainable`` (last layer) and ``multilayer``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Pooler
from .cross_attention import PRESETS, CrossAttentionBlock, resolve_size

#: ``normal`` is the paper's N(0, 1). The head's output averages ``attention + latents`` over the latents, so
#: N(0, 1) latents add one input-independent vector of norm ~sqrt(H / n_latents) to every text's embedding, which a
#: short run cannot unlearn (every cosine stays near 1); ``small`` (N(0, 0.02²)) leaves the attention unchanged
#: (the latents are layer-normed before they query) and removes that offset.
LATENT_INIT_STD = {"normal": 1.0, "small": 0.02}
#: The paper's preset keeps the paper's initialisation; the compact one, made to train in minutes, starts small.
LATENT_INIT_OF_PRESET = {"paper": "normal", "compact": "small"}
#: Texts the head runs at once: its 32 latents per text make a batch of short texts (~15 tokens each) a larger
#: feed-forward than the backbone's layers, and its peak memory twice theirs (SmolLM2, 34 short texts: 33 MiB).
HEAD_CHUNK = 8


class PerceiverPooler(Pooler):
    """Base of the Perceiver-style poolers: owns the latents and the cross-attention block."""

    def __init__(self, hidden_size: int, num_layers: int, attention: str, **options: Any) -> None:
        preset = options.get("preset", "compact")
        init = options.pop("latent_init", LATENT_INIT_OF_PRESET.get(preset, "normal"))
        if init not in LATENT_INIT_STD:
            raise ValueError(f"option 'latent_init' must be one of {sorted(LATENT_INIT_STD)}, got {init!r}")
        self.size = resolve_size("perceiver", hidden_size, options)
        super().__init__(hidden_size, num_layers, attention, **options)
        self.latent_init = init
        self.latents = nn.Parameter(torch.randn(self.size.n_latents, hidden_size) * LATENT_INIT_STD[init])
        self.block = CrossAttentionBlock(hidden_size, self.size)

    @classmethod
    def option_space(cls) -> dict[str, tuple[Any, ...]]:
        return {"preset": tuple(PRESETS["perceiver"]), "latent_init": tuple(LATENT_INIT_STD)}

    def attend(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, N, H), mask (B, N) -> mean over latents (B, H), in float32; :data:`HEAD_CHUNK` texts at a
        time, so the latents' feed-forward states (B x latents x 4H) never outgrow the backbone's."""
        states = states.to(self.latents.dtype)
        chunks = [
            self.block(self.latents.expand(len(rows), -1, -1), rows, rows_mask).mean(dim=1)
            for rows, rows_mask in zip(states.split(HEAD_CHUNK), mask.split(HEAD_CHUNK), strict=True)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
