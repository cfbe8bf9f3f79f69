"""Teacher-mined training pairs: a sentence encoder that already works picks, for each anchor sentence of a raw
pool, its nearest neighbour as the positive and a sentence from a band of lower ranks as the hard negative (the
idea behind GPL and augmented SBERT, with a bi-encoder as the teacher).

The pool and the teacher both ship with the packaged assets (movie-dialogue lines and all-MiniLM-L6-v2), so the
pairs are built offline, once, and cached under :func:`poolattn.assets.cache_dir` by a hash of everything that
determines them. The caller passes the texts to keep out (the evaluation tasks'), so nothing mined is ever a
text of an evaluation task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .corpora import hash_order, normalize
from .io import write_text_atomic

MINING_VERSION = 1


@dataclass(frozen=True)
class MiningSettings:
    """How pairs are mined. ``pool_size`` sentences of ``min_words``..``max_words`` words are embedded;
    ``anchors`` of them are tried; a pair is kept when the nearest neighbour's cosine is at least
    ``min_similarity`` (and below ``max_similarity``: near-copies teach nothing); the negative is drawn from ranks
    ``negative_ranks`` among those at least ``negative_margin`` less similar than the positive."""

    pool_size: int = 24000
    anchors: int = 24000
    min_words: int = 4
    max_words: int = 40
    min_similarity: float = 0.6
    max_similarity: float = 0.95
    negative_ranks: tuple[int, int] = (10, 50)
    negative_margin: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class MinedPair:
    """An anchor, its mined positive and hard negative, and the teacher's cosines to each."""

    anchor: str
    positive: str
    negative: str
    positive_similarity: float
    negative_similarity: float


def select_pool(texts: Sequence[str], settings: MiningSettings, blocked: set[str]) -> list[str]:
    """Deduplicated texts of the right length, none in ``blocked`` (normalised), in a stable hashed order."""
    seen: set[str] = set()
    pool = []
    for text in texts:
        key = normalize(text)
        if key in seen or key in blocked or not settings.min_words <= len(key.split()) <= settings.max_words:
            continue
        seen.add(key)
        pool.append(" ".join(text.split()))
    return hash_order(pool, lambda t: t, f"mining-pool-{settings.seed}")[: settings.pool_size]


def mine(pool: Sequence[str], embeddings: np.ndarray, settings: MiningSettings, block: int = 2048) -> list[MinedPair]:
    """Mine pairs from ``pool`` given its L2-normalised ``embeddings`` (one row per text)."""
    rng = np.random.default_rng(settings.seed)
    lo, hi = settings.negative_ranks
    anchors = range(min(settings.anchors, len(pool)))
    pairs: list[MinedPair] = []
    used: set[tuple[int, int]] = set()
    for start in range(0, len(anchors), block):
        rows = np.arange(start, min(start + block, len(anchors)))
        sims = embeddings[rows] @ embeddings.T
        sims[np.arange(len(rows)), rows] = -np.inf  # never the anchor itself
        top = np.argpartition(-sims, hi, axis=1)[:, :hi]
        for r, anchor in enumerate(rows):
            order = top[r][np.argsort(-sims[r, top[r]], kind="stable")]
            positive = int(order[0])
            pos_sim = float(sims[r, positive])
            if not settings.min_similarity <= pos_sim < settings.max_similarity:
                continue
            if (positive, int(anchor)) in used:  # the same pair seen from its other end
                continue
            band = [int(j) for j in order[lo:hi] if sims[r, j] <= pos_sim - settings.negative_margin]
            if not band:
                continue
            negative = band[int(rng.integers(len(band)))]
            used.add((int(anchor), positive))
            pairs.append(
                MinedPair(
                    pool[anchor], pool[positive], pool[negative], round(pos_sim, 4), round(float(sims[r, negative]), 4)
                )
            )
    return pairs


def cache_key(pool: Sequence[str], settings: MiningSettings, teacher: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": MINING_VERSION, "teacher": teacher, **asdict(settings)}, sort_keys=True).encode())
    for text in pool:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def mined_pairs(
    pool: Sequence[str],
    settings: MiningSettings,
    teacher: str,
    embed: Callable[[Sequence[str]], np.ndarray],
    cache: Path,
) -> list[MinedPair]:
    """The pairs mined from ``pool`` by ``embed`` (the teacher, named ``teacher``), read from ``cache`` when
    built before with the same pool, teacher and settings."""
    path = cache / f"mined-{cache_key(pool, settings, teacher)}.jsonl"
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            return [MinedPair(**json.loads(line)) for line in handle if line.strip()]
    embeddings = np.asarray(embed(pool), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    pairs = mine(pool, embeddings, settings)
    write_text_atomic(path, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs))
    return pairs


def teacher_encoder(path: str) -> Callable[[Sequence[str]], np.ndarray]:
    """``texts -> normalised embeddings`` of a sentence-transformers folder, on the CPU, with a progress bar."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=128, normalize_embeddings=True, show_progress_bar=True)

    return embed
