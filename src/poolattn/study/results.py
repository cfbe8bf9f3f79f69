"""A study folder's stored results and every number of its report.

:func:`load_results` reads a study folder written by ``poolattn experiment`` (``study.json``, ``cells/*/cell.json``
with their evaluation JSONs and training logs, ``layers/layers.json``); :func:`compute_tables` computes the
tables from it. Differences are always design − reference:

* Table 1, the paper's layout: per category the mean main score over its datasets; the reference absolute, the
  others as Δ. ``*`` = Wilcoxon signed-rank test over the category's datasets (the paper's test);
  ``†`` = stratified paired permutation test within the datasets (samples swapped between the two designs inside
  each dataset, statistic = the category's mean Δ; :func:`poolattn.stats.compare_category`), Holm-corrected over
  every comparison of the table. Each cell is a :class:`Table1Entry` whose ``significant`` (†) and
  ``seeds_measured`` decide what it supports; its marks are rendered from them, never read back.
* Per dataset: each design's main score, Δ with a paired bootstrap CI, the paired permutation p-value and its
  Holm-adjusted value over every per-dataset comparison (:func:`poolattn.stats.compare_within_dataset`).
* Several seeds: scores are averaged over seeds first (per-sample values too), and mean ± CI over seeds is shown;
  the † test adds the spread of the category's Δ over seeds to its null distribution (training noise).
* Power: the smallest Δ the † test detects with 80% power at the level Holm's first step needs
  (:func:`poolattn.stats.minimum_detectable_effect` of the standard error of Δ).

What the numbers let one conclude (training learned?, the paper's directions) is :mod:`.conclusions`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..io import read_json
from ..training.adapt_config import ADAPT_SUMMARY
from ..training.config import SUMMARY_FILE
from .config import Study, study_from_dict

#: Category order: the paper's four first, then the others the suite has.
CATEGORY_ORDER = ("sts", "classification", "retrieval", "clustering", "pair_classification", "reranking")
CATEGORY_LABEL = {
    "sts": "STS",
    "classification": "Class.",
    "retrieval": "Retr.",
    "clustering": "Clust.",
    "pair_classification": "Pair class.",
    "reranking": "Rerank.",
    "summarization": "Summ.",
}
#: The power at which the minimum detectable effect is reported.
POWER = 0.8


# ============================================================================================= loading
@dataclass
class TaskScore:
    """One design's result on one dataset, averaged over its seeds."""

    task: str
    category: str
    score: float
    seed_scores: list[float]
    per_sample: dict[str, Any] | None


