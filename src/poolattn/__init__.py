"""poolattn: turn any decoder-only LLM into a text-embedding model and compare attention and pooling designs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Idle OpenMP workers sleep instead of spinning: spinning threads slow every other process on a busy machine
# (5-20x on 2 cores when two jobs overlap). Only effective when poolattn is imported before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["EmbeddingConfig", "EmbeddingModel", "__version__"]

if TYPE_CHECKING:
    from .model import EmbeddingConfig, EmbeddingModel


def __getattr__(name: str) -> Any:
    """Import torch-heavy names on first use, so `poolattn.stats` and the CLI's --help stay fast."""
    if name in ("EmbeddingModel", "EmbeddingConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'poolattn' has no attribute {name!r}")
