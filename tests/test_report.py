"""The report: statistics tables from stored results, marks, paper directions, plots and the HTML page.

Every test writes a synthetic study folder by hand (no model is run), so the numbers are known exactly.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from poolattn import stats
from poolattn.config import ConfigError
from poolattn.study import load_study
from poolattn.study.conclusions import PAPER_DELTAS, analyse
from poolattn.study.config import Study, study_from_dict
from poolattn.study.noise import TARGET_DELTAS, variance_budget
from poolattn.study.plots import plot_losses, training_chance
from poolattn.study.ranking import compare_rankings
from poolattn.study.report import fmt, fmt_p, render_report
from poolattn.study.results import average_per_sample, load_results

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


def per_sample_scores(design: str, category: str, dataset: int, seed: int, seed_noise: float = 0.0) -> list[float]:
    """``seed_noise``: the standard deviation of one training run's offset, the same on every sample of a category
    (training noise that the evaluation samples cannot see)."""
    rng = np.random.default_rng([dataset, len(category)])
    base = rng.uniform(0.2, 0.8, N_SAMPLES)
    noise = np.random.default_rng([dataset, len(category), len(design), seed]).normal(0, 0.01, N_SAMPLES)
    shift = SHIFT.get(design, {}).get(category, 0.0)
    run = np.random.default_rng([ord(design[-1]), len(category), seed]).normal(0, seed_noise) if seed_noise else 0.0
    return [float(x) for x in np.clip(base + shift + run + (noise if design != "M1" else 0), 0, 1)]


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


CHANCE = math.log(16)


def heldout_numbers(before: float, after: float) -> dict:
    """A training summary's held-out section: losses before and after, chance of 16 candidates per query."""
    return {
        stage: {"heldout_loss": loss, "heldout_top1": top1, "chance_loss": CHANCE, "chance_top1": 1 / 16,
                "heldout_records": 64.0}
        for stage, loss, top1 in (("before", before, 0.1), ("after", after, 0.6))
    }  # fmt: skip


