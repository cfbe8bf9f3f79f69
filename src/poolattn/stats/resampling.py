"""Paired bootstrap and permutation tests that resample a dataset's own samples: within one dataset, and
for a category's mean difference over its datasets."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats

from .power import satterthwaite_df, seed_spread
from .samples import _align, _Samples

# Resampling works on blocks of at most this many (resample x sample) elements to bound memory.
_CHUNK_ELEMENTS = 1_000_000
# Relative tolerance that treats numerically distinct but theoretically equal statistics as ties
# (the value scipy.stats.permutation_test uses).
_TIE_RTOL = 100 * np.finfo(np.float64).eps


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
# Across a category's datasets: resampling within each dataset
# --------------------------------------------------------------------------------------------------------


def compare_category(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 250,
    seed_deltas: Sequence[float] | None = None,
) -> dict[str, float]:
    """Paired tests of a category's mean Δ (``b - a``) over its datasets, resampling *within* each dataset.

    ``pairs`` holds one ``(per_sample_a, per_sample_b)`` per dataset. Permutation: every sample's paired values
    are swapped between the designs with probability 1/2 in every dataset at once (always random, never
    enumerated), ``p = (1 + #extreme) / (1 + n_resamples)``, extreme meaning ``|T*| >= |T|`` up to the relative
    tolerance of :func:`paired_permutation`. Bootstrap: each dataset's samples are resampled with replacement
    (the same indices for both designs); the percentile interval of the mean Δ. One
    ``np.random.default_rng(seed)`` draws, dataset after dataset and ``chunk`` resamples at a time, the swaps
    and then the bootstrap indices. ``se``: the standard deviation of the bootstrap distribution (the standard
    error of Δ from evaluation samples).

    ``seed_deltas``: the category's Δ of each training seed, when ``pairs`` hold values averaged over several
    seeds. Training noise then enters the test: it is ``se_seed * T``, ``se_seed = sd(seed_deltas) / sqrt(S)``
    and ``T`` Student-t with the Welch–Satterthwaite degrees of freedom of ``sqrt(se**2 + se_seed**2)`` with the
    sampling part taken as known (:func:`satterthwaite_df`: S - 1 where training noise dominates, large where it
    is small), independent of the evaluation-sample noise. The
    p-value is the permutation test's with that noise added to every permuted statistic
    (:func:`seed_convolved_pvalue`), the interval is the percentile interval of the bootstrap statistics plus
    draws of that noise (its own generator, ``default_rng([seed, 1])``), and ``se_total = sqrt(se**2 +
    se_seed**2)``. Training noise that differs from sample to sample shows in both parts, so this errs on the
    cautious side.

    ``df``: the Welch–Satterthwaite degrees of freedom of ``se_total`` from its parts, each dataset's bootstrap
    variance with n - 1 and the seeds' with S - 1 (for the minimum detectable effect's Student t quantiles).

    Returns a JSON-ready dict: diff, ci_low, ci_high, pvalue, n_resamples, se, se_seed, n_seeds, se_total, df.
    """
    _check_resamples(n_resamples)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence!r}: must be in (0, 1)")
    if not pairs:
        raise ValueError("pairs: no datasets to compare")
    rng = np.random.default_rng(seed)
    observed = 0.0
    permuted = np.zeros(n_resamples)
    booted = np.zeros(n_resamples)
    variances = []  # (variance of the dataset's bootstrapped Δ, its degrees of freedom)
    for per_sample_a, per_sample_b in pairs:
        a, b = _align(per_sample_a, per_sample_b)
        n = len(a)
        observed += b.score() - a.score()
        dataset = np.zeros(n_resamples)
        for start in range(0, n_resamples, chunk):
            rows = min(chunk, n_resamples - start)
            swap = rng.random((rows, n)) < 0.5
            permuted[start : start + rows] += _swapped_diffs(a, b, swap)
            index = rng.integers(0, n, size=(rows, n))
            dataset[start : start + rows] = b.row_scores({k: v[index] for k, v in b.fields.items()}) - (
                a.row_scores({k: v[index] for k, v in a.fields.items()})
            )
        booted += dataset
        variances.append((float(np.nanvar(dataset, ddof=1)) if n_resamples > 1 else math.nan, n - 1))
    k = len(pairs)
    observed, permuted, booted = observed / k, permuted / k, booted / k
    se = float(np.nanstd(booted, ddof=1)) if np.isfinite(booted).sum() > 1 else math.nan
    se_seed, n_seeds = seed_spread(seed_deltas) if seed_deltas is not None else (math.nan, 1)
    seed_part = [(se_seed**2, n_seeds - 1)] if se_seed > 0 else []
    # training noise beside a sampling part whose null distribution the permutations give
    noise_df = satterthwaite_df([(se**2, math.inf), *seed_part])
    pvalue = seed_convolved_pvalue(observed, permuted, se_seed, noise_df)
    if se_seed > 0:
        booted = booted + se_seed * np.random.default_rng([seed, 1]).standard_t(noise_df, n_resamples)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(booted, [tail, 100 - tail]) if np.isfinite(booted).any() else (math.nan, math.nan)
    return {
        "diff": float(observed),
        "ci_low": float(low),
        "ci_high": float(high),
        "pvalue": float(pvalue),
        "n_resamples": n_resamples,
        "se": se,
        "se_seed": se_seed,
        "n_seeds": n_seeds,
        "se_total": math.hypot(se, se_seed) if se_seed >= 0 else se,
        "df": satterthwaite_df([(v / k**2, d) for v, d in variances] + seed_part),
    }


def seed_convolved_pvalue(observed: float, permuted: np.ndarray, seed_se: float, df: float) -> float:
    """Two-sided p of ``observed`` under a null that adds training noise to a permutation null.

    ``permuted`` holds the statistic of each resample (evaluation-sample noise); training noise is
    ``seed_se * T`` with ``T`` Student-t with ``df`` degrees of freedom, independent of it:
    ``p = (1 + sum_r P(|T*_r + seed_se T| >= |observed|)) / (1 + R)``. Without training noise (``seed_se`` 0 or
    NaN) it is the permutation p-value, extreme meaning ``|T*| >= |T|`` up to the relative tolerance of
    :func:`paired_permutation`; when every permuted statistic is 0 and ``df`` is seeds - 1 it is the one-sample
    t-test over seeds (up to the permutation p-value's 1 / (1 + R)).
    """
    if not math.isfinite(observed):
        return math.nan
    permuted = np.asarray(permuted, dtype=np.float64)
    threshold = abs(observed) - _TIE_RTOL * abs(observed)
    if not seed_se > 0:
        return float((1 + np.count_nonzero(np.abs(permuted) >= threshold)) / (1 + permuted.size))
    t = scipy.stats.t(df)
    beyond = t.cdf((-threshold - permuted) / seed_se) + t.sf((threshold - permuted) / seed_se)
    return float((1 + beyond.sum()) / (1 + permuted.size))
