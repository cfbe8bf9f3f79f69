"""Statistics that compare embedding designs.

Three levels of comparison:

* across datasets (the paper's test): pair two designs' main scores on the same datasets of a category and
  run the Wilcoxon signed-rank test (:func:`wilcoxon_over_datasets`);
* within one dataset: resample the dataset's own samples (queries, pairs, test examples) with a paired
  bootstrap (confidence interval of the difference) and a paired permutation test (p-value)
  (:func:`compare_within_dataset`);
* over a category's datasets, resampling within each of them: the mean difference's bootstrap interval
  and permutation p-value (:func:`compare_category`), with training noise in the test when there are several
  seeds.

What a comparison could have found: the minimum detectable effect at a given power
(:func:`minimum_detectable_effect`, :func:`paired_mde`); the seeds and samples a study would need to detect a given
Δ (:func:`planned_mde`, :func:`seeds_to_detect`, :func:`samples_to_detect`); and the sign test of agreement with
another study's directions (:func:`sign_agreement`).

Per-sample results are plain dicts (``per_sample``) whose ``"statistic"`` names how the dataset's main score
is computed from them (see :data:`STATISTICS`). Differences are always ``b - a``. Also here: Holm's
correction for many tests, seed aggregation, the significance mark of tables and the linear CKA between
layers' representations.
"""

from __future__ import annotations

from .power import (
    minimum_detectable_effect,
    paired_mde,
    planned_mde,
    samples_to_detect,
    satterthwaite_df,
    seed_spread,
    seeds_to_detect,
    sign_agreement,
)
from .resampling import (
    PairedResult,
    compare_category,
    compare_within_dataset,
    paired_bootstrap,
    paired_permutation,
    seed_convolved_pvalue,
)
from .samples import STATISTICS, SampleStatistic, align, score_from_samples
from .summary import holm, linear_cka, seed_summary, significance_mark
from .wilcoxon import WilcoxonResult, wilcoxon_over_datasets

__all__ = [
    "STATISTICS",
    "PairedResult",
    "SampleStatistic",
    "WilcoxonResult",
    "align",
    "compare_category",
    "compare_within_dataset",
    "holm",
    "linear_cka",
    "minimum_detectable_effect",
    "paired_bootstrap",
    "paired_mde",
    "paired_permutation",
    "planned_mde",
    "samples_to_detect",
    "satterthwaite_df",
    "score_from_samples",
    "seed_convolved_pvalue",
    "seed_spread",
    "seed_summary",
    "seeds_to_detect",
    "sign_agreement",
    "significance_mark",
    "wilcoxon_over_datasets",
]