def make_study(
    folder: Path,
    *,
    seeds: tuple[int, ...] = (0,),
    layers: bool = True,
    missing: str | None = None,
    heldout: dict[str, tuple[float, float]] | None = None,
    twin: bool = False,
    precision: str | None = None,
    seed_noise: float = 0.0,
) -> Path:
    """A finished study folder in the layout ``poolattn.experiment`` writes. ``heldout``: design -> held-out loss
    (before, after) in its training summaries; ``twin``: add M0, the untrained twin of M1; ``seed_noise``: see
    :func:`per_sample_scores`."""
    tasks = {f"{c}-{i}": c for c, n in DATASETS.items() for i in range(n)}
    cells = []
    designs = {**({"M0": ("causal", "eos")} if twin else {}), **DESIGNS}
    for design, (_attention, pooling) in designs.items():
        for seed in seeds if design != "M0" else (None,):
            name = f"{design}-s{seed}" if seed is not None else design
            cells.append({"name": name, "design": design, "seed": seed, "hash": f"h{name}"})
            if name == missing:
                continue
            for task, category in tasks.items():
                index, run = int(task.split("-")[1]), 99 if seed is None else seed
                scores = per_sample_scores(design, category, index, run, seed_noise)
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
            if seed is None:
                write(
                    folder / "cells" / name / "cell.json",
                    {"name": name, "seed": None, "hash": f"h{name}", "complete": True, "head_parameters": 0,
                     "train": None, "eval": {"suite": "offline", "dir": "eval", "tasks": list(tasks)}},
                )  # fmt: skip
                continue
            if heldout and design in heldout:
                write(
                    folder / "cells" / name / "train" / "train_summary.json",
                    {"heldout": heldout_numbers(*heldout[design])},
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
            {"name": d, "attention": a, "pooling": p, "options": {}, "train": d != "M0", "label": ""}
            for d, (a, p) in designs.items()
        ],
        "model": {"backbone": "default", "dtype": "float32", "max_length": 64},
        "data": {"hard_negatives": "none"},
        "train": {"batch_size": 16},
        "eval": {
            "suite": "offline",
            "profile": "quick",
            "tasks": None,
            **({"precision": precision} if precision else {}),
        },
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


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seeds, rendered beside a one-seed study of the same designs (``--compare``)."""
    root = tmp_path_factory.mktemp("seeded")
    single = make_study(root / "single")
    folder = make_study(root / "seeded", seeds=(0, 1, 2))
    render_report(folder, compare=single)
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


@pytest.mark.parametrize("config", [None, "quality.toml", "paper.toml"])
def test_study_json_reads_back_into_the_typed_study(config: str | None) -> None:
    """The config as ``study.json`` stores it comes back as the same typed Study (the real task registry)."""
    root = Path(__file__).resolve().parents[1]
    study = load_study(None if config is None else root / "configs" / config)
    stored = json.loads(json.dumps(study.to_dict()))  # as study.json holds it
    again = study_from_dict(stored)
    assert again.to_dict() == study.to_dict()
    assert [f.name for f in fields(Study)] == [f.name for f in fields(again)]
    for name in ("designs", "model", "data", "recipe", "output", "lora", "eval", "layers", "stats", "adapt"):
        assert getattr(again, name) == getattr(study, name), name
    assert again.adapt_designs == study.adapt_designs and again.raw == stored
    with pytest.raises(ConfigError, match=r"stats\.alpha"):
        study_from_dict({**stored, "stats": {**stored["stats"], "alpha": "small"}})


# ------------------------------------------------------------------------------- what the study can conclude
#: held-out loss (before, after) per design; chance is ln 16 = 2.773, 0.8 x chance = 2.218
HELDOUT = {"M1": (2.80, 1.50), "M2": (2.80, 2.70), "M4": (1.60, 1.55), "M5": (2.90, 1.20)}


@pytest.fixture
def judged(tmp_path: Path) -> Path:
    folder = make_study(tmp_path / "judged", heldout=HELDOUT, twin=True, precision="bf16")
    render_report(folder)
    return folder


def test_learning_flags(judged: Path) -> None:
    learning = json.loads((judged / "results.json").read_text())["learning"]
    assert {d: v["status"] for d, v in learning.items()} == {
        "M0": "untrained",
        "M1": "learned",
        "M2": "did not learn",  # 2.70 > 0.8 x chance
        "M4": "did not learn",  # below 0.8 x chance, but only 3% below where it started
        "M5": "learned",
    }
    assert [d for d, v in learning.items() if v["flagged"]] == ["M2", "M4"]
    assert learning["M2"]["seeds"]["0"]["reasons"] == [
        "held-out loss 2.700 > 0.8 × chance 2.773",
        "held-out loss fell only 3.6% from 2.800 before training",
    ]
    assert learning["M4"]["seeds"]["0"]["reasons"] == ["held-out loss fell only 3.1% from 1.600 before training"]
    assert learning["M5"]["seeds"]["0"]["ratio"] == pytest.approx(1.20 / CHANCE)
    markdown = (judged / "report.md").read_text()
    rows = table1_rows(markdown)
    assert set(rows) == {"M0", "M1", "M2 (did not learn)", "M4 (did not learn)", "M5"}
    assert all(cell.startswith("(") and cell.endswith(")") for cell in rows["M2 (did not learn)"])
    assert not rows["M5"][0].startswith("(")
    assert "(did not learn): M2, M4 — see" in markdown
    training = markdown.split("## Did training learn?")[1].split("\n## ")[0]
    assert "| M2 | **did not learn** | 2.800 → 2.700 | 2.773 | 0.97 |" in training
    assert "| M5 | learned | 2.900 → 1.200 | 2.773 | 0.43 |" in training


@pytest.mark.parametrize("recorded", [True, False])
def test_a_failed_adaptation_flags_the_designs_it_started(tmp_path: Path, recorded: bool) -> None:
    """M5 learned in training, but its seed's MNTP adaptation ended above the causal model's masked-token loss on
    the same held-out masks: flagged, with the reason. ``recorded``: the cell keeps the causal numbers; else (a
    cell written before it did) they come from the adaptation's summary in the study folder."""
    folder = make_study(tmp_path / "adapted", heldout=HELDOUT)
    causal = {"loss": 6.734, "accuracy": 0.124}
    start = {"from": "adapted", "folder": "adapt/s0-abc", "mntp_steps": 60, "simcse_steps": 0,
             "heldout_before": {"loss": 9.212, "accuracy": 0.066}, "heldout_after": {"loss": 7.480, "accuracy": 0.05},
             **({"heldout_causal": causal} if recorded else {})}  # fmt: skip
    write(folder / "adapt" / "s0-abc" / "adapt_summary.json", {"heldout": {"causal_base": causal}})
    record_path = folder / "cells" / "M5-s0" / "cell.json"
    write(record_path, {**json.loads(record_path.read_text()), "start": start})
    render_report(folder)
    learning = json.loads((folder / "results.json").read_text())["learning"]["M5"]
    assert learning["status"] == "did not learn" and learning["flagged"]
    assert learning["seeds"]["0"]["reasons"] == [
        "its MNTP adaptation (`adapt/s0-abc`) ended at a held-out masked-token loss 7.480, not below the causal "
        "model's 6.734 on the same masks"
    ]
    assert "| M5 | **did not learn** | 2.900 → 1.200 |" in (folder / "report.md").read_text()
    # an adaptation that beat the causal model flags nothing
    write(record_path, {**json.loads(record_path.read_text()), "start": {**start, "heldout_causal": {"loss": 7.5}}})
    render_report(folder)
    assert json.loads((folder / "results.json").read_text())["learning"]["M5"]["status"] == "learned"


