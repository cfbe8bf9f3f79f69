"""Shared pieces of the study tests: a synthetic offline suite, training records and a tiny study config."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolattn.evaluate import tasks as suite_tasks
from poolattn.evaluate.tasks import ClassificationData, ClusteringData, PairData, RetrievalData, STSData, Task

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
        patch.setattr(suite_tasks, "TASKS", tasks)
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
