"""The study runner: config validation, cell hashing, an end-to-end tiny study, caching and resumption."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from poolattn import EmbeddingModel, backbone, experiment
from poolattn.evaluate import offline
from poolattn.evaluate.offline import ClassificationData, ClusteringData, PairData, RetrievalData, STSData, Task

ANIMALS = ["cat", "dog", "fox", "bird", "fish", "cow", "lion", "bear", "wolf", "deer"]
COLOURS = ["red", "blue", "green", "black", "white"]


def _sentence(rng: random.Random, animal: str) -> str:
    return f"the {rng.choice(COLOURS)} {animal} sees a {rng.choice(ANIMALS)}"


def fake_tasks() -> dict[str, Task]:
    """One small task per category of synthetic animal sentences (fast to encode with a tiny model)."""
    rng = random.Random(0)
    n = 24
    animals = [ANIMALS[i % len(ANIMALS)] for i in range(n)]
    texts = [_sentence(rng, a) for a in animals]
    others = [_sentence(rng, a) for a in animals]
    data = {
        "FakeSTS": STSData(
            ids=tuple(f"s{i}" for i in range(n)),
            texts1=tuple(texts),
            texts2=tuple(others),
            gold=tuple(float(rng.randint(0, 5)) for _ in range(n)),
            min_score=0.0,
            max_score=5.0,
        ),
        "FakeClassification": ClassificationData(
            train_texts=tuple(others),
            train_labels=tuple(ANIMALS.index(a) % 2 for a in animals),
            ids=tuple(f"c{i}" for i in range(n)),
            texts=tuple(texts),
            labels=tuple(ANIMALS.index(a) % 2 for a in animals),
            label_names=("even", "odd"),
            samples_per_label=4,
            n_experiments=2,
        ),
        "FakeClustering": ClusteringData(
            ids=tuple(f"k{i}" for i in range(n)),
            texts=tuple(texts),
            labels=tuple(a[0] for a in animals),
            cluster_size=n,
            n_experiments=4,
        ),
        "FakePairs": PairData(
            ids=tuple(f"p{i}" for i in range(n)),
            texts1=tuple(texts),
            texts2=tuple(others),
            labels=tuple(i % 2 for i in range(n)),
        ),
        "FakeRetrieval": RetrievalData(
            query_ids=tuple(f"q{i}" for i in range(n)),
            queries=tuple(texts),
            doc_ids=tuple(f"d{i}" for i in range(n)),
            docs=tuple(others),
            qrels={f"q{i}": {f"d{i}": 1} for i in range(n)},
        ),
    }
    categories = {
        "FakeSTS": "sts",
        "FakeClassification": "classification",
        "FakeClustering": "clustering",
        "FakePairs": "pair_classification",
        "FakeRetrieval": "retrieval",
    }
    return {
        name: Task(
            name=name,
            category=categories[name],  # type: ignore[arg-type]
            description="synthetic",
            source="tests",
            split="all",
            instruction="Animals",
            sizes={"full": n, "quick": n},
            build=lambda _n, d=d: d,
            experiments={"full": 2, "quick": 2},
        )
        for name, d in data.items()
    }


@pytest.fixture(scope="module")
def fake_suite() -> Iterator[dict[str, Task]]:
    tasks = fake_tasks()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offline, "TASKS", tasks)
        yield tasks


def write_records(path: Path, n: int = 32) -> Path:
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            animal = ANIMALS[i % len(ANIMALS)]
            record = {"query": _sentence(rng, animal), "positive": f"a {animal} {i}", "negative": f"no {animal}"}
            handle.write(json.dumps(record) + "\n")
    return path


STUDY = """\
name = "tiny"
description = "A tiny study for the tests."
reference = "M1"
seeds = [0]
designs = [
  {{ name = "M0", attention = "causal", pooling = "eos", train = false, label = "untrained" }},
  {{ name = "M1", attention = "causal", pooling = "eos" }},
  {{ name = "M2", attention = "bidirectional", pooling = "trainable", options = {{ n_latents = 4, heads = 2 }} }},
]

