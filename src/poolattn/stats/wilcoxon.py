"""Across datasets: the Wilcoxon signed-rank test over two designs' main scores (the paper's test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats

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
