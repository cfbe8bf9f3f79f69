"""Training arguments: one documented dataclass per table of a training config, the checks a run needs, and the
names of the files a run writes.

A config is TOML with the tables ``[model]``, ``[data]``, ``[recipe]``, ``[lora]`` and ``[output]``
(:class:`TrainConfig`). :func:`load_train_config` reads it, applies dotted ``KEY=VALUE`` overrides
(``recipe.lr=1e-4``) and type-checks every key; :func:`write_config` writes it back. Every
:class:`ConfigError` raised here carries ``key``, the dotted key it is about.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbone import resolve_precision
from ..config import (
    NOT_NEGATIVE,
    POSITIVE,
    ConfigError,
    Range,
    apply_overrides,
    build_dataclass,
    override_source,
    read_toml,
    to_toml,
)
from ..data import check_field_map
from ..io import write_text_atomic

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "ENGINE_DIR",
    "FINETUNE_MODES",
    "HARD_NEGATIVES",
    "LOG_FILE",
    "MIXED_PRECISION",
    "MODEL_DIR",
    "RANGES",
    "SCHEDULERS",
    "SUMMARY_FILE",
    "ConfigError",
    "DataSection",
    "LoraSection",
    "ModelSection",
    "OutputSection",
    "RecipeSection",
    "TrainConfig",
    "TrainingDiverged",
    "check_config",
    "load_train_config",
    "write_config",
]

#: One line of JSON per optimiser step, in the output folder.
LOG_FILE = "train_log.jsonl"
#: The run's result (:class:`~poolattn.training.TrainResult` and config), in the output and model folders.
SUMMARY_FILE = "train_summary.json"
HELDOUT_FILE = "heldout.json"
#: The config as TOML, in the output and model folders.
CONFIG_FILE = "train_config.toml"
#: The trained model (what :meth:`EmbeddingModel.load` reads), in the output folder.
MODEL_DIR = "model"
#: ``step-NNNNNNNN`` folders, in the output folder.
CHECKPOINT_DIR = "checkpoints"
#: In a checkpoint: FSDP's or DeepSpeed's own state (accelerate's save_state).
ENGINE_DIR = "engine"
#: ``recipe.mixed_precision`` -> the autocast dtype (``None``: float32).
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: ``recipe.scheduler``: the learning-rate schedules of ``transformers.get_scheduler``.
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
#: ``recipe.finetune``: LoRA adapter, the whole backbone, or the head only.
FINETUNE_MODES = ("lora", "full", "frozen")
#: ``data.hard_negatives`` (``None`` is ``"none"``).
HARD_NEGATIVES = (None, "auto", "none", "random", "mined", "teacher")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class ModelSection:
    """``[model]``: the design being trained (see :meth:`EmbeddingModel.from_backbone`)."""

    #: ``default`` (the packaged SmolLM2-135M), ``smollm2``, ``gemma3``, a hub id or a local folder.
    backbone: str = "default"
    #: ``causal`` or ``bidirectional``.
    attention: str = "bidirectional"
    #: A pooling design (``eos``, ``mean``, ``weighted_mean``, ``latent``, ``trainable``, ``multilayer``).
    pooling: str = "multilayer"
    #: The pooling design's own options (``preset``, ``n_latents``...).
    pooling_options: dict[str, Any] = field(default_factory=dict)
    #: Weights: ``float32``, ``bfloat16`` or ``float16``.
    dtype: str = "float32"
    #: Texts are truncated to this many tokens.
    max_length: int = 128
    #: Only the backbone's first N decoder layers (then its final norm): cheaper steps and encodes; None: all.
    num_layers: int | None = None


@dataclass
class DataSection:
    """``[data]``: the training records."""

    #: A file (JSONL, CSV/TSV, Parquet), a ``datasets`` folder or hub id (``yixuantt/ir_data``), or built-in sets
    #: joined by ``+`` (:mod:`poolattn.sources`: ``mined``, ``movie-dialog``, ``simcse``; ``default`` is ``mined``).
    path: str = "default"
    #: Record field -> the source's column, for sources that name them otherwise (``{ positive = "postive" }``).
    fields: dict[str, str] = field(default_factory=dict)
    #: The split of a ``datasets`` folder or hub dataset.
    split: str = "train"
    #: The hub dataset's revision (a commit, tag or branch; ``None``: the latest).
    revision: str | None = None
    #: Use this many records (a seeded subset); ``None``: all.
    n_pairs: int | None = None
    #: Skip malformed records (counted in the summary) instead of failing on the first.
    skip_bad: bool = False
    #: none | random | mined (TF-IDF) | teacher (the mined set's own): fills records that have no negative;
    #: ``auto`` is each built-in set's choice (mined: teacher, movie-dialog: random, simcse: none) and ``none``
    #: for files. ``None`` (``--set data.hard_negatives=none``) is "none".
    hard_negatives: str | None = "auto"
    #: Given to queries whose record has none (each built-in set has its own).
    instruction: str | None = None
    #: Records set aside (the same for every design of a seed) to measure held-out InfoNCE and top-1 accuracy
    #: against chance before the first step and after the last; 0: none.
    heldout: int = 0
    #: Seeds the subset, the hard negatives and the held-out split (None: ``recipe.seed``), so that the data
    #: sample can stay fixed while the training seed varies, or vary alone.
    seed: int | None = None


@dataclass
class RecipeSection:
    """``[recipe]``: how to train. Give ``steps`` or ``epochs`` (neither: one epoch)."""

    #: Optimiser steps.
    steps: int | None = None
    #: Passes over the records.
    epochs: int | None = None
    #: Records per step, global (all processes together).
    batch_size: int = 32
    #: Turns GradCache on, with forward chunks of at most this many texts.
    mini_batch: int | None = None
    #: Padded tokens of one forward chunk, at most.
    forward_tokens: int = 2048
    #: AdamW learning rate.
    lr: float = 1e-4
    #: The pooling head's learning rate (default: ``lr``).
    head_lr: float | None = None
    #: AdamW weight decay of matrices (vectors are not decayed).
    weight_decay: float = 0.01
    #: AdamW's second-moment decay (None: torch's 0.999). Over a few dozen steps 0.999 averages every squared
    #: gradient since the first, so one early outlier batch damps every later update; 0.95 forgets it.
    adam_beta2: float | None = None
    #: Steps of linear warm-up.
    warmup_steps: int = 0
    #: One of :data:`SCHEDULERS`.
    scheduler: str = "linear"
    #: Clip the gradient norm to this (``None``: no clipping).
    max_grad_norm: float | None = 1.0
    #: InfoNCE logits are cosine x ``scale``.
    scale: float = 20.0
    #: Average the loss with the positive -> query direction.
    symmetric: bool = False
    #: Add the other queries as candidates.
    query_query: bool = False
    #: One of :data:`FINETUNE_MODES`: lora | full | frozen.
    finetune: str = "lora"
    #: Recompute the backbone's activations in the backward pass (less memory, more compute).
    gradient_checkpointing: bool = False
    #: no | bf16 | fp16 autocast (``auto``: bf16 where it measures faster than float32 here, else no).
    mixed_precision: str = "no"
    #: Seeds the head's and adapter's initialisation and dropout; and the data order and the data sample unless
    #: ``order_seed`` / ``data.seed`` are set.
    seed: int = 0
    #: Seeds the order the records are seen in (None: ``seed``).
    order_seed: int | None = None

    def __post_init__(self) -> None:
        if self.mixed_precision == "auto":  # bf16 autocast where it measures faster here
            self.mixed_precision = resolve_precision("auto", "bf16", "no")


@dataclass
class LoraSection:
    """``[lora]``: the LoRA adapter (``recipe.finetune = "lora"``)."""

    #: Rank.
    r: int = 16
    #: Scaling numerator (the update is scaled by ``alpha / r``).
    alpha: int = 32
    #: Dropout on the adapter's input, in [0, 1).
    dropout: float = 0.1
    #: ``"all-linear"`` (as in the paper) or a list of module names.
    target_modules: str | list[str] = "all-linear"
    #: Adapt only the last N decoder layers (``None``: all); backward then stops at the lowest adapted layer. On
    #: SmolLM2 (2 CPU cores, 16 mined pairs a step) the top 10 of 30 made a step 2.5x faster (0.63 s vs 1.57 s),
    #: but the EOS design learned less: held-out InfoNCE 0.92 x chance after 32 steps, against 0.65 with all layers.
    top_layers: int | None = None


@dataclass
class OutputSection:
    """``[output]``: where results go; none of it changes the trained weights."""

    #: The output folder (model, log, summary, config, checkpoints).
    dir: str = "runs/train"
    #: Write a checkpoint every this many steps (0: only at the end).
    checkpoint_every: int = 0
    #: Keep this many of the latest checkpoints.
    keep_checkpoints: int = 1
    #: A rerun resumes from the latest checkpoint (``false``: starts over).
    resume: bool = True
    #: Fold the adapter into the saved weights.
    merge: bool = False
    #: Also log to TensorBoard (``output.dir/tensorboard``).
    tensorboard: bool = False


@dataclass
class TrainConfig:
    """A complete training run; sections mirror the TOML tables ``[model]``, ``[data]``, ``[recipe]``,
    ``[lora]``, ``[output]``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    recipe: RecipeSection = field(default_factory=RecipeSection)
    lora: LoraSection = field(default_factory=LoraSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self) -> None:
        check_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def data_seed(self) -> int:
        """The seed of the data sample: ``data.seed``, else ``recipe.seed``."""
        return self.recipe.seed if self.data.seed is None else self.data.seed

    @property
    def order_seed(self) -> int:
        """The seed of the data order: ``recipe.order_seed``, else ``recipe.seed``."""
        return self.recipe.seed if self.recipe.order_seed is None else self.recipe.order_seed

    def hash(self) -> str:
        """Hash of what determines the trained weights (every section but ``output``; options that are unset
        leave it as it was before they existed)."""
        payload = {k: v for k, v in asdict(self).items() if k != "output"}
        for section, key in UNSET_IF_NONE:
            if payload[section].get(key, 0) is None:
                del payload[section][key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


#: Keys left out of :meth:`TrainConfig.hash` while they are None.
UNSET_IF_NONE = (("data", "seed"), ("recipe", "order_seed"), ("recipe", "adam_beta2"), ("model", "num_layers"))


#: Every numeric key of a training config and the values it takes (finite; ``None`` where the key allows it).
RANGES: dict[str, Range] = {
    "model.max_length": Range(2),
    "data.n_pairs": POSITIVE,
    "data.heldout": NOT_NEGATIVE,
    "recipe.steps": POSITIVE,
    "recipe.epochs": POSITIVE,
    "recipe.batch_size": POSITIVE,
    "recipe.mini_batch": POSITIVE,
    "recipe.forward_tokens": POSITIVE,
    "recipe.lr": POSITIVE,
    "recipe.head_lr": POSITIVE,
    "recipe.weight_decay": NOT_NEGATIVE,
    "recipe.adam_beta2": Range(0, 1, high_open=True),
    "recipe.warmup_steps": NOT_NEGATIVE,
    "recipe.max_grad_norm": POSITIVE,
    "recipe.scale": POSITIVE,
    "recipe.seed": Range(0, 2**32 - 1),  # numpy's seed range
    "recipe.order_seed": Range(0, 2**32 - 1),
    "data.seed": Range(0, 2**32 - 1),
    "model.num_layers": POSITIVE,
    "lora.r": POSITIVE,
    "lora.alpha": POSITIVE,
    "lora.dropout": Range(0, 1, high_open=True),
    "lora.top_layers": POSITIVE,
    "output.checkpoint_every": NOT_NEGATIVE,
    "output.keep_checkpoints": POSITIVE,
}


#: The longest ``data.instruction``, in characters (it is prepended to every query).
MAX_INSTRUCTION = 4096


def check_config(config: TrainConfig) -> None:
    """Reject values no run could use, naming the key (also in the error's ``key``): every numeric key against
    :data:`RANGES`, then the choices and combinations."""
    recipe = config.recipe
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        allowed.check(key, getattr(getattr(config, section), name))
    if not config.output.dir.strip():
        raise ConfigError("output.dir is empty; name the run's folder (e.g. runs/train)", key="output.dir")
    if config.data.instruction is not None and len(config.data.instruction) > MAX_INSTRUCTION:
        raise ConfigError(
            f"data.instruction is {len(config.data.instruction)} characters; at most {MAX_INSTRUCTION}",
            key="data.instruction",
        )
    if recipe.steps is not None and recipe.epochs is not None:
        raise ConfigError("give recipe.steps or recipe.epochs, not both", key="recipe.steps")
    choices = {
        "recipe.finetune": (recipe.finetune, FINETUNE_MODES),
        "recipe.mixed_precision": (recipe.mixed_precision, tuple(MIXED_PRECISION)),
        "recipe.scheduler": (recipe.scheduler, SCHEDULERS),
        "data.hard_negatives": (config.data.hard_negatives, HARD_NEGATIVES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}; choose one of {list(allowed)}", key=key)
    try:
        check_field_map(config.data.fields)
    except ValueError as err:
        raise ConfigError(f"data.fields: {err}", key="data.fields") from None


def load_train_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file (or the defaults) and ``key=value`` overrides with dotted keys
    (``recipe.lr=1e-4``, ``model.pooling_options.preset=paper``). Values are TOML (bare words are strings,
    ``none`` unsets); every value is type-checked and an unknown key is an error naming it. Errors about a key
    start with the source (the file's path, or ``defaults``)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw, _ = read_toml(path)
    applied = apply_overrides(raw, overrides)
    try:
        return build_dataclass(TrainConfig, raw)
    except ConfigError as err:
        raise ConfigError(f"{override_source(err.key, applied) or source}: {err}", key=err.key) from None


def write_config(config: TrainConfig, path: Path) -> None:
    """The config as TOML (unset values omitted), written atomically."""
    write_text_atomic(path, to_toml(config.to_dict()))
