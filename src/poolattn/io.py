"""Files written safely and read defensively, and the versions of the libraries a result was made with.

Every file poolattn writes goes to a unique temporary file beside its target and is renamed into place, so a
killed process never leaves a half-written result; readers of stored results get ``None`` for anything missing
or unreadable and decide themselves what that means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from .targets import check_file_target, make_temp, remove_stale

#: Libraries whose versions shape a score or a trained weight, recorded with every result.
VERSIONED_PACKAGES = (
    "poolattn",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "mteb",
    "sentence-transformers",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
)
#: The subset stored with each evaluation result.
SCORE_PACKAGES = ("poolattn", "torch", "transformers", "mteb", "numpy", "scikit-learn")


def write_atomic(path: Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Call ``write(handle)`` on a unique temporary file beside ``path``, then rename it into place (0644).

    Only a new path or a regular file is written (:func:`~poolattn.targets.check_file_target`); temporaries of
    ``path`` that a killed process left are removed first."""
    path = Path(path)
    check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, locked=False, names=[path.name])
    tmp = make_temp(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    write_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON (indent 1, UTF-8, trailing newline) atomically."""

    def dump(handle: IO[Any]) -> None:
        json.dump(payload, handle, indent=1, ensure_ascii=False)
        handle.write("\n")

    write_atomic(path, dump)


def move_aside(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` as ``<name>-<UTC time>`` (numbered when that exists) and return its new path:
    superseded results are kept, never deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(path).name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    target, number = folder / stem, 1
    while target.exists():
        target, number = folder / f"{stem}-{number}", number + 1
    os.replace(path, target)
    return target


def load_json_object(path: Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object stored at ``path``; a ``ValueError`` naming the file (and the line and column) when it is not
    UTF-8 JSON, not an object, or lacks one of the ``required`` fields."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    if missing := [key for key in required if key not in value]:
        raise ValueError(f"{path}: missing field {missing[0]!r}")
    return value


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``; ``None`` when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` where one is not installed)."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
