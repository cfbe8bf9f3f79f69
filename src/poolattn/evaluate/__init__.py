"""Evaluation: the offline suite over shipped data and the mteb 2 adapter (:mod:`.mteb_adapter`).

:func:`evaluate_model` scores a model on either suite under an evaluation precision. The offline suite is
split by concern: :mod:`.encoders` (what is scored), :mod:`.tasks` (the task registry and its data, built
by :mod:`.builders`), :mod:`.scorers` (MTEB's protocol once per category) and :mod:`.offline` (the runner:
``run_suite(encoder, output_dir, profile="full"|"quick")``). ``run_mteb(encoder, tasks, benchmark,
output_dir)`` runs mteb's own tasks (they need the Hugging Face hub). The mteb adapter is imported on first
use, as importing mteb takes a few seconds.
"""

from __future__ import annotations

from typing import Any

from .encoders import Encoder, SentenceTransformerEncoder
from .offline import plan_suite, print_summary, run_suite, summarize
from .run import SUITES, evaluate_model
from .tasks import CATEGORIES, PROFILES, TASKS, Task, get_task, list_tasks

_MTEB_NAMES = ("DEFAULT_INSTRUCTIONS", "MTEBEncoder", "PAPER_TASKS", "as_mteb_task", "run_mteb")

__all__ = [
    "CATEGORIES",
    "PROFILES",
    "SUITES",
    "TASKS",
    "Encoder",
    "SentenceTransformerEncoder",
    "Task",
    "evaluate_model",
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
