"""What a comparison could have found: the minimum detectable effect of a paired test, the spread of a difference
over training seeds, and the sign test of agreement with a reference study's directions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.stats

# --------------------------------------------------------------------------------------------------------
# Power: the smallest effect a test finds with a given probability
# --------------------------------------------------------------------------------------------------------


def minimum_detectable_effect(se: float, *, alpha: float = 0.05, power: float = 0.8, df: float = math.inf) -> float:
    """The smallest true |Δ| that a two-sided level-``alpha`` test of an estimate with standard error ``se``
    detects with probability ``power``: ``(q_{1-alpha/2} + q_{power}) * se`` with ``q`` the standard normal's
    quantiles (Student t's with ``df`` degrees of freedom when finite, the usual approximation).

    For a paired mean difference of n samples with standard deviation sd this is the textbook
    ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``; NaN when ``se`` is NaN. For a sign-flip permutation test
    it is close (simulated at n = 60: 79% power), a few points optimistic where the effect is not small against
    the samples' spread (n = 30: 77%), since the permutation null's spread grows with the effect.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha = {alpha!r}: must be in (0, 1)")
    if not 0 < power < 1:
        raise ValueError(f"power = {power!r}: must be in (0, 1)")
    if not se >= 0 and not math.isnan(se):
        raise ValueError(f"se = {se!r}: must be >= 0")
    if not df > 0:
        raise ValueError(f"df = {df!r}: must be > 0")
    law = scipy.stats.norm if math.isinf(df) else scipy.stats.t(df)
    return float((law.ppf(1 - alpha / 2) + law.ppf(power)) * se)


def paired_mde(differences: Sequence[float], *, alpha: float = 0.05, power: float = 0.8) -> float:
    """:func:`minimum_detectable_effect` of the mean of paired differences, ``se = sd(ddof=1) / sqrt(n)``."""
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"differences: expected at least 2 values, got shape {d.shape}")
    return minimum_detectable_effect(float(d.std(ddof=1)) / math.sqrt(d.size), alpha=alpha, power=power)


def planned_mde(
    var_eval: float,
    var_seed: float,
    n_seeds: int,
    sample_factor: float = 1.0,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """:func:`minimum_detectable_effect` of a mean Δ over ``n_seeds`` training seeds evaluated on
    ``sample_factor`` times the samples: variance ``var_eval / sample_factor + var_seed / n_seeds`` (``var_eval``:
    the evaluation samples' variance of Δ as measured, shrinking as 1/n; ``var_seed``: one seed's training variance
    of Δ). Student t quantiles at the Welch–Satterthwaite degrees of freedom, the seeds' part with ``n_seeds - 1``
    and the samples' part taken as known (as the † test does); inf with one seed and training noise."""
    if not (var_eval >= 0 and var_seed >= 0 and sample_factor > 0 and n_seeds >= 1):
        raise ValueError(f"var_eval={var_eval}, var_seed={var_seed}, n_seeds={n_seeds}, factor={sample_factor}")
    eval_part, seed_part = var_eval / sample_factor, var_seed / n_seeds
    if seed_part > 0 and n_seeds < 2:
        return math.inf
    df = satterthwaite_df([(eval_part, math.inf), (seed_part, n_seeds - 1)]) if seed_part > 0 else math.inf
    return minimum_detectable_effect(math.sqrt(eval_part + seed_part), alpha=alpha, power=power, df=df)


def seeds_to_detect(
    delta: float, var_eval: float, var_seed: float, *, alpha: float = 0.05, power: float = 0.8, max_seeds: int = 1000
) -> int | None:
    """The fewest training seeds at which :func:`planned_mde` (the evaluation samples as they are) is at most
    ``delta``: 1 without training noise, else at least 2; None when more than ``max_seeds`` would be needed (or
    the evaluation samples' noise alone is too large)."""
    if not delta > 0:
        raise ValueError(f"delta = {delta!r}: must be > 0")

    def enough(n: int) -> bool:
        return planned_mde(var_eval, var_seed, n, alpha=alpha, power=power) <= delta

    if var_seed == 0:
        return 1 if enough(1) else None
    if not enough(max_seeds):
        return None
    low, high = 1, max_seeds  # enough(high), not enough(low): the MDE falls with every seed
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def samples_to_detect(
    delta: float, var_eval: float, var_seed: float, n_seeds: int, *, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The factor by which every dataset's evaluation samples must grow (or may shrink, below 1) for
    :func:`planned_mde` at ``n_seeds`` to reach ``delta``; None when the seeds' part alone exceeds it."""
    if not delta > 0:
        raise ValueError(f"delta = {delta!r}: must be > 0")
    if var_eval == 0:
        return None if planned_mde(0.0, var_seed, n_seeds, alpha=alpha, power=power) > delta else 0.0

    def excess(log_factor: float) -> float:
        return planned_mde(var_eval, var_seed, n_seeds, math.exp(log_factor), alpha=alpha, power=power) - delta

    high = 0.0
    while excess(high) > 0:
        high += 2.0
        if high > 60:
            return None
    low = high - 2.0
    while excess(low) <= 0:
        low -= 2.0
    return float(math.exp(scipy.optimize.brentq(excess, low, high, xtol=1e-10)))


# --------------------------------------------------------------------------------------------------------
# Several training seeds: the spread of Δ over seeds
# --------------------------------------------------------------------------------------------------------


def seed_spread(seed_deltas: Sequence[float]) -> tuple[float, int]:
    """(standard error of the mean Δ over training seeds, number of seeds): ``sd(ddof=1) / sqrt(S)``;
    NaN with fewer than two seeds."""
    d = np.asarray(seed_deltas, dtype=np.float64)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise ValueError(f"seed_deltas: expected finite values, got {seed_deltas!r}")
    if d.size < 2:
        return math.nan, int(d.size)
    return float(d.std(ddof=1)) / math.sqrt(d.size), int(d.size)


def satterthwaite_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of variance estimates ``(variance, df)``:
    ``(sum v)**2 / sum(v**2 / df)``; a part with infinite df counts as known, and inf when every part is known
    (or the sum is 0). NaN variances count as 0."""
    total = sum(v for v, _ in parts if math.isfinite(v))
    weights = sum(v**2 / d for v, d in parts if math.isfinite(v) and math.isfinite(d) and v > 0 and d > 0)
    if total <= 0 or weights <= 0:
        return math.inf
    return float(total**2 / weights)


# --------------------------------------------------------------------------------------------------------
# Agreement in direction with a reference study
# --------------------------------------------------------------------------------------------------------


def sign_agreement(agree: Sequence[bool]) -> dict[str, float]:
    """How many comparisons point the same way as a reference study's, against a coin's 50%.

    ``pvalue``: exact one-sided binomial test (``scipy.stats.binomtest``, k of n agreeing, p = 0.5, alternative
    "greater"), the chance of at least this much agreement if each direction were a coin flip.
    """
    k, n = int(sum(bool(a) for a in agree)), len(agree)
    if n == 0:
        return {"k": 0, "n": 0, "expected": 0.0, "pvalue": math.nan}
    return {"k": k, "n": n, "expected": n / 2, "pvalue": float(scipy.stats.binomtest(k, n, 0.5, "greater").pvalue)}
