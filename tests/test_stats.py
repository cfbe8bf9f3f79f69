"""Tests for poolattn.stats, checked against scipy, scikit-learn and textbook values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from poolattn import stats

FAST = settings(max_examples=40, deadline=None)


def _mean_samples(scores, ids=None) -> dict:
    ids = list(range(len(scores))) if ids is None else ids
    return {"statistic": "mean", "ids": ids, "score": list(scores)}


def _pred_samples(statistic: str, prediction, gold, ids=None) -> dict:
    ids = list(range(len(gold))) if ids is None else ids
    return {"statistic": statistic, "ids": ids, "prediction": list(prediction), "gold": list(gold)}


def _design_pair(statistic: str, n: int, seed: int, shift: float = 0.3) -> tuple[dict, dict]:
    """Two designs' per-sample results on the same synthetic dataset; b is a bit better than a."""
    rng = np.random.default_rng(seed)
    if statistic == "mean":
        a = rng.random(n)
        return _mean_samples(a), _mean_samples(np.clip(a + shift * rng.standard_normal(n) + 0.05, 0, 1))
    gold = (rng.random(n) < 0.4).astype(float) if statistic == "average_precision" else 5 * rng.random(n)
    if statistic == "average_precision":
        gold[:2] = [0.0, 1.0]  # both classes present
    noise_a, noise_b = rng.standard_normal(n), rng.standard_normal(n)
    return (
        _pred_samples(statistic, gold + 2.0 * noise_a, gold),
        _pred_samples(statistic, gold + (2.0 - 6 * shift) * noise_b, gold),
    )


# --------------------------------------------------------------------------------------------------------
# score_from_samples / align
# --------------------------------------------------------------------------------------------------------


def test_mean_score_and_index():
    scores = [0.2, 0.4, 0.9, 1.0]
    assert stats.score_from_samples(_mean_samples(scores)) == pytest.approx(np.mean(scores), abs=1e-15)
    index = np.array([0, 0, 3])
    assert stats.score_from_samples(_mean_samples(scores), index) == pytest.approx((0.2 + 0.2 + 1.0) / 3)
    mask = np.array([True, False, True, False])
    assert stats.score_from_samples(_mean_samples(scores), mask) == pytest.approx(0.55)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 50).astype(float)  # STS gold scores have many ties
    prediction = np.round(rng.random(50), 1)
    expected = scipy.stats.spearmanr(prediction, gold).statistic
    assert stats.score_from_samples(_pred_samples("spearman", prediction, gold)) == pytest.approx(expected, abs=1e-15)


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(1)
    gold = (rng.random(60) < 0.3).astype(int)
    prediction = np.round(rng.random(60), 1)
    expected = average_precision_score(gold, prediction)
    assert stats.score_from_samples(_pred_samples("average_precision", prediction, gold)) == expected
    index = np.arange(0, 60, 2)
    sub = stats.score_from_samples(_pred_samples("average_precision", prediction, gold), index)
    assert sub == average_precision_score(gold[index], prediction[index])


@pytest.mark.parametrize("name", sorted(stats.STATISTICS))
@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 25), rows=st.integers(1, 6))
def test_row_scores_agree_with_library_score(name, seed, n, rows):
    """The vectorised per-resample path equals the library score (scipy/sklearn/numpy) row by row."""
    rng = np.random.default_rng(seed)
    statistic = stats.STATISTICS[name]
    if statistic.compute_rows is None:
        pytest.skip("no row-wise path")
    values = rng.integers(0, 4, (rows, n)).astype(float)  # small integers: many ties
    gold = (rng.random(n) < 0.5).astype(float) if name == "average_precision" else rng.integers(0, 3, n) * 1.0
    gold[:2] = [0.0, 1.0]
    values[:, 0] = 9.0  # no constant rows, so Spearman is defined
    fields = {statistic.paired_field: values, "gold": np.broadcast_to(gold, values.shape)}
    got = statistic.compute_rows(fields)
    expected = [statistic.compute({k: v[r] for k, v in fields.items()}) for r in range(rows)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("per_sample", "message"),
    [
        ({"statistic": "median", "ids": [1], "score": [1.0]}, r"\['statistic'\] = 'median'"),
        ({"statistic": "spearman", "ids": [1, 2], "prediction": [1.0, 2.0]}, r"missing field\(s\) \['gold'\]"),
        ({"statistic": "mean", "ids": [1, 2], "score": [1.0]}, r"\['score'\]: expected 2 values"),
        ({"statistic": "mean", "ids": [1, 2], "score": [1.0, float("nan")]}, r"\['score'\]\[1\] = nan"),
        ({"statistic": "mean", "ids": [1, 2], "score": ["x", 1.0]}, r"\['score'\]: expected numbers"),
        ({"statistic": "mean", "ids": ["q", "q"], "score": [1.0, 2.0]}, r"\['ids'\]\[1\] = 'q': duplicate"),
        ({"statistic": "mean", "ids": [], "score": []}, r"\['ids'\]: no samples"),
        (
            {"statistic": "average_precision", "ids": [1, 2], "prediction": [0.1, 0.2], "gold": [0, 2]},
            r"\['gold'\]\[1\] = 2.0: must be 0 or 1",
        ),
    ],
)
def test_bad_per_sample_names_field(per_sample, message):
    with pytest.raises(ValueError, match=message):
        stats.score_from_samples(per_sample)


