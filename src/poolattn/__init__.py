"""poolattn: turn any decoder-only LLM into a text-embedding model and compare attention and pooling designs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import threads
from ._version import __version__

threads.configure_environment()  # before torch and tokenizers load: bounded spinning, one thread budget

__all__ = ["EmbeddingConfig", "EmbeddingModel", "__version__"]

if TYPE_CHECKING:
    from .model import EmbeddingConfig, EmbeddingModel


def __getattr__(name: str) -> Any:
    """Import torch-heavy names on first use, so `poolattn.stats` and the CLI's --help stay fast."""
    if name in ("EmbeddingModel", "EmbeddingConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'poolattn' has no attribute {name!r}")
