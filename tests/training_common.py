"""Records, configs and weight readers shared by the training tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import CORPUS

from poolattn import EmbeddingModel
from poolattn.data import TrainRecord
from poolattn.training import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]
WORDS = sorted({word.strip(".,;:!?") for line in CORPUS for word in line.split()} - {""})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and reproducibly) on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_records(n: int = 16, seed: int = 0) -> list[TrainRecord]:
    """Query/positive pairs sharing words (learnable), texts of varied length, 0-2 negatives, mixed instructions."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(2, 7))
        negatives = [" ".join(rng.sample(WORDS, rng.randint(2, 6))) for _ in range(rng.randint(0, 2))]
        instruction = "Retrieve the match" if i % 3 else None
        records.append(TrainRecord(" ".join(words), " ".join(reversed(words)) + " .", negatives, instruction))
    return records


def config_for(backbone: Path, out: Path, *overrides: str) -> TrainConfig:
    base = [
        f"model.backbone={backbone}",
        f"output.dir={out}",
        "recipe.batch_size=8",
        "recipe.lr=3e-3",
        "lora.r=4",
        "lora.alpha=8",
    ]
    return load_train_config(None, [*base, *overrides])


def trainable_grads(model: EmbeddingModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(model_dir / "pooler.safetensors")
    adapter = model_dir / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        weights.update({f"adapter.{k}": v for k, v in load_file(adapter).items()})
    return weights
