"""The variance budget of Table 1: where each Δ's uncertainty comes from, and what it would take to shrink it.

For every Δ (design − reference, a category's mean over its datasets) the † test's variance has two parts:

* evaluation sampling: the variance of Δ over the within-dataset bootstrap of the stored per-sample scores
  (``se**2`` of :func:`poolattn.stats.compare_category`); it shrinks as 1/n with more samples per dataset;
* training seeds: the between-seed variance of the category's Δ (seeds paired by number), divided by the number
  of seeds; it is not measured with one seed.

Unless ``data.seed`` fixes it, the data sample is drawn by the training seed with the order and the initial
weights, so its share is inside the seeds' (the report says which). From the two parts: the seeds (at the current
samples) and the samples per dataset (at the current seeds) at which the test detects Δ = 0.02 and 0.05 with 80%
power at the study's α (:func:`poolattn.stats.seeds_to_detect`, :func:`poolattn.stats.samples_to_detect`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import stats
from .config import Study
from .markdown import fmt, md_table
from .results import CATEGORY_LABEL, POWER, StudyResults, Tables

#: The effects the budget plans for.
TARGET_DELTAS = (0.02, 0.05)
#: Seeds beyond this count as out of reach.
MAX_SEEDS = 1000


def data_sample(study: Study) -> str:
    """What the seeds vary besides the initial weights, as the config sets it."""
    fixed_sample, fixed_order = study.data.seed is not None, study.recipe.order_seed is not None
    if fixed_sample and fixed_order:
        return (
            f"fixed (data seed {study.data.seed}) and so is the data order (order seed {study.recipe.order_seed}): "
            "the seeds vary the initial weights alone, and no share is data's"
        )
    if fixed_sample:
        return (
            f"fixed (data seed {study.data.seed}; each seed draws its own order and initial weights): conclusions "
            "hold for this training sample, and no share is the sample's"
        )
    if fixed_order:
        return f"drawn by each training seed, while the data order is fixed (order seed {study.recipe.order_seed})"
    return "not varied apart from the training seed, which draws both the training subset and its order"


@dataclass
class Requirement:
    """What it takes to detect ``delta``: ``seeds`` at the current samples (None: out of reach or not measured),
    ``samples`` per dataset at the current seeds (``sample_factor`` × now; None: the seeds' part alone is too
    large); ``lower_bound``: training noise was not measured (one seed), so more may be needed."""

    delta: float
    seeds: int | None
    samples: int | None
    sample_factor: float | None
    lower_bound: bool


@dataclass
class BudgetEntry:
    """The variance budget of one Δ (design − reference on a category)."""

    design: str
    category: str
    var_eval: float
    #: one seed's between-seed variance of Δ; None with one seed (not measured), 0 without training
    var_seed: float | None
    n_seeds: int
    samples_per_dataset: float
    requirements: list[Requirement] = field(default_factory=list)

    @property
    def var_total(self) -> float:
        return self.var_eval + (self.var_seed or 0.0) / self.n_seeds

    @property
    def seed_share(self) -> float | None:
        """The training seeds' share of the variance of the reported Δ (None: not measured)."""
        if self.var_seed is None:
            return None
        return (self.var_seed / self.n_seeds) / self.var_total if self.var_total > 0 else 0.0


@dataclass
class CategoryBudget:
    """A category's budget: the entries of its Δ, one per design."""

    category: str
    entries: list[BudgetEntry]


@dataclass
class VarianceBudget:
    """Per category, the variance budget of every Δ of Table 1 that has a † test."""

    alpha: float
    power: float
    data_sample: str
    categories: list[CategoryBudget]


def variance_budget(results: StudyResults, tables: Tables) -> VarianceBudget:
    """The variance budget of every tested Δ of Table 1, from its † test's parts."""
    alpha = results.typed_config.stats.alpha
    samples = {
        c: float(np.mean([r["n"] for r in tables.per_dataset if r["category"] == c and r["n"]] or [math.nan]))
        for c in tables.categories
    }
    categories = []
    for category in tables.categories:
        entries = []
        for name in tables.designs:
            test = tables.table1[name][category].within
            if test is None:
                continue
            n_seeds = int(test["n_seeds"])
            trains = any(results.designs[d].spec.get("train", True) for d in (name, tables.reference))
            var_seed = (test["se_seed"] ** 2 * n_seeds if n_seeds > 1 else None) if trains else 0.0
            if var_seed is not None and not math.isfinite(var_seed):
                var_seed = 0.0  # identical Δ in every seed
            entry = BudgetEntry(name, category, float(test["se"] ** 2), var_seed, n_seeds, samples[category])
            entry.requirements = [requirement(entry, delta, alpha) for delta in TARGET_DELTAS]
            entries.append(entry)
        if entries:
            categories.append(CategoryBudget(category, entries))
    return VarianceBudget(alpha, POWER, data_sample(results.typed_config), categories)


