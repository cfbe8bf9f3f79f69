"""Dropout with a cheap CPU mask, for the LoRA adapters' input dropout.

``torch.nn.Dropout`` on a CPU draws one Bernoulli sample per element, which costs more than the LoRA matmuls it
feeds (an adapter applies it to every input of every adapted layer). :class:`FastDropout` cuts each 64-bit draw of
the default generator into three 16-bit integers and keeps an element when its integer clears a threshold: the keep
probability is ``1 - p`` rounded to 1/65,536, the kept elements are scaled by ``1 / (1 - p)`` and the mask is a
function of the generator's state (seeds, checkpoints and GradCache's replay stay exact). Other devices, and
``p`` that rounds to 0 or 1 in steps of 1/65,536, use ``nn.Dropout`` itself.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

LEVELS = 1 << 16
# the three 16-bit words of a draw in [0, 2**48) sit at the low addresses on little-endian machines
RANDOM_WORDS = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability ``1 - round(p * 65536) / 65536``."""
    n = math.prod(shape)
    draws = torch.randint(0, 1 << 48, ((n + 2) // 3,), dtype=torch.int64, device=device)
    words = draws.view(torch.int16).view(-1, 4)[:, RANDOM_WORDS]
    return (words >= -(LEVELS // 2) + round(p * LEVELS)).view(-1)[:n].view(shape)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from :func:`keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = round(self.p * LEVELS)
        if not self.training or x.device.type != "cpu" or not 0 < levels < LEVELS:
            return super().forward(x)
        scale = LEVELS / (LEVELS - levels)
        return x * keep_mask(x.shape, self.p, x.device).to(x.dtype).mul_(scale)


def speed_up_dropout(module: nn.Module) -> int:
    """Replace every ``nn.Dropout`` (not its subclasses) under ``module`` by :class:`FastDropout` of the same
    ``p``; returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                fast = FastDropout(child.p)
                fast.train(child.training)
                setattr(parent, name, fast)
                replaced += 1
    return replaced
