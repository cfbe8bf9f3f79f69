"""Statistics that compare embedding designs.

Two levels of comparison:

* across datasets (the paper's test): pair two designs' main scores on the same datasets of a category and
  run the Wilcoxon signed-rank test (:func:`wilcoxon_over_datasets`);
* within one dataset: resample the dataset's own samples (queries, pairs, test examples) with a paired
  bootstrap (confidence interval of the difference) and a paired permutation test (p-value)
  (:func:`compare_within_dataset`).

Per-sample results are plain dicts (``per_sample``) whose ``"statistic"`` names how the dataset's main score
is computed from them (see :data:`STATISTICS`). Differences are always ``b - a``. Also here: Holm's
correction for many tests, seed aggregation and the significance mark of tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
from sklearn.metrics import average_precision_score

__all__ = [
    "STATISTICS",
    "PairedResult",
    "SampleStatistic",
    "WilcoxonResult",
    "align",
    "compare_within_dataset",
    "holm",
    "paired_bootstrap",
    "paired_permutation",
    "score_from_samples",
    "seed_summary",
    "significance_mark",
    "wilcoxon_over_datasets",
]

# Resampling works on blocks of at most this many (resample x sample) elements to bound memory.
_CHUNK_ELEMENTS = 1_000_000
# Relative tolerance that treats numerically distinct but theoretically equal statistics as ties
# (the value scipy.stats.permutation_test uses).
_TIE_RTOL = 100 * np.finfo(np.float64).eps


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


# --------------------------------------------------------------------------------------------------------
# Across datasets: Wilcoxon signed-rank test (the paper's test)
# --------------------------------------------------------------------------------------------------------

ZeroMethod = Literal["wilcox", "pratt", "zsplit"]
Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of ``b - a`` over datasets.

    ``statistic`` is scipy's (min(R+, R-) two-sided, R+ one-sided); ``method`` is the null distribution
    scipy's ``method="auto"`` used: "exact", "permutation" (exact enumeration of sign flips, used with ties
    or zeros for n <= 13) or "asymptotic" ("none" when no test was possible). ``min_attainable_p`` is the
    smallest p-value the exact test can give with ``n_nonzero`` pairs (2/2**n two-sided, 1/2**n one-sided).
    """

    statistic: float
    pvalue: float
    n: int
    n_nonzero: int
    rank_biserial: float
    min_attainable_p: float
    method: str
    zero_method: str
    note: str


def _paired_vectors(scores_a: Sequence[float], scores_b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("scores_a and scores_b are empty")
    for label, values in (("scores_a", a), ("scores_b", b)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"{label}[{bad[0]}] = {values[bad[0]]}: must be finite")
    return a, b


def _signed_rank_sums(d: np.ndarray, zero_method: str) -> tuple[float, float, float]:
    """(R+, R-, total rank sum) of the differences, zeros treated as scipy does for ``zero_method``."""
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"zero_method = {zero_method!r}: must be 'wilcox', 'pratt' or 'zsplit'")
    if zero_method == "wilcox":
        d = d[d != 0]
    ranks = scipy.stats.rankdata(np.abs(d))
    r_plus, r_minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    if zero_method == "zsplit":
        half_zero = float(ranks[d == 0].sum()) / 2
        r_plus, r_minus = r_plus + half_zero, r_minus + half_zero
    return r_plus, r_minus, float(ranks.sum())


def _auto_method(d: np.ndarray) -> str:
    """The null distribution scipy.stats.wilcoxon(method="auto") picks for differences ``d``."""
    if d.size > 50:
        return "asymptotic"
    nonzero = np.abs(d[d != 0])
    if nonzero.size == d.size and np.unique(nonzero).size == nonzero.size:
        return "exact"
    return "permutation" if d.size <= 13 else "asymptotic"


