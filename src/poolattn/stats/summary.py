"""Holm's correction, seed summaries, the significance mark of tables and the linear CKA between layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats

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


# --------------------------------------------------------------------------------------------------------
# Representations
# --------------------------------------------------------------------------------------------------------


def linear_cka(layers: np.ndarray) -> np.ndarray:
    """Linear CKA (Kornblith et al. 2019) between every pair of layers; ``layers`` is (L, n, H).

    With column-centred features X the Gram matrix X Xᵀ is already centred, so CKA = <K_a, K_b>_F /
    (||K_a||_F ||K_b||_F).
    """
    x = layers.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    grams = np.einsum("lnh,lmh->lnm", x, x).reshape(x.shape[0], -1)
    hsic = grams @ grams.T
    norms = np.sqrt(np.clip(np.diag(hsic), 1e-300, None))
    return hsic / np.outer(norms, norms)