[model]
backbone = "{backbone}"
max_length = 64

[data]
path = "{data}"

[train]
steps = 2
batch_size = 8
lr = 1e-3
checkpoint_every = 1

[lora]
r = 2
alpha = 4

[eval]
suite = "offline"
profile = "quick"

[layers]
tasks = ["FakeSTS", "FakePairs", "FakeRetrieval"]
cka_texts = 16

[stats]
n_resamples = 200
"""


def make_study_file(folder: Path, backbone: Path) -> Path:
    data = write_records(folder / "train.jsonl")
    path = folder / "study.toml"
    path.write_text(STUDY.format(backbone=backbone, data=data))
    return path


@pytest.fixture
def study_file(tmp_path: Path, tiny_llama: Path) -> Path:
    return make_study_file(tmp_path, tiny_llama)


# ---------------------------------------------------------------------------------------------- config


def test_default_and_paper_configs_validate() -> None:
    default = experiment.load_study()
    names = [d.name for d in default.designs]
    assert names == ["M0", "M1", "M2", "M3", "M4", "M5", "M6"]
    assert default.reference == "M1" and default.eval.suite == "offline" and default.eval.profile == "quick"
    signatures = {d.name: (d.attention, d.pooling, d.train) for d in default.designs}
    assert signatures == {
        "M0": ("causal", "eos", False),
        "M1": ("causal", "eos", True),
        "M2": ("causal", "trainable", True),
        "M3": ("causal", "multilayer", True),
        "M4": ("bidirectional", "trainable", True),
        "M5": ("bidirectional", "multilayer", True),
        "M6": ("bidirectional", "mean", True),
    }
    root = Path(__file__).resolve().parents[1]
    shipped = root / "src" / "poolattn" / "configs" / "default.toml"
    assert (root / "configs" / "default.toml").read_bytes() == shipped.read_bytes()
    paper = experiment.load_study(root / "configs" / "paper.toml")
    assert paper.eval.suite == "mteb" and paper.train["batch_size"] == 2048 and paper.lora["r"] == 16
    assert {d.name for d in paper.designs} >= {"M1", "M2", "M3", "M4", "M5"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[train]\n", "[train]\nstepz = 3\n"), r"study.toml, line \d+: train.stepz: unknown key"),
        (("steps = 2", 'steps = "two"'), r"study.toml, line 19: train.steps: = 'two' is not int"),
        (("lr = 1e-3", "lr = -1.0"), r"study.toml, line 21: train.lr: must be positive"),
        (('pooling = "trainable"', 'pooling = "magic"'), r"study.toml, line 8: designs\[M2\].pooling: = 'magic'"),
        (('attention = "bidirectional"', 'attention = "sideways"'), r"line 8: designs\[M2\].attention"),
        (('reference = "M1"', 'reference = "M9"'), r"line 3: reference: 'M9' is not a design"),
        (('suite = "offline"', 'suite = "online"'), r"line 29: eval.suite: = 'online'"),
        (('"FakeSTS", "FakePairs"', '"Nope", "FakePairs"'), r"line 33: layers.tasks: unknown offline task 'Nope'"),
        (("seeds = [0]", "seeds = [0, 0]"), r"line 4: seeds: has duplicates"),
        (("[model]\n", '[model]\ncolour = "red"\n'), r"line 12: model.colour: unknown key"),
    ],
)
def test_config_errors_name_file_line_and_key(study_file: Path, fake_suite, edit, message) -> None:
    text = study_file.read_text()
    assert edit[0] in text
    study_file.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(experiment.StudyError, match=message):
        experiment.load_study(study_file)


def test_overrides(study_file: Path, fake_suite) -> None:
    study = experiment.load_study(study_file, ["train.steps=5", "seeds=[1, 2]", "designs.M2.options.n_latents=8"])
    assert study.train["steps"] == 5 and study.seeds == [1, 2]
    assert study.design("M2").options == {"n_latents": 8, "heads": 2}
    with pytest.raises(experiment.StudyError, match=r"\(value set by --set\): train.steps"):
        experiment.load_study(study_file, ["train.steps=oops"])
    with pytest.raises(experiment.StudyError, match="no design named 'M7'"):
        experiment.load_study(study_file, ["designs.M7.train=false"])


def test_precision_auto_follows_the_hardware(study_file: Path, fake_suite, monkeypatch: pytest.MonkeyPatch) -> None:
    for native, expected in ((True, ("bf16", "bf16")), (False, ("fp32", "no"))):
        monkeypatch.setattr(backbone, "native_bf16", lambda native=native: native)
        study = experiment.load_study(study_file, ["eval.precision=auto", "train.mixed_precision=auto"])
        assert (study.eval.precision, study.train["mixed_precision"]) == expected
    study = experiment.load_study(study_file, ["eval.precision=fp32", "train.mixed_precision=no"])
    assert (study.eval.precision, study.train["mixed_precision"]) == ("fp32", "no")
    with pytest.raises(experiment.StudyError, match=r"eval\.precision: = 'fp16'"):
        experiment.load_study(study_file, ["eval.precision=fp16"])


def test_bad_pooling_options_are_reported_before_any_work(study_file: Path, fake_suite, tmp_path: Path) -> None:
    study = experiment.load_study(study_file, ["designs.M2.options.n_latents=-3"])
    with pytest.raises(experiment.StudyError, match=r"line 8: designs\[M2\].options: .*n_latents"):
        experiment.StudyRunner(study, tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- hashing


def test_cell_hashes(study_file: Path, fake_suite) -> None:
    base = {c.name: c.hash for c in experiment.plan_cells(experiment.load_study(study_file))}
    assert list(base) == ["M0", "M1-s0", "M2-s0"]
    option = {c.name: c.hash for c in experiment.plan_cells(
        experiment.load_study(study_file, ["designs.M2.options.n_latents=8"]))}  # fmt: skip
    assert [n for n in base if base[n] != option[n]] == ["M2-s0"]
    recipe = {c.name: c.hash for c in experiment.plan_cells(experiment.load_study(study_file, ["train.lr=0.01"]))}
    assert [n for n in base if base[n] != recipe[n]] == ["M1-s0", "M2-s0"]  # the untrained base does not train
    shared = {c.name: c.hash for c in experiment.plan_cells(experiment.load_study(study_file, ["model.max_length=20"]))}
    assert all(base[n] != shared[n] for n in base)
    evaluation = {c.name: c.hash for c in experiment.plan_cells(
        experiment.load_study(study_file, ["eval.tasks=['FakeSTS']"]))}  # fmt: skip
    assert all(base[n] != evaluation[n] for n in base)
    checkpoints = {c.name: c.hash for c in experiment.plan_cells(
        experiment.load_study(study_file, ["train.checkpoint_every=5"]))}  # fmt: skip
    assert checkpoints == base  # checkpointing does not change results
    seeds = experiment.plan_cells(experiment.load_study(study_file, ["seeds=[0, 3]"]))
    assert [c.name for c in seeds] == ["M0", "M1-s0", "M2-s0", "M1-s3", "M2-s3"]
    assert {c.name: c.hash for c in seeds}["M1-s0"] == base["M1-s0"]


def test_linear_cka_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    layers = np.stack([x, 3.0 * x @ rotation + 1.0, rng.normal(size=(40, 6))])
    cka = experiment.linear_cka(layers)
    np.testing.assert_allclose(np.diag(cka), 1.0)
    np.testing.assert_allclose(cka, cka.T)
    assert cka[0, 1] == pytest.approx(1.0)  # invariant to rotation, scale and shift
    assert cka[0, 2] < 0.6
    # against the feature-space formula ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
    a, b = (m - m.mean(0) for m in (x, layers[2]))
    expected = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    assert cka[0, 2] == pytest.approx(expected)


def test_layer_store_serves_the_eos_embeddings(tiny_llama: Path) -> None:
    model = EmbeddingModel.from_backbone(tiny_llama, max_length=24)
    texts = ["a red fox", "the dog sleeps under the table", "cat"]
    store = experiment.LayerStore(model)
    last = experiment.LayerEncoder(store, 3, "last").encode(texts, instruction="Find it")
    np.testing.assert_array_equal(last, model.encode(texts, instruction="Find it"))
    assert store.encoded == 3
    experiment.LayerEncoder(store, 1, "first").encode(texts[:2], instruction="Find it")
    assert store.encoded == 3  # every layer came from the first forward pass


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_study(fake_suite, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny study, run once for the module: (its config, its folder)."""
    folder = tmp_path_factory.mktemp("tiny-study")
    study_file = make_study_file(folder, tiny_llama)
    out = folder / "run"
    report = experiment.run_experiment(study_file, out, progress=False)
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


