"""poolattn: turn any decoder-only LLM into a text-embedding model and compare attention and pooling designs."""

__version__ = "0.1.0"

from .model import EmbeddingConfig, EmbeddingModel

__all__ = ["EmbeddingConfig", "EmbeddingModel", "__version__"]
