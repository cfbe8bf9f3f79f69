"""Encoders as the evaluation sees them, and the per-run embedding cache that validates what they return.

Any object with a ``name`` and ``encode(texts, *, instruction=None)`` returning an (N, D) float32 array of
L2-normalised rows is an :class:`Encoder` (an ``EmbeddingModel``, or a sentence-transformers model via
:class:`SentenceTransformerEncoder`). Instructions (e5-mistral style) are prepended by the encoder itself.
Embeddings are cached per (instruction, text) within a run and shared by the tasks that need them
(:class:`EmbeddingCache`). :func:`encoder_identity` says which exact model a stored result belongs to.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .._version import __version__
from ..fingerprints import ModuleFingerprint, files_fingerprint

NORM_TOLERANCE = 1e-3


@runtime_checkable
class Encoder(Protocol):
    """What the suite calls: ``encode`` returns an (N, D) float32 array of L2-normalised rows."""

    name: str

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray: ...


class SentenceTransformerEncoder:
    """A sentence-transformers model (e.g. the all-MiniLM-L6-v2 peer) behind the :class:`Encoder` protocol.

    ``instruction_template`` (e.g. ``"Instruct: {instruction}\\nQuery: {text}"``) formats instructions
    into the text; ``None`` (the default) ignores them, as models not trained with instructions expect.
    Code shipped with the model runs only with ``trust_remote_code``.
    """

    def __init__(
        self,
        model_or_path: Any,
        *,
        name: str | None = None,
        instruction_template: str | None = None,
        max_seq_length: int | None = 256,
        batch_size: int = 64,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.folder: Path | None = None
        if isinstance(model_or_path, str | os.PathLike):
            self.model = SentenceTransformer(str(model_or_path), device=device, trust_remote_code=trust_remote_code)
            self.name = name or Path(model_or_path).name
            self.folder = Path(model_or_path) if Path(model_or_path).is_dir() else None
        else:
            self.model = model_or_path
            self.name = name or type(model_or_path).__name__
        self._folder_fingerprint: str | None = None
        self._tensors_fingerprint = ModuleFingerprint()
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        if instruction_template is not None and "{text}" not in instruction_template:
            raise ValueError("instruction_template must contain '{text}' (and usually '{instruction}')")
        self.instruction_template = instruction_template
        self.batch_size = batch_size

    @property
    def max_length(self) -> int | None:
        return self.model.max_seq_length

    def fingerprint(self) -> str:
        """A hash of the model folder's files (hashed once), or of the model's tensors when it came as an object
        or from the hub."""
        if self.folder is None:
            return self._tensors_fingerprint(self.model)
        if self._folder_fingerprint is None:
            self._folder_fingerprint = files_fingerprint(self.folder)
        return self._folder_fingerprint

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        if instruction and self.instruction_template:
            texts = [self.instruction_template.format(instruction=instruction, text=t) for t in texts]
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


class Batched:
    """An encoder whose ``encode`` calls pass ``batch_tokens`` (padded tokens per batch); every other attribute is
    the wrapped encoder's."""

    def __init__(self, encoder: Any, batch_tokens: int) -> None:
        self.encoder, self.batch_tokens = encoder, batch_tokens

    def __getattr__(self, name: str) -> Any:
        if name == "encoder":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        return self.encoder.encode(texts, instruction=instruction, batch_tokens=self.batch_tokens)


def active_precision() -> str:
    """The precision autocast computes in right now on a CPU or GPU (``bf16``, ``fp16``), else ``fp32``."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(torch.get_autocast_dtype(device), "fp32")
    return "fp32"


def encoder_identity(encoder: Encoder, config_hash: str | None, precision: str) -> dict[str, Any]:
    """Everything about the model that decides its scores, so a stored result is reused only for the exact model:
    ``config_hash``, the fingerprint of its weights (``fingerprint()``; ``None`` for an encoder without one, which
    ``model_id`` and ``config_hash`` alone then identify), ``precision``, max length, instruction template and
    poolattn's version."""
    fingerprint = getattr(encoder, "fingerprint", None)
    settings = getattr(encoder, "config", encoder)  # an EmbeddingModel's config, or the encoder's own attributes
    return {
        "config_hash": config_hash,
        "weights": fingerprint() if callable(fingerprint) else None,
        "precision": precision,
        "max_length": getattr(settings, "max_length", None),
        "instruction_template": getattr(settings, "instruction_template", None),
        "poolattn_version": __version__,
    }


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of an identity (mteb's model revision)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: What a scorer calls to embed texts under an instruction (an :class:`EmbeddingCache`, or any such function).
Embed = Callable[[Sequence[str], "str | None"], np.ndarray]


class SameEmbedding:
    """Watches a task's embeddings: whether every text since :meth:`reset` got one and the same vector (a model that
    cannot tell the texts apart), which is what leaves rank correlations undefined."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.first: np.ndarray | None = None
        self.n = 0
        self.same = True

    def update(self, vecs: np.ndarray) -> None:
        if not len(vecs):
            return
        if self.first is None:
            self.first = np.array(vecs[0])
        self.same = self.same and bool(np.abs(vecs - self.first).max() <= 1e-6)
        self.n += len(vecs)

    def undefined_reason(self, metric: str) -> str:
        """Why ``metric`` came out NaN, for the task's result (``undefined``)."""
        if self.same and self.n > 1:
            return (
                f"{metric} is undefined: all {self.n} texts got the same embedding, so every similarity is equal "
                "and a correlation with the gold scores has no ranking to compare"
            )
        return (
            f"{metric} is undefined (NaN): the model's similarities tie within every scored sample "
            "(a correlation of constant values), or no sample was left to score"
        )


class EmbeddingCache:
    """Embeds texts once per (instruction, text) and counts the encoding work per task."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._vectors: dict[tuple[str | None, str], np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0
        self.requested = 0
        self.watch = SameEmbedding()

    def reset_counters(self) -> None:
        self.seconds, self.encoded, self.requested = 0.0, 0, 0
        self.watch.reset()

    def __call__(self, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        instruction = instruction or None
        missing = list(dict.fromkeys(t for t in texts if (instruction, t) not in self._vectors))
        if missing:
            start = time.perf_counter()
            vecs = self.encoder.encode(missing, instruction=instruction)
            self.seconds += time.perf_counter() - start
            self.encoded += len(missing)
            _check_embeddings(vecs, len(missing), getattr(self.encoder, "name", type(self.encoder).__name__))
            for text, vec in zip(missing, vecs, strict=True):
                self._vectors[(instruction, text)] = vec
        self.requested += len(set(texts))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        out = np.stack([self._vectors[(instruction, t)] for t in texts])
        self.watch.update(out)
        return out


def _check_embeddings(vecs: Any, n: int, name: str) -> None:
    if not isinstance(vecs, np.ndarray) or vecs.ndim != 2 or vecs.shape[0] != n:
        shape = getattr(vecs, "shape", type(vecs).__name__)
        raise ValueError(f"encoder {name!r} returned {shape} for {n} texts; expected an (N, D) numpy array")
    if vecs.dtype != np.float32:
        raise ValueError(f"encoder {name!r} returned {vecs.dtype}; expected float32")
    if not np.isfinite(vecs).all():
        raise ValueError(f"encoder {name!r} returned non-finite values")
    norms = np.linalg.norm(vecs, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise ValueError(f"encoder {name!r}: row {bad[0]} has norm {norms[bad[0]]:.4f}; rows must be L2-normalised")
