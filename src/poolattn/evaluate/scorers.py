"""Scoring, written once per MTEB category: each scorer follows MTEB 2's protocol exactly.

``tests/test_evaluate.py`` feeds the same embeddings to these scorers and to mteb's own task classes and
checks the main scores agree:

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

Every scorer returns a :class:`Score` whose ``per_sample`` recomputes the main score exactly with
:func:`poolattn.stats.score_from_samples`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .encoders import Embed
from .task_data import Category, ClassificationData, ClusteringData, PairData, RetrievalData, STSData

SEED = 42  # mteb's task seed
K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # mteb's retrieval cut-offs
TOP_K = max(K_VALUES)


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

    # zero_division=0: the value sklearn's default ("warn") gives a label never predicted (or never true), unwarned
    scores = {
        "accuracy": accuracy_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_weighted": f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "precision": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "precision_weighted": precision_score(y_true, y_pred, average="weighted", zero_division=0),
        "recall": recall_score(y_true, y_pred, average="macro", zero_division=0),
        "recall_weighted": recall_score(y_true, y_pred, average="weighted", zero_division=0),
    }
    if len(np.unique(y_true)) == 2:
        scores["ap"] = average_precision_score(y_true, y_pred, average="macro")
        scores["ap_weighted"] = average_precision_score(y_true, y_pred, average="weighted")
    return {k: float(v) for k, v in scores.items()}


def classification_draws(data: ClassificationData) -> tuple[list[list[int]], list[int]]:
    """A classification task's n-shot draws and the sorted union of their pool indices (what gets encoded)."""
    draws = undersample(data.train_labels, data.n_experiments, data.samples_per_label)
    return draws, sorted(set().union(*draws))


def score_classification(data: ClassificationData, embed: Embed, instruction: str | None) -> Score:
    """mteb ``AbsTaskClassification``: logistic regression on n-shot draws, metrics averaged over draws.

    Only the union of the drawn training examples is encoded (as mteb does). Per sample: the share of
    draws whose classifier labels the test example correctly.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    draws, union = classification_draws(data)
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
