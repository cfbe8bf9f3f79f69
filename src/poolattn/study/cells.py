"""The grid of a study: one *cell* per (design, seed), named and hashed by everything that determines its results.

A cell's folder is found again by its hash, so a rerun skips finished cells and a changed design, recipe or
evaluation is recomputed alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..evaluate.offline import select_tasks
from ..evaluate.tasks import get_task
from .config import Design, Study, adapt_config

#: A design that pools like this (untrained, no options) equals one layer of the layer-wise analysis.
LAYER_REDUCTION_OF_POOLING = {"eos": "last", "mean": "mean"}
#: Tasks the layer-wise analysis scores when neither it nor an offline evaluation names any: every category but
#: clustering, whose k-means runs dominate the scoring time (30 layers x 10 bootstrap runs each).
DEFAULT_LAYER_TASKS = (
    "WordSim353STS",
    "SimLex999STS",
    "LeeDocSTS",
    "TRECCoarseClassification",
    "TweetPolarityClassification",
    "MovieDialogReplyPairClassification",
    "MovieDialogReplyReranking",
    "MovieDialogReplyRetrieval",
    "NewsLeadRetrieval",
)


@dataclass
class Cell:
    """One (design, seed) of the grid; ``seed`` is None for an untrained design without parameters."""

    design: Design
    seed: int | None
    hash: str

    @property
    def name(self) -> str:
        return self.design.name if self.seed is None else f"{self.design.name}-s{self.seed}"


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_identity(study: Study) -> dict[str, Any]:
    """The data section plus the content hash of a local data file (so an edited file is noticed)."""
    identity = asdict(study.data)
    path = Path(study.data.path)
    if path.is_file():
        identity["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return identity


def eval_identity(study: Study) -> dict[str, Any]:
    return asdict(study.eval)


def cell_hash(study: Study, design: Design, seed: int | None) -> str:
    """Hash of everything that determines a cell's results: the design, the shared model settings, the
    evaluation, the seed and, for a design that trains, the data and the recipe (checkpointing excluded), and the
    adaptation it starts from (when it starts from an adapted backbone)."""
    payload: dict[str, Any] = {
        "design": design.identity(),
        "model": study.model_table(),
        "eval": eval_identity(study),
        "seed": seed,
    }
    if design.train:
        train = study.train_table()
        recipe = {k: v for k, v in train.items() if k not in ("checkpoint_every", "keep_checkpoints")}
        payload.update(data=data_identity(study), train=recipe, lora=asdict(study.lora))
    if seed is not None and study.adapted(design):
        payload["adapt"] = adapt_config(study, seed).hash()
    return digest(payload)


def plan_cells(study: Study, parameters: Mapping[str, int] | None = None) -> list[Cell]:
    """The grid in run order: untrained designs first, then each seed's trained designs.

    ``parameters`` (design -> number of pooler parameters) makes an untrained design with a parameter-free
    pooler a single seed-independent cell; without it every untrained design is treated as parameter-free.
    """
    parameters = parameters or {}
    cells: list[Cell] = []
    for design in study.designs:
        if not design.train and parameters.get(design.name, 0) == 0:
            cells.append(Cell(design, None, cell_hash(study, design, None)))
    for seed in study.seeds:
        for design in study.designs:
            if design.train or parameters.get(design.name, 0) > 0:
                cells.append(Cell(design, seed, cell_hash(study, design, seed)))
    return cells


def layers_hash(study: Study) -> str:
    """Hash of the layer-wise analysis: the shared model settings, its own section and the instructions."""
    return digest(
        {
            "model": study.model_table(),
            "layers": asdict(study.layers),
            "eval_profile": study.eval.profile,
            "instructions": study.eval.instructions,
            "precision": study.eval.precision,
            "tasks": layer_tasks(study),
        }
    )


def layer_tasks(study: Study) -> list[str]:
    """``layers.tasks``, else the offline evaluation's tasks without clustering, else :data:`DEFAULT_LAYER_TASKS`."""
    if study.layers.tasks is not None:
        wanted = study.layers.tasks
    elif study.eval.suite == "offline":
        selected = select_tasks(study.eval.tasks, study.eval.profile)  # type: ignore[arg-type]
        wanted = [t.name for t in selected if t.category != "clustering"]
    else:
        wanted = list(DEFAULT_LAYER_TASKS)
    return [t for t in wanted if get_task(t).available()]


def layers_profile(study: Study) -> str:
    return study.layers.profile or study.eval.profile


def shares_layer_pass(study: Study, design: Design) -> bool:
    """Whether ``design`` (untrained, no options) equals a layer of the layer-wise analysis, so its evaluation
    embeddings come from the same forward passes."""
    reduction = "last" if study.layers.attention == "causal" else "mean"
    return (
        study.layers.enabled
        and study.eval.suite == "offline"
        and study.model.num_layers is None  # the layer pass runs the whole backbone
        and not design.train
        and not design.options
        and design.attention == study.layers.attention
        and LAYER_REDUCTION_OF_POOLING.get(design.pooling) == reduction
    )
