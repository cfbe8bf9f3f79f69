"""The controlled study: a grid of attention x pooling designs trained and evaluated under one recipe.

:mod:`.config` reads the study TOML, :mod:`.cells` plans and hashes the grid, :mod:`.layers` serves the
layer-wise analysis, :mod:`.runner` runs it all into a folder and :mod:`.report` renders the report (with
:mod:`.noise`, where each Δ's uncertainty comes from, and :mod:`.ranking`, whether the ranking holds).
"""

from __future__ import annotations

from .cells import Cell, cell_hash, layers_hash, plan_cells
from .config import (
    Design,
    EvalSection,
    LayersSection,
    StatsSection,
    Study,
    StudyError,
    default_config_text,
    load_study,
    train_config,
)
from .layers import LayerEncoder, LayerStore
from .report import render_report
from .results import load_results
from .runner import StudyRunner, run_experiment

__all__ = [
    "Cell",
    "Design",
    "EvalSection",
    "LayerEncoder",
    "LayerStore",
    "LayersSection",
    "StatsSection",
    "Study",
    "StudyError",
    "StudyRunner",
    "cell_hash",
    "default_config_text",
    "layers_hash",
    "load_results",
    "load_study",
    "plan_cells",
    "render_report",
    "run_experiment",
    "train_config",
]
