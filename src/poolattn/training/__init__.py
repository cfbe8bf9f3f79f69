"""Contrastive training of an :class:`~poolattn.EmbeddingModel`: one loop for every attention and pooling design.

* :mod:`~poolattn.training.config`: the training config (``[model]``, ``[data]``, ``[recipe]``, ``[lora]``,
  ``[output]``), its checks and the names of the files a run writes;
* :mod:`~poolattn.training.contrastive`: one step's InfoNCE loss and gradients, plain or GradCache;
* :mod:`~poolattn.training.distributed`: several processes under accelerate (DDP, FSDP, DeepSpeed ZeRO-2);
* :mod:`~poolattn.training.records`: the records a run trains on and a global batch's layout;
* :mod:`~poolattn.training.trainer`: the run (set-up, step loop, checkpoints, resume, the saved model);
* :mod:`~poolattn.training.adapt` (with :mod:`~poolattn.training.mntp` and
  :mod:`~poolattn.training.adapt_config`): LLM2Vec's unsupervised adaptation of a backbone (MNTP, then SimCSE).

Run: ``poolattn train CONFIG.toml [--set recipe.lr=1e-4 ...]`` or, on several devices,
``accelerate launch --config_file configs/accelerate/ddp.yaml -m poolattn train CONFIG.toml`` (also
``fsdp.yaml``, ``deepspeed_zero2.yaml``; on CPUs: ``torchrun --nproc_per_node 2 -m poolattn train CONFIG.toml``).
The output folder holds ``model/`` (what :meth:`EmbeddingModel.load` reads), ``train_log.jsonl`` (one line per
step), ``train_summary.json``, ``train_config.toml`` and ``checkpoints/`` (a rerun resumes from the latest).
"""

from __future__ import annotations

from .adapt import adapt
from .adapt_config import ADAPT_SUMMARY, AdaptConfig, load_adapt_config
from .config import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ENGINE_DIR,
    LOG_FILE,
    MODEL_DIR,
    SUMMARY_FILE,
    ConfigError,
    DataSection,
    LoraSection,
    ModelSection,
    OutputSection,
    RecipeSection,
    TrainConfig,
    TrainingDiverged,
    load_train_config,
    write_config,
)
from .contrastive import info_nce
from .records import load_training_records
from .trainer import Trainer, TrainResult, build_model, train

__all__ = [
    "ADAPT_SUMMARY",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "ENGINE_DIR",
    "LOG_FILE",
    "MODEL_DIR",
    "SUMMARY_FILE",
    "AdaptConfig",
    "ConfigError",
    "DataSection",
    "LoraSection",
    "ModelSection",
    "OutputSection",
    "RecipeSection",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "adapt",
    "build_model",
    "info_nce",
    "load_adapt_config",
    "load_train_config",
    "load_training_records",
    "train",
    "write_config",
]