def wilcoxon_over_datasets(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    *,
    zero_method: ZeroMethod = "wilcox",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> WilcoxonResult:
    """Wilcoxon signed-rank test pairing two designs' main scores on the same datasets.

    Differences are ``b - a``; ``alternative="greater"`` tests whether ``b`` scores higher. scipy picks the
    null distribution (exact when n <= 50 without ties or zeros). Zero differences follow ``zero_method``:
    "wilcox" drops them, "pratt" ranks them and then drops them, "zsplit" splits their ranks between both
    signs. With one dataset or no non-zero difference no test is possible: ``pvalue = 1.0`` and a note.
    ``rank_biserial`` is Kerby's matched-pairs correlation (R+ - R-) / (sum of ranks), positive when ``b``
    is better. ``note`` also says when ``min_attainable_p >= alpha``, i.e. significance is unreachable.
    """
    a, b = _paired_vectors(scores_a, scores_b)
    d = b - a
    n, n_nonzero = d.size, int(np.count_nonzero(d))
    r_plus, r_minus, total = _signed_rank_sums(d, zero_method)
    rank_biserial = (r_plus - r_minus) / total if total > 0 else 0.0
    min_p = min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2.0**n_nonzero)
    notes = []
    if n == 1 or n_nonzero == 0:
        statistic = min(r_plus, r_minus) if alternative == "two-sided" else r_plus
        pvalue, method = 1.0, "none"
        notes.append("n=1 dataset: no test possible" if n == 1 else f"all {n} differences are zero: no test")
    else:
        result = scipy.stats.wilcoxon(b, a, zero_method=zero_method, alternative=alternative, method="auto")
        statistic, pvalue, method = float(result.statistic), float(result.pvalue), _auto_method(d)
        if min_p >= alpha:
            what = f"n={n} datasets" if n == n_nonzero else f"{n_nonzero} of {n} datasets differ"
            notes.append(f"{what}: p < {alpha:g} unreachable (smallest attainable p = {min_p:.4g})")
        if zero_method == "wilcox" and n_nonzero < n:
            notes.append(f"{n - n_nonzero} zero difference(s) dropped")
    return WilcoxonResult(
        statistic=float(statistic),
        pvalue=pvalue,
        n=n,
        n_nonzero=n_nonzero,
        rank_biserial=float(rank_biserial),
        min_attainable_p=min_p,
        method=method,
        zero_method=zero_method,
        note="; ".join(notes),
    )