def test_not_measured_in_an_older_folder(study: Path) -> None:
    learning = json.loads((study / "results.json").read_text())["learning"]
    assert {v["status"] for v in learning.values()} == {"not measured"}
    assert not any(v["flagged"] for v in learning.values())
    markdown = (study / "report.md").read_text()
    assert "not measured: the training summary holds no held-out numbers" in markdown
    assert "- Evaluation precision: not recorded" in markdown


def test_trained_against_its_untrained_twin(judged: Path) -> None:
    twin = json.loads((judged / "results.json").read_text())["learning"]["M1"]["twin"]
    assert twin["design"] == "M0"
    twin = twin["groups"]
    tasks = sorted(p.stem for p in (judged / "cells" / "M0" / "eval").glob("*.json"))
    score = {
        d: {t: json.loads((judged / "cells" / c / "eval" / f"{t}.json").read_text()) for t in tasks}
        for d, c in (("M0", "M0"), ("M1", "M1-s0"))
    }
    expected = np.mean([score["M1"][t]["main_score"] for t in tasks]) - np.mean(
        [score["M0"][t]["main_score"] for t in tasks]
    )
    assert twin["all"]["delta"] == pytest.approx(expected, abs=1e-12)
    ordered = sorted(tasks, key=lambda t: (["sts", "classification", "retrieval"].index(t.split("-")[0]), t))
    pairs = [(score["M0"][t]["per_sample"], score["M1"][t]["per_sample"]) for t in ordered]
    assert twin["all"]["pvalue"] == stats.compare_category(pairs, n_resamples=500, seed=0)["pvalue"]
    assert (
        "M1 against its untrained twin M0 (same attention, pooling and options) on the suite"
        in (judged / "report.md").read_text()
    )
    for name in ("M2", "M4", "M5"):  # no untrained design shares their pooling
        assert json.loads((judged / "results.json").read_text())["learning"][name]["twin"] is None


def test_paper_directions_leave_out_designs_that_did_not_learn(judged: Path) -> None:
    results = json.loads((judged / "results.json").read_text())
    comparison = results["paper_comparison"]
    assert {r["design"] for r in comparison["rows"]} == {"M2", "M4", "M5"}  # M0 is untrained: not the paper's
    assert {r["design"] for r in comparison["rows"] if not r["design_effect"]} == {"M2", "M4"}
    assert comparison["not_counted"] == ["M2", "M4"]
    tested = [r for r in comparison["rows"] if r["design"] == "M5"]
    k = sum(r["agree"] for r in tested)
    assert comparison["sign_test"]["k"] == k and comparison["sign_test"]["n"] == len(tested) == 3
    assert comparison["sign_test"]["pvalue"] == scipy.stats.binomtest(k, 3, 0.5, alternative="greater").pvalue
    for claim in comparison["claims"]:
        assert "M2" not in claim["designs"] and "M4" not in claim["designs"]
        if "bidirectional" in claim["claim"]:
            assert claim["excluded"] == ["M4"]
    markdown = (judged / "report.md").read_text()
    assert f"agrees with the paper in **{k} of 3** counted" in markdown
    assert "not a design effect (did not learn)" in markdown


