"""One entry point for scoring a model: the offline suite or mteb, under the evaluation's precision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..backbone import autocast_precision, resolve_precision
from .encoders import Encoder
from .offline import run_suite, select_tasks
from .tasks import PROFILES

#: Where a model can be scored: the offline suite over shipped data, or mteb's own tasks.
SUITES = ("offline", "mteb")


def evaluate_model(
    encoder: Encoder,
    output: Path,
    *,
    suite: str,
    precision: str,
    device: torch.device | str,
    tasks: Sequence[str] | None = None,
    benchmark: str | None = None,
    profile: str = "full",
    model_id: str | None = None,
    config_hash: str | None = None,
    instructions: Mapping[str, str | None] | None = None,
    experiment: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    samples: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Score ``encoder`` on ``suite`` under ``precision``'s autocast on ``device``; one JSON per task in ``output``.

    ``offline``: :func:`~.offline.run_suite` on ``tasks`` (default: the whole suite) at ``profile`` (``samples``:
    per-task sample sizes in place of the profile's).
    ``mteb``: :func:`~.mteb_adapter.run_mteb` on ``tasks`` or ``benchmark``, labelled ``model_id`` and
    ``config_hash`` (an mteb experiment of ``model_id`` given ``experiment``). ``model_id`` and ``config_hash``
    default to the encoder's name and config hash; ``progress=None`` keeps each runner's default (shown). Each
    result records the precision (``auto`` resolved), and a stored one is reused only for the same precision and
    weights. Returns the per-task result dicts.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {list(SUITES)}")
    precision = resolve_precision(precision)
    shown = True if progress is None else progress
    with autocast_precision(precision, device):
        if suite == "offline":
            return run_suite(
                encoder,
                output,
                tasks=tasks,
                profile=profile,  # type: ignore[arg-type]
                model_id=model_id,
                config_hash=config_hash,
                instructions=instructions,
                precision=precision,
                progress=shown,
                samples=samples,
            )
        from .mteb_adapter import run_mteb  # importing mteb takes seconds

        results = run_mteb(
            encoder,
            tasks,
            benchmark,
            output,
            instructions=instructions,
            model_name=model_id,
            config_hash=config_hash,
            precision=precision,
            experiment=experiment,
            progress=shown,
        )
        return results or []


def check_request(
    suite: str, tasks: Sequence[str] | None = None, benchmark: str | None = None, profile: str = "full"
) -> None:
    """Refuse, before any model is loaded, a request that cannot run, in one line: an unknown suite, profile, task
    or benchmark, an optional task whose data is not installed (WordNet), or mteb tasks whose data sets can be
    neither read from the local cache nor fetched from the hub."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if suite == "mteb":
        from .mteb_adapter import check_mteb_data, select_mteb_tasks

        check_mteb_data(select_mteb_tasks(tasks, benchmark))
        return
    if benchmark is not None:
        raise ValueError(f"benchmark {benchmark!r} names mteb tasks: score it with the mteb suite")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    try:
        select_tasks(tasks, profile)  # type: ignore[arg-type]
    except KeyError as err:
        raise ValueError(err.args[0]) from None
