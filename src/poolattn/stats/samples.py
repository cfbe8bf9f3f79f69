"""Per-sample results of one design on one dataset: the main score computed from them, validation and
the pairing of two designs' results by sample id."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from sklearn.metrics import average_precision_score

# --------------------------------------------------------------------------------------------------------
# Main score of one dataset from its per-sample results
# --------------------------------------------------------------------------------------------------------


Fields = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class SampleStatistic:
    """How a dataset's main score is computed from its per-sample fields.

    ``paired_field`` holds each design's own values (swapped between designs by the permutation test);
    ``shared_fields`` must be identical for both designs (gold labels); ``binary_fields`` must be 0/1.
    ``compute`` maps 1-D fields to the score; ``compute_rows``, when given, maps 2-D fields (one resample
    per row) to one score per row and must agree with ``compute`` row by row (it vectorises resampling).
    """

    paired_field: str
    compute: Callable[[Fields], float]
    compute_rows: Callable[[Fields], np.ndarray] | None = None
    shared_fields: tuple[str, ...] = ()
    binary_fields: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.paired_field, *self.shared_fields)


def _mean(fields: Fields) -> float:
    return float(np.mean(fields["score"]))


def _mean_rows(fields: Fields) -> np.ndarray:
    return np.mean(fields["score"], axis=-1)


def _spearman(fields: Fields) -> float:
    return float(scipy.stats.spearmanr(fields["prediction"], fields["gold"]).statistic)


def _spearman_rows(fields: Fields) -> np.ndarray:
    """Spearman's rho per row: the Pearson correlation of average ranks."""
    ranks = [scipy.stats.rankdata(fields[f], axis=-1) for f in ("prediction", "gold")]
    return scipy.stats.pearsonr(*ranks, axis=-1).statistic


def _average_precision(fields: Fields) -> float:
    return float(average_precision_score(fields["gold"], fields["prediction"]))


def _average_precision_rows(fields: Fields) -> np.ndarray:
    """sklearn's average precision per row: sum over score thresholds of precision x recall increment.

    Samples with tied predictions form one threshold, so each positive counts the precision at the end of
    its tie group. Rows without positives score 0, as in sklearn.
    """
    order = np.argsort(-fields["prediction"], axis=-1, kind="stable")
    prediction = np.take_along_axis(fields["prediction"], order, axis=-1)
    gold = np.take_along_axis(fields["gold"], order, axis=-1)
    n = gold.shape[-1]
    precision = np.cumsum(gold, axis=-1) / np.arange(1, n + 1)
    group_end = np.ones_like(gold, dtype=bool)
    group_end[..., :-1] = prediction[..., 1:] != prediction[..., :-1]
    end_position = np.where(group_end, np.arange(n), n - 1)
    end_position = np.flip(np.minimum.accumulate(np.flip(end_position, -1), axis=-1), -1)
    hits = np.sum(gold * np.take_along_axis(precision, end_position, axis=-1), axis=-1)
    positives = gold.sum(axis=-1)
    return np.divide(hits, positives, out=np.zeros_like(hits), where=positives > 0)


STATISTICS: dict[str, SampleStatistic] = {
    # retrieval nDCG@10 per query, reranking AP per query, classification correctness, clustering V-measure
    "mean": SampleStatistic("score", _mean, _mean_rows),
    # STS: Spearman correlation of cosine similarity with the gold score
    "spearman": SampleStatistic("prediction", _spearman, _spearman_rows, shared_fields=("gold",)),
    # pair classification: average precision (sklearn) of cosine similarity against 0/1 labels
    "average_precision": SampleStatistic(
        "prediction",
        _average_precision,
        _average_precision_rows,
        shared_fields=("gold",),
        binary_fields=("gold",),
    ),
}


@dataclass(frozen=True)
class _Samples:
    """Validated per-sample results of one design on one dataset."""

    name: str
    ids: tuple[Any, ...]
    fields: dict[str, np.ndarray]

    @property
    def statistic(self) -> SampleStatistic:
        return STATISTICS[self.name]

    def __len__(self) -> int:
        return len(self.ids)

    def score(self, index: np.ndarray | None = None) -> float:
        fields = self.fields if index is None else {k: v[index] for k, v in self.fields.items()}
        return float(self.statistic.compute(fields))

    def row_scores(self, rows: Fields) -> np.ndarray:
        """One score per row of ``rows`` (2-D replacements for some fields; the others are kept)."""
        shape = next(iter(rows.values())).shape
        fields = {k: np.broadcast_to(rows.get(k, v), shape) for k, v in self.fields.items()}
        if self.statistic.compute_rows is not None:
            return self.statistic.compute_rows(fields)
        return np.array([self.statistic.compute({k: v[r] for k, v in fields.items()}) for r in range(shape[0])])

    def as_dict(self) -> dict[str, Any]:
        return {"statistic": self.name, "ids": list(self.ids), **self.fields}