def test_align_reorders_b_to_a():
    a = _pred_samples("spearman", [0.1, 0.2, 0.3], [1.0, 2.0, 3.0], ids=["x", "y", "z"])
    b = _pred_samples("spearman", [0.9, 0.7, 0.8], [3.0, 1.0, 2.0], ids=["z", "x", "y"])
    a2, b2 = stats.align(a, b)
    assert a2["ids"] == b2["ids"] == ["x", "y", "z"]
    np.testing.assert_array_equal(b2["prediction"], [0.7, 0.8, 0.9])
    np.testing.assert_array_equal(b2["gold"], [1.0, 2.0, 3.0])


def test_align_errors():
    a = _mean_samples([0.1, 0.2], ids=["x", "y"])
    with pytest.raises(ValueError, match=r"different ids: 1 only in a \(e.g. \['y'\]\), 1 only in b"):
        stats.align(a, _mean_samples([0.1, 0.2], ids=["x", "w"]))
    with pytest.raises(ValueError, match="'mean' but per_sample_b\\['statistic'\\] = 'spearman'"):
        stats.align(a, _pred_samples("spearman", [0.1, 0.2], [1.0, 2.0], ids=["x", "y"]))
    sa = _pred_samples("spearman", [0.1, 0.2], [1.0, 2.0], ids=["x", "y"])
    sb = _pred_samples("spearman", [0.1, 0.2], [1.0, 5.0], ids=["x", "y"])
    with pytest.raises(ValueError, match=r"\['gold'\] differ at id 'y'"):
        stats.align(sa, sb)


# --------------------------------------------------------------------------------------------------------
# Wilcoxon over datasets
# --------------------------------------------------------------------------------------------------------

# Wikipedia's worked example (Wilcoxon signed-rank test): 10 pairs, one zero, one tie; W+ = 27, W- = 18.
WIKI_X1 = [110, 122, 125, 120, 140, 124, 123, 137, 135, 145]
WIKI_X2 = [125, 115, 130, 140, 140, 115, 140, 125, 140, 135]

SCIPY_METHOD = {"exact": "exact", "asymptotic": "asymptotic", "permutation": scipy.stats.PermutationMethod()}


def _assert_matches_scipy(a, b, **kwargs):
    result = stats.wilcoxon_over_datasets(a, b, **kwargs)
    auto = scipy.stats.wilcoxon(b, a, method="auto", **kwargs)
    assert result.pvalue == auto.pvalue
    assert result.statistic == auto.statistic
    explicit = scipy.stats.wilcoxon(b, a, method=SCIPY_METHOD[result.method], **kwargs)
    assert result.pvalue == explicit.pvalue  # the reported method is the one scipy used
    return result


def test_wilcoxon_exact_small_n():
    rng = np.random.default_rng(2)
    a = rng.random(8)
    b = a + rng.normal(0.05, 0.05, 8)
    result = _assert_matches_scipy(a, b)
    assert result.method == "exact"
    assert (result.n, result.n_nonzero, result.zero_method) == (8, 8, "wilcox")


def test_wilcoxon_asymptotic_large_n():
    rng = np.random.default_rng(3)
    a = rng.random(60)
    result = _assert_matches_scipy(a, a + rng.normal(0.02, 0.1, 60))
    assert result.method == "asymptotic"


def test_wilcoxon_ties_use_permutation_then_asymptotic():
    a = np.zeros(10)
    b = np.array([1, 1, 2, 2, 3, -1, 4, 4, 5, 6], dtype=float)
    assert _assert_matches_scipy(a, b).method == "permutation"
    b20 = np.concatenate([b, b + 0.5])
    assert _assert_matches_scipy(np.zeros(20), b20).method == "asymptotic"


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_zero_methods_and_alternatives(zero_method, alternative):
    result = _assert_matches_scipy(WIKI_X1, WIKI_X2, zero_method=zero_method, alternative=alternative)
    assert result.n_nonzero == 9 and result.zero_method == zero_method


def test_wilcoxon_one_sided_direction_is_b_minus_a():
    a = np.arange(8) / 10
    b = a + np.linspace(0.01, 0.08, 8)
    assert stats.wilcoxon_over_datasets(a, b, alternative="greater").pvalue == 1 / 2**8
    assert stats.wilcoxon_over_datasets(a, b, alternative="less").pvalue == 1.0


def test_wilcoxon_one_dataset():
    result = stats.wilcoxon_over_datasets([0.5], [0.6])
    assert result.pvalue == 1.0 and result.method == "none" and result.n == 1
    assert "n=1 dataset" in result.note
    assert result.rank_biserial == 1.0


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
def test_wilcoxon_all_zero(zero_method):
    result = stats.wilcoxon_over_datasets([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], zero_method=zero_method)
    assert result.pvalue == 1.0 and result.n_nonzero == 0 and result.rank_biserial == 0.0
    assert "all 3 differences are zero" in result.note