def test_claims_hold_only_where_our_test_is_significant(seeded: Path) -> None:
    results = json.loads((seeded / "results.json").read_text())
    table = results["table1"]
    words = {"help STS": "sts", "help retrieval": "retrieval", "do not help classification": "classification"}
    claims = {c["claim"].split(") ")[-1]: c for c in results["paper_comparison"]["claims"] if c["kind"] == "direction"}
    assert set(claims) == set(words)  # no clustering in this study
    # M5 +0.08 and M4 -0.03 on STS, both significant: the claim holds for one and is contradicted by the other
    assert {n: d["verdict"] for n, d in claims["help STS"]["designs"].items()} == {"M4": "contradicted", "M5": "holds"}
    assert claims["help STS"]["verdict"] == "mixed"
    for text, category in words.items():
        for name, design in claims[text]["designs"].items():
            sign = 1 if text.startswith("help") else -1
            entry = table[name][category]
            assert entry["seeds_measured"] and design["significant"] == entry["significant"]
            assert (
                entry["significant"] == (entry["within"]["pvalue_holm"] < 0.05)
                and entry["marks"].endswith("†") == (entry["significant"])
            )
            delta, significant = entry["delta"], entry["significant"]
            expected = "not resolved" if not significant else "holds" if delta * sign > 0 else "contradicted"
            assert design["verdict"] == expected
    best = [c for c in results["paper_comparison"]["claims"] if c["kind"] == "best"]
    assert [(c["best"], c["runner_up"], c["verdict"]) for c in best] == [("M5", "M2", "holds"), ("M5", "M4", "holds")]
    sign_test = results["paper_comparison"]["sign_test"]
    k, n = sign_test["k"], sign_test["n"]
    assert n == 9 and sign_test["pvalue"] == pytest.approx(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def test_power_line(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    entries = [results["table1"][d][c] for d in ("M2", "M4", "M5") for c in results["categories"]]
    level = 0.05 / len(entries)
    for entry in entries:
        within = entry["within"]
        assert 39 - 1e-9 <= within["df"] <= entry["n_datasets"] * 39 + 1e-9  # Welch: 40 samples per dataset
        assert within["n_seeds"] == 1 and within["se_total"] == within["se"]
        t = scipy.stats.t(within["df"])
        assert within["mde"] == pytest.approx((t.ppf(1 - level / 2) + t.ppf(0.8)) * within["se"], rel=1e-12)
    markdown = (study / "report.md").read_text()
    for category, label in (("sts", "STS"), ("classification", "Class."), ("retrieval", "Retr.")):
        mdes = [results["table1"][d][category]["within"]["mde"] for d in ("M2", "M4", "M5")]
        assert results["power"][category]["median"] == pytest.approx(np.median(mdes))
        assert f"{label} {np.median(mdes):.3f}" in markdown.split("- Power:")[1].split("\n")[0]
    assert "at 0.05/9 = 0.0056" in markdown
    assert "One training seed (0): the tests see the evaluation samples' noise only" in markdown


def test_seeds_enter_the_category_test(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "seeds", seeds=(0, 1, 2))
    render_report(folder)
    results = json.loads((folder / "results.json").read_text())
    names = sorted(p.stem for p in (folder / "cells" / "M1-s0" / "eval").glob("sts-*.json"))

    def runs(design: str, seed: int) -> dict:
        return {
            t: json.loads((folder / "cells" / f"{design}-s{seed}" / "eval" / f"{t}.json").read_text()) for t in names
        }

    deltas = [
        np.mean([runs("M5", s)[t]["main_score"] - runs("M1", s)[t]["main_score"] for t in names]) for s in range(3)
    ]
    pairs = [
        tuple(average_per_sample([runs(d, s)[t]["per_sample"] for s in range(3)]) for d in ("M1", "M5")) for t in names
    ]
    expected = stats.compare_category(pairs, n_resamples=500, seed=0, seed_deltas=deltas)
    within = results["table1"]["M5"]["sts"]["within"]
    assert within["n_seeds"] == 3 and within["se_seed"] == pytest.approx(np.std(deltas, ddof=1) / math.sqrt(3))
    assert within["pvalue"] == pytest.approx(expected["pvalue"], rel=1e-9)
    assert within["ci_low"] == pytest.approx(expected["ci_low"], rel=1e-9)
    without = stats.compare_category(pairs, n_resamples=500, seed=0)  # evaluation noise only
    assert within["ci_high"] - within["ci_low"] > without["ci_high"] - without["ci_low"]
    assert within["se_total"] == pytest.approx(math.hypot(without["se"], within["se_seed"]))
    assert "The `†` test adds the spread of each Δ over the seeds" in (folder / "report.md").read_text()


def test_table1_as_csv_and_latex(judged: Path) -> None:
    results = json.loads((judged / "results.json").read_text())
    with open(judged / "results" / "table1.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 3
    for row in rows:
        entry = results["table1"][row["design"]][row["category"]]
        assert float(row["score"]) == entry["score"]  # full precision
        assert row["learning"] == results["learning"][row["design"]]["status"]
        if row["design"] == "M1":
            assert row["delta"] == row["permutation_p"] == row["mde"] == ""
        else:
            assert float(row["delta"]) == entry["delta"] and row["marks"] == entry["marks"]
            assert float(row["permutation_p_holm"]) == entry["within"]["pvalue_holm"]
            assert float(row["mde"]) == entry["within"]["mde"]
    tex = (judged / "results" / "table1.tex").read_text()
    assert tex.count(r"\\") == 1 + 5 and r"\toprule" in tex and tex.rstrip().endswith(r"\end{tabular}")
    sts = results["table1"]["M2"]["sts"]
    assert rf"M2$^{{\circ}}$ & (${sts['delta']:+.4f}^{{*\dagger}}$)" in tex
    assert rf"\textbf{{M1}} & \textbf{{{results['table1']['M1']['sts']['score']:.4f}}}" in tex
    assert not list((judged / "results").glob(".*.tmp"))  # written through a temporary file, none left


def test_environment_lists_the_evaluation_precision(judged: Path) -> None:
    assert "- Evaluation precision: bf16 (bfloat16 autocast)" in (judged / "report.md").read_text()


def test_loss_plot_shows_chance(judged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = load_results(judged)
    assert training_chance(results) == (math.log(16), 16, 0)  # held-out chance ln 16 with batches of 16
    summary = judged / "cells" / "M1-s0" / "train" / "train_summary.json"
    payload = json.loads(summary.read_text())
    payload["heldout"]["after"]["chance_loss"] = math.log(32)  # a hard negative per record
    summary.write_text(json.dumps(payload))
    for design in ("M2", "M4", "M5"):
        (judged / "cells" / f"{design}-s0" / "train" / "train_summary.json").unlink()
    results = load_results(judged)
    assert training_chance(results) == (math.log(32), 32, 1)
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "axhline",
        lambda ax, y=0, *a, **k: drawn.append((y, k.get("label"))) or original(ax, y, *a, **k),
    )
    plot_losses(results, judged / "plots" / "loss.png")
    assert drawn == [(math.log(32), "chance: ln 32 (16 positives + 16 hard negatives)")]
    older = make_study(judged.parent / "older")  # no held-out numbers: batch size and data.hard_negatives
    assert training_chance(load_results(older)) == (math.log(16), 16, 0)


def test_a_reference_that_did_not_learn_leaves_no_design_effect(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "flat", heldout={**HELDOUT, "M1": (2.80, 2.79)})
    render_report(folder)
    results = json.loads((folder / "results.json").read_text())
    comparison = results["paper_comparison"]
    assert not comparison["reference_learned"] and comparison["not_counted"] == ["M2", "M4", "M5"]
    assert comparison["sign_test"]["n"] == 0 and math.isnan(comparison["sign_test"]["pvalue"])
    assert {c["verdict"] for c in comparison["claims"]} == {"not resolved"}
    markdown = (folder / "report.md").read_text()
    assert "the reference M1 is among them, so no Δ of this table is one" in markdown
    assert (
        "No comparison is counted" in markdown and "Not counted (the reference did not learn): M2, M4, M5" in markdown
    )


def test_the_papers_exact_head_is_counted_and_a_variant_is_shown(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "variants")
    shutil.copytree(folder / "cells" / "M5-s0", folder / "cells" / "M5+-s0")
    record = json.loads((folder / "cells" / "M5+-s0" / "cell.json").read_text())
    (folder / "cells" / "M5+-s0" / "cell.json").write_text(json.dumps({**record, "name": "M5+-s0", "hash": "hM5+"}))
    study = json.loads((folder / "study.json").read_text())
    designs = study["config"]["designs"]
    m5 = next(d for d in designs if d["name"] == "M5")
    m5["options"] = {"layer_pooling": "mean", "layer_norm": "none"}  # the paper's M5
    designs.insert(designs.index(m5), {**m5, "name": "M5+", "options": {}})  # listed first, still not counted
    study["cells"].append({"name": "M5+-s0", "design": "M5+", "seed": 0, "hash": "hM5+"})
    (folder / "study.json").write_text(json.dumps(study))
    render_report(folder)
    comparison = json.loads((folder / "results.json").read_text())["paper_comparison"]
    counted = {r["design"] for r in comparison["rows"] if r["counted"]}
    assert counted == {"M2", "M4", "M5"} and comparison["sign_test"]["n"] == 9
    assert {(r["design"], r["exact_head"]) for r in comparison["rows"] if r["paper_design"] == "M5"} == {
        ("M5", True),
        ("M5+", False),
    }
    assert "| M5+ | M5 | STS |" in (folder / "report.md").read_text()
    assert "variant, not counted" in (folder / "report.md").read_text()


# ---------------------------------------------------------------------------------------- how noisy the study is
def test_one_seed_leaves_every_design_claim_unresolved(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    entries = [results["table1"][d][c] for d in ("M2", "M4", "M5") for c in results["categories"]]
    assert not any(e["seeds_measured"] for e in entries) and any(e["significant"] for e in entries)
    claims = results["paper_comparison"]["claims"]
    assert {c["verdict"] for c in claims} == {"not resolved"} and not any(c["resolved"] for c in claims)
    sts = next(c for c in claims if c["kind"] == "direction" and c["category"] == "sts")
    assert sts["designs"]["M5"]["significant"] and sts["designs"]["M5"]["verdict"] == "not resolved"
    markdown = (study / "report.md").read_text()
    assert "With one training seed every `†` is a difference between these two trained models" in markdown
    assert "every design claim below is **not resolved** until the study runs several seeds" in markdown
    assert "M5 +0.0792: not resolved (significant between these two trained models, one seed)" in markdown
    assert "Does the ranking hold?" not in markdown  # one seed, nothing compared
    budget = results["variance_budget"]["categories"][0]["entries"][0]
    assert budget["var_seed"] is None and budget["seed_share"] is None
    assert all(r["seeds"] is None and r["lower_bound"] for r in budget["requirements"])


def test_variance_budget_by_hand(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "noisy", seeds=(0, 1, 2), seed_noise=0.02)
    findings = analyse(folder)
    budget = variance_budget(findings.results, findings.tables)
    assert budget.alpha == 0.05 and [g.category for g in budget.categories] == ["sts", "classification", "retrieval"]
    for group in budget.categories:
        names = [t for t, c in findings.tables.tasks.items() if c == group.category]
        assert [e.design for e in group.entries] == ["M2", "M4", "M5"]
        for entry in group.entries:
            within = findings.tables.table1[entry.design][group.category].within
            assert entry.var_eval == within["se"] ** 2 and entry.n_seeds == 3 and entry.samples_per_dataset == 40
            deltas = [
                np.mean([findings.results.designs[entry.design].seed_tasks[s][t]["main_score"] for t in names])
                - np.mean([findings.results.designs["M1"].seed_tasks[s][t]["main_score"] for t in names])
                for s in (0, 1, 2)
            ]
            assert entry.var_seed == pytest.approx(np.var(deltas, ddof=1), rel=1e-9)
            share = entry.var_seed / 3 / (entry.var_eval + entry.var_seed / 3)
            assert entry.seed_share == pytest.approx(share) and share > 0.5  # training noise dominates here
            for need, delta in zip(entry.requirements, TARGET_DELTAS, strict=True):
                assert need.seeds == stats.seeds_to_detect(delta, entry.var_eval, entry.var_seed, max_seeds=1000)
                factor = stats.samples_to_detect(delta, entry.var_eval, entry.var_seed, 3)
                assert need.sample_factor == factor and not need.lower_bound
                assert need.samples == (None if factor is None else max(2, math.ceil(factor * 40)))


def test_seed_wins_and_the_budget_in_the_report(seeded: Path) -> None:
    results = json.loads((seeded / "results.json").read_text())
    wins = results["ranking"]["seed_wins"]
    for design in ("M2", "M4", "M5"):
        for category in results["categories"]:
            per_seed = [
                hand_category_means(seeded, design, (s,))[category] > hand_category_means(seeded, "M1", (s,))[category]
                for s in (0, 1, 2)
            ]
            cell = wins[design][category]
            assert (cell["wins"], cell["n"]) == (sum(per_seed), 3)
            assert cell["pvalue"] == scipy.stats.binomtest(sum(per_seed), 3, 0.5).pvalue
    assert wins["M5"]["sts"]["wins"] == 3 and wins["M4"]["sts"]["wins"] == 0
    markdown = (seeded / "report.md").read_text()
    section = markdown.split("## Does the ranking hold?")[1].split("\n## ")[0]
    assert "| M5 | 3/3 | 3/3 | 3/3 |" in section
    assert "With 3 seeds even 3/3 is not significant by itself" in section
    budget = markdown.split("## Where the uncertainty comes from")[1].split("\n## ")[0]
    assert "| category | Δ tested | SE(Δ) samples | SD(Δ) per seed | seeds' share |" in budget
    assert budget.count("\n| STS | 3 |") == 1 and "The data sample is not varied" in budget


def test_the_budget_says_what_the_seeds_vary() -> None:
    from poolattn.study.config import load_study
    from poolattn.study.noise import data_sample

    assert data_sample(load_study(None, [])).startswith("not varied apart from the training seed")
    fixed = data_sample(load_study(None, ["data.seed=7"]))
    assert "fixed (data seed 7" in fixed and "own order" in fixed
    both = data_sample(load_study(None, ["data.seed=7", "train.order_seed=3"]))
    assert "order seed 3" in both and "initial weights alone" in both


def test_rankings_side_by_side(seeded: Path) -> None:
    results = json.loads((seeded / "results.json").read_text())
    comparison = results["ranking"]["comparison"]
    assert comparison["second"].endswith("single")
    first = analyse(seeded)
    second = analyse(seeded.parent / "single")
    for row in comparison["categories"]:
        a = [first.tables.table1[d][row["category"]].score for d in first.tables.designs]
        b = [second.tables.table1[d][row["category"]].score for d in first.tables.designs]
        assert row["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(a, b).statistic)
        assert row["first"] == sorted(
            first.tables.designs, key=lambda d, c=row["category"]: -results["table1"][d][c]["score"]
        )
    resolved = {(c["design"], c["category"]) for c in comparison["resolved"]}
    expected = {
        (d, c) for d in ("M2", "M4", "M5") for c in results["categories"] if results["table1"][d][c]["significant"]
    }
    assert resolved == expected and ("M5", "sts") in resolved
    assert all(c["agree"] and not c["other_resolved"] for c in comparison["resolved"])  # one seed resolves nothing
    assert comparison["claims"] and all(c["other_verdict"] == "not resolved" for c in comparison["claims"])
    assert comparison["agree"] is True
    markdown = (seeded / "report.md").read_text()
    assert f"### Beside `{comparison['second']}`" in markdown
    assert "On what this study resolves, the other study agrees with it:" in markdown
    assert "| STS | M5 > M2 > M1 > M4 | M5 > M2 > M1 > M4 | 1.00 (p 0.083) | yes |" in markdown
    # the other way round: the one-seed study resolves nothing, so there is nothing to confirm
    assert compare_rankings(second, first).agree is None


def test_a_reversed_ranking_contradicts(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SHIFT, "M5", {"sts": -0.08, "classification": 0.01, "retrieval": 0.03})
    flipped = analyse(make_study(tmp_path / "flipped"))
    comparison = compare_rankings(analyse(seeded), flipped)
    differ = [(c.design, c.category) for c in comparison.resolved if not c.agree]
    assert differ == [("M5", "sts")] and comparison.agree is False
    # one seed resolves nothing, so its Δ of the other sign does not confirm; three seeds resolve it: contradicts
    assert not comparison.contradicted
    resolved_flip = compare_rankings(analyse(seeded), analyse(make_study(tmp_path / "flipped3", seeds=(0, 1, 2))))
    assert [(c.design, c.category) for c in resolved_flip.resolved if not c.agree and c.other_resolved] == [
        ("M5", "sts")
    ]
    assert resolved_flip.contradicted
    sts = next(r for r in comparison.categories if r.category == "sts")
    assert sts.first[0] == "M5" and sts.second[-1] == "M5" and not sts.same_best


def test_an_undefined_score_is_left_out_with_its_reason(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "nan")
    result = folder / "cells" / "M4-s0" / "eval" / "sts-0.json"
    record = json.loads(result.read_text())
    reason = "cosine_spearman is undefined: all 8 texts got the same embedding"
    write(result, {**record, "main_score": math.nan, "main_metric": "cosine_spearman", "undefined": reason})
    layers = json.loads((folder / "layers" / "layers.json").read_text())
    layers["tasks"].append({"task": "c", "category": "sts", "scores": [0.1, math.nan, 0.2, 0.3], "undefined": "tied"})
    write(folder / "layers" / "layers.json", layers)
    render_report(folder)
    markdown = (folder / "report.md").read_text()
    assert "**Undefined scores:** 1 dataset(s) left out" in markdown
    assert f"- sts-0 (STS; M4): {reason}" in markdown
    tables = json.loads((folder / "results.json").read_text())
    assert "sts-0" not in tables["tasks"] and tables["undefined"]["sts-0"]["designs"] == ["M4"]
    assert not any(row["task"] == "sts-0" for row in tables["per_dataset"])
    section = markdown.split("## Layer-wise analysis")[1].split("\n## ")[0]
    assert "**2 of 2** tasks" in section and "c at layer(s) 2 (tied)" in section


def test_report_fails_at_once_while_a_run_holds_the_folder(study: Path) -> None:
    import os

    from typer.testing import CliRunner

    from poolattn.cli import app
    from poolattn.outputs import locked

    report = study / "report.md"
    before = report.stat().st_mtime_ns
    with locked(study):  # as a running `poolattn experiment` holds it
        held = CliRunner().invoke(app, ["report", str(study)])
    lines = held.output.strip().splitlines()
    assert held.exit_code == 2 and len(lines) == 1, held.output
    assert f"error: {study} is in use by another poolattn run (pid {os.getpid()})" in lines[0]
    assert report.stat().st_mtime_ns == before
    free = CliRunner().invoke(app, ["report", str(study)])
    assert free.exit_code == 0 and report.stat().st_mtime_ns > before, free.output
    missing = CliRunner().invoke(app, ["report", str(study.parent / "none")])
    assert missing.exit_code == 2 and not (study.parent / "none").exists()


def test_the_papers_significant_findings_are_one_holm_family(seeded: Path) -> None:
    results = json.loads((seeded / "results.json").read_text())
    table, rows = results["table1"], results["paper_comparison"]["rows"]
    family = [r for r in rows if r["paper_significant"] and r["counted"] and r["design_effect"]]
    assert family and all(r["family_pvalue"] is not None for r in family)
    assert all(r["family_pvalue"] is None for r in rows if r not in family)
    raw = [table[r["design"]][r["category"]]["within"]["pvalue"] for r in family]
    m, order = len(raw), sorted(range(len(raw)), key=lambda i: raw[i])
    holm, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):  # Holm by hand: running max of (m - rank) * p, capped at 1
        running = max(running, min(1.0, (m - rank) * raw[i]))
        holm[i] = running
    for row, adjusted in zip(family, holm, strict=True):
        assert row["family_pvalue"] == pytest.approx(adjusted)
        sign = 1 if row["paper_delta"] > 0 else -1
        expected = "not resolved" if adjusted >= 0.05 else "holds" if row["delta"] * sign > 0 else "contradicted"
        assert row["verdict"] == expected and math.isfinite(row["family_mde"]) and row["family_mde"] > 0
    resolved = sum(r["verdict"] in ("holds", "contradicted") for r in family)
    assert resolved >= 1  # the fixture's M5 +0.08 on STS is far above its noise
    markdown = (seeded / "report.md").read_text()
    assert f"tested as one family:** {resolved} of {len(family)} resolved" in markdown
