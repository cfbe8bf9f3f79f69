"""The study report, rendered from stored results only: :func:`render_report` writes into the study folder

* ``results.json``: every number of the tables (for scripts and checks), and ``results/table1.csv`` and
  ``results/table1.tex`` (:mod:`.export`);
* ``plots/*.png``: the figures of :mod:`poolattn.study.plots`;
* ``report.md`` and ``report.html`` (the same content, plots embedded as base64 PNG).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markdown_it import MarkdownIt

from ..io import write_text_atomic
from .conclusions import Findings, Learning, analyse
from .export import EXPORT_DIR, write_table1
from .markdown import fmt, fmt_p, md_table
from .noise import VarianceBudget, section_budget, variance_budget
from .plots import PLOTS, plot_cka, plot_deltas, plot_layer_quality, plot_losses
from .ranking import RankingComparison, SeedWins, compare_rankings, section_comparison, section_seed_wins, seed_wins
from .results import (
    CATEGORY_LABEL,
    StudyResults,
    Tables,
    defined_layer_tasks,
    layer_category_curves,
)
from .sections import power_note, section_paper, section_training, seeds_note

#: How ``eval.precision`` (resolved when the config is read) runs the evaluation's forward passes.
EVAL_PRECISION = {
    "bf16": "bf16 (bfloat16 autocast)",
    "fp32": "fp32 (the model's dtype, no autocast)",
    "auto": "auto (bf16 where native, else fp32; not resolved in this folder)",
}
#: Derived values written beside a dataclass's fields in ``results.json``.
JSON_PROPERTIES = {
    "Table1Entry": ("marks",),
    "BudgetEntry": ("seed_share",),
    "SeedWins": ("share",),
    "CategoryRanking": ("same_best",),
    "ResolvedCheck": ("agree",),
    "ClaimCheck": ("agree",),
    "RankingComparison": ("agree",),
    "Claim": ("resolved",),
}
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESULTS_JSON = "results.json"


# ============================================================================================ markdown
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
    table = md_table(["design", "attention", "pooling", "trained", "seeds", "note"], rows, "llllll")
    return table + start_line(results)


def start_line(results: StudyResults) -> str:
    """Which designs trained from the adapted backbone (``[adapt]``), with its held-out masked-token numbers."""
    adapted = {
        n: [c["start"] for c in d.cells if (c.get("start") or {}).get("from") == "adapted"]
        for n, d in results.designs.items()
    }
    names = [n for n, starts in adapted.items() if starts]
    if not names:
        return ""
    per_seed = {}
    for starts in adapted.values():
        for start in starts:
            per_seed.setdefault(start["folder"], start)
    parts = []
    for start in per_seed.values():
        before, after = start.get("heldout_before") or {}, start.get("heldout_after") or {}
        numbers = (
            f"; held-out masked-token loss {before['loss']:.3f} → {after['loss']:.3f}, "
            f"accuracy {before['accuracy']:.3f} → {after['accuracy']:.3f}"
            if before and after
            else ""
        )
        simcse = f" + SimCSE {start['simcse_steps']} steps" if start.get("simcse_steps") else ""
        parts.append(f"`{start['folder']}`: MNTP {start['mntp_steps']} steps{simcse}{numbers}")
    return (
        f"\n\nStart of training: {', '.join(names)} from the backbone adapted as LLM2Vec does ("
        + "; ".join(parts)
        + "); the other designs from the base backbone."
    )


def row_label(name: str, tables: Tables, learning: Mapping[str, Learning]) -> str:
    label = f"**{name}**" if name == tables.reference else name
    return label + (" (did not learn)" if learning[name].flagged else "")


def section_table1(results: StudyResults, tables: Tables, learning: Mapping[str, Learning]) -> str:
    header = ["", *(CATEGORY_LABEL.get(c, c) for c in tables.categories)]
    rows = []
    for name in tables.designs:
        cells = []
        for category in tables.categories:
            entry = tables.table1[name][category]
            if name == tables.reference:
                cells.append(f"**{fmt(entry.score)}**")
            else:
                value = f"{fmt(entry.delta, signed=True)}{entry.marks}"
                cells.append(f"({value})" if learning[name].flagged else value)
        rows.append([row_label(name, tables, learning), *cells])
    counts = ", ".join(
        f"{CATEGORY_LABEL.get(c, c)} {tables.table1[tables.reference][c].n_datasets}" for c in tables.categories
    )
    alpha = tables.settings["alpha"]
    n_tests = sum(tables.table1[d][c].within is not None for d in tables.designs for c in tables.categories)
    unreachable = sorted(
        {
            c
            for d in tables.designs
            if d != tables.reference
            for c in tables.categories
            if (tables.table1[d][c].wilcoxon or {}).get("min_attainable_p", 1.0) >= alpha
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
        f"{n_tests} comparisons of this table, p < {alpha:g}."
        + (
            " With one training seed every `†` is a difference between these two trained models (this seed, this "
            "machine's arithmetic), not between the designs: how far Δ moves with another seed is not in the test."
            if tables.single_seed
            else ""
        ),
    ]
    if unreachable:
        names = ", ".join(
            f"{CATEGORY_LABEL.get(c, c)} (n = {tables.table1[tables.reference][c].n_datasets})" for c in unreachable
        )
        notes.append(
            f"With too few datasets `*` cannot occur: the smallest two-sided Wilcoxon p with n datasets is 2/2^n, "
            f"not below {alpha:g} for n ≤ {math.floor(math.log2(2 / alpha))}. This holds for {names}."
        )
    floor = resolution_note(tables.settings["n_resamples"], n_tests, alpha)
    if floor:
        notes.append(floor)
    flagged = [n for n in tables.designs if learning[n].flagged]
    if flagged:
        notes.append(
            f"(did not learn): {', '.join(flagged)} — see “Did training learn?” below. Their Δ (in parentheses) "
            "is not a design effect"
            + (
                f"; the reference {tables.reference} is among them, so no Δ of this table is one."
                if tables.reference in flagged
                else "."
            )
        )
    notes += [power_note(tables), seeds_note(results)]
    return md_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)


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
        defined = defined_layer_tasks(layers)
        beats = [t["task"] for t in defined if max(t["scores"][:-1], default=-np.inf) > t["scores"][-1]]
        parts.append(
            f"Best layer by the mean over tasks: **{best}** ({fmt(float(mean[best - 1]))}) vs the last layer "
            f"{fmt(float(mean[-1]))}. A non-final layer beats the last one on **{len(beats)} of "
            f"{len(defined)}** tasks{': ' + ', '.join(beats) if beats else ''}."
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
    undefined = [t for t in layers["tasks"] if t not in defined_layer_tasks(layers)]
    if undefined:

        def where(task: Mapping[str, Any]) -> str:
            nan = ", ".join(str(i + 1) for i, v in enumerate(task["scores"]) if not np.isfinite(v))
            return f"{task['task']} at layer(s) {nan} ({task.get('undefined') or 'the main score is NaN'})"

        parts.append("**Left out (score undefined):** " + "; ".join(where(t) for t in undefined) + ".")
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


def section_time(runs: list[Mapping[str, Any]]) -> str:
    """Where the wall time went, per phase, over every run of the study (reused cells cost nothing)."""
    timed = [r for r in runs if r.get("phases")]
    if not timed:
        return ""
    wall = sum(float(r.get("wall_seconds") or 0.0) for r in timed)
    phases: dict[str, float] = {}
    for run in timed:
        for name, seconds in run["phases"].items():
            phases[name] = phases.get(name, 0.0) + float(seconds)
    phases["other (loading, bookkeeping)"] = max(0.0, wall - sum(phases.values()))
    rows = [
        [name, f"{seconds:.0f}", f"{seconds / 60:.1f}", f"{seconds / wall:.0%}" if wall else "—"]
        for name, seconds in phases.items()
    ]
    rows.append(["**all**", f"**{wall:.0f}**", f"**{wall / 60:.1f}**", "100%"])
    runs_note = f"{len(timed)} runs" if len(timed) > 1 else "one run"
    return (
        f"Where the time went ({runs_note}; each second counted once: the mining and adaptation that a training "
        "cell waits for count as mining and adaptation; cells reused from an earlier run cost nothing):\n\n"
        + md_table(["phase", "seconds", "minutes", "share"], rows)
    )


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
        f"- Evaluation precision: {EVAL_PRECISION.get(config['eval'].get('precision'), 'not recorded')}",
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


def undefined_note(undefined: Mapping[str, Mapping[str, Any]]) -> str:
    """The datasets left out of every table and test because a design's score on them is undefined, and why."""
    lines = [
        f"- {task} ({CATEGORY_LABEL.get(u['category'], u['category'])}; {', '.join(u['designs'])}): {u['reason']}"
        for task, u in undefined.items()
    ]
    return (
        f"**Undefined scores:** {len(undefined)} dataset(s) left out of every table and test below (a difference "
        "with an undefined score is undefined):\n\n" + "\n".join(lines)
    )