def test_min_attainable_p_and_note():
    four = stats.wilcoxon_over_datasets([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    assert four.min_attainable_p == 0.125 and four.pvalue == 0.125
    assert "n=4 datasets: p < 0.05 unreachable" in four.note
    six = stats.wilcoxon_over_datasets([0] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert six.min_attainable_p == 1 / 32 == six.pvalue  # the paper's n = 6: attainable only if all agree
    assert six.note == ""
    with_zero = stats.wilcoxon_over_datasets([0] * 6, [0.0, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert with_zero.min_attainable_p == 1 / 16
    assert "5 of 6 datasets differ: p < 0.05 unreachable" in with_zero.note
    assert "1 zero difference(s) dropped" in with_zero.note
    one_sided = stats.wilcoxon_over_datasets([0] * 5, [1, 2, 3, 4, 5], alternative="greater")
    assert one_sided.min_attainable_p == 1 / 32 == one_sided.pvalue and one_sided.note == ""


def test_rank_biserial_textbook():
    # Kerby (2014): r = (favourable - unfavourable rank sum) / total rank sum = (27 - 18) / 45
    assert stats.wilcoxon_over_datasets(WIKI_X1, WIKI_X2).rank_biserial == pytest.approx(0.2, abs=1e-15)
    assert stats.wilcoxon_over_datasets(WIKI_X2, WIKI_X1).rank_biserial == pytest.approx(-0.2, abs=1e-15)
    # d = 1, 2, 3, -4: (1 + 2 + 3 - 4) / 10
    assert stats.wilcoxon_over_datasets([0] * 4, [1, 2, 3, -4]).rank_biserial == pytest.approx(0.2)
    assert stats.wilcoxon_over_datasets([0] * 5, [1, 2, 3, 4, 5]).rank_biserial == 1.0


def test_wilcoxon_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        stats.wilcoxon_over_datasets([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"scores_b\[1\] = nan"):
        stats.wilcoxon_over_datasets([0.1, 0.2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="zero_method"):
        stats.wilcoxon_over_datasets([0.1, 0.2], [0.3, 0.4], zero_method="drop")


# n <= 10 keeps scipy's exact-permutation path (2**n sign patterns) fast; n >= 14 with ties is asymptotic.
_score_lists = (st.integers(2, 10) | st.integers(14, 40)).flatmap(
    lambda n: st.tuples(*[st.lists(st.integers(0, 6), min_size=n, max_size=n)] * 2)
)


@FAST
@given(
    pair=_score_lists,
    zero_method=st.sampled_from(["wilcox", "pratt", "zsplit"]),
    alternative=st.sampled_from(["two-sided", "greater", "less"]),
)
def test_wilcoxon_property_matches_scipy(pair, zero_method, alternative):
    a, b = (np.array(x, dtype=float) / 10 for x in pair)
    result = stats.wilcoxon_over_datasets(a, b, zero_method=zero_method, alternative=alternative)
    assert 0 < result.pvalue <= 1 and -1 <= result.rank_biserial <= 1
    if result.method == "none":
        assert result.pvalue == 1.0
        return
    _assert_matches_scipy(a, b, zero_method=zero_method, alternative=alternative)
    if result.method != "asymptotic":
        assert result.pvalue >= result.min_attainable_p * (1 - 1e-12)
    if zero_method == "wilcox" and alternative == "two-sided":
        total = result.n_nonzero * (result.n_nonzero + 1) / 2
        assert abs(result.rank_biserial) == pytest.approx((total - 2 * result.statistic) / total)


# --------------------------------------------------------------------------------------------------------
# Paired permutation and bootstrap within a dataset
# --------------------------------------------------------------------------------------------------------


def _scipy_statistic(statistic: str, gold):
    """score_b - score_a as scipy's resampling functions see it (x = design a, y = design b)."""
    if statistic == "mean":
        return lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis)
    if statistic == "spearman":
        return lambda x, y: scipy.stats.spearmanr(y, gold).statistic - scipy.stats.spearmanr(x, gold).statistic
    return lambda x, y: average_precision_score(gold, y) - average_precision_score(gold, x)


def _paired_values(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    field = "score" if a["statistic"] == "mean" else "prediction"
    gold = None if field == "score" else np.asarray(a["gold"])
    return np.asarray(a[field]), np.asarray(b[field]), gold


@pytest.mark.parametrize(("statistic", "n"), [("mean", 9), ("spearman", 8), ("average_precision", 7)])
def test_permutation_exact_matches_scipy(statistic, n):
    a, b = _design_pair(statistic, n, seed=4)
    result = stats.paired_permutation(a, b, n_resamples=2000)
    x, y, gold = _paired_values(a, b)
    reference = scipy.stats.permutation_test(
        (x, y),
        _scipy_statistic(statistic, gold),
        permutation_type="samples",
        n_resamples=2000,
        vectorized=statistic == "mean",
    )
    assert result.method == "permutation-exact" and result.n_resamples == 2**n
    assert result.pvalue == reference.pvalue
    assert result.diff == pytest.approx(reference.statistic, abs=1e-14)


@pytest.mark.parametrize(
    ("statistic", "n", "reference_resamples"),
    [("mean", 40, 4999), ("spearman", 30, 2000), ("average_precision", 30, 800)],
)
def test_permutation_random_close_to_scipy(statistic, n, reference_resamples):
    a, b = _design_pair(statistic, n, seed=5, shift=0.15)
    result = stats.paired_permutation(a, b, n_resamples=2000, seed=1)
    x, y, gold = _paired_values(a, b)
    reference = scipy.stats.permutation_test(
        (x, y),
        _scipy_statistic(statistic, gold),
        permutation_type="samples",
        n_resamples=reference_resamples,
        vectorized=statistic == "mean",
        rng=np.random.default_rng(7),
    )
    assert result.method == "permutation-random" and result.n_resamples == 2000
    assert (result.pvalue * 2001) == pytest.approx(round(result.pvalue * 2001))  # p = (1 + k) / (1 + B)
    p = reference.pvalue
    assert 0.001 < p < 0.999, "the fixture should give a non-trivial p"
    standard_error = math.sqrt(p * (1 - p) * (1 / 2000 + 1 / reference_resamples))  # two Monte-Carlo estimates
    assert abs(result.pvalue - p) < 4 * standard_error + 0.002


def test_permutation_identical_designs():
    a = _mean_samples([0.1, 0.5, 0.7] * 10)
    result = stats.paired_permutation(a, a)
    assert result.pvalue == 1.0 and result.diff == 0.0


@FAST
@given(
    scores=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=14),
    seed=st.integers(0, 1000),
)
def test_permutation_property(scores, seed):
    a = _mean_samples([s[0] / 4 for s in scores])
    b = _mean_samples([s[1] / 4 for s in scores])
    forward = stats.paired_permutation(a, b, n_resamples=500, seed=seed)
    backward = stats.paired_permutation(b, a, n_resamples=500, seed=seed)
    assert 0 < forward.pvalue <= 1
    assert backward.diff == -forward.diff and backward.pvalue == forward.pvalue


def test_bootstrap_mean_matches_scipy_percentile_and_bca():
    a, b = _design_pair("mean", 30, seed=6)
    x, y, _ = _paired_values(a, b)
    for ci_method, scipy_method in (("percentile", "percentile"), ("bca", "BCa")):
        result = stats.paired_bootstrap(a, b, n_resamples=2000, seed=3, ci_method=ci_method)
        reference = scipy.stats.bootstrap(
            (x, y),
            _scipy_statistic("mean", None),
            paired=True,
            vectorized=True,
            n_resamples=2000,
            method=scipy_method,
            rng=np.random.default_rng(3),
        )
        assert result.method == f"bootstrap-{ci_method}"
        assert result.ci_low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
        assert result.ci_high == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    assert result.diff == pytest.approx(np.mean(y) - np.mean(x), abs=1e-15)


def test_bootstrap_within_monte_carlo_tolerance_of_scipy():
    a, b = _design_pair("mean", 200, seed=8)
    x, y, _ = _paired_values(a, b)
    result = stats.paired_bootstrap(a, b, n_resamples=2000, seed=0)
    reference = scipy.stats.bootstrap(
        (x, y),
        _scipy_statistic("mean", None),
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(12345),
    )
    tolerance = 0.25 * reference.standard_error
    assert abs(result.ci_low - reference.confidence_interval.low) < tolerance
    assert abs(result.ci_high - reference.confidence_interval.high) < tolerance


@pytest.mark.parametrize("statistic", ["spearman", "average_precision"])
def test_bootstrap_general_path_matches_scipy(statistic):
    a, b = _design_pair(statistic, 30, seed=9)
    x, y, gold = _paired_values(a, b)
    result = stats.paired_bootstrap(a, b, n_resamples=300, seed=2, confidence=0.9)
    if statistic == "spearman":

        def reference_statistic(x, y, g):
            return scipy.stats.spearmanr(y, g).statistic - scipy.stats.spearmanr(x, g).statistic
    else:

        def reference_statistic(x, y, g):
            return average_precision_score(g, y) - average_precision_score(g, x)

    reference = scipy.stats.bootstrap(
        (x, y, gold),
        reference_statistic,
        paired=True,
        vectorized=False,
        n_resamples=300,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert result.ci_low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert result.ci_high == pytest.approx(reference.confidence_interval.high, abs=1e-12)


def test_bootstrap_pvalue_and_symmetry():
    a, b = _design_pair("mean", 50, seed=10)
    forward = stats.paired_bootstrap(a, b, n_resamples=999, seed=4)
    backward = stats.paired_bootstrap(b, a, n_resamples=999, seed=4)
    assert backward.diff == -forward.diff and backward.pvalue == forward.pvalue
    assert backward.ci_low == pytest.approx(-forward.ci_high) and backward.ci_high == pytest.approx(-forward.ci_low)
    assert 0 < forward.pvalue <= 1 and forward.pvalue * 1000 == pytest.approx(round(forward.pvalue * 1000))
    # the interval excludes 0 exactly when the inverted p-value is small
    assert (forward.ci_low > 0 or forward.ci_high < 0) == (forward.pvalue < 0.05)
    identical = stats.paired_bootstrap(a, a, n_resamples=99)
    assert (identical.diff, identical.ci_low, identical.ci_high, identical.pvalue) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.paired_bootstrap(_mean_samples([0.5]), _mean_samples([0.6]))
    a, b = _design_pair("mean", 5, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_bootstrap(a, b, confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.paired_permutation(a, b, n_resamples=0)


def test_compare_within_dataset():
    a, b = _design_pair("spearman", 40, seed=11)
    report = stats.compare_within_dataset(a, b, n_resamples=500, seed=1)
    bootstrap = stats.paired_bootstrap(a, b, n_resamples=500, seed=1)
    permutation = stats.paired_permutation(a, b, n_resamples=500, seed=1)
    assert report["statistic"] == "spearman" and report["n"] == 40
    assert report["diff"] == report["score_b"] - report["score_a"] == bootstrap.diff
    assert (report["ci_low"], report["ci_high"]) == (bootstrap.ci_low, bootstrap.ci_high)
    assert report["pvalue"] == permutation.pvalue and report["p_method"] == "permutation-random"
    assert report["score_a"] == stats.score_from_samples(a)


# --------------------------------------------------------------------------------------------------------
# compare_category: a category's mean difference, resampled within each dataset
# --------------------------------------------------------------------------------------------------------


def _category_pairs(seed: int) -> list[tuple[dict, dict]]:
    return [
        _design_pair("mean", 30, 1 + seed),
        _design_pair("spearman", 12, 2 + seed),
        _design_pair("average_precision", 10, 3 + seed),
    ]


def _category_reference(pairs, n_resamples: int, seed: int, confidence: float, chunk: int = 250) -> dict:
    """The category test spelled out one resample at a time with score_from_samples (no tie tolerance)."""
    rng = np.random.default_rng(seed)
    observed, permuted, booted = 0.0, np.zeros(n_resamples), np.zeros(n_resamples)
    for a, b in pairs:
        field = "score" if a["statistic"] == "mean" else "prediction"
        n = len(a["ids"])
        observed += stats.score_from_samples(b) - stats.score_from_samples(a)
        for start in range(0, n_resamples, chunk):
            rows = min(chunk, n_resamples - start)
            swap = rng.random((rows, n)) < 0.5
            index = rng.integers(0, n, size=(rows, n))
            for r in range(rows):
                values_a, values_b = np.asarray(a[field]), np.asarray(b[field])
                swapped_a = {**a, field: np.where(swap[r], values_b, values_a)}
                swapped_b = {**b, field: np.where(swap[r], values_a, values_b)}
                permuted[start + r] += stats.score_from_samples(swapped_b) - stats.score_from_samples(swapped_a)
                booted[start + r] += stats.score_from_samples(b, index[r]) - stats.score_from_samples(a, index[r])
    k = len(pairs)
    observed, permuted, booted = observed / k, permuted / k, booted / k
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(booted, [tail, 100 - tail])
    extreme = np.count_nonzero(np.abs(permuted) >= abs(observed))
    return {"diff": observed, "ci_low": low, "ci_high": high, "pvalue": (1 + extreme) / (1 + n_resamples)}


@pytest.mark.filterwarnings("ignore:No positive class found")  # a bootstrap resample without positives
@pytest.mark.parametrize("seed", [0, 3])
def test_compare_category_matches_a_resample_by_resample_reference(seed):
    pairs = _category_pairs(seed)
    result = stats.compare_category(pairs, n_resamples=120, seed=seed, confidence=0.9, chunk=50)
    reference = _category_reference(pairs, n_resamples=120, seed=seed, confidence=0.9, chunk=50)
    assert result["n_resamples"] == 120
    assert result["pvalue"] == reference["pvalue"]
    for key in ("diff", "ci_low", "ci_high"):
        assert result[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-14)


def test_compare_category_keeps_table_1_numbers():
    """Continuous scores (no tie involved): the numbers Table 1 has been reporting for this input."""
    result = stats.compare_category(_category_pairs(3), n_resamples=300, seed=7, confidence=0.9)
    assert result["pvalue"] == 59 / 301
    assert result["diff"] == pytest.approx(0.09950619570160953, rel=1e-12)
    assert result["ci_low"] == pytest.approx(0.01968063577099521, rel=1e-12)
    assert result["ci_high"] == pytest.approx(0.2383979603821846, rel=1e-12)
    one = stats.compare_category(_category_pairs(0)[:1], n_resamples=300, seed=7, confidence=0.9)
    assert one["pvalue"] == pytest.approx(0.7807308970099668, abs=1e-15)
    assert (one["diff"], one["ci_low"]) == pytest.approx((0.011442173552925983, -0.052646011895746525), rel=1e-12)


def test_compare_category_rejects_bad_arguments():
    a, b = _design_pair("mean", 10, seed=1)
    with pytest.raises(ValueError, match="no datasets"):
        stats.compare_category([])
    with pytest.raises(ValueError, match="n_resamples"):
        stats.compare_category([(a, b)], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        stats.compare_category([(a, b)], confidence=95)
    with pytest.raises(ValueError, match="different ids"):
        stats.compare_category([(a, _mean_samples([0.5] * 9))])


@FAST
@given(
    datasets=st.lists(
        st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), min_size=1, max_size=4), min_size=1, max_size=3
    ),
    seed=st.integers(0, 1000),
)
def test_compare_category_property_matches_scipy(datasets, seed):
    """Swapping within pairs of all samples at once is scipy's paired ("samples") permutation test of the
    category's mean Δ; with at most 12 samples scipy enumerates every pattern, and the random p-value must
    lie within Monte-Carlo error of that exact one. Scores on a 0.1 grid give zero differences and tied
    statistics, which both count with the same relative tolerance. Swapping the designs negates Δ, keeps p."""
    assume(sum(map(len, datasets)) >= 2)  # scipy needs two pairs
    pairs = [(_mean_samples([s[0] / 10 for s in d]), _mean_samples([s[1] / 10 for s in d])) for d in datasets]
    bounds = np.cumsum([0] + [len(d) for d in datasets])

    def category_delta(x, y, axis=-1):
        total = 0.0
        for start, stop in itertools.pairwise(bounds):
            total = total + (np.mean(y[..., start:stop], axis=-1) - np.mean(x[..., start:stop], axis=-1))
        return total / len(datasets)

    x = np.array([s[0] / 10 for d in datasets for s in d])
    y = np.array([s[1] / 10 for d in datasets for s in d])
    exact = scipy.stats.permutation_test(
        (x, y), category_delta, permutation_type="samples", vectorized=True, n_resamples=np.inf
    )
    n_resamples = 2000
    result = stats.compare_category(pairs, n_resamples=n_resamples, seed=seed)
    assert result["diff"] == pytest.approx(float(exact.statistic), abs=1e-15)
    p = float(exact.pvalue)
    assert abs(result["pvalue"] - p) <= 5 * math.sqrt(p * (1 - p) / n_resamples) + 2 / (n_resamples + 1)
    backward = stats.compare_category([(b, a) for a, b in pairs], n_resamples=n_resamples, seed=seed)
    assert backward["diff"] == -result["diff"] and backward["pvalue"] == result["pvalue"]
    assert (backward["ci_low"], backward["ci_high"]) == pytest.approx(
        (-result["ci_high"], -result["ci_low"]), abs=1e-12
    )


# --------------------------------------------------------------------------------------------------------
# Holm, seeds, marks
# --------------------------------------------------------------------------------------------------------


def test_holm_textbook():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert stats.holm([]).shape == (0,)


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(stats.holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12)


def test_holm_nan_and_validation():
    np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    with pytest.raises(ValueError, match=r"pvalues\[1\] = 1.5"):
        stats.holm([0.1, 1.5])


def _holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure at level alpha (the definition the adjusted p-values must invert)."""
    rejected = np.zeros(p.size, dtype=bool)
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (p.size - k):
            break
        rejected[i] = True
    return rejected


@FAST
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_property(pvalues):
    p = np.array(pvalues)
    adjusted = stats.holm(p)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)
    products = np.outer(np.arange(1, p.size + 1), p)
    for alpha in (0.01, 0.05, 0.2):
        if np.any(np.isclose(products, alpha, rtol=1e-9, atol=0)):
            continue  # k * p == alpha up to rounding: both sides are right
        np.testing.assert_array_equal(adjusted <= alpha, _holm_rejects(p, alpha))


def test_seed_summary_matches_scipy_t_interval():
    values = [0.81, 0.83, 0.82, 0.86, 0.80]
    summary = stats.seed_summary(values, confidence=0.9)
    low, high = scipy.stats.ttest_1samp(values, 0).confidence_interval(0.9)
    assert summary["n"] == 5
    assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-15)
    assert summary["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert (summary["ci_low"], summary["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_seed_summary_edge_cases():
    one = stats.seed_summary([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and all(math.isnan(one[k]) for k in ("std", "ci_low", "ci_high"))
    same = stats.seed_summary([0.5, 0.5, 0.5])
    assert (same["std"], same["ci_low"], same["ci_high"]) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"values\[1\] = nan"):
        stats.seed_summary([0.5, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        stats.seed_summary([])


def test_significance_mark():
    assert stats.significance_mark(0.049) == "*"
    assert stats.significance_mark(0.05) == ""
    assert stats.significance_mark(float("nan")) == ""
    assert stats.significance_mark(0.02, alpha=0.01) == ""


# --------------------------------------------------------------------------------------------------------
# Power, training noise and the sign test
# --------------------------------------------------------------------------------------------------------


def test_minimum_detectable_effect_matches_the_textbook_sample_size():
    # paired design, sd 1, effect 0.5, alpha 0.05, power 0.8: n = ((z_.975 + z_.8) / 0.5)^2 = 31.4 pairs
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    assert z == pytest.approx(2.8016, abs=1e-4)
    n = (z / 0.5) ** 2
    assert stats.minimum_detectable_effect(1 / math.sqrt(n)) == pytest.approx(0.5, rel=1e-12)
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 0.3, 50)
    assert stats.paired_mde(d) == pytest.approx(z * d.std(ddof=1) / math.sqrt(50), rel=1e-12)
    t = scipy.stats.t(4)
    assert stats.minimum_detectable_effect(0.1, df=4) == pytest.approx((t.ppf(0.975) + t.ppf(0.8)) * 0.1)
    assert stats.minimum_detectable_effect(0.1, alpha=0.01, power=0.9) == pytest.approx(
        (scipy.stats.norm.ppf(0.995) + scipy.stats.norm.ppf(0.9)) * 0.1
    )
    assert math.isnan(stats.minimum_detectable_effect(math.nan))
    with pytest.raises(ValueError, match="power"):
        stats.minimum_detectable_effect(0.1, power=1.0)
    with pytest.raises(ValueError, match="se"):
        stats.minimum_detectable_effect(-0.1)


def test_the_category_test_finds_the_minimum_detectable_effect_with_80_percent_power():
    """Simulate datasets whose true Δ is the MDE computed from the true standard error: the study's own
    permutation test (compare_category) must reject at alpha in about 80% of them."""
    n, sd, alpha, sims = 60, 0.2, 0.05, 300
    mde = stats.minimum_detectable_effect(sd / math.sqrt(n), alpha=alpha, df=n - 1)
    rng = np.random.default_rng(1)
    rejected = 0
    for i in range(sims):
        a = rng.uniform(0, 1, n)
        b = a + mde + rng.normal(0, sd, n)
        result = stats.compare_category([(_mean_samples(a), _mean_samples(b))], n_resamples=400, seed=i)
        rejected += result["pvalue"] < alpha
        if i == 0:  # the bootstrap standard error estimates sd / sqrt(n), with n - 1 degrees of freedom
            assert result["se"] == pytest.approx(sd / math.sqrt(n), rel=0.25) and result["df"] == pytest.approx(n - 1)
    assert abs(rejected / sims - 0.8) < 0.08  # binomial sd at 300 draws: 0.023


def test_seed_convolved_pvalue_limits():
    rng = np.random.default_rng(2)
    permuted = rng.normal(0, 0.01, 999)
    observed = 0.02
    # no training noise: the permutation p-value
    plain = (1 + np.count_nonzero(np.abs(permuted) >= observed)) / 1000
    assert stats.seed_convolved_pvalue(observed, permuted, 0.0, math.inf) == plain
    assert stats.seed_convolved_pvalue(observed, permuted, math.nan, math.inf) == plain
    # no evaluation noise: the one-sample t-test over seeds
    deltas = [0.05, 0.01, 0.03]
    se, n_seeds = stats.seed_spread(deltas)
    assert (se, n_seeds) == (pytest.approx(np.std(deltas, ddof=1) / math.sqrt(3)), 3)
    t_test = scipy.stats.ttest_1samp(deltas, 0.0).pvalue
    p = stats.seed_convolved_pvalue(float(np.mean(deltas)), np.zeros(999), se, 2)
    assert p == pytest.approx((1 + 999 * t_test) / 1000, rel=1e-9)
    assert stats.seed_spread([0.1]) == (pytest.approx(math.nan, nan_ok=True), 1)


def test_satterthwaite_df_is_welchs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, 12), rng.normal(0, 3, 30)
    welch = scipy.stats.ttest_ind(x, y, equal_var=False)
    parts = [(x.var(ddof=1) / 12, 11), (y.var(ddof=1) / 30, 29)]
    assert stats.satterthwaite_df(parts) == pytest.approx(welch.df, rel=1e-12)
    assert stats.satterthwaite_df([(0.01, math.inf), (0.01, 3)]) == pytest.approx(3 * 4)  # total = 2 x the estimate
    assert stats.satterthwaite_df([(0.0, math.inf), (0.01, 3)]) == pytest.approx(3)
    assert stats.satterthwaite_df([(0.01, math.inf)]) == math.inf and stats.satterthwaite_df([]) == math.inf


def test_compare_category_with_seeds():
    a, b = _design_pair("mean", 40, seed=3)
    plain = stats.compare_category([(a, b)], n_resamples=300, seed=5)
    assert plain["n_seeds"] == 1 and plain["se_total"] == plain["se"]
    assert plain["df"] == pytest.approx(39)  # one dataset of 40 samples
    same = stats.compare_category([(a, b)], n_resamples=300, seed=5, seed_deltas=[0.02, 0.02, 0.02])
    assert {k: same[k] for k in ("diff", "ci_low", "ci_high", "pvalue")} == {
        k: plain[k] for k in ("diff", "ci_low", "ci_high", "pvalue")
    }  # identical seeds: no training noise
    # Δ = 0.03 on every sample (no evaluation noise), seeds spread: the one-sample t-test over the seeds
    base = np.linspace(0.1, 0.6, 2000)
    shifted = stats.compare_category(
        [(_mean_samples(base), _mean_samples(base + 0.03))], n_resamples=999, seed=0, seed_deltas=[0.05, 0.01, 0.03]
    )
    assert shifted["df"] == pytest.approx(2)  # the seeds' part alone: S - 1
    assert shifted["pvalue"] == pytest.approx(scipy.stats.ttest_1samp([0.05, 0.01, 0.03], 0).pvalue, abs=0.01)
    assert shifted["ci_low"] < 0 < shifted["ci_high"]  # the interval sees the seeds too
    noisy = stats.compare_category([(a, b)], n_resamples=300, seed=5, seed_deltas=[0.0, 0.05, 0.1])
    assert noisy["pvalue"] > plain["pvalue"] and noisy["ci_high"] - noisy["ci_low"] > plain["ci_high"] - plain["ci_low"]


def test_sign_agreement_against_a_coin():
    # 8 of 16 is a coin's result: P(X >= 8) for Binomial(16, 1/2)
    coin = stats.sign_agreement([True] * 8 + [False] * 8)
    assert coin["pvalue"] == pytest.approx(sum(math.comb(16, k) for k in range(8, 17)) / 2**16, rel=1e-12)
    assert coin["pvalue"] == pytest.approx(0.5982, abs=1e-4) and coin["expected"] == 8
    strong = stats.sign_agreement([True] * 13 + [False] * 3)
    assert strong["pvalue"] == scipy.stats.binomtest(13, 16, 0.5, alternative="greater").pvalue
    assert strong["pvalue"] < 0.05 and (strong["k"], strong["n"]) == (13, 16)
    assert math.isnan(stats.sign_agreement([])["pvalue"])


# --------------------------------------------------------------------------------------------------------
# Planning: the seeds and samples that detect a given Δ
# --------------------------------------------------------------------------------------------------------


def _t_test_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided one-sample t-test of n values with sd ``sd`` at a true mean ``delta``."""
    t, nc = scipy.stats.t.ppf(1 - alpha / 2, n - 1), delta / (sd / math.sqrt(n))
    return float(scipy.stats.nct.sf(t, n - 1, nc) + scipy.stats.nct.cdf(-t, n - 1, nc))


def test_planned_mde_limits():
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    assert stats.planned_mde(0.01**2, 0.0, 1) == pytest.approx(z * 0.01, rel=1e-12)  # evaluation noise alone
    assert stats.planned_mde(0.01**2, 0.0, 1, 4.0) == pytest.approx(z * 0.005, rel=1e-12)  # 4 x the samples
    t = scipy.stats.t(4)  # training noise alone, 5 seeds: Student t with 4 degrees of freedom
    assert stats.planned_mde(0.0, 0.1**2, 5) == pytest.approx((t.ppf(0.975) + t.ppf(0.8)) * 0.1 / math.sqrt(5))
    assert stats.planned_mde(0.0, 0.01, 1) == math.inf  # one seed cannot see its own training noise
    # the samples alone: a closed form, (z / delta)^2 x the variance
    assert stats.samples_to_detect(0.02, 0.01**2, 0.0, 1) == pytest.approx((z * 0.01 / 0.02) ** 2, rel=1e-8)
    assert stats.seeds_to_detect(0.05, 0.01**2, 0.0) == 1 and stats.seeds_to_detect(0.01, 0.01**2, 0.0) is None
    assert stats.seeds_to_detect(0.02, 0.03**2, 0.01) is None  # the evaluation noise alone exceeds 0.02
    assert stats.samples_to_detect(0.02, 0.001, 0.1**2, 3) is None  # the seeds' part alone exceeds 0.02
    with pytest.raises(ValueError, match="delta"):
        stats.seeds_to_detect(0.0, 0.1, 0.1)


@pytest.mark.parametrize(("sd", "delta"), [(0.1, 0.05), (0.05, 0.02), (0.2, 0.05), (0.03, 0.05)])
def test_seeds_to_detect_against_the_exact_t_test_power(sd, delta):
    """Training noise alone: the seeds found give the one-sample t-test (scipy's noncentral t) about 80% power."""
    n = stats.seeds_to_detect(delta, 0.0, sd**2)
    assert n is not None and _t_test_power(delta, sd, n) >= 0.78
    assert n == 2 or _t_test_power(delta, sd, n - 1) < 0.805


@FAST
@given(
    var_eval=st.floats(1e-7, 1e-3),
    sd_seed=st.floats(0.0, 0.1),
    n_seeds=st.integers(2, 12),
    delta=st.sampled_from([0.02, 0.05]),
    alpha=st.sampled_from([0.01, 0.05]),
)
def test_planning_finds_the_smallest_design_property(var_eval, sd_seed, n_seeds, delta, alpha):
    var_seed = sd_seed**2
    seeds = stats.seeds_to_detect(delta, var_eval, var_seed, alpha=alpha, max_seeds=500)
    if seeds is not None:
        assert stats.planned_mde(var_eval, var_seed, seeds, alpha=alpha) <= delta
        if seeds > 2:
            assert stats.planned_mde(var_eval, var_seed, seeds - 1, alpha=alpha) > delta
    else:
        assert stats.planned_mde(var_eval, var_seed, 500, alpha=alpha) > delta
    factor = stats.samples_to_detect(delta, var_eval, var_seed, n_seeds, alpha=alpha)
    if factor is not None:
        assert stats.planned_mde(var_eval, var_seed, n_seeds, factor, alpha=alpha) == pytest.approx(delta, rel=1e-6)
    else:  # even unlimited samples leave the seeds' part above delta
        assert stats.planned_mde(0.0, var_seed, n_seeds, alpha=alpha) > delta * (1 - 1e-9)