@dataclass
class DesignResults:
    """A design's finished cells and its seed-averaged scores."""

    name: str
    spec: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, TaskScore] = field(default_factory=dict)
    seed_tasks: dict[int | None, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: per seed: the training run's held-out numbers ({"before": ..., "after": ...}), None where not measured
    heldout: dict[int | None, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class StudyResults:
    """Everything the report needs, read from a study folder."""

    folder: Path
    study: dict[str, Any]
    designs: dict[str, DesignResults]
    missing: list[str]
    layers: dict[str, Any] | None

    @property
    def config(self) -> dict[str, Any]:
        return self.study["config"]

    @cached_property
    def typed_config(self) -> Study:
        """The stored config read back into the typed :class:`~poolattn.study.config.Study`."""
        return study_from_dict(self.config)

    @property
    def reference(self) -> str:
        return self.study["reference"]


def load_results(folder: str | Path) -> StudyResults:
    """Read a study folder: finished cells (hash matching ``study.json``) and their evaluation results."""
    folder = Path(folder)
    study = read_json(folder / "study.json")
    if study is None:
        raise FileNotFoundError(f"{folder} is not a study folder (no readable study.json)")
    designs = {d["name"]: DesignResults(d["name"], d) for d in study["config"]["designs"]}
    missing = []
    for entry in study["cells"]:
        record = read_json(folder / "cells" / entry["name"] / "cell.json")
        if not (record and record.get("complete") and record.get("hash") == entry["hash"]):
            missing.append(entry["name"])
            continue
        eval_dir = folder / "cells" / entry["name"] / record["eval"]["dir"]
        results = {}
        for task in record["eval"]["tasks"]:
            result = read_json(eval_dir / f"{task}.json")
            if result is None:
                raise FileNotFoundError(f"{eval_dir / (task + '.json')}: missing result of a finished cell")
            results[task] = result
        design = designs[entry["design"]]
        fill_adapted_causal(folder, record)
        design.cells.append(record)
        design.seed_tasks[entry["seed"]] = results
        if record.get("train"):
            design.heldout[entry["seed"]] = read_heldout(folder / "cells" / entry["name"], record["train"])
    for design in designs.values():
        design.tasks = average_seeds(design.seed_tasks)
    layers = read_json(folder / "layers" / "layers.json")
    if layers is not None and layers.get("hash") != study.get("layers", {}).get("hash"):
        layers = None
    return StudyResults(folder, study, {k: v for k, v in designs.items() if v.cells}, missing, layers)


def fill_adapted_causal(folder: Path, record: dict[str, Any]) -> None:
    """A cell that started from an adapted backbone but ran before its record kept the causal model's held-out
    masked-token numbers: take them from the adaptation's summary in the study folder, where it still is."""
    start = record.get("start")
    if not isinstance(start, dict) or start.get("from") != "adapted" or "heldout_causal" in start:
        return
    summary = read_json(folder / str(start.get("folder")) / ADAPT_SUMMARY)
    heldout = summary.get("heldout") if isinstance(summary, dict) else None
    start["heldout_causal"] = heldout.get("causal_base") if isinstance(heldout, dict) else None


def read_heldout(cell_dir: Path, train: Mapping[str, Any]) -> dict[str, Any] | None:
    """A trained cell's held-out numbers: from its record, else from its training summary (None: not measured)."""
    heldout = train.get("heldout")
    if heldout is None:
        summary = read_json(cell_dir / "train" / SUMMARY_FILE)
        heldout = summary.get("heldout") if isinstance(summary, dict) else None
    return heldout if isinstance(heldout, dict) and heldout.get("after") else None


def average_seeds(seed_tasks: Mapping[int | None, Mapping[str, Mapping[str, Any]]]) -> dict[str, TaskScore]:
    """Per task: the mean main score over seeds, and per-sample values averaged over seeds (paired field)."""
    out: dict[str, TaskScore] = {}
    if not seed_tasks:
        return out
    runs = list(seed_tasks.values())
    common = [t for t in runs[0] if all(t in r for r in runs)]
    for task in common:
        results = [r[task] for r in runs]
        samples = [r.get("per_sample") for r in results]
        per_sample = average_per_sample(samples) if all(s is not None for s in samples) else None
        scores = [float(r["main_score"]) for r in results]
        out[task] = TaskScore(task, results[0]["category"], float(np.mean(scores)), scores, per_sample)
    return out


def average_per_sample(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several seeds' per-sample results of one design on one dataset as one (mean of the paired field)."""
    if len(samples) == 1:
        return dict(samples[0])
    paired = stats.STATISTICS[samples[0]["statistic"]].paired_field
    aligned = [stats.align(samples[0], s)[1] for s in samples]
    out = dict(aligned[0])
    out[paired] = np.mean([a[paired] for a in aligned], axis=0)
    return out


# ========================================================================================== statistics
def wilcoxon_entry(ref_scores: Sequence[float], own: Sequence[float], alpha: float) -> dict[str, Any]:
    """The paper's test over a category's datasets; datasets with an undefined score (NaN) are left out."""
    finite = [(a, b) for a, b in zip(ref_scores, own, strict=True) if math.isfinite(a) and math.isfinite(b)]
    dropped = len(ref_scores) - len(finite)
    if not finite:
        return {"pvalue": math.nan, "n": 0, "n_nonzero": 0, "min_attainable_p": 1.0, "note": "no finite scores"}
    w = stats.wilcoxon_over_datasets([a for a, _ in finite], [b for _, b in finite], alpha=alpha)
    note = "; ".join(filter(None, [w.note, f"{dropped} dataset(s) with an undefined score left out" * bool(dropped)]))
    return {
        "pvalue": w.pvalue,
        "statistic": w.statistic,
        "n": w.n,
        "n_nonzero": w.n_nonzero,
        "rank_biserial": w.rank_biserial,
        "min_attainable_p": w.min_attainable_p,
        "note": note,
    }


def ordered_categories(categories: Iterable[str]) -> list[str]:
    present = set(categories)
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER))


@dataclass
class Table1Entry:
    """One cell of Table 1: a design's category score and, for a design other than the reference, its Δ and tests.

    ``significant``: the † test (within-dataset permutation, Holm over the table) below alpha;
    ``wilcoxon_significant``: the paper's * test below alpha; ``seeds_measured``: the Δ's training noise is in the
    test (several seeds, or neither design trains), so a † is about the designs rather than two trained models.
    """

    score: float
    n_datasets: int
    delta: float | None = None
    wilcoxon: dict[str, Any] | None = None
    within: dict[str, Any] | None = None
    significant: bool = False
    wilcoxon_significant: bool = False
    seeds_measured: bool = True

    @property
    def marks(self) -> str:
        return "*" * self.wilcoxon_significant + "†" * self.significant

    @property
    def design_level(self) -> bool:
        """A † that speaks about the designs: significant with the training noise measured."""
        return self.significant and self.seeds_measured


@dataclass
class Tables:
    """All numbers of the report."""

    reference: str
    designs: list[str]
    categories: list[str]
    tasks: dict[str, str]  # task -> category (the datasets every design has)
    table1: dict[str, dict[str, Table1Entry]]  # design -> category -> entry
    per_dataset: list[dict[str, Any]]
    seeds: dict[str, dict[str, dict[str, float]]]  # design -> category -> seed summary
    settings: dict[str, Any]
    power: dict[str, dict[str, Any]] = field(default_factory=dict)  # category -> minimum detectable effects
    #: task -> category, designs and reason, for datasets left out of every table and test: a NaN score
    undefined: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def single_seed(self) -> bool:
        """Whether some Δ of Table 1 lacks its training noise (a trained design with one seed)."""
        return any(not e.seeds_measured for row in self.table1.values() for e in row.values() if e.delta is not None)


def compute_tables(results: StudyResults) -> Tables:
    """Table 1, the per-dataset table and the seed summaries from the stored results."""
    settings = results.config["stats"]
    alpha, n_resamples = settings["alpha"], settings["n_resamples"]
    confidence, seed = settings["confidence"], settings["seed"]
    reference = results.reference
    if reference not in results.designs:
        raise ValueError(f"the reference design {reference!r} has no finished cell yet; nothing to compare against")
    designs = [name for name in (d["name"] for d in results.config["designs"]) if name in results.designs]
    ref = results.designs[reference]
    tasks = {t: s.category for t, s in ref.tasks.items() if all(t in results.designs[d].tasks for d in designs)}
    undefined = undefined_tasks(results, designs, tasks)
    tasks = {t: c for t, c in tasks.items() if t not in undefined}
    categories = ordered_categories(tasks.values())
    by_category = {c: [t for t, cat in tasks.items() if cat == c] for c in categories}
    table1: dict[str, dict[str, Table1Entry]] = {}
    for name in designs:
        design = results.designs[name]
        table1[name] = {}
        for category in categories:
            names = by_category[category]
            entry = Table1Entry(score=float(np.mean([design.tasks[t].score for t in names])), n_datasets=len(names))
            if name != reference:
                ref_scores = [ref.tasks[t].score for t in names]
                own = [design.tasks[t].score for t in names]
                entry.delta = entry.score - float(np.mean(ref_scores))
                entry.wilcoxon = wilcoxon_entry(ref_scores, own, alpha)
                entry.wilcoxon_significant = bool(stats.significance_mark(entry.wilcoxon["pvalue"], alpha))
                entry.within = compare_designs(results, reference, name, names, settings)
                entry.seeds_measured = training_noise_measured(results, reference, name)
            table1[name][category] = entry
    within = [(d, c) for d in designs for c in categories if table1[d][c].within is not None]
    holm = stats.holm([table1[d][c].within["pvalue"] for d, c in within])  # type: ignore[index]
    level = alpha / max(1, len(within))  # the level Holm's first step asks of a lone true difference
    for (d, c), adjusted in zip(within, holm, strict=True):
        entry = table1[d][c]
        test = entry.within
        assert test is not None
        test["pvalue_holm"] = float(adjusted)
        test["mde"] = stats.minimum_detectable_effect(test["se_total"], alpha=level, power=POWER, df=test["df"])
        entry.significant = bool(adjusted < alpha)
    per_dataset = per_dataset_rows(results, designs, tasks, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return Tables(
        reference=reference,
        designs=designs,
        categories=categories,
        tasks=tasks,
        table1=table1,
        per_dataset=per_dataset,
        seeds=seed_summaries(results, designs, tasks, categories),
        settings=dict(settings),
        power=power_summary(table1, categories, alpha=alpha, n_tests=len(within)),
        undefined=undefined,
    )


def training_noise_measured(results: StudyResults, a: str, b: str) -> bool:
    """Whether the Δ of ``b`` against ``a`` has its training noise in the test: neither design trains, or they
    were trained with several seeds."""
    trained = [d for d in (a, b) if results.designs[d].spec.get("train", True)]
    return not trained or all(len(results.designs[d].seed_tasks) > 1 for d in trained)


def undefined_tasks(
    results: StudyResults, designs: Sequence[str], tasks: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The datasets where some design's score (any seed) is not a number, with the designs and the reason its
    evaluation recorded; the tables and tests leave them out, since a difference with NaN is undefined."""
    out: dict[str, dict[str, Any]] = {}
    for task, category in tasks.items():
        bad = {
            name: result
            for name in designs
            for result in results.designs[name].seed_tasks.values()
            if task in result and not math.isfinite(float(result[task]["main_score"]))
        }
        if bad:
            first = next(iter(bad.values()))[task]
            reason = first.get("undefined") or f"{first.get('main_metric', 'the main score')} is NaN"
            out[task] = {"category": category, "designs": list(bad), "reason": reason}
    return out


def compare_designs(
    results: StudyResults, a: str, b: str, names: Sequence[str], settings: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The † test of ``b - a`` over the datasets ``names`` (:func:`poolattn.stats.compare_category`), with the
    spread of Δ over training seeds in it where there are several; None without per-sample results."""
    pairs = [(results.designs[a].tasks[t].per_sample, results.designs[b].tasks[t].per_sample) for t in names]
    if not all(x is not None and y is not None for x, y in pairs):
        return None
    return stats.compare_category(
        pairs,  # type: ignore[arg-type]
        n_resamples=settings["n_resamples"],
        seed=settings["seed"],
        confidence=settings["confidence"],
        seed_deltas=seed_deltas(results, a, b, names),
    )


def seed_deltas(results: StudyResults, a: str, b: str, names: Sequence[str]) -> list[float] | None:
    """Δ = b - a of the mean main score over ``names``, one per training seed (seeds paired by number; a design
    with one run, such as an untrained one, is compared with every seed of the other); None with one seed."""

    def per_seed(design: str) -> dict[int | None, float]:
        runs = results.designs[design].seed_tasks
        return {s: float(np.mean([float(r[t]["main_score"]) for t in names])) for s, r in runs.items()}

    sa, sb = per_seed(a), per_seed(b)
    if len(sa) == 1:
        sa = dict.fromkeys(sb, next(iter(sa.values())))
    if len(sb) == 1:
        sb = dict.fromkeys(sa, next(iter(sb.values())))
    deltas = [sb[s] - sa[s] for s in sa if s in sb]
    return deltas if len(deltas) > 1 and all(math.isfinite(d) for d in deltas) else None


def power_summary(
    table1: Mapping[str, Mapping[str, Table1Entry]], categories: Sequence[str], *, alpha: float, n_tests: int
) -> dict[str, dict[str, Any]]:
    """Per category: the median and range over designs of the † test's minimum detectable effect."""
    out: dict[str, dict[str, Any]] = {}
    for category in categories:
        tests = [e[category].within for e in table1.values()]
        mdes = [t["mde"] for t in tests if t is not None and math.isfinite(t["mde"])]
        if mdes:
            out[category] = {
                "median": float(np.median(mdes)),
                "min": float(min(mdes)),
                "max": float(max(mdes)),
                "power": POWER,
                "alpha": alpha / max(1, n_tests),
            }
    return out


def per_dataset_rows(
    results: StudyResults,
    designs: Sequence[str],
    tasks: Mapping[str, str],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> list[dict[str, Any]]:
    """One row per (dataset, design): score, Δ vs reference with bootstrap CI, permutation p and Holm p."""
    ref = results.designs[results.reference]
    rows = []
    order = {c: i for i, c in enumerate(ordered_categories(tasks.values()))}
    for task in sorted(tasks, key=lambda t: (order[tasks[t]], t)):
        for name in designs:
            own = results.designs[name].tasks[task]
            row: dict[str, Any] = {
                "task": task,
                "category": tasks[task],
                "design": name,
                "score": own.score,
                "seed_scores": own.seed_scores,
                "n": len(own.per_sample["ids"]) if own.per_sample else None,
            }
            if name != results.reference:
                row["delta"] = own.score - ref.tasks[task].score
                if own.per_sample is not None and ref.tasks[task].per_sample is not None:
                    compared = stats.compare_within_dataset(
                        ref.tasks[task].per_sample,
                        own.per_sample,
                        n_resamples=n_resamples,
                        seed=seed,
                        confidence=confidence,
                    )
                    row.update(ci_low=compared["ci_low"], ci_high=compared["ci_high"], pvalue=compared["pvalue"])
            rows.append(row)
    tested = [r for r in rows if "pvalue" in r]
    for row, adjusted in zip(tested, stats.holm([r["pvalue"] for r in tested]), strict=True):
        row["pvalue_holm"] = float(adjusted)
    return rows


def seed_summaries(
    results: StudyResults, designs: Sequence[str], tasks: Mapping[str, str], categories: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per design and category: mean ± CI over seeds of the category score (each seed's own mean)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in designs:
        design = results.designs[name]
        out[name] = {}
        for category in categories:
            names = [t for t, c in tasks.items() if c == category]
            per_seed = [float(np.mean([r[t]["main_score"] for t in names])) for r in design.seed_tasks.values()]
            out[name][category] = stats.seed_summary(per_seed, confidence=results.config["stats"]["confidence"])
    return out


def defined_layer_tasks(layers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The layer tasks with a score at every layer (the others are named in the report with their reason)."""
    return [t for t in layers["tasks"] if all(math.isfinite(s) for s in t["scores"])]


def layer_category_curves(layers: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Mean main score per layer for each category of the layer tasks with defined scores, plus ``all`` (mean
    over those tasks); empty when no task has a score at every layer."""
    tasks = defined_layer_tasks(layers)
    if not tasks:
        return {}
    by_category: dict[str, list[list[float]]] = {}
    for task in tasks:
        by_category.setdefault(task["category"], []).append(task["scores"])
    curves = {c: np.mean(by_category[c], axis=0) for c in ordered_categories(by_category)}
    curves["all"] = np.mean([t["scores"] for t in tasks], axis=0)
    return curves
