"""The report: statistics tables from stored results, marks, paper directions, plots and the HTML page.

Every test writes a synthetic study folder by hand (no model is run), so the numbers are known exactly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from poolattn import stats
from poolattn.study.report import fmt, fmt_p, render_report
from poolattn.study.results import PAPER_DELTAS, average_per_sample

DESIGNS = {
    "M1": ("causal", "eos"),
    "M2": ("causal", "trainable"),
    "M4": ("bidirectional", "trainable"),
    "M5": ("bidirectional", "multilayer"),
}
#: category -> number of datasets (6 STS datasets make the Wilcoxon test able to reach p < 0.05)
DATASETS = {"sts": 6, "classification": 2, "retrieval": 3}
#: the designs' true per-sample shift vs M1 per category
SHIFT = {
    "M2": {"sts": 0.05, "classification": -0.02, "retrieval": 0.0},
    "M4": {"sts": -0.03, "classification": -0.04, "retrieval": 0.02},
    "M5": {"sts": 0.08, "classification": 0.01, "retrieval": 0.03},
}
N_SAMPLES = 40


def per_sample_scores(design: str, category: str, dataset: int, seed: int) -> list[float]:
    rng = np.random.default_rng([dataset, len(category)])
    base = rng.uniform(0.2, 0.8, N_SAMPLES)
    noise = np.random.default_rng([dataset, len(category), len(design), seed]).normal(0, 0.01, N_SAMPLES)
    shift = SHIFT.get(design, {}).get(category, 0.0)
    return [float(x) for x in np.clip(base + shift + (noise if design != "M1" else 0), 0, 1)]


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def make_study(folder: Path, *, seeds: tuple[int, ...] = (0,), layers: bool = True, missing: str | None = None) -> Path:
    """A finished study folder in the layout ``poolattn.experiment`` writes."""
    tasks = {f"{c}-{i}": c for c, n in DATASETS.items() for i in range(n)}
    cells = []
    for design, (_attention, pooling) in DESIGNS.items():
        for seed in seeds:
            name = f"{design}-s{seed}"
            cells.append({"name": name, "design": design, "seed": seed, "hash": f"h{name}"})
            if name == missing:
                continue
            for task, category in tasks.items():
                scores = per_sample_scores(design, category, int(task.split("-")[1]), seed)
                write(
                    folder / "cells" / name / "eval" / f"{task}.json",
                    {
                        "task": task,
                        "category": category,
                        "main_score": float(np.mean(scores)),
                        "per_sample": {
                            "statistic": "mean",
                            "ids": [f"x{i}" for i in range(N_SAMPLES)],
                            "score": scores,
                        },
                    },
                )
            loss_log = folder / "cells" / name / "train" / "train_log.jsonl"
            loss_log.parent.mkdir(parents=True, exist_ok=True)
            loss_log.write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in range(1, 21)))
            write(
                folder / "cells" / name / "cell.json",
                {
                    "name": name,
                    "seed": seed,
                    "hash": f"h{name}",
                    "complete": True,
                    "head_parameters": 0 if pooling == "eos" else 1000,
                    "train": {
                        "steps": 20,
                        "wall_seconds": 12.0,
                        "examples_per_second": 25.0,
                        "trainable_parameters": 5000,
                        "peak_memory_bytes": 2**30,
                        "log": "train/train_log.jsonl",
                    },
                    "encode": {"texts": 100, "seconds": 4.0},
                    "eval": {"suite": "offline", "dir": "eval", "tasks": list(tasks)},
                },
            )
    config = {
        "name": "synthetic",
        "description": "A synthetic study.",
        "reference": "M1",
        "seeds": list(seeds),
        "designs": [
            {"name": d, "attention": a, "pooling": p, "options": {}, "train": True, "label": ""}
            for d, (a, p) in DESIGNS.items()
        ],
        "model": {"backbone": "default", "dtype": "float32", "max_length": 64},
        "eval": {"suite": "offline", "profile": "quick", "tasks": None},
        "stats": {"n_resamples": 500, "confidence": 0.95, "alpha": 0.05, "seed": 0},
        "source": "study.toml",
        "overrides": [],
    }
    write(
        folder / "study.json",
        {
            "config": config,
            "reference": "M1",
            "cells": cells,
            "layers": {"enabled": layers, "hash": "L"},
            "backbone": {"num_layers": 4, "hidden_size": 8},
            "study_hash": "S",
            "environment": {"versions": {"python": "3.11", "torch": "2"}, "hardware": {"cpu": "x", "cpu_cores": 2}},
            "runs": [{"started": "t0", "finished": "t1", "wall_seconds": 60.0, "computed": [], "reused": []}],
        },
    )
    if layers:
        write(
            folder / "layers" / "layers.json",
            {
                "hash": "L",
                "attention": "causal",
                "reduction": "last token",
                "num_layers": 4,
                "profile": "quick",
                "tasks": [
                    {"task": "a", "category": "sts", "scores": [0.1, 0.5, 0.4, 0.3]},
                    {"task": "b", "category": "retrieval", "scores": [0.2, 0.3, 0.6, 0.5]},
                ],
                "cka": {"n_texts": 10, "matrix": np.eye(4).tolist()},
            },
        )
    return folder


def hand_category_means(folder: Path, design: str, seeds: tuple[int, ...] = (0,)) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for path in sorted((folder / "cells" / f"{design}-s{seeds[0]}" / "eval").glob("*.json")):
        task = json.loads(path.read_text())
        scores = [json.loads((folder / "cells" / f"{design}-s{s}" / "eval" / path.name).read_text())["main_score"]
                  for s in seeds]  # fmt: skip
        out.setdefault(task["category"], []).append(float(np.mean(scores)))
    return {c: float(np.mean(v)) for c, v in out.items()}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    folder = make_study(tmp_path / "study")
    render_report(folder)
    return folder


def table1_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Table 1")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {r.split("|")[1].strip().strip("*"): [c.strip() for c in r.split("|")[2:-1]] for r in rows[1:]}


def test_table1_matches_a_hand_computation(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    assert results["categories"] == ["sts", "classification", "retrieval"]
    reference = hand_category_means(study, "M1")
    rows = table1_rows((study / "report.md").read_text())
    for design in DESIGNS:
        means = hand_category_means(study, design)
        for k, category in enumerate(results["categories"]):
            entry = results["table1"][design][category]
            assert entry["score"] == pytest.approx(means[category], abs=1e-12)
            if design == "M1":
                assert rows[design][k] == f"**{means[category]:.4f}**"
                continue
            delta = means[category] - reference[category]
            assert entry["delta"] == pytest.approx(delta, abs=1e-12)
            assert rows[design][k] == f"{delta:+.4f}{entry['marks']}"
            own = [json.loads(p.read_text())["main_score"]
                   for p in sorted((study / "cells" / f"{design}-s0" / "eval").glob(f"{category}-*.json"))]  # fmt: skip
            ref = [json.loads(p.read_text())["main_score"]
                   for p in sorted((study / "cells" / "M1-s0" / "eval").glob(f"{category}-*.json"))]  # fmt: skip
            assert entry["wilcoxon"]["pvalue"] == stats.wilcoxon_over_datasets(ref, own).pvalue


def test_marks_follow_the_tests(study: Path) -> None:
    table = json.loads((study / "results.json").read_text())["table1"]
    # STS, 6 datasets, M5 better on every one: exact Wilcoxon p = 2/2^6 < 0.05, and the permutation test agrees
    assert table["M5"]["sts"]["wilcoxon"]["pvalue"] == pytest.approx(2 / 64)
    assert table["M5"]["sts"]["marks"] == "*†"
    # classification, 2 datasets: p < 0.05 is out of reach for Wilcoxon, the within-dataset test still decides
    assert table["M2"]["classification"]["wilcoxon"]["min_attainable_p"] == 0.5
    assert table["M2"]["classification"]["marks"] == "†"
    # no true difference: no mark
    assert table["M2"]["retrieval"]["marks"] == ""
    markdown = (study / "report.md").read_text()
    assert "`*` cannot occur" in markdown.replace("With too few datasets `*` cannot occur", "`*` cannot occur")
    assert "Class. (n = 2), Retr. (n = 3)" in markdown
    # Holm over the 3 designs x 3 categories
    entries = [table[d][c]["within"] for d in ("M2", "M4", "M5") for c in ("sts", "classification", "retrieval")]
    np.testing.assert_allclose([e["pvalue_holm"] for e in entries], stats.holm([e["pvalue"] for e in entries]))


def test_per_dataset_rows(study: Path) -> None:
    rows = json.loads((study / "results.json").read_text())["per_dataset"]
    assert len(rows) == 11 * 4
    row = next(r for r in rows if r["task"] == "sts-3" and r["design"] == "M4")
    own = json.loads((study / "cells" / "M4-s0" / "eval" / "sts-3.json").read_text())
    ref = json.loads((study / "cells" / "M1-s0" / "eval" / "sts-3.json").read_text())
    expected = stats.compare_within_dataset(ref["per_sample"], own["per_sample"], n_resamples=500, seed=0)
    assert row["delta"] == pytest.approx(own["main_score"] - ref["main_score"], abs=1e-12)
    assert (row["ci_low"], row["ci_high"], row["pvalue"]) == (
        expected["ci_low"],
        expected["ci_high"],
        expected["pvalue"],
    )
    tested = [r for r in rows if "pvalue" in r]
    assert len(tested) == 11 * 3
    np.testing.assert_allclose([r["pvalue_holm"] for r in tested], stats.holm([r["pvalue"] for r in tested]))


def test_category_resampling_exact_cases() -> None:
    rng = np.random.default_rng(0)
    a = {"statistic": "mean", "ids": list(range(30)), "score": rng.uniform(size=30).tolist()}
    same = stats.compare_category([(a, a), (a, a)], n_resamples=200, seed=1, confidence=0.95)
    assert same["diff"] == 0 and same["pvalue"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    shifted = {**a, "score": [s + 0.5 for s in a["score"]]}
    rho = {"statistic": "spearman", "ids": list(range(30)), "prediction": a["score"], "gold": list(range(30))}
    rho_b = {**rho, "prediction": list(range(30))}
    out = stats.compare_category([(a, shifted), (rho, rho_b)], n_resamples=200, seed=1, confidence=0.9)
    expected = (0.5 + (1.0 - stats.score_from_samples(rho))) / 2
    assert out["diff"] == pytest.approx(expected)
    assert out["pvalue"] == pytest.approx(1 / 201)  # no sign pattern reaches a constant +0.5 shift
    assert 0 < out["ci_low"] < out["diff"] < out["ci_high"]


def test_seeds_are_averaged(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "seeds", seeds=(0, 1))
    render_report(folder)
    results = json.loads((folder / "results.json").read_text())
    for design in DESIGNS:
        means = hand_category_means(folder, design, (0, 1))
        for category, value in means.items():
            assert results["table1"][design][category]["score"] == pytest.approx(value, abs=1e-12)
            per_seed = [hand_category_means(folder, design, (s,))[category] for s in (0, 1)]
            summary = results["seeds"][design][category]
            assert summary["mean"] == pytest.approx(np.mean(per_seed)) and summary["n"] == 2
    assert "### Seeds" in (folder / "report.md").read_text()
    ps = [{"statistic": "mean", "ids": ["a", "b"], "score": [0.0, 1.0]},
          {"statistic": "mean", "ids": ["b", "a"], "score": [0.5, 0.25]}]  # fmt: skip
    np.testing.assert_allclose(average_per_sample(ps)["score"], [0.125, 0.75])


def test_paper_directions_are_computed(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    rows = results["paper_comparison"]["rows"]
    assert {(r["design"], r["paper_design"]) for r in rows} == {("M2", "M2"), ("M4", "M4"), ("M5", "M5")}
    table = results["table1"]
    for row in rows:
        ours = table[row["design"]][row["category"]]["delta"]
        assert row["agree"] == ((ours > 0) == (PAPER_DELTAS[row["paper_design"]][row["category"]][0] > 0))
    n_agree = sum(r["agree"] for r in rows)
    markdown = (study / "report.md").read_text()
    assert f"agrees with the paper in **{n_agree} of {len(rows)}**" in markdown


def test_html_is_self_contained(study: Path) -> None:
    page = (study / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<style>" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    for name in ("delta_by_category", "training_loss", "layer_quality", "layer_cka"):
        assert (study / "plots" / f"{name}.png").stat().st_size > 2000


def test_layer_section(study: Path) -> None:
    markdown = (study / "report.md").read_text()
    section = markdown.split("## Layer-wise analysis")[1].split("\n## ")[0]
    assert "Best layer by the mean over tasks: **3** (0.5000) vs the last layer 0.4000" in section
    assert "**2 of 2** tasks" in section


def test_missing_cells_and_layers(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "partial", layers=False, missing="M4-s0")
    render_report(folder)
    markdown = (folder / "report.md").read_text()
    assert "**Not finished yet:** M4-s0" in markdown
    assert "M4" not in table1_rows(markdown)
    assert "layer-wise analysis was not run" in markdown


def test_reference_must_be_finished(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "noref", missing="M1-s0")
    with pytest.raises(ValueError, match="reference design 'M1' has no finished cell"):
        render_report(folder)
    with pytest.raises(FileNotFoundError, match="not a study folder"):
        render_report(tmp_path)


def test_number_formatting() -> None:
    assert fmt(0.123456) == "0.1235" and fmt(-0.01, signed=True) == "-0.0100"
    assert fmt(math.nan) == "n/a" and fmt_p(0.0004) == "4.0e-04" and fmt_p(0.0312) == "0.031"
