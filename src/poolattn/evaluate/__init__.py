"""Evaluation: the offline suite over shipped data (:mod:`.offline`) and the mteb 2 adapter (:mod:`.mteb_adapter`).

``run_suite(encoder, output_dir, profile="full"|"quick")`` scores any :class:`Encoder` (an
``EmbeddingModel``, or a sentence-transformers model via :class:`SentenceTransformerEncoder`) on the
offline tasks; ``run_mteb(encoder, tasks, benchmark, output_dir)`` runs mteb's own tasks (they need the
Hugging Face hub). The mteb adapter is imported on first use, as importing mteb takes a few seconds.
"""

from __future__ import annotations

from typing import Any

from .offline import (
    CATEGORIES,
    PROFILES,
    TASKS,
    Encoder,
    SentenceTransformerEncoder,
    Task,
    get_task,
    list_tasks,
    plan_suite,
    print_summary,
    run_suite,
    summarize,
)

_MTEB_NAMES = ("DEFAULT_INSTRUCTIONS", "MTEBEncoder", "PAPER_TASKS", "as_mteb_task", "run_mteb")

__all__ = [
    "CATEGORIES",
    "PROFILES",
    "TASKS",
    "Encoder",
    "SentenceTransformerEncoder",
    "Task",
    "get_task",
    "list_tasks",
    "plan_suite",
    "print_summary",
    "run_suite",
    "summarize",
    *_MTEB_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _MTEB_NAMES:
        from . import mteb_adapter

        return getattr(mteb_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
