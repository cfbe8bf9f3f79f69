"""One entry point for scoring a model: the offline suite or mteb, under the evaluation's precision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..backbone import autocast_precision
from .encoders import Encoder
from .offline import run_suite

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
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Score ``encoder`` on ``suite`` under ``precision``'s autocast on ``device``; one JSON per task in ``output``.

    ``offline``: :func:`~.offline.run_suite` on ``tasks`` (default: the whole suite) at ``profile``.
    ``mteb``: :func:`~.mteb_adapter.run_mteb` on ``tasks`` or ``benchmark``, labelled ``model_id`` and
    ``config_hash``. ``model_id`` and ``config_hash`` default to the encoder's name and config hash;
    ``progress=None`` keeps each runner's default (shown). Returns the per-task result dicts.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {list(SUITES)}")
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
                progress=shown,
            )
        from .mteb_adapter import run_mteb  # importing mteb takes seconds

        results = run_mteb(
            encoder,
            tasks,
            benchmark,
            output,
            instructions=instructions,
            model_name=model_id,
            revision=config_hash,
            progress=shown,
        )
        return results or []