def render_markdown(
    findings: Findings,
    plots: Mapping[str, Path | None],
    budget: VarianceBudget,
    wins: Mapping[str, Mapping[str, SeedWins]],
    compared: tuple[RankingComparison, Findings] | None = None,
) -> str:
    results, tables, learning = findings.results, findings.tables, findings.learning
    config = results.config
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
    if tables.undefined:
        parts.append(undefined_note(tables.undefined))
    parts += ["## Designs", section_designs(results, tables)]
    parts += ["## Table 1: main score per category", section_table1(results, tables, learning)]
    if plots.get("deltas"):
        parts.append(f"![Δ per category]({PLOTS}/{plots['deltas'].name})")  # type: ignore[union-attr]
    parts.append(f"Also as `{EXPORT_DIR}/table1.csv` (every number behind each cell) and `{EXPORT_DIR}/table1.tex`.")
    parts += ["## Where the uncertainty comes from", section_budget(budget)]
    ranking = [section_seed_wins(findings, wins)]
    if compared is not None:
        ranking.append(section_comparison(compared[0], findings, compared[1]))
    if any(ranking):
        parts += ["## Does the ranking hold?", *ranking]
    training = section_training(results, tables, learning)
    if training:
        parts += ["## Did training learn?", training]
    parts += ["## Direction of the paper's findings vs ours", section_paper(findings.comparison, tables)]
    parts += ["## Per dataset", section_per_dataset(tables)]
    seeds = section_seeds(results, tables)
    if seeds:
        parts.append(seeds)
    parts += ["## Layer-wise analysis of the base model", section_layers(results.layers, plots)]
    parts += ["## Cost next to quality", section_cost(results, tables), section_time(results.study.get("runs", []))]
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


