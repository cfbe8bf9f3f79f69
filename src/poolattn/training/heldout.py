"""Held-out InfoNCE and in-batch top-1 accuracy, beside what chance gives: the check that training learned.

Records set aside from training are cut into batches of the training batch size; each query ranks its batch's
positives (and hard negatives, where the records have them) by cosine. Chance is ``ln(candidates)`` for the loss
and ``1 / candidates`` for top-1 accuracy. The same numbers are taken before the first step (the untrained
twin) and after the last, so a run that did not learn shows it in its own summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..corpora import hash_order
from ..data import TrainRecord
from ..model import EmbeddingModel
from .contrastive import info_nce
from .records import Layout, tokenize_shard

HELDOUT_SALT = "heldout"


def split_heldout(records: Sequence[TrainRecord], n: int) -> tuple[list[TrainRecord], list[TrainRecord]]:
    """(training records, ``n`` held-out records): the held-out ones are the first ``n`` queries in a stable
    hashed order, so every design and seed of a study holds out the same records. Records sharing a text with a
    held-out one are dropped from training."""
    if n <= 0:
        return list(records), []
    if n >= len(records):
        raise ValueError(f"data.heldout = {n} leaves nothing to train on ({len(records)} records)")
    held = hash_order(records, lambda r: r.query, HELDOUT_SALT)[:n]
    texts = {t for r in held for t in (r.query, r.positive, *r.negatives)}
    held_ids = {id(r) for r in held}
    train = [r for r in records if id(r) not in held_ids and not ({r.query, r.positive, *r.negatives} & texts)]
    return train, held


@torch.no_grad()
def heldout_metrics(
    model: EmbeddingModel,
    records: Sequence[TrainRecord],
    batch_size: int,
    scale: float,
    autocast: Callable[[], AbstractContextManager[Any]],
    module: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Mean InfoNCE and top-1 accuracy over the held-out batches, and their chance levels (``module``: the
    engine's wrapper that runs the forward passes, when there is one)."""
    forward = module if module is not None else model
    size = min(batch_size, len(records))
    batches = [records[i : i + size] for i in range(0, len(records) - size + 1, size)]
    was_training = model.training
    model.eval()  # no dropout: the same numbers on every call
    losses, hits, candidates = [], [], []
    try:
        for batch in batches:
            layout = Layout.of([batch])
            with autocast():
                emb = forward(model.collate(tokenize_shard(model, batch)).to(model.device)).float()
            q, p, n = emb[layout.query_rows], emb[layout.positive_rows], emb[layout.negative_rows]
            losses.append(float(info_nce(q, p, n, layout, scale=scale)))
            scores = q @ torch.cat([p, n]).T
            labels = torch.arange(len(batch), device=scores.device)
            hits.append(float((scores.argmax(dim=1) == labels).float().mean()))
            candidates.append(len(batch) + len(n))
    finally:
        model.train(was_training)
    k = sum(candidates) / len(candidates)
    return {
        "heldout_loss": sum(losses) / len(losses),
        "heldout_top1": sum(hits) / len(hits),
        "chance_loss": math.log(k),
        "chance_top1": 1.0 / k,
        "heldout_records": float(size * len(batches)),
    }
