"""The offline suite's runner: score an :class:`~.encoders.Encoder` on the tasks of :mod:`.tasks`.

Scores follow MTEB 2's protocols exactly (:mod:`.scorers`). Embeddings are cached per (instruction, text)
within a run and shared by the tasks that need them (:class:`~.encoders.EmbeddingCache`).

Results: one JSON file per task (:func:`run_suite`) with ``task``, ``category``, ``split``, ``main_score``
(a fraction, not a percentage; an STS Spearman can be negative), ``metrics`` (all of mteb's metrics for the
category), ``per_sample`` and bookkeeping (``n_samples``, ``encode_seconds``, ``texts_per_second``,
``versions``, ``config_hash``, ``weights``, ``precision``, ``model_id``, ``profile``...). ``per_sample``
recomputes the main score exactly with :func:`poolattn.stats.score_from_samples`: ``{"statistic": "mean", "ids",
"score"}`` (nDCG@10 per query, AP per reranked query, correctness per test example averaged over the
classification draws, V-measure per clustering experiment), ``{"statistic": "spearman", "ids", "prediction",
"gold"}`` (STS) or ``{"statistic": "average_precision", "ids", "prediction", "gold"}`` (pair classification).

A stored result is reused only for the exact model and settings that made it (:func:`run_suite`).
:func:`plan_suite` lists exactly what a run encodes.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import SCORE_PACKAGES, now, package_versions, read_json, write_json_atomic
from .encoders import EmbeddingCache, Encoder, active_precision, encoder_identity
from .scorers import MAIN_METRIC, SCORERS
from .tasks import CATEGORIES, PROFILES, Profile, Task, data_hash, get_task, list_tasks, n_samples, resolve_instruction

#: Bumped whenever scoring changes, so stored results made by older code are recomputed.
SUITE_VERSION = 1
RESULT_KEYS = (
    "task",
    "category",
    "split",
    "main_score",
    "metrics",
    "per_sample",
    "n_samples",
    "encode_seconds",
    "texts_per_second",
    "versions",
    "config_hash",
    "weights",
    "precision",
    "model_id",
    "profile",
)


def _reusable(path: Path, expected: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored result at ``path`` if it is complete and was made under the same settings."""
    record = read_json(path)
    if record is None or any(k not in record for k in RESULT_KEYS):
        return None
    if any(record.get(k) != v for k, v in expected.items()):
        return None
    return record


def select_tasks(tasks: Iterable[str] | None, profile: Profile = "full") -> list[Task]:
    """Tasks by name in the given order (all available tasks when ``tasks`` is None)."""
    if tasks is None:
        return list_tasks(profile)
    selected = [get_task(name) for name in dict.fromkeys(tasks)]
    missing = [t.name for t in selected if not t.available()]
    if missing:
        raise ValueError(f"tasks {missing} need WordNet (Debian package wordnet-base), which is not installed")
    return selected


