"""The config of LLM2Vec's unsupervised adaptation (``poolattn adapt``, a study's ``[adapt]`` table) and the texts
it reads.

A config is TOML with the keys of :class:`AdaptConfig` at the top level (``[lora]`` as a table); ``--set
key=value`` overrides any of them (``--set steps=30``, ``--set lora.r=8``). Every :class:`ConfigError` raised
here carries ``key``, the dotted key it is about.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbone import PRECISIONS
from ..config import ConfigError, apply_overrides, build_dataclass, override_source, read_toml, to_toml
from ..data import DataError, movie_dialog_pairs, read_records
from ..io import write_text_atomic
from .config import LoraSection

#: In the output folder: the run's result, written last (its presence marks a finished adaptation).
ADAPT_SUMMARY = "adapt_summary.json"
#: In the output folder: the config as TOML.
ADAPT_CONFIG_FILE = "adapt_config.toml"
#: In the output folder: one line of JSON per MNTP step.
ADAPT_LOG = "adapt_log.jsonl"
#: Keys that change where and how often a run checkpoints, not the adapted weights.
NOT_HASHED = ("checkpoint_every", "keep_checkpoints")


def default_adapt_lora() -> LoraSection:
    """LLM2Vec's MNTP adapter: rank 16, alpha 32, dropout 0.05, every linear layer."""
    return LoraSection(r=16, alpha=32, dropout=0.05)


