"""The report's figures (matplotlib, Agg): Δ per category with confidence intervals, training loss curves with
the loss of chance, per-layer quality and the layer x layer CKA heatmap, each written as a PNG under the study's
``plots/``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_atomic
from .results import CATEGORY_LABEL, StudyResults, Tables, layer_category_curves

#: The study folder's sub-folder of figures.
PLOTS = "plots"


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
        deltas = np.array([e.delta for e in entries])
        lows = np.array([(e.within or {}).get("ci_low", np.nan) for e in entries])
        highs = np.array([(e.within or {}).get("ci_high", np.nan) for e in entries])
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
    chance = training_chance(results)
    if chance is not None:
        loss, candidates, negatives = chance
        detail = f"{candidates // (1 + negatives)} positives" + (
            f" + {candidates - candidates // (1 + negatives)} hard negatives" if negatives else ""
        )
        ax.axhline(loss, color="black", linestyle="--", linewidth=1, label=f"chance: ln {candidates} ({detail})")
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_xlabel("training step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("Training loss (faint: per step; solid: moving average)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, frameon=False)
    return save_figure(fig, path)


def training_chance(results: StudyResults) -> tuple[float, int, int] | None:
    """(chance loss, candidates per query, hard negatives per record) of a training step: each query is scored
    against the batch's positives and hard negatives, so chance is ``ln(batch_size * (1 + negatives))``.

    Hard negatives per record come from a trained cell's held-out chance level where one was measured (its
    batches hold ``min(batch_size, held-out records)`` records), else from ``data.hard_negatives`` (one per record
    when mined or random, none when "none"; records that bring their own are not counted then)."""
    batch = results.config.get("train", {}).get("batch_size")
    if not batch:
        return None
    negatives = 0
    measured = [h for d in results.designs.values() for h in d.heldout.values() if h]
    if measured:
        after = measured[0]["after"]
        size = min(batch, int(after.get("heldout_records") or batch))
        negatives = max(0, round(math.exp(after["chance_loss"]) / size) - 1)
    elif results.config.get("data", {}).get("hard_negatives") in ("random", "mined", "teacher"):
        negatives = 1
    candidates = batch * (1 + negatives)
    return math.log(candidates), candidates, negatives


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


def plot_layer_quality(layers: Mapping[str, Any], path: Path) -> Path | None:
    curves = layer_category_curves(layers) if layers.get("tasks") else {}
    if not curves:
        return None
    plt = _pyplot()
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

    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=130), binary=True)
    plt.close(fig)
    return path