def requirement(entry: BudgetEntry, delta: float, alpha: float) -> Requirement:
    """Seeds and samples per dataset to detect ``delta`` for one Δ (one seed: training noise counted as none)."""
    var_seed = entry.var_seed or 0.0
    seeds = None
    if entry.var_seed is not None:
        seeds = stats.seeds_to_detect(delta, entry.var_eval, var_seed, alpha=alpha, power=POWER, max_seeds=MAX_SEEDS)
    factor = stats.samples_to_detect(delta, entry.var_eval, var_seed, entry.n_seeds, alpha=alpha, power=POWER)
    known = factor is not None and math.isfinite(entry.samples_per_dataset)
    # at least 2 samples per dataset: one has no spread to bootstrap
    samples = max(2, math.ceil(factor * entry.samples_per_dataset)) if known else None  # type: ignore[operator]
    return Requirement(delta, seeds, samples, factor, entry.var_seed is None)


# ============================================================================================== report
def median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def section_budget(budget: VarianceBudget) -> str:
    """The budget per category (medians over the designs' Δ) and a paragraph on how to read it."""
    if not budget.categories:
        return ""
    header = ["category", "Δ tested", "SE(Δ) samples", "SD(Δ) per seed", "seeds' share"]
    for delta in TARGET_DELTAS:
        header += [f"Δ = {delta:g}: seeds", f"Δ = {delta:g}: samples / dataset"]
    rows = []
    for group in budget.categories:
        entries = group.entries
        measured = [e for e in entries if e.var_seed is not None]
        shares = [e.seed_share for e in measured if e.seed_share is not None]
        row = [
            CATEGORY_LABEL.get(group.category, group.category),
            str(len(entries)),
            fmt(median([math.sqrt(e.var_eval) for e in entries]), 3),
            fmt(median([math.sqrt(e.var_seed or 0.0) for e in measured]), 3) if measured else "not measured",
            f"{median(shares):.0%}" if shares else "not measured",
        ]
        for k in range(len(TARGET_DELTAS)):
            needs = [e.requirements[k] for e in entries]
            seeds = [math.inf if r.seeds is None else float(r.seeds) for r in needs if not r.lower_bound]
            samples = [math.inf if r.samples is None else float(r.samples) for r in needs]
            row.append(count(median(seeds), f"> {MAX_SEEDS}") if seeds else "not measured")
            bound = "≥ " if any(r.lower_bound for r in needs) else ""
            row.append(bound + count(median(samples), "out of reach"))
        rows.append(row)
    n_seeds = max(e.n_seeds for g in budget.categories for e in g.entries)
    explanation = (
        "How much of each Δ's uncertainty comes from where, per category (medians over the designs compared with "
        "the reference). *SE(Δ) samples*: the standard error of Δ from the evaluation samples alone (the stored "
        "per-sample scores bootstrapped within each dataset); it shrinks as 1/√n with more samples per dataset. "
        "*SD(Δ) per seed*: how far one training run's Δ scatters between seeds (the same evaluation samples for "
        "every seed); averaging S seeds divides it by √S. *Seeds' share*: the part of Δ's variance, as reported "
        f"here over {n_seeds} seed(s), that training noise makes up. The data sample is {budget.data_sample}. "
        "The last columns say what the `†` test would need to detect a true Δ of "
        f"that size with {budget.power:.0%} power (two-sided, α = {budget.alpha:g}, one comparison): the seeds at "
        "the current samples, and the samples per dataset at the current seeds (“out of reach”: the seeds' part "
        "alone is too large, more seeds are needed first)."
    )
    if any(e.var_seed is None for g in budget.categories for e in g.entries):
        explanation += (
            " With one seed the training noise is not measured: the samples it shows (≥) count evaluation noise "
            "only, and the seeds it needs cannot be planned until a second seed is run."
        )
    return md_table(header, rows) + "\n\n" + explanation


def count(value: float, beyond: str) -> str:
    return beyond if not math.isfinite(value) else f"{math.ceil(value):,}"
