"""The study runner: an end-to-end tiny study, its report, caching and resumption."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel
from poolattn.study import run_experiment

pytest_plugins = ["study_fixtures"]

# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_study(fake_suite, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny study, run once for the module: (its config, its folder)."""
    from study_fixtures import make_study_file  # after pytest loaded it as a plugin, so its asserts are rewritten

    folder = tmp_path_factory.mktemp("tiny-study")
    study_file = make_study_file(folder, tiny_llama)
    out = folder / "run"
    report = run_experiment(study_file, out, progress=False)
    assert report == out / "report.md"
    return study_file, out


@pytest.fixture
def finished_study(tiny_study: tuple[Path, Path]) -> Path:
    return tiny_study[1]


@pytest.fixture
def study_copy(tiny_study: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished study, for tests that change it."""
    out = tmp_path / "run"
    shutil.copytree(tiny_study[1], out)
    return tiny_study[0], out


def test_tiny_study_end_to_end(finished_study: Path) -> None:
    out = finished_study
    for name in ("study.json", "report.md", "report.html", "results.json", "layers/layers.json"):
        assert (out / name).is_file(), name
    for cell in ("M0", "M1-s0", "M2-s0"):
        record = json.loads((out / "cells" / cell / "cell.json").read_text())
        assert record["complete"] and len(record["eval"]["tasks"]) == 5
    assert (out / "cells" / "M1-s0" / "train" / "model" / "poolattn.json").is_file()
    assert not (out / "cells" / "M0" / "train").exists()
    study = json.loads((out / "study.json").read_text())
    assert study["environment"]["versions"]["torch"] and study["runs"][-1]["computed"] == ["M0", "M1-s0", "M2-s0"]
    layers = json.loads((out / "layers" / "layers.json").read_text())
    assert layers["num_layers"] == 3 and [t["task"] for t in layers["tasks"]] == [
        "FakeSTS",
        "FakePairs",
        "FakeRetrieval",
    ]
    assert all(len(t["scores"]) == 3 for t in layers["tasks"])
    cka = np.array(layers["cka"]["matrix"])
    assert cka.shape == (3, 3) and np.allclose(np.diag(cka), 1.0, atol=1e-5)
    # M0 was served from the layer pass: its scores equal the last layer's
    for task in layers["tasks"]:
        m0 = json.loads((out / "cells" / "M0" / "eval" / f"{task['task']}.json").read_text())
        assert m0["main_score"] == pytest.approx(task["scores"][-1], abs=1e-12)
    for plot in ("delta_by_category", "training_loss", "layer_quality", "layer_cka"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="plots/' not in html
    markdown = (out / "report.md").read_text()
    for heading in ("Table 1", "Per dataset", "Layer-wise analysis", "Cost next to quality", "Environment"):
        assert heading in markdown
    assert "`*` Wilcoxon" in markdown and "`†` paired permutation" in markdown


def hand_table1(out: Path) -> dict[str, dict[str, float]]:
    """Mean main score per category per design, straight from the evaluation JSONs."""
    table: dict[str, dict[str, list[float]]] = {}
    for cell in ("M0", "M1-s0", "M2-s0"):
        for path in sorted((out / "cells" / cell / "eval").glob("*.json")):
            result = json.loads(path.read_text())
            table.setdefault(cell.split("-")[0], {}).setdefault(result["category"], []).append(result["main_score"])
    return {d: {c: float(np.mean(v)) for c, v in cats.items()} for d, cats in table.items()}


def test_table1_equals_a_hand_computation(finished_study: Path) -> None:
    expected = hand_table1(finished_study)
    results = json.loads((finished_study / "results.json").read_text())
    table = results["table1"]
    assert results["categories"] == ["sts", "classification", "retrieval", "clustering", "pair_classification"]
    markdown = (finished_study / "report.md").read_text()
    section = markdown.split("## Table 1")[1].split("##")[0]
    rows = {line.split("|")[1].strip().strip("*"): line for line in section.splitlines() if line.startswith("| ")}
    for design in ("M0", "M1", "M2"):
        for category, score in expected[design].items():
            assert table[design][category]["score"] == pytest.approx(score, abs=1e-12)
            if design == "M1":
                assert f"**{score:.4f}**" in rows["M1"]
            else:
                delta = score - expected["M1"][category]
                assert table[design][category]["delta"] == pytest.approx(delta, abs=1e-12)
                assert f"{delta:+.4f}" in rows[design]
    # Holm over all 2 x 5 table comparisons
    entries = [table[d][c]["within"] for d in ("M0", "M2") for c in results["categories"]]
    raw = np.array([e["pvalue"] for e in entries])
    order = np.argsort(raw)
    holm = np.minimum(1, np.maximum.accumulate((len(raw) - np.arange(len(raw))) * raw[order]))
    np.testing.assert_allclose([entries[i]["pvalue_holm"] for i in order], holm)


def test_phase_times_add_up_and_reach_the_report(finished_study: Path) -> None:
    run = json.loads((finished_study / "study.json").read_text())["runs"][-1]
    phases = run["phases"]
    assert {"mining", "training", "evaluation", "layer pass"} <= set(phases)
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= run["wall_seconds"] + 0.5  # each second counted once (rounding aside)
    markdown = (finished_study / "report.md").read_text()
    assert "Where the time went" in markdown and "| layer pass |" in markdown


def test_phase_clock_counts_nested_phases_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from poolattn.study import progress

    ticks = iter(range(100))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(ticks)))
    clock = progress.PhaseClock()
    # the clock reads 0 when made, 1 as training starts, 2 as mining starts (training has run 1 s), 3 as mining
    # ends (1 s) and 4 as training ends (1 s more since it resumed at 3): training 2 s, mining 1 s
    with clock("training"), clock("mining"):
        pass
    assert clock.seconds == {"training": 2.0, "mining": 1.0}
    assert list(clock.snapshot()) == ["mining", "training"]


def test_the_eta_after_an_untrained_cell_scales_the_measured_prior(tmp_path: Path) -> None:
    """An untrained cell only evaluates: its time alone must not stand for a trained cell's (which also trains)."""
    from poolattn.study import progress
    from poolattn.study.cells import Cell
    from poolattn.study.config import Design
    from poolattn.study.estimate import Estimate

    base, trained = Design("M0", "causal", "eos", train=False), Design("M1", "causal", "eos")
    cells = [Cell(base, None, "a"), Cell(trained, 0, "b"), Cell(trained, 1, "c")]
    cost = Estimate(1.0, 100.0, 32, {"training": 180.0, "adaptation": 20.0, "evaluation": 30.0})
    assert cost.cell_seconds(cells) == {True: 110.0, False: 10.0}
    grid = progress.GridProgress(cells, tmp_path / "events.jsonl", enabled=False)
    assert grid.eta() == "ETA after the first cell"
    grid.expect(cost.cell_seconds(cells))
    assert grid.eta() == "ETA 3:50"  # 10 + 2 x 110 s
    grid.done(cells[0], 20.0, reused=False)  # evaluation ran twice as slow as measured: so will training
    assert grid.eta() == "ETA 7:20"  # 2 x 220 s
    grid.done(cells[1], 100.0, reused=False)  # a trained cell's own time wins once there is one
    assert grid.eta() == "ETA 1:40"


def test_rerun_reuses_everything(study_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import poolattn.training

    study_file, finished_study = study_copy
    stamps = {p: p.stat().st_mtime_ns for p in (finished_study / "cells").rglob("*.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    def no_encoding(*args, **kwargs):
        raise AssertionError("a finished cell was encoded again")

    monkeypatch.setattr(poolattn.training, "train", no_training)
    monkeypatch.setattr(EmbeddingModel, "encode", no_encoding)
    monkeypatch.setattr(EmbeddingModel, "encode_layers", no_encoding)
    run_experiment(study_file, finished_study, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (finished_study / "cells").rglob("*.json")} == stamps
    events = [json.loads(line) for line in (finished_study / "events.jsonl").read_text().splitlines()]
    last_run = events[max(i for i, e in enumerate(events) if e["event"] == "run-start") :]
    assert sorted(e["cell"] for e in last_run if e["event"] == "reused") == ["M0", "M1-s0", "M2-s0", "layers"]
    assert not [e for e in last_run if e["event"] == "finished"]


def test_interrupted_cell_resumes_without_retraining(
    study_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import poolattn.training

    study_file, finished_study = study_copy
    cell = finished_study / "cells" / "M2-s0"
    (cell / "cell.json").unlink()  # as if killed during evaluation
    (cell / "eval" / "FakeRetrieval.json").unlink()
    kept = cell / "eval" / "FakeSTS.json"
    stamp = kept.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(poolattn.training, "train", lambda *a, **k: calls.append(a))
    run_experiment(study_file, finished_study, progress=False)
    assert calls == []  # the finished training was reused
    assert (cell / "cell.json").is_file() and (cell / "eval" / "FakeRetrieval.json").is_file()
    assert kept.stat().st_mtime_ns == stamp  # finished tasks were not rescored


def test_changed_design_is_recomputed_alone(study_copy: tuple[Path, Path], monkeypatch) -> None:
    import poolattn.training

    study_file, finished_study = study_copy
    trained = []
    real = poolattn.training.train
    monkeypatch.setattr(poolattn.training, "train", lambda config, **k: trained.append(config) or real(config, **k))
    cell = finished_study / "cells" / "M2-s0"
    stored = files(cell)
    run_experiment(study_file, finished_study, ["designs.M2.options.n_latents=2"], progress=False)
    assert [c.model.pooling_options for c in trained] == [{"n_latents": 2, "heads": 2}]
    # the superseded cell (trained model, scores, records) was moved aside intact, not deleted
    (kept,) = (finished_study / "cells" / ".superseded").iterdir()
    assert kept.name.startswith("M2-s0-") and files(kept) == stored
    assert "train/model/pooler.safetensors" in stored and "eval/FakeSTS.json" in stored
    assert json.loads((cell / "cell.json").read_text())["hash"] != json.loads(stored["cell.json"])["hash"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_report_renders_from_stored_results_alone(study_copy: tuple[Path, Path], tmp_path: Path) -> None:
    from poolattn.study import render_report

    moved = tmp_path / "elsewhere"
    os.rename(study_copy[1], moved)
    before = (moved / "results.json").read_text()
    for name in ("report.md", "report.html", "results.json"):
        (moved / name).unlink()
    assert render_report(moved) == moved / "report.md"
    assert (moved / "results.json").read_text() == before
    assert "data:image/png;base64," in (moved / "report.html").read_text()


def test_cost_estimate_measures_here(fake_suite, tiny_llama: Path, tmp_path: Path) -> None:
    """The pre-run estimate times real work on the backbone and adds up every pending phase."""
    from study_fixtures import make_study_file

    from poolattn.study.cells import plan_cells
    from poolattn.study.config import load_study
    from poolattn.study.estimate import estimate, eval_texts

    study = load_study(make_study_file(tmp_path, tiny_llama))
    cells = plan_cells(study, {d.name: 0 for d in study.designs})
    cost = estimate(study, cells, str(tiny_llama), torch.device("cpu"))
    trained = sum(c.design.train for c in cells)
    assert cost.step_seconds > 0 and cost.encode_texts_per_second > 0
    heldout = 4 * study.data.heldout / cost.encode_texts_per_second  # held-out pairs before and after training
    assert cost.phases["training"] == pytest.approx(trained * (study.recipe.steps * cost.step_seconds + heldout))
    texts = eval_texts(study)
    assert texts and cost.phases["evaluation"] == pytest.approx(len(cells) * len(texts) / cost.encode_texts_per_second)
    layer_texts = eval_texts(study, study.layers.tasks)
    assert layer_texts and len(layer_texts) < len(texts)
    assert cost.phases["layer pass"] == pytest.approx(len(layer_texts) / cost.encode_texts_per_second)  # not cut
    assert cost.total_seconds == pytest.approx(sum(cost.phases.values()))
    assert "ETA" in cost.line()


def test_the_estimate_scales_what_runs_the_whole_backbone(tiny_llama: Path, tmp_path: Path) -> None:
    """With the cells cut to k layers, the layer pass costs (all layers / k) of an encode, adaptation also its LM
    head's share: the parameters per token, as the tiny model's own loaded layers count them."""
    from study_fixtures import make_study_file
    from transformers import AutoModel

    from poolattn.study.config import load_study
    from poolattn.study.estimate import depth_factors

    model = AutoModel.from_pretrained(tiny_llama)
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    head = model.config.hidden_size * model.config.vocab_size
    assert len(layers) > 1
    assert depth_factors(load_study(make_study_file(tmp_path, tiny_llama)), str(tiny_llama)) == pytest.approx(
        (1.0, (sum(layers) + head) / sum(layers))
    )
    cut = load_study(make_study_file(tmp_path, tiny_llama), ["model.num_layers=1"])
    whole = sum(layers)
    assert depth_factors(cut, str(tiny_llama)) == pytest.approx((whole / layers[0], (whole + head) / layers[0]))


def test_the_estimate_counts_the_texts_a_scorer_encodes() -> None:
    """A classification task encodes its test texts and the union of its n-shot draws, not its whole pool."""
    from study_fixtures import fake_tasks

    from poolattn.evaluate.scorers import SCORERS
    from poolattn.study.estimate import encoded_texts

    for task in fake_tasks().values():
        data = task.load("quick")
        asked: set[str] = set()

        def embed(texts, instruction, asked=asked):
            asked.update(texts)
            rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]
            return np.asarray(rows, dtype=np.float32)

        SCORERS[task.category](data, embed, None)
        assert encoded_texts(data) == asked, task.name
        if task.category == "classification":
            assert len(asked) < len(data.all_texts())
