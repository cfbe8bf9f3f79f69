"""The study report: statistics tables, plots, Markdown and a self-contained HTML page, from stored results only.

:func:`render_report` reads a study folder written by :func:`poolattn.experiment.run_experiment` (``study.json``,
``cells/*/cell.json`` with their evaluation JSONs and training logs, ``layers/layers.json``) and writes

* ``results.json``: every number of the tables (for scripts and checks);
* ``plots/*.png``: Δ per category with confidence intervals, training loss curves, per-layer quality and the
  layer x layer CKA heatmap (matplotlib, Agg);
* ``report.md`` and ``report.html`` (the same content, plots embedded as base64 PNG).

Statistics (differences are always design − reference):

* Table 1, the paper's layout: per category the mean main score over its datasets; the reference absolute, the
  others as Δ. ``*`` = Wilcoxon signed-rank test over the category's datasets (the paper's test);
  ``†`` = stratified paired permutation test within the datasets (samples swapped between the two designs inside
  each dataset, statistic = the category's mean Δ), Holm-corrected over every comparison of the table.
* Per dataset: each design's main score, Δ with a paired bootstrap CI, the paired permutation p-value and its
  Holm-adjusted value over every per-dataset comparison (:func:`poolattn.stats.compare_within_dataset`).
* Several seeds: scores are averaged over seeds first (per-sample values too), and mean ± CI over seeds is shown.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import stats

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESULTS_JSON = "results.json"
PLOTS = "plots"
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
_TIE = 1e-12

# Tang & Yang 2024, main table (Mistral-7B, MTEB): Δ vs M1 (EOS, causal) and whether the paper marks it significant.
PAPER_DESIGNS: dict[tuple[str, str], str] = {
    ("causal", "eos"): "M1",
    ("causal", "trainable"): "M2",
    ("causal", "multilayer"): "M3",
    ("bidirectional", "trainable"): "M4",
    ("bidirectional", "multilayer"): "M5",
}
PAPER_REFERENCE = {"sts": 0.8302, "classification": 0.7244, "retrieval": 0.5394, "clustering": 0.4503}
PAPER_DELTAS: dict[str, dict[str, tuple[float, bool]]] = {
    "M2": {"sts": (0.0129, True), "classification": (-0.0035, False), "retrieval": (0.0102, False),
           "clustering": (-0.0076, False)},
    "M3": {"sts": (0.0118, True), "classification": (-0.0033, False), "retrieval": (0.0135, False),
           "clustering": (-0.0017, False)},
    "M4": {"sts": (0.0095, True), "classification": (-0.0483, False), "retrieval": (0.0213, False),
           "clustering": (-0.0493, True)},
    "M5": {"sts": (0.0166, True), "classification": (-0.0143, True), "retrieval": (0.0226, True),
           "clustering": (-0.0246, True)},
}  # fmt: skip


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

    @property
    def reference(self) -> str:
        return self.study["reference"]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
        design.cells.append(record)
        design.seed_tasks[entry["seed"]] = results
    for design in designs.values():
        design.tasks = average_seeds(design.seed_tasks)
    layers = read_json(folder / "layers" / "layers.json")
    if layers is not None and layers.get("hash") != study.get("layers", {}).get("hash"):
        layers = None
    return StudyResults(folder, study, {k: v for k, v in designs.items() if v.cells}, missing, layers)


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
def _row_scores(
    statistic: stats.SampleStatistic, fields: Mapping[str, np.ndarray], shape: tuple[int, int]
) -> np.ndarray:
    full = {k: np.broadcast_to(v, shape) for k, v in fields.items()}
    if statistic.compute_rows is not None:
        return np.asarray(statistic.compute_rows(full), dtype=np.float64)
    return np.array([statistic.compute({k: v[r] for k, v in full.items()}) for r in range(shape[0])])


def category_resampling(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
    chunk: int = 250,
) -> dict[str, float]:
    """Paired tests of a category's mean Δ (b − a) over its datasets, resampling *within* each dataset.

    Permutation: every sample's paired values are swapped between the designs with probability 1/2 in every
    dataset at once, p = (1 + #|T*| ≥ |T|) / (1 + R). Bootstrap: each dataset's samples are resampled with
    replacement (the same indices for both designs); the percentile interval of the mean Δ.
    """
    rng = np.random.default_rng(seed)
    observed = 0.0
    permuted = np.zeros(n_resamples)
    booted = np.zeros(n_resamples)
    for sample_a, sample_b in pairs:
        a, b = stats.align(sample_a, sample_b)
        statistic = stats.STATISTICS[a["statistic"]]
        fa = {k: np.asarray(a[k], dtype=np.float64) for k in statistic.fields}
        fb = {k: np.asarray(b[k], dtype=np.float64) for k in statistic.fields}
        n, paired = len(a["ids"]), statistic.paired_field
        observed += statistic.compute(fb) - statistic.compute(fa)
        for start in range(0, n_resamples, chunk):
            rows = min(chunk, n_resamples - start)
            shape = (rows, n)
            swap = rng.random(shape) < 0.5
            swapped_a = {**fa, paired: np.where(swap, fb[paired], fa[paired])}
            swapped_b = {**fb, paired: np.where(swap, fa[paired], fb[paired])}
            permuted[start : start + rows] += _row_scores(statistic, swapped_b, shape) - _row_scores(
                statistic, swapped_a, shape
            )
            index = rng.integers(0, n, size=shape)
            booted[start : start + rows] += _row_scores(statistic, {k: v[index] for k, v in fb.items()}, shape) - (
                _row_scores(statistic, {k: v[index] for k, v in fa.items()}, shape)
            )
    k = len(pairs)
    observed, permuted, booted = observed / k, permuted / k, booted / k
    extreme = np.count_nonzero(np.abs(permuted) >= abs(observed) * (1 - _TIE) - _TIE)
    pvalue = (1 + extreme) / (1 + n_resamples) if math.isfinite(observed) else math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(booted, [tail, 100 - tail]) if np.isfinite(booted).any() else (math.nan, math.nan)
    return {
        "diff": float(observed),
        "ci_low": float(low),
        "ci_high": float(high),
        "pvalue": float(pvalue),
        "n_resamples": n_resamples,
    }


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
class Tables:
    """All numbers of the report."""

    reference: str
    designs: list[str]
    categories: list[str]
    tasks: dict[str, str]  # task -> category (the datasets every design has)
    table1: dict[str, dict[str, dict[str, Any]]]  # design -> category -> entry
    per_dataset: list[dict[str, Any]]
    seeds: dict[str, dict[str, dict[str, float]]]  # design -> category -> seed summary
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    categories = ordered_categories(tasks.values())
    by_category = {c: [t for t, cat in tasks.items() if cat == c] for c in categories}
    table1: dict[str, dict[str, dict[str, Any]]] = {}
    for name in designs:
        design = results.designs[name]
        table1[name] = {}
        for category in categories:
            names = by_category[category]
            score = float(np.mean([design.tasks[t].score for t in names]))
            entry: dict[str, Any] = {"score": score, "n_datasets": len(names)}
            if name != reference:
                ref_scores = [ref.tasks[t].score for t in names]
                own = [design.tasks[t].score for t in names]
                entry["delta"] = score - float(np.mean(ref_scores))
                entry["wilcoxon"] = wilcoxon_entry(ref_scores, own, alpha)
                pairs = [(ref.tasks[t].per_sample, design.tasks[t].per_sample) for t in names]
                if all(a is not None and b is not None for a, b in pairs):
                    entry["within"] = category_resampling(
                        pairs,
                        n_resamples=n_resamples,
                        seed=seed,
                        confidence=confidence,  # type: ignore[arg-type]
                    )
            table1[name][category] = entry
    within = [(d, c) for d in designs for c in categories if "within" in table1[d][c]]
    for (d, c), adjusted in zip(within, stats.holm([table1[d][c]["within"]["pvalue"] for d, c in within]), strict=True):
        table1[d][c]["within"]["pvalue_holm"] = float(adjusted)
    for name in designs:
        for category in categories:
            entry = table1[name][category]
            if name == reference:
                entry["marks"] = ""
                continue
            star = stats.significance_mark(entry["wilcoxon"]["pvalue"], alpha)
            dagger = "†" if entry.get("within", {}).get("pvalue_holm", 1.0) < alpha else ""
            entry["marks"] = star + dagger
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
    )


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


# ====================================================================================== paper directions
def paper_comparison(results: StudyResults, tables: Tables) -> dict[str, Any] | None:
    """Our Δ next to the paper's for the designs that match the paper's by (attention, pooling), when our
    reference is the paper's (trained EOS, causal). Agreement is the sign of Δ, computed from the numbers."""
    spec = {name: results.designs[name].spec for name in tables.designs}
    ref = spec[tables.reference]
    if PAPER_DESIGNS.get((ref["attention"], ref["pooling"])) != "M1" or not ref.get("train", True):
        return None
    rows = []
    for name in tables.designs:
        design = spec[name]
        paper_name = PAPER_DESIGNS.get((design["attention"], design["pooling"]))
        if name == tables.reference or paper_name not in PAPER_DELTAS or not design.get("train", True):
            continue
        for category, (paper_delta, paper_sig) in PAPER_DELTAS[paper_name].items():
            if category not in tables.categories:
                continue
            entry = tables.table1[name][category]
            ours = entry["delta"]
            rows.append(
                {
                    "design": name,
                    "paper_design": paper_name,
                    "category": category,
                    "paper_delta": paper_delta,
                    "paper_significant": paper_sig,
                    "delta": ours,
                    "marks": entry["marks"],
                    "agree": (ours > 0) == (paper_delta > 0) and ours != 0,
                }
            )
    if not rows:
        return None
    return {"rows": rows, "claims": paper_claims(tables, spec)}


def paper_claims(tables: Tables, spec: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The paper's conclusions, each checked against our Table 1."""

    def find(attention: str, pooling: str) -> list[str]:
        return [
            n
            for n in tables.designs
            if spec[n]["attention"] == attention and spec[n]["pooling"] == pooling and spec[n].get("train", True)
        ]

    bidir_trainable = find("bidirectional", "trainable") + find("bidirectional", "multilayer")
    multilayer = find("causal", "multilayer") + find("bidirectional", "multilayer")
    trained = [n for n in tables.designs if spec[n].get("train", True)]
    claims = []
    for category, sign, words in (
        ("sts", 1, "help STS"),
        ("retrieval", 1, "help retrieval"),
        ("clustering", -1, "do not help clustering"),
        ("classification", -1, "do not help classification"),
    ):
        if category not in tables.categories or not bidir_trainable:
            continue
        deltas = {n: tables.table1[n][category]["delta"] for n in bidir_trainable}
        holds = [n for n, d in deltas.items() if (d > 0 if sign > 0 else d <= 0)]
        claims.append(
            {
                "claim": f"bidirectional attention + trainable pooling ({', '.join(bidir_trainable)}) {words}",
                "holds_for": holds,
                "of": bidir_trainable,
                "deltas": deltas,
            }
        )
    for category in ("sts", "retrieval"):
        if category not in tables.categories or not multilayer:
            continue
        best = max(trained, key=lambda n: tables.table1[n][category]["score"])
        claims.append(
            {
                "claim": f"multi-layer trainable pooling is the best design for {CATEGORY_LABEL[category]}",
                "holds_for": [best] if best in multilayer else [],
                "of": [best],
                "best": best,
                "deltas": {},
            }
        )
    return claims


# ================================================================================================ plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10, "figure.dpi": 110}
    )
    return plt


def design_colors(names: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_deltas(tables: Tables, path: Path) -> Path | None:
    """Grouped bars: Δ vs the reference per category and design, with the within-dataset bootstrap CI."""
    others = [d for d in tables.designs if d != tables.reference]
    if not others or not tables.categories:
        return None
    plt = _pyplot()
    colors = design_colors(tables.designs)
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(tables.categories) + 2), 4.6))
    width = 0.8 / len(others)
    x = np.arange(len(tables.categories))
    for i, name in enumerate(others):
        entries = [tables.table1[name][c] for c in tables.categories]
        deltas = np.array([e["delta"] for e in entries])
        lows = np.array([e.get("within", {}).get("ci_low", np.nan) for e in entries])
        highs = np.array([e.get("within", {}).get("ci_high", np.nan) for e in entries])
        errors = np.vstack([np.clip(deltas - lows, 0, None), np.clip(highs - deltas, 0, None)])
        ax.bar(
            x + (i - (len(others) - 1) / 2) * width,
            deltas,
            width,
            label=name,
            color=colors[name],
            yerr=np.nan_to_num(errors),
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [CATEGORY_LABEL.get(c, c) for c in tables.categories])
    ax.set_ylabel(f"Δ main score vs {tables.reference}")
    ax.set_title(f"Δ vs {tables.reference} per category ({int(tables.settings['confidence'] * 100)}% bootstrap CI)")
    ax.legend(ncol=min(len(others), 6), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_losses(results: StudyResults, path: Path) -> Path | None:
    """Training loss per step for every trained cell (raw, faint) and its moving average (solid)."""
    curves = []
    for name, design in results.designs.items():
        for cell in design.cells:
            train = cell.get("train")
            if not train:
                continue
            log = results.folder / "cells" / cell["name"] / train["log"]
            steps, losses = read_loss_log(log)
            if steps:
                curves.append((name, cell["name"], np.array(steps), np.array(losses)))
    if not curves:
        return None
    plt = _pyplot()
    colors = design_colors(list(results.designs))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    labelled = set()
    for design, _cell, steps, losses in curves:
        window = max(1, min(10, len(losses) // 5))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        marker = "o" if len(steps) <= 20 else None
        ax.plot(steps, losses, color=colors[design], alpha=0.25, linewidth=0.8, marker=marker, markersize=3)
        label = design if design not in labelled else None
        labelled.add(design)
        ax.plot(
            steps[window - 1 :],
            smooth,
            color=colors[design],
            linewidth=1.8,
            label=label,
            marker="o" if len(smooth) == 1 else None,
        )
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_xlabel("training step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("Training loss (faint: per step; solid: moving average)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, frameon=False)
    return save_figure(fig, path)


def read_loss_log(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps, losses
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps.append(int(record["step"]))
        losses.append(float(record["loss"]))
    return steps, losses


def layer_category_curves(layers: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Mean main score per layer for each category of the layer tasks, plus ``all`` (mean over tasks)."""
    by_category: dict[str, list[list[float]]] = {}
    for task in layers["tasks"]:
        by_category.setdefault(task["category"], []).append(task["scores"])
    curves = {c: np.mean(by_category[c], axis=0) for c in ordered_categories(by_category)}
    curves["all"] = np.mean([t["scores"] for t in layers["tasks"]], axis=0)
    return curves


def plot_layer_quality(layers: Mapping[str, Any], path: Path) -> Path | None:
    if not layers.get("tasks"):
        return None
    plt = _pyplot()
    curves = layer_category_curves(layers)
    x = np.arange(1, layers["num_layers"] + 1)
    fig, ax = plt.subplots(figsize=(8, 5.4))
    for i, (category, values) in enumerate(curves.items()):
        if category == "all":
            ax.plot(x, values, color="black", linewidth=2.4, label="mean of all layer tasks")
        else:
            ax.plot(
                x,
                values,
                color=plt.get_cmap("tab10")(i),
                linewidth=1.6,
                marker="o",
                markersize=3,
                label=CATEGORY_LABEL.get(category, category),
            )
    best = int(np.argmax(curves["all"])) + 1
    ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best mean: layer {best}")
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_xlabel("layer")
    ax.set_ylabel("main score")
    ax.set_title(f"Quality of each layer's embedding (base model, {layers['reduction']})")
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return save_figure(fig, path)


def plot_cka(layers: Mapping[str, Any], path: Path) -> Path | None:
    matrix = np.asarray(layers.get("cka", {}).get("matrix") or [])
    if matrix.ndim != 2 or matrix.size == 0:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0, origin="lower")
    ticks = np.arange(0, matrix.shape[0], max(1, matrix.shape[0] // 10))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(f"Linear CKA between layers ({layers['cka']['n_texts']} texts)")
    fig.colorbar(image, ax=ax, label="linear CKA")
    return save_figure(fig, path)


def integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


# ============================================================================================ markdown
def fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def design_label(spec: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in spec.get("options", {}).items())
    return f"{spec['pooling']}{f' ({options})' if options else ''}"


def section_designs(results: StudyResults, tables: Tables) -> str:
    rows = []
    for name in tables.designs:
        spec = results.designs[name].spec
        seeds = sorted(s for s in results.designs[name].seed_tasks if s is not None)
        rows.append(
            [
                f"**{name}**" if name == tables.reference else name,
                spec["attention"],
                design_label(spec),
                "yes" if spec.get("train", True) else "no (untrained)",
                ", ".join(map(str, seeds)) or "— (no randomness)",
                spec.get("label", ""),
            ]
        )
    return md_table(["design", "attention", "pooling", "trained", "seeds", "note"], rows, "llllll")


def section_table1(results: StudyResults, tables: Tables) -> str:
    header = ["", *(CATEGORY_LABEL.get(c, c) for c in tables.categories)]
    rows = []
    for name in tables.designs:
        cells = []
        for category in tables.categories:
            entry = tables.table1[name][category]
            if name == tables.reference:
                cells.append(f"**{fmt(entry['score'])}**")
            else:
                cells.append(f"{fmt(entry['delta'], signed=True)}{entry['marks']}")
        rows.append([f"**{name}**" if name == tables.reference else name, *cells])
    counts = ", ".join(
        f"{CATEGORY_LABEL.get(c, c)} {tables.table1[tables.reference][c]['n_datasets']}" for c in tables.categories
    )
    alpha = tables.settings["alpha"]
    n_tests = sum("within" in tables.table1[d][c] for d in tables.designs for c in tables.categories)
    unreachable = sorted(
        {
            c
            for d in tables.designs
            if d != tables.reference
            for c in tables.categories
            if tables.table1[d][c]["wilcoxon"]["min_attainable_p"] >= alpha
        },
        key=tables.categories.index,
    )
    notes = [
        f"Rows: {tables.reference} (the reference) absolute, every other design as Δ = design − "
        f"{tables.reference}. A category's score is the mean main score over its datasets ({counts}).",
        f"`*` Wilcoxon signed-rank test over the category's datasets (two-sided, p < {alpha:g}, no correction) — "
        "the paper's test.",
        f"`†` paired permutation test within the datasets (each sample's scores swapped between the two designs, "
        f"statistic = the category's mean Δ, {tables.settings['n_resamples']} resamples), Holm-corrected over all "
        f"{n_tests} comparisons of this table, p < {alpha:g}.",
    ]
    if unreachable:
        names = ", ".join(
            f"{CATEGORY_LABEL.get(c, c)} (n = {tables.table1[tables.reference][c]['n_datasets']})" for c in unreachable
        )
        notes.append(
            f"With too few datasets `*` cannot occur: the smallest two-sided Wilcoxon p with n datasets is 2/2^n, "
            f"not below {alpha:g} for n ≤ {math.floor(math.log2(2 / alpha))}. This holds for {names}."
        )
    floor = resolution_note(tables.settings["n_resamples"], n_tests, alpha)
    if floor:
        notes.append(floor)
    if len(results.config["seeds"]) > 1:
        notes.append(
            f"Scores are averaged over the seeds {results.config['seeds']} first (per-sample values too); see the "
            "seed table below."
        )
    return md_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def section_per_dataset(tables: Tables) -> str:
    ci = round(tables.settings["confidence"] * 100)
    header = ["dataset", "cat.", "n", "design", "score", f"Δ vs {tables.reference} [{ci}% CI]", "p (perm.)", "p (Holm)"]
    rows = []
    previous = None
    for row in tables.per_dataset:
        first = row["task"] != previous
        previous = row["task"]
        if row["design"] == tables.reference:
            delta, p, p_holm = "reference", "", ""
        else:
            interval = (
                f" [{fmt(row['ci_low'], signed=True)}, {fmt(row['ci_high'], signed=True)}]" if "ci_low" in row else ""
            )
            delta = f"{fmt(row['delta'], signed=True)}{interval}"
            p, p_holm = fmt_p(row.get("pvalue")), fmt_p(row.get("pvalue_holm"))
            if row.get("pvalue_holm", 1.0) < tables.settings["alpha"]:
                p_holm = f"**{p_holm}**"
        rows.append(
            [
                row["task"] if first else "",
                CATEGORY_LABEL.get(row["category"], row["category"]) if first else "",
                str(row["n"] or "") if first else "",
                row["design"],
                fmt(row["score"]),
                delta,
                p,
                p_holm,
            ]
        )
    n_tests = sum("pvalue" in r for r in tables.per_dataset)
    note = (
        f"Δ with a paired bootstrap {ci}% percentile interval (the dataset's samples resampled, the same resample for "
        f"both designs); p: two-sided paired permutation test; Holm: adjusted over all {n_tests} per-dataset "
        f"comparisons (bold: < {tables.settings['alpha']:g}). n = queries, pairs, test examples or clustering runs "
        "(a data set with n samples has at most 2^n sign patterns, so its permutation p is at least 2/2^n)."
    )
    floor = resolution_note(tables.settings["n_resamples"], n_tests, tables.settings["alpha"])
    return md_table(header, rows, "llrlrlrr") + "\n\n" + note + (f"\n\n{floor}" if floor else "")


def resolution_note(n_resamples: int, n_tests: int, alpha: float) -> str:
    """A warning when the permutation tests cannot resolve p-values small enough to survive Holm's correction."""
    smallest = n_tests / (1 + n_resamples)
    if n_tests == 0 or smallest < alpha:
        return ""
    return (
        f"With {n_resamples} resamples the smallest permutation p is 1/{n_resamples + 1}, so after Holm over "
        f"{n_tests} comparisons none can fall below {alpha:g}: raise `stats.n_resamples` above {n_tests / alpha:.0f}."
    )


def section_seeds(results: StudyResults, tables: Tables) -> str:
    if len(results.config["seeds"]) < 2:
        return ""
    ci = round(tables.settings["confidence"] * 100)
    rows = []
    for name in tables.designs:
        cells = []
        for category in tables.categories:
            summary = tables.seeds[name][category]
            if summary["n"] < 2:
                cells.append(f"{fmt(summary['mean'])} (1 run)")
            else:
                cells.append(f"{fmt(summary['mean'])} ± {fmt((summary['ci_high'] - summary['ci_low']) / 2)}")
        rows.append([name, *cells])
    header = ["design", *(CATEGORY_LABEL.get(c, c) for c in tables.categories)]
    return (
        f"### Seeds\n\nMean over seeds ± half-width of the {ci}% Student-t interval of the category score.\n\n"
        + md_table(header, rows)
    )


def section_paper(comparison: Mapping[str, Any] | None) -> str:
    if comparison is None:
        return (
            "The reference design is not the paper's M1 (trained EOS pooling, causal attention), so the directions "
            "cannot be compared design by design."
        )
    rows = comparison["rows"]
    agree = [r for r in rows if r["agree"]]
    significant = [r for r in rows if r["paper_significant"]]
    agree_significant = [r for r in significant if r["agree"]]
    table = md_table(
        ["ours", "paper", "category", "paper Δ", "our Δ", "same direction"],
        [
            [
                r["design"],
                r["paper_design"],
                CATEGORY_LABEL.get(r["category"], r["category"]),
                f"{fmt(r['paper_delta'], signed=True)}{'*' if r['paper_significant'] else ''}",
                f"{fmt(r['delta'], signed=True)}{r['marks']}",
                "yes" if r["agree"] else "**no**",
            ]
            for r in rows
        ],
        "lllrrl",
    )
    lines = [
        f"The sign of Δ agrees with the paper in **{len(agree)} of {len(rows)}** design × category comparisons, "
        f"and in {len(agree_significant)} of the {len(significant)} the paper marks significant.",
    ]
    for claim in comparison["claims"]:
        if "best" in claim:
            verdict = "holds" if claim["holds_for"] else f"does not hold (best here: {claim['best']})"
        else:
            deltas = ", ".join(f"{n} {fmt(d, signed=True)}" for n, d in claim["deltas"].items())
            verdict = f"holds for {len(claim['holds_for'])} of {len(claim['of'])} ({deltas})"
        lines.append(f"- Paper: *{claim['claim']}* — here it {verdict}.")
    lines.append(
        "\nDifferences in scale (a 135M model, minutes of CPU training, the offline suite instead of MTEB) mean "
        "agreement or disagreement here is evidence about this set-up, not a replication of the paper."
    )
    return "\n".join(lines[:1]) + "\n\n" + table + "\n\n" + "\n".join(lines[1:])


def section_layers(layers: Mapping[str, Any] | None, plots: Mapping[str, Path | None]) -> str:
    if layers is None:
        return "The layer-wise analysis was not run (or is not finished)."
    curves = layer_category_curves(layers) if layers.get("tasks") else {}
    n = layers["num_layers"]
    parts = [
        f"Base model without training, {layers['attention']} attention, one vector per layer ({layers['reduction']}; "
        f"layers 1..{n}, the embedding output excluded), all layers from one forward pass per text. Each layer is "
        f"scored on {len(layers['tasks'])} tasks of the offline suite (profile {layers['profile']}: "
        f"{', '.join(t['task'] for t in layers['tasks'])})"
        + (
            "; clustering is left out because its k-means runs dominate the time of scoring every layer."
            if not any(t["category"] == "clustering" for t in layers["tasks"])
            else "."
        ),
    ]
    if curves:
        mean = curves["all"]
        best = int(np.argmax(mean)) + 1
        beats = [t["task"] for t in layers["tasks"] if max(t["scores"][:-1], default=-np.inf) > t["scores"][-1]]
        parts.append(
            f"Best layer by the mean over tasks: **{best}** ({fmt(float(mean[best - 1]))}) vs the last layer "
            f"{fmt(float(mean[-1]))}. A non-final layer beats the last one on **{len(beats)} of "
            f"{len(layers['tasks'])}** tasks{': ' + ', '.join(beats) if beats else ''}."
        )
        rows = [
            [
                CATEGORY_LABEL.get(c, c) if c != "all" else "mean",
                str(int(np.argmax(v)) + 1),
                fmt(float(np.max(v))),
                fmt(float(v[-1])),
            ]
            for c, v in curves.items()
        ]
        parts.append(md_table(["category", "best layer", "best score", f"layer {n} (last)"], rows))
    cka = np.asarray(layers.get("cka", {}).get("matrix") or [])
    if cka.size:
        parts.append(
            f"Linear CKA over {layers['cka']['n_texts']} texts: the last layer's similarity to layer 1 is "
            f"{fmt(float(cka[-1, 0]), 3)}, to layer {max(1, n // 2)} {fmt(float(cka[-1, max(1, n // 2) - 1]), 3)}, "
            f"to layer {n - 1} {fmt(float(cka[-1, -2]), 3) if n > 1 else 'n/a'}."
        )
    for key, caption in (("layer_quality", "per-layer quality"), ("layer_cka", "layer x layer linear CKA")):
        if plots.get(key):
            parts.append(f"![{caption}]({PLOTS}/{plots[key].name})")  # type: ignore[union-attr]
    return "\n\n".join(parts)


def section_cost(results: StudyResults, tables: Tables) -> str:
    rows = []
    for name in tables.designs:
        design = results.designs[name]
        trains = [c["train"] for c in design.cells if c.get("train")]
        encodes = [c["encode"] for c in design.cells if c.get("encode") and c["encode"].get("texts")]
        mean_score = float(np.mean([s.score for t, s in design.tasks.items() if t in tables.tasks]))
        params = int(np.mean([t["trainable_parameters"] for t in trains])) if trains else 0
        head = design.cells[0].get("head_parameters", 0)
        seconds = float(np.mean([t["wall_seconds"] for t in trains])) if trains else None
        speed = float(np.mean([t["examples_per_second"] for t in trains])) if trains else None
        memory = float(np.mean([t["peak_memory_bytes"] for t in trains])) / 2**30 if trains else None
        throughput = (
            sum(e["texts"] for e in encodes) / sum(e["seconds"] for e in encodes)
            if encodes and sum(e["seconds"] for e in encodes) > 0
            else None
        )
        rows.append(
            [
                name,
                fmt(mean_score),
                f"{params:,}" if trains else "0 (untrained)",
                f"{head:,}",
                f"{seconds:.0f}" if seconds is not None else "—",
                f"{speed:.3g}" if speed is not None else "—",
                f"{memory:.2f}" if memory is not None else "—",
                f"{throughput:.3g}" if throughput else "—",
            ]
        )
    header = [
        "design",
        "mean score",
        "trainable params",
        "head params",
        "train s",
        "train ex/s",
        "peak mem GiB",
        "encode texts/s",
    ]
    note = (
        "Mean score: over all datasets of Table 1. Trainable parameters: LoRA adapter + pooling head. Peak memory: "
        "the training process's peak resident memory on a CPU (CUDA allocator peak on a GPU). Encode texts/s: "
        "evaluation texts per second (instruction-formatted, truncated to the model's max_length); an untrained "
        "design evaluated from the shared layer pass reports that pass, which computes every layer at once."
    )
    return md_table(header, rows) + "\n\n" + note


def section_environment(results: StudyResults) -> str:
    env = results.study.get("environment", {})
    versions = env.get("versions", {})
    hardware = env.get("hardware", {})
    runs = results.study.get("runs", [])
    config = results.config
    gpus = ", ".join(hardware.get("gpus") or []) or "none"
    memory = hardware.get("memory_bytes")
    lines = [
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- Hardware: {hardware.get('cpu', '?')}, {hardware.get('cpu_cores', '?')} cores "
        f"({hardware.get('torch_threads', '?')} torch threads)"
        + (f", {memory / 2**30:.0f} GiB RAM" if memory else "")
        + f", GPU: {gpus}; {hardware.get('platform', '')}",
        f"- Backbone: `{config['model']['backbone']}` ({results.study['backbone']['num_layers']} layers, hidden "
        f"{results.study['backbone']['hidden_size']}), dtype {config['model']['dtype']}, max_length "
        f"{config['model']['max_length']}",
        f"- Seeds: {config['seeds']}; statistics seed {config['stats']['seed']}, "
        f"{config['stats']['n_resamples']} resamples",
        f"- Study hash: `{results.study.get('study_hash')}`; cell hashes: "
        + ", ".join(f"{c['name']} `{c['hash']}`" for c in results.study["cells"]),
        f"- Config: {config['source']}"
        + (" with " + " ".join(f"--set {shlex.quote(o)}" for o in config["overrides"]) if config["overrides"] else ""),
    ]
    if runs:
        total = sum(r.get("wall_seconds") or 0 for r in runs)
        last = runs[-1]
        lines.append(
            f"- Runs: {len(runs)} (wall time {total:.0f} s in all; last started {last.get('started')}, "
            f"finished {last.get('finished') or 'not finished'}, computed {len(last.get('computed', []))} cells, "
            f"reused {len(last.get('reused', []))})"
        )
    source = config["source"]
    command = "poolattn experiment" + ("" if source.startswith("the embedded") else f" {source}")
    command += f" --output {shlex.quote(str(results.folder))}"
    command += "".join(f" --set {shlex.quote(o)}" for o in config["overrides"])
    lines.append(f"- Rerun: `{command}` (finished cells are reused; delete the folder to recompute)")
    return "\n".join(lines)


def render_markdown(results: StudyResults, tables: Tables, plots: Mapping[str, Path | None]) -> str:
    config = results.config
    comparison = paper_comparison(results, tables)
    evaluation = config["eval"]
    suite = (
        f"offline suite, profile {evaluation['profile']}" if evaluation["suite"] == "offline" else "MTEB"
    ) + f", {len(tables.tasks)} datasets"
    parts = [
        f"# Pooling and attention study: {config['name']}",
        (config.get("description") or "").strip(),
        f"Backbone `{config['model']['backbone']}`; {len(tables.designs)} designs; seeds {config['seeds']}; "
        f"{suite}. Reference design: **{tables.reference}**. Only attention and pooling differ between the designs; "
        "data, data order, recipe and evaluation are shared.",
    ]
    if results.missing:
        parts.append(f"**Not finished yet:** {', '.join(results.missing)} (left out of the tables below).")
    parts += ["## Designs", section_designs(results, tables)]
    parts += ["## Table 1: main score per category", section_table1(results, tables)]
    if plots.get("deltas"):
        parts.append(f"![Δ per category]({PLOTS}/{plots['deltas'].name})")  # type: ignore[union-attr]
    parts += ["## Direction of the paper's findings vs ours", section_paper(comparison)]
    parts += ["## Per dataset", section_per_dataset(tables)]
    seeds = section_seeds(results, tables)
    if seeds:
        parts.append(seeds)
    parts += ["## Layer-wise analysis of the base model", section_layers(results.layers, plots)]
    parts += ["## Cost next to quality", section_cost(results, tables)]
    if plots.get("losses"):
        parts.append(f"![training loss]({PLOTS}/{plots['losses'].name})")  # type: ignore[union-attr]
    parts += ["## Environment", section_environment(results)]
    return "\n\n".join(p for p in parts if p) + "\n"


# ================================================================================================ html
CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d232a;
       max-width: 1180px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; font-size: 16px; }
h1 { font-size: 1.8rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; }
th { background: #f3f5f7; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f5f7; padding: .1rem .3rem; border-radius: 4px; font-size: .92em; word-break: break-all; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; border: 1px solid #eaeef2; }
li { margin: .25rem 0; }
"""


def render_html(markdown: str, folder: Path, title: str) -> str:
    """The Markdown as a standalone page: tables, simple CSS, every plot embedded as a base64 PNG."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(match: re.Match[str]) -> str:
        path = folder / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_report(folder: str | Path) -> Path:
    """Re-render ``report.md``, ``report.html``, ``results.json`` and the plots from a study folder's stored
    results; returns the path of ``report.md``."""
    folder = Path(folder)
    results = load_results(folder)
    tables = compute_tables(results)
    plot_dir = folder / PLOTS
    plots: dict[str, Path | None] = {
        "deltas": plot_deltas(tables, plot_dir / "delta_by_category.png"),
        "losses": plot_losses(results, plot_dir / "training_loss.png"),
        "layer_quality": plot_layer_quality(results.layers, plot_dir / "layer_quality.png") if results.layers else None,
        "layer_cka": plot_cka(results.layers, plot_dir / "layer_cka.png") if results.layers else None,
    }
    payload = {
        **tables.to_dict(),
        "paper_comparison": paper_comparison(results, tables),
        "missing": results.missing,
        "layers": results.layers and {k: v for k, v in results.layers.items() if k != "cka"},
    }
    write_text(folder / RESULTS_JSON, json.dumps(payload, indent=1, default=_jsonable) + "\n")
    markdown = render_markdown(results, tables, plots)
    write_text(folder / REPORT_MD, markdown)
    write_text(folder / REPORT_HTML, render_html(markdown, folder, f"poolattn study: {results.config['name']}"))
    return folder / REPORT_MD


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
