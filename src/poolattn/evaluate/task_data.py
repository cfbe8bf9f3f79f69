"""What an evaluation task is made of: its category, and the data each category is scored on.

One frozen data class per kind of task (:data:`TaskData`); :func:`data_hash` fingerprints a task's content so
a stored result is reused only while its data and split are unchanged. :mod:`.tasks` is the public face of
these names, together with the task registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Category = Literal["sts", "classification", "clustering", "pair_classification", "reranking", "retrieval"]
Profile = Literal["full", "quick"]

CATEGORIES: tuple[Category, ...] = (
    "sts",
    "classification",
    "clustering",
    "pair_classification",
    "reranking",
    "retrieval",
)
PROFILES: tuple[Profile, ...] = ("full", "quick")
#: Categories whose instruction goes to queries only (documents are encoded without one).
QUERY_ONLY: frozenset[Category] = frozenset({"retrieval", "reranking"})


@dataclass(frozen=True)
class STSData:
    """Text pairs with gold similarity scores."""

    ids: tuple[str, ...]
    texts1: tuple[str, ...]
    texts2: tuple[str, ...]
    gold: tuple[float, ...]
    min_score: float
    max_score: float

    def all_texts(self) -> set[str]:
        return {*self.texts1, *self.texts2}


@dataclass(frozen=True)
class ClassificationData:
    """A labelled training pool (n-shot draws come from it) and labelled test examples."""

    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    samples_per_label: int = 8
    n_experiments: int = 10

    def all_texts(self) -> set[str]:
        return {*self.train_texts, *self.texts}


@dataclass(frozen=True)
class ClusteringData:
    """Documents with a gold cluster label; ``cluster_size`` documents per bootstrap experiment."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    cluster_size: int
    n_experiments: int = 10

    def all_texts(self) -> set[str]:
        return set(self.texts)


@dataclass(frozen=True)
class PairData:
    """Text pairs labelled 1 (positive) or 0."""

    ids: tuple[str, ...]
    texts1: tuple[str, ...]
    texts2: tuple[str, ...]
    labels: tuple[int, ...]

    def all_texts(self) -> set[str]:
        return {*self.texts1, *self.texts2}


@dataclass(frozen=True)
class RetrievalData:
    """Queries, a corpus and graded relevance; ``candidates`` (reranking) restricts each query's ranking."""

    query_ids: tuple[str, ...]
    queries: tuple[str, ...]
    doc_ids: tuple[str, ...]
    docs: tuple[str, ...]
    qrels: Mapping[str, Mapping[str, int]]
    candidates: Mapping[str, tuple[str, ...]] | None = None

    def all_texts(self) -> set[str]:
        return {*self.queries, *self.docs}


TaskData = STSData | ClassificationData | ClusteringData | PairData | RetrievalData


def n_samples(data: TaskData) -> int:
    """Number of scored samples: pairs, test examples, documents, or queries."""
    return len(data.query_ids if isinstance(data, RetrievalData) else data.ids)


def data_hash(data: TaskData) -> str:
    """A short hash of a task's content (changes when its data or split changes)."""
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    payload = json.dumps({"type": type(data).__name__, **fields}, sort_keys=True, ensure_ascii=False, default=_plain)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """JSON form of the mappings inside task data (qrels, candidates)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot hash {type(value).__name__}")
