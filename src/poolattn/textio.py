"""Texts in, embeddings out: read texts from a .txt or .jsonl file or from standard input, and write embeddings as
.npy, .jsonl or .parquet. Every problem is found before a model is loaded and reported in one line naming the
file (and line and field); outputs are written to a unique temporary file and renamed into place."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .io import write_atomic
from .targets import OutputError, check_file_target

#: Output formats by file suffix.
FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".parquet": "parquet"}
#: The input name that means standard input.
STDIN = "-"


class InputError(ValueError):
    """Bad input or output (file, line and field named in the message)."""


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Texts from a .txt file (one per line), a .jsonl file (one object per line with ``field``), or standard input
    for ``-`` (one text per line)."""
    if str(path) == STDIN:
        return parse_lines(sys.stdin.buffer.read(), "standard input", jsonl=False, field=field)
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    return parse_lines(path.read_bytes(), str(path), jsonl=path.suffix == ".jsonl", field=field)


def parse_lines(raw: bytes, source: str, *, jsonl: bool, field: str) -> list[str]:
    """One text per line of ``raw`` (blank .jsonl lines are skipped; blank .txt lines are texts)."""
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{source}, line {number}: not valid UTF-8 (byte {err.start})") from None
        if not jsonl:
            texts.append(decoded)
            continue
        if not decoded.strip():
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as err:
            raise InputError(f"{source}, line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise InputError(f"{source}, line {number}: missing field {field!r}")
        if not isinstance(record[field], str):
            raise InputError(f"{source}, line {number}, field {field!r}: expected a string")
        texts.append(record[field])
    return texts


def output_format(path: Path, format: str | None = None) -> str:
    """``format`` if given, else the one ``path``'s suffix names."""
    names = sorted(set(FORMATS.values()))
    if format is not None:
        if format not in names:
            raise InputError(f"unknown --format {format!r}; choose one of {', '.join(names)}")
        return format
    if path.suffix.lower() in FORMATS:
        return FORMATS[path.suffix.lower()]
    suffix = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
    raise InputError(f"{path}: {suffix}; name the file .npy, .jsonl or .parquet, or pass --format")


def check_output(path: Path, overwrite: bool = False) -> None:
    """Refuse, before anything is encoded, an output that cannot be written or must not be: an existing folder, a
    FIFO, device or symlink, a file that is not an earlier embeddings file (unless ``overwrite``), a path below a
    file, or a folder where no file can be created."""
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{path} is a folder; give a file name, e.g. {path / 'embeddings.npy'}")
    try:
        check_file_target(path)
    except OutputError as err:
        raise InputError(str(err)) from None
    if path.is_file() and not overwrite and not is_embeddings_file(path):
        raise InputError(f"{path} exists and is not an embeddings file poolattn wrote; pass --overwrite to replace it")
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{path}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=existing)
    except OSError as err:
        raise InputError(f"{path}: cannot write in {existing} ({err.strerror or err})") from None
    os.close(handle)
    os.unlink(probe)


def is_embeddings_file(path: Path) -> bool:
    """Whether ``path`` holds what :func:`write_embeddings` writes: a 2-D float32 .npy array, JSON lines with
    ``text`` and ``embedding``, or a Parquet table of those two columns."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head.startswith(b"\x93NUMPY"):
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                return array.ndim == 2 and array.dtype == np.float32
            if head.startswith(b"PAR1"):
                import pyarrow.parquet as pq

                return pq.read_schema(path).names == ["text", "embedding"]
            handle.seek(0)
            first = json.loads(handle.readline(1 << 26) or b"null")
        return isinstance(first, dict) and set(first) == {"text", "embedding"}
    except (OSError, ValueError, ImportError):
        return False


def output_bytes(format: str, rows: int, dim: int, texts: Sequence[str]) -> int:
    """About the size of an embeddings file (a lower bound for JSON lines, whose numbers vary in length)."""
    text_bytes = sum(len(t) for t in texts)
    if format == "npy":
        return 128 + rows * dim * 4
    if format == "jsonl":
        return text_bytes + rows * (dim * 10 + 30)
    return text_bytes + rows * dim * 4


def write_embeddings(path: Path, vectors: np.ndarray, texts: Sequence[str], format: str) -> None:
    """Write ``vectors`` (one row per text) atomically: ``npy`` the (N, dim) float32 array; ``jsonl`` one
    ``{"text", "embedding"}`` object per line; ``parquet`` columns ``text`` and ``embedding`` (float32 lists)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if format == "npy":
        write_atomic(path, lambda handle: np.save(handle, vectors), binary=True)
    elif format == "jsonl":

        def dump(handle: IO[Any]) -> None:
            for text, row in zip(texts, vectors.tolist(), strict=True):
                handle.write(json.dumps({"text": text, "embedding": row}, ensure_ascii=False) + "\n")

        write_atomic(path, dump)
    elif format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        values = pa.array(vectors.reshape(-1), type=pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])
        table = pa.table({"text": pa.array(list(texts), type=pa.string()), "embedding": embedding})
        write_atomic(path, lambda handle: pq.write_table(table, handle), binary=True)
    else:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(sorted(set(FORMATS.values())))}")
