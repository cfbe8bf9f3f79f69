"""Held-out InfoNCE and top-1 accuracy beside chance: before the first step, after the last, and on resume."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch
from training_common import config_for, make_records, one_thread  # noqa: F401 (autouse fixture)

from poolattn import EmbeddingModel
from poolattn.training import train
from poolattn.training.heldout import heldout_metrics


def test_chance_levels_and_a_perfect_encoder(tiny_llama):
    model = EmbeddingModel.from_backbone(str(tiny_llama), attention="bidirectional", pooling="mean")
    records = [type(r)(r.query, r.positive, [], r.instruction) for r in make_records(24, seed=3)]
    metrics = heldout_metrics(model, records, 8, 20.0, nullcontext)
    assert metrics["chance_loss"] == pytest.approx(math.log(8))
    assert metrics["chance_top1"] == pytest.approx(1 / 8)
    assert metrics["heldout_records"] == 24
    assert 0.0 <= metrics["heldout_top1"] <= 1.0
    with_negatives = heldout_metrics(model, make_records(24, seed=3), 8, 20.0, nullcontext)
    assert with_negatives["chance_loss"] > metrics["chance_loss"]  # hard negatives are candidates too

    def perfect(batch):  # rows are the batch's queries, then its positives: query i and positive i coincide
        rows = torch.arange(batch.input_ids.shape[0]) % 8
        return torch.nn.functional.one_hot(rows, 8).float()

    scores = heldout_metrics(model, records[:8], 8, 20.0, nullcontext, module=perfect)
    assert scores["heldout_top1"] == 1.0
    assert scores["heldout_loss"] < 1e-6


def test_training_records_before_and_after_and_keeps_them_apart(tiny_llama, tmp_path):
    records = make_records(48, seed=1)
    config = config_for(tiny_llama, tmp_path / "run", "recipe.steps=12", "data.heldout=16", "output.checkpoint_every=6")
    result = train(config, records=records, progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    before, after = summary["heldout"]["before"], summary["heldout"]["after"]
    assert before["step"] == 0 and after["step"] == 12
    assert before["chance_loss"] == pytest.approx(after["chance_loss"])
    assert after["heldout_loss"] < before["heldout_loss"]  # the learnable toy pairs are learned
    assert result.steps == 12 and summary["records"] <= 48 - 16
    stored = json.loads((tmp_path / "run" / "heldout.json").read_text())
    assert stored == summary["heldout"]