def render_report(folder: str | Path, compare: str | Path | None = None) -> Path:
    """Re-render ``report.md``, ``report.html``, ``results.json`` and the plots from a study folder's stored
    results; ``compare``: a second study folder whose ranking is put beside this one's. Returns ``report.md``."""
    folder = Path(folder)
    findings = analyse(folder)
    results, tables, learning = findings.results, findings.tables, findings.learning
    other = analyse(compare) if compare is not None else None
    compared = (compare_rankings(findings, other), other) if other is not None else None
    budget = variance_budget(results, tables)
    wins = seed_wins(findings)
    plot_dir = folder / PLOTS
    plots: dict[str, Path | None] = {
        "deltas": plot_deltas(tables, plot_dir / "delta_by_category.png"),
        "losses": plot_losses(results, plot_dir / "training_loss.png"),
        "layer_quality": plot_layer_quality(results.layers, plot_dir / "layer_quality.png") if results.layers else None,
        "layer_cka": plot_cka(results.layers, plot_dir / "layer_cka.png") if results.layers else None,
    }
    payload = {
        **plain(tables),
        "learning": learning,
        "paper_comparison": findings.comparison,
        "variance_budget": budget,
        "ranking": {"seed_wins": wins, "comparison": compared and compared[0]},
        "missing": results.missing,
        "layers": results.layers and {k: v for k, v in results.layers.items() if k != "cka"},
    }
    write_text_atomic(folder / RESULTS_JSON, json.dumps(plain(payload), indent=1, default=_jsonable) + "\n")
    write_table1(folder, results, tables, learning)
    markdown = render_markdown(findings, plots, budget, wins, compared)
    write_text_atomic(folder / REPORT_MD, markdown)
    write_text_atomic(folder / REPORT_HTML, render_html(markdown, folder, f"poolattn study: {results.config['name']}"))
    return folder / REPORT_MD


def plain(value: Any) -> Any:
    """Dataclasses (with their :data:`JSON_PROPERTIES`), dicts, lists and tuples as plain JSON data."""
    if is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in fields(value)] + list(JSON_PROPERTIES.get(type(value).__name__, ()))
        return {k: plain(getattr(value, k)) for k in names}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