def _parse(per_sample: Mapping[str, Any], label: str = "per_sample") -> _Samples:
    """Validate a ``per_sample`` dict; errors name the offending field and position."""
    if not isinstance(per_sample, Mapping):
        raise TypeError(f"{label}: expected a dict, got {type(per_sample).__name__}")
    name = per_sample.get("statistic")
    if name not in STATISTICS:
        raise ValueError(f"{label}['statistic'] = {name!r}: must be one of {sorted(STATISTICS)}")
    statistic = STATISTICS[name]
    missing = [f for f in ("ids", *statistic.fields) if f not in per_sample]
    if missing:
        raise ValueError(f"{label}: missing field(s) {missing} for statistic {name!r}")
    raw_ids = per_sample["ids"]
    if isinstance(raw_ids, str | bytes) or not isinstance(raw_ids, Sequence | np.ndarray):
        raise ValueError(f"{label}['ids']: expected a list of sample ids, got {type(raw_ids).__name__}")
    ids = tuple(raw_ids.tolist() if isinstance(raw_ids, np.ndarray) else raw_ids)
    if not ids:
        raise ValueError(f"{label}['ids']: no samples")
    seen: dict[Any, int] = {}
    for i, sample_id in enumerate(ids):
        try:
            first = seen.setdefault(sample_id, i)
        except TypeError:
            raise ValueError(f"{label}['ids'][{i}] = {sample_id!r}: ids must be hashable") from None
        if first != i:
            raise ValueError(f"{label}['ids'][{i}] = {sample_id!r}: duplicate of ['ids'][{first}]")
    fields = {f: _numeric_field(per_sample[f], f"{label}[{f!r}]", len(ids)) for f in statistic.fields}
    for f in statistic.binary_fields:
        bad = np.flatnonzero((fields[f] != 0) & (fields[f] != 1))
        if bad.size:
            raise ValueError(f"{label}[{f!r}][{bad[0]}] = {fields[f][bad[0]]}: must be 0 or 1")
    return _Samples(name, ids, fields)


def _numeric_field(values: Any, label: str, n: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{label}: expected numbers ({error})") from None
    if array.ndim != 1 or array.size != n:
        raise ValueError(f"{label}: expected {n} values (one per id), got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{label}[{bad[0]}] = {array[bad[0]]}: must be finite")
    return array


def score_from_samples(per_sample: Mapping[str, Any], index: np.ndarray | None = None) -> float:
    """The dataset's main score (in [0, 1] units) from its per-sample results.

    ``index`` (integer positions, repeats allowed, or a boolean mask) selects the samples to use; ``None``
    uses all of them. The statistic is looked up in :data:`STATISTICS` by ``per_sample["statistic"]``.
    """
    return _parse(per_sample).score(None if index is None else np.asarray(index))


def _align(per_sample_a: Mapping[str, Any], per_sample_b: Mapping[str, Any]) -> tuple[_Samples, _Samples]:
    a = _parse(per_sample_a, "per_sample_a")
    b = _parse(per_sample_b, "per_sample_b")
    if a.name != b.name:
        raise ValueError(f"per_sample_a['statistic'] = {a.name!r} but per_sample_b['statistic'] = {b.name!r}")
    position = {sample_id: i for i, sample_id in enumerate(b.ids)}
    only_a = [i for i in a.ids if i not in position]
    only_b = sorted(set(b.ids).difference(a.ids), key=repr)
    if only_a or only_b:
        raise ValueError(
            f"per_sample_a and per_sample_b have different ids: {len(only_a)} only in a "
            f"(e.g. {only_a[:5]}), {len(only_b)} only in b (e.g. {only_b[:5]})"
        )
    order = np.fromiter((position[i] for i in a.ids), dtype=np.intp, count=len(a))
    b = _Samples(b.name, a.ids, {k: v[order] for k, v in b.fields.items()})
    for field in a.statistic.shared_fields:
        differ = np.flatnonzero(a.fields[field] != b.fields[field])
        if differ.size:
            i = differ[0]
            raise ValueError(
                f"per_sample_a[{field!r}] and per_sample_b[{field!r}] differ at id {a.ids[i]!r}: "
                f"{a.fields[field][i]} vs {b.fields[field][i]} (both designs must be scored on the same data)"
            )
    return a, b


def align(per_sample_a: Mapping[str, Any], per_sample_b: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated copies of two designs' per-sample results with the same ids in ``a``'s order.

    Raises ``ValueError`` if the statistics or the id sets differ, or if shared fields (gold) disagree.
    Fields come back as float64 arrays.
    """
    a, b = _align(per_sample_a, per_sample_b)
    return a.as_dict(), b.as_dict()