def run_suite(
    encoder: Encoder,
    output_dir: str | os.PathLike[str],
    *,
    tasks: Iterable[str] | None = None,
    profile: Profile = "full",
    model_id: str | None = None,
    config_hash: str | None = None,
    instructions: Mapping[str, str | None] | None = None,
    precision: str | None = None,
    progress: bool = True,
    samples: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``encoder`` on the offline suite; one JSON per task at ``output_dir/<task>.json``.

    A stored result is reused only when it was made from the same task data, profile, instruction, ``model_id``,
    poolattn version and model (:func:`~.encoders.encoder_identity`: ``config_hash``, weights fingerprint,
    precision, max length, instruction template). ``model_id`` defaults to ``encoder.name`` and ``config_hash``
    to ``encoder.config_hash()`` when the encoder has one; ``precision`` (recorded in each result) to the
    autocast in force (:func:`~.encoders.active_precision`). ``instructions`` overrides the default instruction
    by task name or category (``None`` or ``""``: no instruction); ``samples`` sets a task's sample size in place
    of the profile's (:meth:`~.tasks.Task.size`). Returns the result dicts in task order.
    """
    from rich.console import Console

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
    selected = select_tasks(tasks, profile)
    out = Path(output_dir)
    model_id = model_id or getattr(encoder, "name", None) or type(encoder).__name__
    if config_hash is None and callable(getattr(encoder, "config_hash", None)):
        config_hash = encoder.config_hash()  # type: ignore[attr-defined]
    console = Console(stderr=True, quiet=not progress)
    model = encoder_identity(encoder, config_hash, precision or active_precision())
    cache = EmbeddingCache(encoder)
    versions = package_versions(SCORE_PACKAGES)
    results = []
    samples = dict(samples or {})
    for number, task in enumerate(selected, start=1):
        data = task.load(profile, samples.get(task.name))
        instruction = resolve_instruction(task, instructions)
        identity = {
            "suite_version": SUITE_VERSION,
            "task": task.name,
            "profile": profile,
            "model_id": model_id,
            **model,
            "instruction": instruction,
            "data_hash": data_hash(data),
        }
        path = out / f"{task.name}.json"
        label = f"[{number}/{len(selected)}] {task.name}"
        if (stored := _reusable(path, identity)) is not None:
            console.print(f"{label}: {stored['main_score']:.4f} (stored result reused)")
            results.append(stored)
            continue
        cache.reset_counters()
        start = time.perf_counter()
        console.print(f"{label} ({task.category}, {n_samples(data)} samples)...")
        score = SCORERS[task.category](data, cache, instruction)
        record = {
            **identity,
            "category": task.category,
            "split": "test",
            "split_description": task.split,
            "main_metric": MAIN_METRIC[task.category],
            "main_score": score.main,
            "metrics": score.metrics,
            "per_sample": score.per_sample,
            **(
                {}
                if math.isfinite(score.main)
                else {"undefined": cache.watch.undefined_reason(MAIN_METRIC[task.category])}
            ),
            "n_samples": n_samples(data),
            "n_texts": cache.requested,
            "n_encoded": cache.encoded,
            "encode_seconds": cache.seconds,
            "texts_per_second": cache.encoded / cache.seconds if cache.encoded and cache.seconds > 0 else None,
            "seconds": time.perf_counter() - start,
            "versions": versions,
            "created": now(),
        }
        write_json_atomic(path, record)
        console.print(
            f"{label}: {score.main:.4f} {MAIN_METRIC[task.category]} "
            f"({cache.encoded} texts encoded in {cache.seconds:.1f} s)"
        )
        results.append(record)
    return results


def plan_suite(
    profile: Profile = "full",
    tasks: Iterable[str] | None = None,
    instructions: Mapping[str, str | None] | None = None,
    samples: Mapping[str, int] | None = None,
) -> dict[str, list[tuple[str | None, str]]]:
    """The (instruction, text) pairs each task encodes under ``profile``, for sizing a run.

    Runs every scorer on random unit vectors, so it records exactly what a real run asks the encoder for.
    """
    requests: dict[str, list[tuple[str | None, str]]] = {}
    rng = np.random.default_rng(0)

    for task in select_tasks(tasks, profile):
        seen: list[tuple[str | None, str]] = []

        def embed(texts: Sequence[str], instruction: str | None, seen: list = seen) -> np.ndarray:
            seen.extend((instruction or None, t) for t in texts)
            vecs = rng.normal(size=(len(texts), 8)).astype(np.float32)
            return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

        data = task.load(profile, (samples or {}).get(task.name))
        SCORERS[task.category](data, embed, resolve_instruction(task, instructions))
        requests[task.name] = list(dict.fromkeys(seen))
    return requests


# --------------------------------------------------------------------------------------------- tables


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean main score per category (in :data:`CATEGORIES` order) over the given task results."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for result in results:
        by_category[result["category"]].append(float(result["main_score"]))
    return {c: float(np.mean(by_category[c])) for c in CATEGORIES if by_category.get(c)}


def print_summary(results: Sequence[Mapping[str, Any]], *, title: str | None = None, console: Any = None) -> None:
    """Print per-task scores and the per-category means as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title or "offline suite")
    for column, justify in (
        ("task", "left"),
        ("category", "left"),
        ("metric", "left"),
        ("score", "right"),
        ("n", "right"),
        ("encode s", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    order = {c: i for i, c in enumerate(CATEGORIES)}
    for r in sorted(results, key=lambda r: (order.get(r["category"], 99), r["task"])):
        table.add_row(
            r["task"],
            r["category"],
            r.get("main_metric", MAIN_METRIC.get(r["category"], "")),
            f"{r['main_score']:.4f}",
            str(r["n_samples"]),
            f"{r['encode_seconds']:.1f}",
        )
    console.print(table)
    means = summarize(results)
    summary = Table(title="mean main score by category")
    for c in means:
        summary.add_column(c, justify="right")
    summary.add_column("average", justify="right")
    summary.add_row(*(f"{v:.4f}" for v in means.values()), f"{np.mean(list(means.values())):.4f}" if means else "")
    console.print(summary)
