"""The records a run trains on, and how a global batch's texts are laid out for the loss."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..data import ReadResult, TrainRecord, add_hard_negatives, read_records
from ..data import subset as record_subset
from ..model import EmbeddingModel, Tokenized
from ..sources import builtin_training_set, is_builtin
from .config import TrainConfig


def read_training_data(config: TrainConfig) -> ReadResult:
    """The records ``config.data`` names (built-in sets or a validated file/dataset), and the skipped ones;
    ``data.heldout`` more than ``data.n_pairs``, for :func:`~poolattn.training.heldout.split_heldout`."""
    data, seed = config.data, config.data_seed
    n = None if data.n_pairs is None else data.n_pairs + data.heldout
    if is_builtin(data.path):
        records = builtin_training_set(data.path, n, seed, data.hard_negatives or "none", data.instruction)
        return ReadResult(records, [], data.path)
    result = read_records(
        data.path,
        skip_bad=data.skip_bad,
        instruction=data.instruction,
        fields=data.fields,
        split=data.split,
        revision=data.revision,
    )
    records = add_hard_negatives(
        record_subset(result.records, n, seed),
        "none" if data.hard_negatives in (None, "auto") else data.hard_negatives,
        seed,
    )
    return ReadResult(records, result.skipped, result.source)


def load_training_records(config: TrainConfig) -> list[TrainRecord]:
    """The records ``config.data`` names."""
    return read_training_data(config).records


def fingerprint(records: Sequence[TrainRecord]) -> str:
    """A hash of the records' content and order (a resumed run must see the same data)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(asdict(record), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class Layout:
    """Where the texts of a global batch sit in the gathered embedding matrix (process 0's texts first, each
    process's as queries, positives, negatives), and keys telling identical texts apart for masking."""

    sizes: list[int]
    query_rows: torch.Tensor
    positive_rows: torch.Tensor
    negative_rows: torch.Tensor
    query_keys: torch.Tensor
    positive_keys: torch.Tensor
    negative_keys: torch.Tensor

    @classmethod
    def of(cls, shards: Sequence[Sequence[TrainRecord]]) -> Layout:
        keys: dict[Any, int] = {}

        def key(item: Any) -> int:
            return keys.setdefault(item, len(keys))

        sizes, rows, ids = [], {"q": [], "p": [], "n": []}, {"q": [], "p": [], "n": []}
        offset = 0
        for shard in shards:
            b = len(shard)
            negatives = [n for r in shard for n in r.negatives]
            rows["q"] += range(offset, offset + b)
            rows["p"] += range(offset + b, offset + 2 * b)
            rows["n"] += range(offset + 2 * b, offset + 2 * b + len(negatives))
            ids["q"] += [key(("query", r.instruction, r.query)) for r in shard]
            ids["p"] += [key(("text", r.positive)) for r in shard]
            ids["n"] += [key(("text", n)) for n in negatives]
            sizes.append(2 * b + len(negatives))
            offset += sizes[-1]

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        return cls(sizes, *(tensor(rows[k]) for k in "qpn"), *(tensor(ids[k]) for k in "qpn"))


def tokenize_shard(model: EmbeddingModel, shard: Sequence[TrainRecord]) -> list[Tokenized]:
    """A process's texts in layout order: queries (each with its instruction), positives, negatives."""
    queries: list[Tokenized | None] = [None] * len(shard)
    by_instruction: dict[str | None, list[int]] = {}
    for i, record in enumerate(shard):
        by_instruction.setdefault(record.instruction, []).append(i)
    for instruction, rows in by_instruction.items():
        for row, item in zip(rows, model.tokenize_texts([shard[i].query for i in rows], instruction), strict=True):
            queries[row] = item
    docs = [r.positive for r in shard] + [n for r in shard for n in r.negatives]
    return [*queries, *model.tokenize_texts(docs)]  # type: ignore[list-item]
