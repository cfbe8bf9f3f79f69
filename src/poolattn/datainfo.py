"""What a training source holds before a run trains on it: its size, fields, token lengths in the backbone's own
tokens, and how many of its records share a text with the evaluation tasks (``poolattn data``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .corpora import normalize
from .data import TrainRecord, raw_rows, read_records

#: The percentiles of the token-length table.
PERCENTILES = (50, 90, 99, 100)


@dataclass
class LengthStats:
    """Token lengths of one side of the records (query, positive or negative), over a sample."""

    name: str
    count: int
    mean: float
    percentiles: dict[int, int]
    truncated: float  # the share of texts longer than max_length

    @classmethod
    def of(cls, name: str, lengths: Sequence[int], max_length: int) -> LengthStats:
        values = np.asarray(lengths, dtype=np.int64)
        if not len(values):
            return cls(name, 0, 0.0, {p: 0 for p in PERCENTILES}, 0.0)
        return cls(
            name,
            len(values),
            float(values.mean()),
            {p: int(np.percentile(values, p)) for p in PERCENTILES},
            float((values > max_length).mean()),
        )


@dataclass
class SourceSummary:
    """The summary ``poolattn data`` prints."""

    source: str
    records: int
    skipped: list[str]
    fields: dict[str, str]
    columns: list[str]
    with_negatives: int
    with_instruction: int
    sampled: int
    max_length: int
    lengths: list[LengthStats] = field(default_factory=list)
    overlap: int | None = None
    evaluation_texts: int = 0

    def lines(self) -> list[str]:
        """The summary as plain text lines."""
        mapped = ", ".join(f"{k} <- {v!r}" for k, v in self.fields.items()) or "none"
        out = [
            f"source: {self.source}",
            f"records: {self.records:,} valid, {len(self.skipped):,} skipped as bad"
            + (f" (first: {self.skipped[0]})" if self.skipped else ""),
            f"columns: {', '.join(self.columns)}; field map: {mapped}",
            f"records with a hard negative: {self.with_negatives:,}; with an instruction: {self.with_instruction:,}",
            f"token lengths (backbone's tokens, {self.sampled:,} sampled records, max_length {self.max_length}):",
            f"  {'field':<10}{'texts':>9}{'mean':>8}" + "".join(f"{f'p{p}':>7}" for p in PERCENTILES) + "  > max",
        ]
        for stats in self.lengths:
            cells = "".join(f"{stats.percentiles[p]:>7}" for p in PERCENTILES)
            out.append(f"  {stats.name:<10}{stats.count:>9,}{stats.mean:>8.1f}{cells}  {stats.truncated:.1%}")
        if self.overlap is not None:
            out.append(
                f"overlap with the evaluation tasks: {self.overlap:,} record(s) share a text with one of "
                f"{self.evaluation_texts:,} evaluation texts (whitespace- and case-normalised)"
            )
        return out


def record_texts(record: TrainRecord) -> list[str]:
    return [record.query, record.positive, *record.negatives]


def overlap_count(records: Iterable[TrainRecord], evaluation: Iterable[str]) -> tuple[int, int]:
    """Records with a text among ``evaluation`` (normalised), and how many distinct evaluation texts there were."""
    keys = {normalize(t) for t in evaluation}
    hits = sum(any(normalize(t) in keys for t in record_texts(r)) for r in records)
    return hits, len(keys)


def token_lengths(tokenizer: Callable[[list[str]], Mapping], texts: Sequence[str], batch: int = 1024) -> list[int]:
    """The number of tokens of each text (special tokens included, nothing truncated)."""
    out: list[int] = []
    for start in range(0, len(texts), batch):
        out.extend(len(ids) for ids in tokenizer(list(texts[start : start + batch]))["input_ids"])
    return out


def first_columns(source: str, split: str, revision: str | None) -> list[str]:
    """The fields of the source's first row, as named there."""
    row = next(iter(raw_rows(source, split, revision)), None)
    return sorted(row.fields) if row is not None and isinstance(row.fields, Mapping) else []


def load_tokenizer(backbone: str) -> Callable[[list[str]], Mapping]:
    """The backbone's tokenizer (``default``: the packaged SmolLM2's; a hub id: from the cache or the hub)."""
    from transformers import AutoTokenizer

    from .assets import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(backbone))
    return lambda texts: tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)


def summarise(
    source: str,
    *,
    backbone: str = "default",
    max_length: int = 512,
    fields: Mapping[str, str] | None = None,
    split: str = "train",
    revision: str | None = None,
    sample: int = 2000,
    evaluation: Iterable[str] | None = None,
    seed: int = 0,
) -> SourceSummary:
    """Read and validate every record of ``source`` (bad ones are counted, not fatal), measure token lengths on a
    seeded sample of ``sample`` records, and count the records that share a text with ``evaluation``."""
    result = read_records(source, skip_bad=True, fields=fields, split=split, revision=revision)
    records = result.records
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(records))[:sample]) if sample < len(records) else range(len(records))
    picked = [records[i] for i in chosen]
    tokenize = load_tokenizer(backbone)
    sides = {
        "query": [r.query for r in picked],
        "positive": [r.positive for r in picked],
        "negative": [n for r in picked for n in r.negatives],
    }
    lengths = [LengthStats.of(name, token_lengths(tokenize, texts), max_length) for name, texts in sides.items()]
    summary = SourceSummary(
        source=result.source,
        records=len(records),
        skipped=result.skipped,
        fields=dict(fields or {}),
        columns=first_columns(source, split, revision),
        with_negatives=sum(bool(r.negatives) for r in records),
        with_instruction=sum(r.instruction is not None for r in records),
        sampled=len(picked),
        max_length=max_length,
        lengths=lengths,
    )
    if evaluation is not None:
        summary.overlap, summary.evaluation_texts = overlap_count(records, evaluation)
    return summary
