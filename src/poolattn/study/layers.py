"""The layer-wise analysis's store: every layer's vector of each text from one forward pass of the base model,
served one layer at a time to the evaluation suite."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from ..model import EmbeddingModel


class LayerStore:
    """Every layer's vector of every text the base model was asked for (one forward pass per text)."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.vectors: dict[tuple[str | None, str], np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0

    def get(self, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        """(N, L, H) float32 for ``texts``; texts not seen yet are encoded (all layers at once)."""
        instruction = instruction or None
        missing = list(dict.fromkeys(t for t in texts if (instruction, t) not in self.vectors))
        if missing:
            start = time.perf_counter()
            layers = self.model.encode_layers(missing, instruction)
            self.seconds += time.perf_counter() - start
            self.encoded += len(missing)
            for text, vec in zip(missing, layers, strict=True):
                self.vectors[(instruction, text)] = vec
        return np.stack([self.vectors[(instruction, t)] for t in texts]) if texts else np.zeros((0, 0, 0), np.float32)

    def sample(self, n: int) -> np.ndarray:
        """(L, n, H): the stored vectors of (at most) ``n`` texts chosen by a stable hash of the text."""
        keys = sorted(self.vectors, key=lambda k: hashlib.sha256(f"{k[0]}\x00{k[1]}".encode()).hexdigest())[:n]
        return np.stack([self.vectors[k] for k in keys], axis=1)


class LayerEncoder:
    """Serves one layer's cached vectors behind the evaluation suite's ``Encoder`` protocol (1-based ``layer``)."""

    def __init__(self, store: LayerStore, layer: int, name: str) -> None:
        self.store, self.layer, self.name = store, layer, name
        self.config = store.model.config  # max length and instruction template, for the result's identity

    def fingerprint(self) -> str:
        """The base model's weights fingerprint (which layer is served is in the encoder's name)."""
        return self.store.model.fingerprint()

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        vectors = self.store.get(texts, instruction)
        return np.ascontiguousarray(vectors[:, self.layer - 1], dtype=np.float32)