@dataclass
class AdaptConfig:
    """LLM2Vec's unsupervised adaptation: masked next-token prediction (MNTP) under bidirectional attention with a
    LoRA adapter, folded into the backbone (or kept as an adapter), then optionally unsupervised SimCSE."""

    #: ``default`` (the packaged SmolLM2-135M), ``smollm2``, ``gemma3``, a hub id or a local folder. In a study:
    #: the study's ``model.backbone``.
    backbone: str = "default"
    #: Weights: ``float32``, ``bfloat16`` or ``float16`` (in a study: ``model.dtype``).
    dtype: str = "float32"
    #: ``default``: the lines of the movie-dialogue *train* split (never evaluation text); or a file: ``.txt``
    #: (one text a line) or training records (JSONL, CSV/TSV, Parquet; their queries, positives and negatives).
    data: str = "default"
    #: Use this many training texts (a seeded subset); ``None``: all.
    n_texts: int | None = None
    #: Texts set aside before training, on which the masked-token loss and accuracy are measured before and after.
    heldout: int = 256
    #: MNTP optimiser steps.
    steps: int = 200
    #: Texts per MNTP step.
    batch_size: int = 16
    #: AdamW learning rate of the MNTP adapter (linear decay to 0 after the warm-up).
    lr: float = 2e-4
    #: Steps of linear warm-up.
    warmup_steps: int = 0
    #: Clip the gradient norm to this (``None``: no clipping).
    max_grad_norm: float | None = 1.0
    #: The share of eligible tokens (not special, not the first) that are masked (LLM2Vec: 0.2 for most models).
    mask_probability: float = 0.2
    #: ``auto``: the tokenizer's mask token, else ``_`` (LLM2Vec's choice); or any text that is a single token.
    mask_token: str = "auto"
    #: Texts are truncated to this many tokens.
    max_length: int = 64
    #: auto | fp32 | bf16: bf16 autocast for the matmuls (``auto``: where the hardware has native bfloat16).
    precision: str = "auto"
    #: The LoRA adapter of both stages (``r``, ``alpha``, ``dropout``, ``target_modules``).
    lora: LoraSection = field(default_factory=default_adapt_lora)
    #: Fold the adapter into the saved weights; ``false`` saves the adapter alone, folded in when loaded.
    merge: bool = True
    #: Unsupervised SimCSE steps after MNTP (each text against itself, dropout as the noise); 0: none.
    simcse_steps: int = 0
    #: Texts per SimCSE step (each text's second view is its positive, the others' are the negatives).
    simcse_batch_size: int = 32
    #: SimCSE's learning rate.
    simcse_lr: float = 3e-5
    #: SimCSE's attention dropout (LLM2Vec: 0.3); the LoRA adapter's own dropout applies as well.
    simcse_dropout: float = 0.3
    #: Seeds the held-out split, the data order, the masks, the adapter's initialisation and dropout.
    seed: int = 0
    #: Write a checkpoint every this many steps (0: none); a rerun resumes from the latest.
    checkpoint_every: int = 50
    #: Keep this many of the latest checkpoints.
    keep_checkpoints: int = 1

    def __post_init__(self) -> None:
        check_adapt_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """Hash of what determines the adapted weights (checkpointing excluded; a data file by its content)."""
        payload = {k: v for k, v in asdict(self).items() if k not in NOT_HASHED}
        path = Path(self.data)
        if self.data != "default" and path.is_file():
            payload["data_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_adapt_config(config: AdaptConfig) -> None:
    """Reject values no run could use, naming the key (also in the error's ``key``)."""
    positive = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "simcse_batch_size": config.simcse_batch_size,
        "simcse_lr": config.simcse_lr,
        "keep_checkpoints": config.keep_checkpoints,
        "lora.r": config.lora.r,
        "n_texts": config.n_texts,
        "max_grad_norm": config.max_grad_norm,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}", key=key)
    for key, value in {
        "heldout": config.heldout,
        "warmup_steps": config.warmup_steps,
        "simcse_steps": config.simcse_steps,
        "checkpoint_every": config.checkpoint_every,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must not be negative, got {value}", key=key)
    if not 0.0 < config.mask_probability < 1.0:
        raise ConfigError(f"mask_probability must be in (0, 1), got {config.mask_probability}", key="mask_probability")
    if not 0.0 <= config.simcse_dropout < 1.0:
        raise ConfigError(f"simcse_dropout must be in [0, 1), got {config.simcse_dropout}", key="simcse_dropout")
    if not 0.0 <= config.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {config.lora.dropout}", key="lora.dropout")
    if config.max_length < 4:
        raise ConfigError(f"max_length must be at least 4, got {config.max_length}", key="max_length")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision = {config.precision!r}; choose one of {list(PRECISIONS)}", key="precision")
    if not config.mask_token:
        raise ConfigError("mask_token must not be empty", key="mask_token")


def load_adapt_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> AdaptConfig:
    """An :class:`AdaptConfig` from a TOML file (or the defaults) and ``key=value`` overrides (``steps=30``,
    ``lora.r=8``); every value is type-checked and an unknown key is an error naming it. Errors start with the
    source (the file's path, or ``defaults``)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw, _ = read_toml(path, "adapt config")
    overridden: dict[str, str] = {}
    try:
        overridden = apply_overrides(raw, overrides)
        return build_dataclass(AdaptConfig, raw)
    except ConfigError as err:
        where = override_source(err.key, overridden) or source
        raise ConfigError(f"{where}: {err}", key=err.key) from None


def write_adapt_config(config: AdaptConfig, path: Path) -> None:
    """The config as TOML (unset values omitted), written atomically."""
    write_text_atomic(path, to_toml(config.to_dict()))


# ---------------------------------------------------------------------------------------------------- texts
def source_texts(data: str) -> list[str]:
    """Every text of ``data`` (see :attr:`AdaptConfig.data`), in source order."""
    if data == "default":
        return [text for pair in movie_dialog_pairs("train") for text in pair]
    path = Path(data)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    records = read_records(path).records
    return [text for r in records for text in (r.query, r.positive, *r.negatives)]


@dataclass
class AdaptTexts:
    """The training texts and the held-out texts of a run (disjoint, each without duplicates)."""

    train: list[str]
    heldout: list[str]
    source: str

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text in [*self.train, "\x00", *self.heldout]:
            digest.update(text.encode("utf-8") + b"\n")
        return digest.hexdigest()[:16]


def adapt_texts(config: AdaptConfig) -> AdaptTexts:
    """Unique non-blank texts of ``config.data``, shuffled by the seed: the first ``heldout`` are held out, the
    next ``n_texts`` (default: all) train."""
    unique = list(dict.fromkeys(t.strip() for t in source_texts(config.data) if t.strip()))
    order = np.random.default_rng([config.seed, 2]).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    heldout, rest = shuffled[: config.heldout], shuffled[config.heldout :]
    train = rest if config.n_texts is None else rest[: config.n_texts]
    if len(train) < config.batch_size:
        raise DataError(
            f"{config.data}: {len(unique)} distinct texts leave {len(train)} to train on after {config.heldout} held "
            f"out, fewer than one batch of {config.batch_size}"
        )
    return AdaptTexts(train, heldout, config.data)