# --------------------------------------------------------------------------------------------------------
# Within one dataset: paired bootstrap and paired permutation over its samples
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of two designs on one dataset; ``diff = score_b - score_a``.

    ``method``: "bootstrap-percentile", "bootstrap-bca", "permutation-exact" or "permutation-random".
    Permutation results carry no interval (``ci_low = ci_high = nan``). ``n_resamples`` is the number of
    resamples actually used (2**n for an exact permutation test).
    """

    diff: float
    ci_low: float
    ci_high: float
    pvalue: float
    n: int
    n_resamples: int
    method: str


def _check_resamples(n_resamples: int) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples = {n_resamples!r}: must be a positive integer")


def paired_bootstrap(
    per_sample_a: Mapping[str, Any],
    per_sample_b: Mapping[str, Any],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    ci_method: Literal["percentile", "bca"] = "percentile",
) -> PairedResult:
    """Paired bootstrap of ``score_b - score_a``: both designs are scored on the same resampled samples.

    Runs ``scipy.stats.bootstrap`` on the sample indices (as ``paired=True`` does) with
    ``np.random.default_rng(seed)``; vectorised over resamples for row-wise statistics (mean, Spearman),
    one evaluation per resample otherwise. ``ci_method="bca"`` adds a jackknife (n more evaluations;
    NaN and a scipy warning for a degenerate bootstrap distribution).
    ``pvalue`` inverts the percentile interval: two-sided, ``2 * min(1 + #(boot <= 0), 1 + #(boot >= 0))
    / (1 + n_resamples)``, capped at 1. Needs at least 2 samples; a resample on which the statistic is
    undefined (constant predictions for Spearman) makes the interval NaN.
    """
    a, b = _align(per_sample_a, per_sample_b)
    return _bootstrap(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed, ci_method=ci_method)


def _bootstrap(
    a: _Samples, b: _Samples, *, n_resamples: int, confidence: float, seed: int, ci_method: str
) -> PairedResult:
    _check_resamples(n_resamples)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence!r}: must be in (0, 1)")
    if ci_method not in ("percentile", "bca"):
        raise ValueError(f"ci_method = {ci_method!r}: must be 'percentile' or 'bca'")
    n = len(a)
    if n < 2:
        raise ValueError(f"paired bootstrap needs at least 2 samples, got {n}")

    def resampled_diff(index: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = index.reshape(-1, index.shape[-1])
        diffs = b.row_scores({k: v[rows] for k, v in b.fields.items()}) - a.row_scores(
            {k: v[rows] for k, v in a.fields.items()}
        )
        return diffs.reshape(index.shape[:-1])

    result = scipy.stats.bootstrap(
        (np.arange(n),),
        resampled_diff,
        n_resamples=n_resamples,
        batch=max(1, _CHUNK_ELEMENTS // n),
        vectorized=True,
        confidence_level=confidence,
        method="BCa" if ci_method == "bca" else "percentile",
        rng=np.random.default_rng(seed),
    )
    boot = result.bootstrap_distribution
    tails = min(np.count_nonzero(boot <= 0), np.count_nonzero(boot >= 0))
    return PairedResult(
        diff=b.score() - a.score(),
        ci_low=float(result.confidence_interval.low),
        ci_high=float(result.confidence_interval.high),
        pvalue=min(1.0, 2 * (1 + int(tails)) / (1 + n_resamples)),
        n=n,
        n_resamples=n_resamples,
        method=f"bootstrap-{ci_method}",
    )


def _swap_masks(n: int, n_resamples: int, seed: int) -> tuple[Iterator[np.ndarray], bool]:
    """Blocks of per-sample swap masks (True = swap a_i and b_i) and whether they enumerate all 2**n."""
    rows = max(1, _CHUNK_ELEMENTS // n)
    exact = n < 63 and 2**n <= n_resamples

    def blocks() -> Iterator[np.ndarray]:
        if exact:
            codes = np.arange(2**n)
            for start in range(0, codes.size, rows):
                yield ((codes[start : start + rows, None] >> np.arange(n)) & 1) == 1
        else:
            rng = np.random.default_rng(seed)
            for start in range(0, n_resamples, rows):
                yield rng.random((min(rows, n_resamples - start), n)) < 0.5

    return blocks(), exact


def _swapped_diffs(a: _Samples, b: _Samples, masks: np.ndarray) -> np.ndarray:
    """``score_b - score_a`` after swapping the designs' values on each row's masked samples."""
    field = a.statistic.paired_field
    values_a, values_b = a.fields[field], b.fields[field]
    swapped_b = b.row_scores({field: np.where(masks, values_a, values_b)})
    return swapped_b - a.row_scores({field: np.where(masks, values_b, values_a)})


def paired_permutation(
    per_sample_a: Mapping[str, Any],
    per_sample_b: Mapping[str, Any],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedResult:
    """Paired permutation test of ``score_b - score_a`` (two-sided).

    Each resample swaps ``a_i`` and ``b_i`` with probability 1/2 per sample (a sign flip of ``b_i - a_i``
    for mean statistics); vectorised over resamples for row-wise statistics. When ``2**n <= n_resamples``
    all 2**n swap patterns are enumerated and ``p = #extreme / 2**n`` (as scipy.stats.permutation_test);
    otherwise
    ``p = (1 + #extreme) / (1 + n_resamples)``. Extreme means ``|T*| >= |T|`` up to a relative 1e-14.
    """
    a, b = _align(per_sample_a, per_sample_b)
    return _permutation(a, b, n_resamples=n_resamples, seed=seed)


def _permutation(a: _Samples, b: _Samples, *, n_resamples: int, seed: int) -> PairedResult:
    _check_resamples(n_resamples)
    n = len(a)
    blocks, exact = _swap_masks(n, n_resamples, seed)
    observed = abs(_swapped_diffs(a, b, np.zeros((1, n), dtype=bool))[0])
    threshold = observed - _TIE_RTOL * observed
    extreme = sum(int(np.count_nonzero(np.abs(_swapped_diffs(a, b, m)) >= threshold)) for m in blocks)
    used = 2**n if exact else n_resamples
    pvalue = extreme / used if exact else (1 + extreme) / (1 + used)
    return PairedResult(
        diff=b.score() - a.score(),
        ci_low=math.nan,
        ci_high=math.nan,
        pvalue=pvalue,
        n=n,
        n_resamples=used,
        method="permutation-exact" if exact else "permutation-random",
    )


def compare_within_dataset(
    per_sample_a: Mapping[str, Any],
    per_sample_b: Mapping[str, Any],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Bootstrap confidence interval and permutation p-value of ``score_b - score_a`` on one dataset.

    Returns a JSON-ready dict: statistic, n, score_a, score_b, diff, ci_low, ci_high, confidence,
    ci_method, pvalue (permutation), p_method, n_resamples (bootstrap) and n_permutations.
    """
    a, b = _align(per_sample_a, per_sample_b)
    bootstrap = _bootstrap(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed, ci_method="percentile")
    permutation = _permutation(a, b, n_resamples=n_resamples, seed=seed)
    return {
        "statistic": a.name,
        "n": len(a),
        "score_a": a.score(),
        "score_b": b.score(),
        "diff": bootstrap.diff,
        "ci_low": bootstrap.ci_low,
        "ci_high": bootstrap.ci_high,
        "confidence": confidence,
        "ci_method": bootstrap.method,
        "pvalue": permutation.pvalue,
        "p_method": permutation.method,
        "n_resamples": bootstrap.n_resamples,
        "n_permutations": permutation.n_resamples,
    }


# --------------------------------------------------------------------------------------------------------
# Multiple tests, seeds, marks
# --------------------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as the input).

    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the sorted p-values; monotone in the raw
    p-values, never below them, capped at 1. NaN entries are left out of ``m`` and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-D sequence, got shape {p.shape}")
    bad = np.flatnonzero((p < 0) | (p > 1))
    if bad.size:
        raise ValueError(f"pvalues[{bad[0]}] = {p[bad[0]]}: must be in [0, 1]")
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1) and Student-t confidence interval of a score over training seeds.

    With one seed, std and the interval are NaN; with identical values the interval is the mean.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"values[{bad[0]}] = {x[bad[0]]}: must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence!r}: must be in (0, 1)")
    n, mean = x.size, float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def significance_mark(p: float, alpha: float = 0.05) -> str:
    """``"*"`` when ``p < alpha`` (the paper's table mark), else ``""`` (also for NaN)."""
    return "*" if p < alpha else ""