def test_rerun_reuses_everything(study_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import poolattn.train

    study_file, finished_study = study_copy
    stamps = {p: p.stat().st_mtime_ns for p in (finished_study / "cells").rglob("*.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    def no_encoding(*args, **kwargs):
        raise AssertionError("a finished cell was encoded again")

    monkeypatch.setattr(poolattn.train, "train", no_training)
    monkeypatch.setattr(EmbeddingModel, "encode", no_encoding)
    monkeypatch.setattr(EmbeddingModel, "encode_layers", no_encoding)
    experiment.run_experiment(study_file, finished_study, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (finished_study / "cells").rglob("*.json")} == stamps
    events = [json.loads(line) for line in (finished_study / "events.jsonl").read_text().splitlines()]
    last_run = events[max(i for i, e in enumerate(events) if e["event"] == "run-start") :]
    assert sorted(e["cell"] for e in last_run if e["event"] == "reused") == ["M0", "M1-s0", "M2-s0", "layers"]
    assert not [e for e in last_run if e["event"] == "finished"]


def test_interrupted_cell_resumes_without_retraining(
    study_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import poolattn.train

    study_file, finished_study = study_copy
    cell = finished_study / "cells" / "M2-s0"
    (cell / "cell.json").unlink()  # as if killed during evaluation
    (cell / "eval" / "FakeRetrieval.json").unlink()
    kept = cell / "eval" / "FakeSTS.json"
    stamp = kept.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(poolattn.train, "train", lambda *a, **k: calls.append(a))
    experiment.run_experiment(study_file, finished_study, progress=False)
    assert calls == []  # the finished training was reused
    assert (cell / "cell.json").is_file() and (cell / "eval" / "FakeRetrieval.json").is_file()
    assert kept.stat().st_mtime_ns == stamp  # finished tasks were not rescored


def test_changed_design_is_recomputed_alone(study_copy: tuple[Path, Path], monkeypatch) -> None:
    import poolattn.train

    study_file, finished_study = study_copy
    trained = []
    real = poolattn.train.train
    monkeypatch.setattr(poolattn.train, "train", lambda config, **k: trained.append(config) or real(config, **k))
    experiment.run_experiment(study_file, finished_study, ["designs.M2.options.n_latents=2"], progress=False)
    assert [c.model.pooling_options for c in trained] == [{"n_latents": 2, "heads": 2}]


def test_report_renders_from_stored_results_alone(study_copy: tuple[Path, Path], tmp_path: Path) -> None:
    from poolattn.report import render_report

    moved = tmp_path / "elsewhere"
    os.rename(study_copy[1], moved)
    before = (moved / "results.json").read_text()
    for name in ("report.md", "report.html", "results.json"):
        (moved / name).unlink()
    assert render_report(moved) == moved / "report.md"
    assert (moved / "results.json").read_text() == before
    assert "data:image/png;base64," in (moved / "report.html").read_text()
