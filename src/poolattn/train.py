"""Contrastive training of an :class:`~poolattn.EmbeddingModel`: one loop for every attention and pooling design.

The loss is InfoNCE: each query against its positive, every other positive of the *global* batch and every
hard negative (cosine x ``scale``, cross-entropy); texts identical to a query's positive are masked out as
candidates, so duplicates are never pushed apart. Two ways to compute a step's gradients give the same result:

* plain: embed the process's texts with autograd graphs kept, gather, loss, backward;
* GradCache (``mini_batch``): embed in chunks without graphs, gather, take the loss's gradient w.r.t. the
  embeddings, then re-embed chunk by chunk with graphs and back-propagate ``embedding . cached_gradient``. The
  RNG state of each chunk is captured on the first pass and replayed, so dropout masks match. The negative pool
  is the whole global batch while activation memory is bounded by one chunk (the reference's gradient
  accumulation saw only 16 candidates per query).

Texts are embedded in length-sorted chunks cut where padding would cost more than another forward pass
(``forward_tokens`` padded tokens at most, ``mini_batch`` texts at most), so little compute goes to padding.

Several processes (``accelerate launch``) each embed their slice of the global batch; embeddings are
all-gathered, every process computes the same global loss and back-propagates it through its own rows.
accelerate's engine (DDP, FSDP or DeepSpeed ZeRO-2, as its config says) synchronises the gradients once per
step, at the last chunk's backward, scaled so that N processes x b examples equal one process x N*b.

Run: ``python -m poolattn.train CONFIG.toml [--set recipe.lr=1e-4 ...]`` or, on several devices,
``accelerate launch --config_file configs/accelerate/ddp.yaml -m poolattn train CONFIG.toml`` (also
``fsdp.yaml``, ``deepspeed_zero2.yaml``; on CPUs: ``torchrun --nproc_per_node 2 -m poolattn train CONFIG.toml``).
The output folder holds ``model/`` (what
:meth:`EmbeddingModel.load` reads), ``train_log.jsonl`` (one line per step), ``train_summary.json``,
``train_config.toml`` and ``checkpoints/`` (a rerun resumes from the latest).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import tomllib
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import resolve_precision
from .data import (
    DEFAULT_INSTRUCTION,
    DataOrder,
    ReadResult,
    TrainRecord,
    add_hard_negatives,
    default_training_set,
    read_records,
)
from .data import subset as record_subset
from .model import EmbeddingModel, Tokenized

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
CONFIG_FILE = "train_config.toml"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
ENGINE_DIR = "engine"  # in a checkpoint: FSDP's or DeepSpeed's own state (accelerate's save_state)
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
#: Fixed cost of one forward + backward pass, in padded tokens, by device type (see :func:`plan_chunks`). CPU:
#: measured on SmolLM2-135M with LoRA, 16 pairs a step: 128 makes a step 1.5x faster than 16 (fewer chunks).
CHUNK_OVERHEAD_TOKENS = {"cpu": 128.0, "default": 512.0}


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the key."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


# =========================================================================================== configuration
@dataclass
class ModelSection:
    """The design being trained (see :meth:`EmbeddingModel.from_backbone`); ``backbone = "default"`` is the
    packaged SmolLM2-135M."""

    backbone: str = "default"
    attention: str = "bidirectional"
    pooling: str = "multilayer"
    pooling_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    max_length: int = 128


@dataclass
class DataSection:
    """Training records: ``path`` is a file (JSONL, CSV/TSV, Parquet), a ``datasets`` folder or name, or
    ``"default"`` (the movie-dialog train split). ``hard_negatives`` (none | random | mined) fills records that
    have no negative; ``auto`` means ``random`` for the default set and ``none`` for files. ``instruction`` is
    given to queries whose record has none (the default set's is :data:`poolattn.data.DEFAULT_INSTRUCTION`)."""

    path: str = "default"
    n_pairs: int | None = None
    skip_bad: bool = False
    hard_negatives: str | None = "auto"  # None (``--set data.hard_negatives=none``) is "none"
    instruction: str | None = None


@dataclass
class RecipeSection:
    """How to train. ``batch_size`` is global (all processes); ``mini_batch`` turns GradCache on with chunks of
    that many texts; ``forward_tokens`` bounds the padded tokens of one forward chunk. Give ``steps`` or
    ``epochs`` (neither: one epoch). ``head_lr`` defaults to ``lr``. ``finetune``: lora | full | frozen."""

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    mini_batch: int | None = None
    forward_tokens: int = 2048
    lr: float = 1e-4
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 0
    scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    scale: float = 20.0
    symmetric: bool = False
    query_query: bool = False
    finetune: str = "lora"
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mixed_precision == "auto":  # bf16 autocast where this machine computes bfloat16 natively
            self.mixed_precision = resolve_precision("auto", "bf16", "no")


@dataclass
class LoraSection:
    """The LoRA adapter (``finetune = "lora"``); ``target_modules = "all-linear"`` as in the paper."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: str | list[str] = "all-linear"


@dataclass
class OutputSection:
    """Where results go. ``checkpoint_every`` steps (0: only at the end) a checkpoint is written; a rerun
    resumes from the latest unless ``resume = false``. ``merge`` folds the adapter into the saved weights."""

    dir: str = "runs/train"
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    resume: bool = True
    merge: bool = False
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

    def hash(self) -> str:
        """Hash of what determines the trained weights (every section but ``output``)."""
        payload = {k: v for k, v in asdict(self).items() if k != "output"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_config(config: TrainConfig) -> None:
    """Reject values no run could use, naming the key."""
    recipe, output = config.recipe, config.output
    positive = {
        "recipe.batch_size": recipe.batch_size,
        "recipe.forward_tokens": recipe.forward_tokens,
        "recipe.steps": recipe.steps,
        "recipe.epochs": recipe.epochs,
        "recipe.mini_batch": recipe.mini_batch,
        "recipe.lr": recipe.lr,
        "recipe.scale": recipe.scale,
        "lora.r": config.lora.r,
        "output.keep_checkpoints": output.keep_checkpoints,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key, value in {
        "recipe.warmup_steps": recipe.warmup_steps,
        "recipe.weight_decay": recipe.weight_decay,
        "output.checkpoint_every": output.checkpoint_every,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must not be negative, got {value}")
    if recipe.steps is not None and recipe.epochs is not None:
        raise ConfigError("give recipe.steps or recipe.epochs, not both")
    choices = {
        "recipe.finetune": (recipe.finetune, tuple(FINETUNE_MODES)),
        "recipe.mixed_precision": (recipe.mixed_precision, tuple(MIXED_PRECISION)),
        "recipe.scheduler": (recipe.scheduler, SCHEDULERS),
        "data.hard_negatives": (config.data.hard_negatives, (None, "auto", "none", "random", "mined")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}; choose one of {list(allowed)}")
    if not 0.0 <= config.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {config.lora.dropout}")


def load_train_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file (or the defaults) and ``key=value`` overrides with dotted keys
    (``recipe.lr=1e-4``, ``model.pooling_options.preset=paper``). Values are TOML (bare words are strings,
    ``none`` unsets); every value is type-checked and an unknown key is an error naming it."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        set_dotted(raw, key.strip(), parse_value(text.strip()))
    return build_dataclass(TrainConfig, raw, source, "")


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``"x"``, ``[1, 2]``); ``none``/``null`` is None; else the text."""
    words = {"none": None, "null": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a table")
        tree = node
    tree[leaf] = value


def build_dataclass(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Instantiate nested config dataclasses from plain data, type-checking every value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'; known keys: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if is_dataclass(hint):
            values[name] = build_dataclass(hint, value, source, f"{prefix}{name}.")
        else:
            values[name] = check_type(value, hint, f"{source}: {prefix}{name}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it matches ``hint`` (ints are accepted as floats), else a :class:`ConfigError`."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {value!r} is not {type_name(hint)}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r} is not {type_name(hint)}")
        return [check_type(v, get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r} is not a table")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r} is not int")
    if not isinstance(value, hint):
        raise ConfigError(f"{where} = {value!r} is not {type_name(hint)}")
    return value


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def write_config(config: TrainConfig, path: Path) -> None:
    """The config as TOML (unset values omitted), written atomically."""
    import tomli_w

    def prune(tree: dict[str, Any]) -> dict[str, Any]:
        return {k: prune(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}

    write_atomic(path, tomli_w.dumps(prune(config.to_dict())))


# ================================================================================================ data
def read_training_data(config: TrainConfig) -> ReadResult:
    """The records ``config.data`` names (the default set or a validated file/dataset), and the skipped ones."""
    data, seed = config.data, config.recipe.seed
    if data.path == "default":
        records = default_training_set(
            data.n_pairs,
            seed=seed,
            hard_negatives="random" if data.hard_negatives == "auto" else data.hard_negatives or "none",
            instruction=data.instruction or DEFAULT_INSTRUCTION,
        )
        return ReadResult(records, [], "default")
    result = read_records(data.path, skip_bad=data.skip_bad, instruction=data.instruction)
    records = add_hard_negatives(
        record_subset(result.records, data.n_pairs, seed),
        "none" if data.hard_negatives in (None, "auto") else data.hard_negatives,
        seed,
    )
    return ReadResult(records, result.skipped, result.source)


def load_training_records(config: TrainConfig) -> list[TrainRecord]:
    """The records ``config.data`` names."""
    return read_training_data(config).records


def fingerprint(records: Sequence[TrainRecord]) -> str:
    """A hash of the records' content and order (a resumed run must see the same data)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(asdict(record), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class Layout:
    """Where the texts of a global batch sit in the gathered embedding matrix (process 0's texts first, each
    process's as queries, positives, negatives), and keys telling identical texts apart for masking."""

    sizes: list[int]
    query_rows: torch.Tensor
    positive_rows: torch.Tensor
    negative_rows: torch.Tensor
    query_keys: torch.Tensor
    positive_keys: torch.Tensor
    negative_keys: torch.Tensor

    @classmethod
    def of(cls, shards: Sequence[Sequence[TrainRecord]]) -> Layout:
        keys: dict[Any, int] = {}

        def key(item: Any) -> int:
            return keys.setdefault(item, len(keys))

        sizes, rows, ids = [], {"q": [], "p": [], "n": []}, {"q": [], "p": [], "n": []}
        offset = 0
        for shard in shards:
            b = len(shard)
            negatives = [n for r in shard for n in r.negatives]
            rows["q"] += range(offset, offset + b)
            rows["p"] += range(offset + b, offset + 2 * b)
            rows["n"] += range(offset + 2 * b, offset + 2 * b + len(negatives))
            ids["q"] += [key(("query", r.instruction, r.query)) for r in shard]
            ids["p"] += [key(("text", r.positive)) for r in shard]
            ids["n"] += [key(("text", n)) for n in negatives]
            sizes.append(2 * b + len(negatives))
            offset += sizes[-1]

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        return cls(sizes, *(tensor(rows[k]) for k in "qpn"), *(tensor(ids[k]) for k in "qpn"))


def tokenize_shard(model: EmbeddingModel, shard: Sequence[TrainRecord]) -> list[Tokenized]:
    """A process's texts in layout order: queries (each with its instruction), positives, negatives."""
    queries: list[Tokenized | None] = [None] * len(shard)
    by_instruction: dict[str | None, list[int]] = {}
    for i, record in enumerate(shard):
        by_instruction.setdefault(record.instruction, []).append(i)
    for instruction, rows in by_instruction.items():
        for row, item in zip(rows, model.tokenize_texts([shard[i].query for i in rows], instruction), strict=True):
            queries[row] = item
    docs = [r.positive for r in shard] + [n for r in shard for n in r.negatives]
    return [*queries, *model.tokenize_texts(docs)]  # type: ignore[list-item]


# ================================================================================================ loss
def info_nce(
    q: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    layout: Layout,
    *,
    scale: float,
    symmetric: bool = False,
    query_query: bool = False,
) -> torch.Tensor:
    """InfoNCE of queries ``q`` (B, D) over candidates [positives ``p`` (B, D); negatives ``n`` (M, D)].

    Inputs are L2-normalised, so logits are cosine x ``scale``. A candidate whose text equals the query's
    positive (other than the positive itself) is masked out. ``query_query`` adds the other queries as
    candidates; ``symmetric`` averages with the positive -> query direction over the queries.
    """
    labels = torch.arange(q.shape[0], device=q.device)
    pos_keys, qry_keys = layout.positive_keys.to(q.device), layout.query_keys.to(q.device)
    cand_keys = torch.cat([pos_keys, layout.negative_keys.to(q.device)])
    logits = scale * q @ torch.cat([p, n]).T
    duplicate = pos_keys[:, None] == cand_keys[None, :]
    duplicate[labels, labels] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    if query_query:
        same_query = qry_keys[:, None] == qry_keys[None, :]
        logits = torch.cat([logits, (scale * q @ q.T).masked_fill(same_query, float("-inf"))], dim=1)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        same_query = qry_keys[:, None] == qry_keys[None, :]
        same_query[labels, labels] = False
        reverse = (scale * p @ q.T).masked_fill(same_query, float("-inf"))
        loss = (loss + F.cross_entropy(reverse, labels)) / 2
    return loss


# ====================================================================================== the step engine
@dataclass
class RngState:
    """The CPU (and CUDA) RNG state at one point, to replay a chunk's dropout exactly."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def plan_chunks(
    items: Sequence[Tokenized], max_texts: int | None, max_tokens: int, overhead: float = 0.0
) -> list[list[int]]:
    """Split items, sorted by length (longest first), into forward chunks of least cost.

    A chunk costs its padded tokens (size x longest length) plus ``overhead`` (the fixed cost of one forward
    pass, in tokens); it holds at most ``max_texts`` texts and ``max_tokens`` padded tokens (a single longer text
    is its own chunk). Exact dynamic programming over the cut points, O(n x largest chunk).
    """
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].ids), i))
    lengths = [len(items[i].ids) for i in order]
    cap = max_texts or len(order)
    best = [0.0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for stop in range(1, len(order) + 1):
        for start in range(stop - 1, max(stop - cap, 0) - 1, -1):
            padded = (stop - start) * lengths[start]
            if padded > max_tokens and stop - start > 1:
                break  # growing the chunk towards longer texts only adds tokens
            cost = best[start] + padded + overhead
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    chunks, stop = [], len(order)
    while stop > 0:
        chunks.append(order[cut[stop] : stop])
        stop = cut[stop]
    return chunks[::-1]


def chunk_overhead(device: torch.device) -> float:
    """The fixed cost of a forward pass in padded tokens: small on a CPU, large on an accelerator."""
    return CHUNK_OVERHEAD_TOKENS.get(device.type, CHUNK_OVERHEAD_TOKENS["default"])


class Distributed:
    """This process's place among the training processes and accelerate's engine (DDP, FSDP or DeepSpeed).

    Each process back-propagates the global loss through its own rows only, so the true gradient is the *sum* of
    the processes' gradients; the engines average, so :meth:`backward` scales by the number of processes. A step's
    backward passes run under :meth:`no_sync` except the last, which synchronises the gradients once.
    """

    def __init__(self, mixed_precision: str = "no") -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        self.accelerator = Accelerator(
            # cpu=True without CUDA, so that processes started by torchrun use gloo over the CPU
            cpu=not torch.cuda.is_available(),
            # autocast and the fp16 GradScaler are the trainer's own; only DeepSpeed must know the precision
            mixed_precision=mixed_precision if deepspeed else "no",
            step_scheduler_with_optimizer=False,  # one scheduler step per optimiser step, whatever the processes
            kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)],  # no gradient copies
        )
        state = self.accelerator.state
        self.rank, self.world = state.process_index, state.num_processes
        self.device, self.is_main = state.device, state.is_main_process
        self.kind = str(state.distributed_type).rsplit(".", 1)[-1]
        self.sharded = self.kind in ("FSDP", "DEEPSPEED")
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched not in ("no", mixed_precision) and self.is_main:
            log.warning("accelerate's mixed_precision = %s is not used: recipe.mixed_precision decides", launched)

    def prepare(self, model: EmbeddingModel, optimizer: Any, scheduler: Any, recipe: RecipeSection) -> tuple[Any, ...]:
        """Check the engine's settings against the recipe, then wrap model, optimiser and scheduler."""
        acc = self.accelerator
        if self.kind in ("MEGATRON_LM", "XLA"):
            raise ConfigError(f"accelerate's {self.kind} is not supported; use DDP, FSDP or DeepSpeed ZeRO-2")
        if acc.gradient_accumulation_steps != 1:
            raise ConfigError(
                f"accelerate's gradient_accumulation_steps = {acc.gradient_accumulation_steps}: a step already "
                "accumulates over its GradCache chunks (recipe.mini_batch); set it to 1 and raise recipe.batch_size"
            )
        if self.kind == "DEEPSPEED":
            from accelerate.utils.deepspeed import DeepSpeedEngineWrapper

            if "sync_gradients" not in inspect.signature(DeepSpeedEngineWrapper.backward).parameters:
                raise ConfigError(
                    "DeepSpeed needs accelerate >= 1.8 here (a GradCache step runs several backward passes per "
                    "optimiser step); upgrade accelerate or use configs/accelerate/ddp.yaml"
                )
            if acc.state.mixed_precision != recipe.mixed_precision:
                raise ConfigError(
                    f"the DeepSpeed config sets mixed precision {acc.state.mixed_precision!r} but "
                    f"recipe.mixed_precision = {recipe.mixed_precision!r}; set fp16/bf16 'enabled' to 'auto'"
                )
            configure_deepspeed(
                acc.state.deepspeed_plugin.deepspeed_config,
                recipe,
                per_process=recipe.batch_size // self.world,
                hidden_size=model.backbone.config.hidden_size,
            )
        if self.kind == "FSDP":
            plugin = acc.state.fsdp_plugin
            check_fsdp(model, recipe, version=2 if acc.is_fsdp2 else 1, use_orig_params=bool(plugin.use_orig_params))
        return acc.prepare(model, optimizer, scheduler)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate this process's part of the global loss (scaled by the processes, which the engine
        averages over)."""
        self.accelerator.backward(loss * self.world if self.world > 1 else loss)

    @contextmanager
    def no_sync(self, module: nn.Module, enabled: bool = True) -> Iterator[None]:
        """Backward passes inside keep their gradients local (DDP/FSDP ``no_sync``; for DeepSpeed, no step
        boundary); the step's last backward, outside, synchronises them. DDP decides at the forward pass."""
        if not enabled or self.kind == "NO":
            yield
            return
        with self.accelerator.no_sync(module):
            self.accelerator.sync_gradients = False
            try:
                yield
            finally:
                self.accelerator.sync_gradients = True

    def clip_grad_norm(self, module: nn.Module, params: Sequence[nn.Parameter], max_norm: float) -> float | None:
        """Clip the synchronised gradients; the total norm before clipping (DeepSpeed clipped them in its step and
        reports the norm, or None)."""
        if self.kind == "FSDP":  # sharded gradients: FSDP computes the norm over every shard
            params = list(module.parameters())
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        return None if norm is None else float(norm)

    def save_engine(self, folder: Path) -> None:
        """The engine's sharded state (FSDP, DeepSpeed) via accelerate; every process takes part."""
        frozen = {"exclude_frozen_parameters": True} if self.kind == "DEEPSPEED" else {}
        self.accelerator.save_state(str(folder), **frozen)

    def load_engine(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder), **({"load_module_strict": False} if self.kind == "DEEPSPEED" else {}))

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def gather(self, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every process's rows in rank order; this process's own rows keep their autograd graph."""
        if self.world == 1:
            return local
        import torch.distributed as dist

        padded = local.new_zeros((max(sizes), local.shape[1]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        rows = [part[:size] for part, size in zip(parts, sizes, strict=True)]
        rows[self.rank] = local
        return torch.cat(rows)

    def reduce_max(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())


def configure_deepspeed(ds: dict[str, Any], recipe: RecipeSection, *, per_process: int, hidden_size: int) -> None:
    """Fill a DeepSpeed config from the recipe, or raise a :class:`ConfigError` on a setting that conflicts.

    ZeRO-3 is refused (the trainer needs whole weights on every process); the step boundary is the trainer's (the
    last GradCache chunk), so DeepSpeed's own accumulation stays 1; clipping is ``recipe.max_grad_norm``.
    """
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"DeepSpeed ZeRO-{stage} partitions the weights, which the trainer needs whole on every process; use "
            "ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml) or FSDP (configs/accelerate/fsdp.yaml)"
        )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(
                f"remove '{key}' from the DeepSpeed config: the trainer builds AdamW and its schedule from [recipe]"
            )
    wanted = {
        "gradient_accumulation_steps": (1, "a step accumulates over its GradCache chunks (recipe.mini_batch)"),
        "gradient_clipping": (recipe.max_grad_norm or 0.0, "recipe.max_grad_norm sets it"),
        "train_micro_batch_size_per_gpu": (per_process, "recipe.batch_size / processes sets it"),
    }
    for key, (value, why) in wanted.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ConfigError(f"DeepSpeed config {key} = {ds[key]!r} but {why}: {value}; set it to 'auto'")
        ds[key] = value
    zero, h = ds.setdefault("zero_optimization", {}), hidden_size  # accelerate would look for model.config.hidden_size
    sizes = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h)}
    for key, value in {**sizes, "stage3_param_persistence_threshold": 10 * h}.items():
        if zero.get(key) == "auto":
            zero[key] = value


def check_fsdp(model: EmbeddingModel, recipe: RecipeSection, *, version: int, use_orig_params: bool) -> None:
    """Raise a :class:`ConfigError` for FSDP settings that cannot train this model correctly."""
    if recipe.mixed_precision == "fp16":
        raise ConfigError("recipe.mixed_precision = 'fp16' is not supported with FSDP; use 'bf16'")
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    if len(dtypes) > 1:
        raise ConfigError(
            f"FSDP shards parameters of one dtype, the model has {dtypes}: set model.dtype = 'float32' "
            "(recipe.mixed_precision = 'bf16' still computes in bf16)"
        )
    frozen = any(not p.requires_grad for p in model.parameters())
    if version == 1 and frozen and not use_orig_params:
        raise ConfigError(
            "FSDP (version 1) with frozen weights (LoRA, a frozen backbone) needs fsdp_use_orig_params: true "
            "in the accelerate config (or fsdp_version: 2)"
        )


class ContrastiveStep:
    """Computes one step's loss and accumulates the gradients of the trainable parameters.

    ``grad_cache=True`` is GradCache; ``False`` keeps every chunk's graph (the plain step). Both embed the same
    chunks in the same order and consume the same random numbers, so their gradients agree to float precision.
    ``model`` tokenises and collates; ``module`` (default: ``model``) runs the forward passes: the model as the
    engine wrapped it (DDP, FSDP, DeepSpeed). ``backward`` defaults to :meth:`Distributed.backward`.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        dist: Distributed,
        recipe: RecipeSection,
        *,
        grad_cache: bool,
        backward: Callable[[torch.Tensor], None] | None = None,
        module: nn.Module | None = None,
    ) -> None:
        self.model, self.dist, self.recipe = model, dist, recipe
        self.module = module if module is not None else model
        self.grad_cache = grad_cache
        self.backward = backward or dist.backward
        dtype = MIXED_PRECISION[recipe.mixed_precision]
        device_type = dist.device.type
        self.autocast: Callable[[], Any] = (
            (lambda: torch.autocast(device_type, dtype=dtype)) if dtype is not None else nullcontext
        )

    def embed(self, items: Sequence[Tokenized]) -> torch.Tensor:
        with self.autocast():
            return self.module(self.model.collate(items)).float()

    def __call__(self, shards: Sequence[Sequence[TrainRecord]]) -> torch.Tensor:
        """Loss of the global batch (``shards[r]`` = process r's records); gradients accumulate in ``.grad``."""
        layout = Layout.of(shards)
        items = tokenize_shard(self.model, shards[self.dist.rank])
        chunks = plan_chunks(
            items, self.recipe.mini_batch, self.recipe.forward_tokens, chunk_overhead(self.dist.device)
        )
        if self.dist.sharded:  # FSDP gathers weights in every forward, ZeRO-2 reduces in every backward
            chunks = split_to(chunks, int(self.dist.reduce_max(len(chunks))))
        order = torch.tensor([i for chunk in chunks for i in chunk])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        last = len(chunks) - 1
        if not self.grad_cache:
            parts = []
            for k, chunk in enumerate(chunks):  # DDP arms the synchronising backward at the last forward
                with self.dist.no_sync(self.module, k < last):
                    parts.append(self.embed([items[i] for i in chunk]))
            local = torch.cat(parts)[inverse.to(self.dist.device)]
            loss = self.loss(self.dist.gather(local, layout.sizes), layout)
            self.backward(loss)
            return loss.detach()
        states, parts = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RngState.capture(self.dist.device))
                parts.append(self.embed([items[i] for i in chunk]))
        local = torch.cat(parts)[inverse.to(self.dist.device)]
        gathered = self.dist.gather(local, layout.sizes).detach().requires_grad_()
        loss = self.loss(gathered, layout)
        loss.backward()
        offset = sum(layout.sizes[: self.dist.rank])
        cached = gathered.grad[offset : offset + local.shape[0]][order.to(self.dist.device)]
        start = 0
        for k, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            with self.dist.no_sync(self.module, k < last):  # gradients are synchronised once, at the last chunk
                with state.replay():
                    emb = self.embed([items[i] for i in chunk])
                self.backward((emb * cached[start : start + len(chunk)]).sum())
            start += len(chunk)
        return loss.detach()

    def loss(self, gathered: torch.Tensor, layout: Layout) -> torch.Tensor:
        device = gathered.device
        loss = info_nce(
            gathered[layout.query_rows.to(device)],
            gathered[layout.positive_rows.to(device)],
            gathered[layout.negative_rows.to(device)],
            layout,
            scale=self.recipe.scale,
            symmetric=self.recipe.symmetric,
            query_query=self.recipe.query_query,
        )
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(loss.item())
        return loss


def split_to(chunks: list[list[int]], n: int) -> list[list[int]]:
    """``chunks`` with the largest halved until there are ``n``, so that every process runs as many passes."""
    chunks = list(chunks)
    while len(chunks) < n:
        i = max(range(len(chunks)), key=lambda j: len(chunks[j]))
        if len(chunks[i]) == 1:
            raise ConfigError(
                f"this process has {len(chunks)} texts but another has {n} forward chunks, and FSDP / DeepSpeed "
                "ZeRO-2 need as many on every process: raise recipe.mini_batch"
            )
        half = len(chunks[i]) // 2
        chunks[i : i + 1] = [chunks[i][:half], chunks[i][half:]]
    return chunks


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


# ======================================================================================= model set-up
def resolve_backbone(name: str) -> str:
    """``default`` is the packaged SmolLM2-135M (converted once); anything else is a hub id or folder."""
    if name == "default":
        from .assets import model_path

        return str(model_path("smollm2"))
    return name


def finetune_lora(model: EmbeddingModel, config: TrainConfig) -> None:
    lora = config.lora
    model.add_lora(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)


def finetune_full(model: EmbeddingModel, config: TrainConfig) -> None:
    model.backbone.requires_grad_(True)
    model.backbone_trained = True


def finetune_frozen(model: EmbeddingModel, config: TrainConfig) -> None:
    model.backbone.requires_grad_(False)


FINETUNE_MODES: dict[str, Callable[[EmbeddingModel, TrainConfig], None]] = {
    "lora": finetune_lora,
    "full": finetune_full,
    "frozen": finetune_frozen,
}


def build_model(config: TrainConfig) -> EmbeddingModel:
    """The design of ``config.model`` with the head initialised from the seed, made trainable as configured."""
    m, recipe = config.model, config.recipe
    model = EmbeddingModel.from_backbone(
        resolve_backbone(m.backbone),
        attention=m.attention,
        pooling=m.pooling,
        pooling_options=m.pooling_options,
        dtype=m.dtype,
        seed=recipe.seed,
        max_length=m.max_length,
    )
    if recipe.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    FINETUNE_MODES[recipe.finetune](model, config)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"nothing to train: finetune = {recipe.finetune!r} freezes the backbone and pooling "
            f"{m.pooling!r} has no parameters"
        )
    return model


def param_groups(model: EmbeddingModel, recipe: RecipeSection) -> list[dict[str, Any]]:
    """AdamW groups: backbone and head (own lr), each split into decayed (matrices) and not decayed (vectors)."""
    head = {id(p) for p in model.pooler.parameters()}
    lrs = {"backbone": recipe.lr, "head": recipe.head_lr if recipe.head_lr is not None else recipe.lr}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for _, param in model.named_parameters():
        if param.requires_grad:
            part = "head" if id(param) in head else "backbone"
            groups.setdefault((part, param.ndim >= 2), []).append(param)
    return [
        {"params": params, "lr": lrs[part], "weight_decay": recipe.weight_decay if decay else 0.0, "name": part}
        for (part, decay), params in groups.items()
    ]


def trainable_state(model: EmbeddingModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def seed_for(seed: int, rank: int) -> int:
    """The per-process dropout seed derived from the run's seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


# ========================================================================================= checkpoints
def rng_state(device: torch.device) -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    _, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy_key": torch.from_numpy(np_key.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a ``state.json``) by step."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ============================================================================================ the run
@dataclass
class TrainResult:
    """What a run produced. ``wall_seconds`` is the time spent in training steps (over every resumed part of
    the run); ``examples_per_second`` is measured over this call's steps. ``peak_memory_bytes`` is the peak
    CUDA memory allocated on a GPU, and the peak resident memory of the process during training (``VmHWM``
    reset at the start) on a CPU. ``skipped_records``: bad records skipped (``data.skip_bad``)."""

    model_dir: Path
    steps: int
    wall_seconds: float
    examples_per_second: float
    final_loss: float
    losses: list[float]
    log_path: Path
    trainable_parameters: int
    peak_memory_bytes: int
    skipped_records: int = 0


class PeakMemory:
    """Peak memory since construction: CUDA allocator peak, or the process's resident-set high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            with suppress(OSError):  # resets the high-water mark VmHWM to the current resident size
                Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
        except (OSError, AttributeError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Trainer:
    """One training run: set-up, resume, the step loop, checkpoints and the final model."""

    def __init__(self, config: TrainConfig, records: Sequence[TrainRecord] | None, progress: bool) -> None:
        from accelerate.utils import set_seed

        self.config, self.recipe = config, config.recipe
        self.dist = Distributed(self.recipe.mixed_precision)
        self.progress = progress and self.dist.is_main
        self.out = Path(config.output.dir)
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self.log_path = self.out / LOG_FILE
        if self.recipe.batch_size % self.dist.world:
            raise ConfigError(
                f"recipe.batch_size = {self.recipe.batch_size} is not divisible by the {self.dist.world} processes"
            )
        set_seed(self.recipe.seed)
        data = ReadResult(list(records), [], "records") if records is not None else read_training_data(config)
        self.records, self.skipped = data.records, len(data.skipped)
        self.order = DataOrder(len(self.records), self.recipe.batch_size, self.recipe.seed)
        self.total_steps = self.recipe.steps or (self.recipe.epochs or 1) * self.order.steps_per_epoch
        self.model = build_model(config).to(self.dist.device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        from transformers import get_scheduler

        optimizer = torch.optim.AdamW(param_groups(self.model, self.recipe), lr=self.recipe.lr)
        scheduler = get_scheduler(
            self.recipe.scheduler,
            optimizer,
            num_warmup_steps=self.recipe.warmup_steps,
            num_training_steps=self.total_steps,
        )
        # the engine's wrappers: `wrapped` runs the forward passes; helpers and saving use the model itself
        self.wrapped, self.optimizer, self.scheduler = self.dist.prepare(self.model, optimizer, scheduler, self.recipe)
        self.model = self.dist.accelerator.unwrap_model(self.wrapped)
        fp16 = self.recipe.mixed_precision == "fp16" and self.dist.kind != "DEEPSPEED"  # DeepSpeed scales itself
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=fp16)
        self.step_fn = ContrastiveStep(
            self.model,
            self.dist,
            self.recipe,
            grad_cache=self.recipe.mini_batch is not None,
            backward=lambda t: self.dist.backward(self.scaler.scale(t)),
            module=self.wrapped,
        )
        self.fingerprint = fingerprint(self.records)
        self.step = 0
        self.wall = 0.0
        self.log_offset = 0
        self.losses: list[float] = []
        torch.manual_seed(seed_for(self.recipe.seed, self.dist.rank))

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.config, self.out / CONFIG_FILE)
        self.dist.barrier()
        self.resume()
        if self.dist.is_main:
            self.log_path.touch()
            os.truncate(self.log_path, self.log_offset)
        writer = self.tensorboard()
        memory = PeakMemory(self.dist.device)
        started, first_step = time.perf_counter(), self.step
        with (
            open(self.log_path, "a", encoding="utf-8") if self.dist.is_main else nullcontext() as log_file,
            ProgressDisplay(self.total_steps, self.step, enabled=self.progress) as display,
        ):
            while self.step < self.total_steps:
                record = self.train_step()
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    self.log_offset = log_file.tell()
                    if writer is not None:
                        for key in ("loss", "lr", "grad_norm", "examples_per_second"):
                            if record[key] is not None:
                                writer.add_scalar(f"train/{key}", record[key], self.step)
                display.update(record)
                every = self.config.output.checkpoint_every
                if every and (self.step % every == 0 or self.step == self.total_steps):
                    self.save_checkpoint()
        if writer is not None:
            writer.close()
        seconds = time.perf_counter() - started
        examples = (self.step - first_step) * self.recipe.batch_size
        result = TrainResult(
            model_dir=self.out / MODEL_DIR,
            steps=self.step,
            wall_seconds=self.wall,
            examples_per_second=examples / seconds if examples else 0.0,
            final_loss=self.losses[-1] if self.losses else float("nan"),
            losses=list(self.losses),
            log_path=self.log_path,
            trainable_parameters=sum(p.numel() for p in self.params),
            peak_memory_bytes=int(self.dist.reduce_max(memory.read())),
            skipped_records=self.skipped,
        )
        self.finish(result)
        return result

    def train_step(self) -> dict[str, Any]:
        """One optimiser step; returns its log line."""
        start = time.perf_counter()
        indices = self.order.batch(self.step)
        per_process = self.recipe.batch_size // self.dist.world
        shards = [
            [self.records[i] for i in indices[r * per_process : (r + 1) * per_process]] for r in range(self.dist.world)
        ]
        self.optimizer.zero_grad(set_to_none=False)
        try:
            loss = float(self.step_fn(shards))
        except NonFiniteLoss as err:
            self.diverged(f"loss is {err.value}")
        if not self.dist.sharded:
            for param in self.params:
                if param.grad is None:  # an unreached parameter still steps (weight decay, moments), as in one process
                    param.grad = torch.zeros_like(param)
        self.scaler.unscale_(self.optimizer)
        max_norm = self.recipe.max_grad_norm if self.recipe.max_grad_norm is not None else float("inf")
        grad_norm = self.dist.clip_grad_norm(self.wrapped, self.params, max_norm)
        if grad_norm is not None and not math.isfinite(grad_norm) and self.recipe.mixed_precision != "fp16":
            self.diverged(f"the gradient norm is {grad_norm} (loss {loss:.6g})")
        lrs = {group.get("name", "backbone"): group["lr"] for group in self.optimizer.param_groups}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - start
        self.wall += seconds
        self.losses.append(loss)
        position = self.order.position(self.step - 1)
        return {
            "step": self.step,
            "epoch": position.epoch,
            "loss": loss,
            "lr": lrs.get("backbone", lrs.get("head")),
            "head_lr": lrs.get("head"),
            "grad_norm": grad_norm,
            "examples_per_second": self.recipe.batch_size / seconds,
            "step_seconds": seconds,
            "wall_seconds": self.wall,
        }

    def diverged(self, what: str) -> None:
        found = checkpoints(self.ckpt_dir)
        last = f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint was written"
        applied = "DeepSpeed has run that step" if self.dist.kind == "DEEPSPEED" else "that step was not applied"
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: {what}; {applied} and {last} "
            f"(lower recipe.lr or enable recipe.max_grad_norm)"
        )

    def tensorboard(self) -> Any:
        if not (self.config.output.tensorboard and self.dist.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("output.tensorboard is on but tensorboard is not installed (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write model, optimiser, scheduler, scaler, RNG states (one per process) and position atomically."""
        final = self.ckpt_dir / f"step-{self.step:08d}"
        tmp = self.ckpt_dir / f".step-{self.step:08d}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        torch.save(rng_state(self.dist.device), tmp / f"rng-{self.dist.rank}.pt")
        if self.dist.sharded:  # weights or optimiser state are spread over the processes: the engine saves them
            self.dist.save_engine(tmp / ENGINE_DIR)
        self.dist.barrier()
        if self.dist.is_main:
            if not self.dist.sharded:
                save_file(trainable_state(self.model), tmp / "trainable.safetensors")
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
            position = self.order.position(self.step)
            state = {
                "step": self.step,
                "epoch": position.epoch,
                "batch_index": position.index,
                "log_offset": self.log_offset,
                "wall_seconds": self.wall,
                "config_hash": self.config.hash(),
                "data_fingerprint": self.fingerprint,
                "world_size": self.dist.world,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for _, old in checkpoints(self.ckpt_dir)[: -self.config.output.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()

    def resume(self) -> None:
        """Continue from the latest checkpoint of ``output.dir``, if any (and ``output.resume``)."""
        found = checkpoints(self.ckpt_dir)
        if not (found and self.config.output.resume):
            return
        step, path = found[-1]
        state = json.loads((path / "state.json").read_text())
        mismatch = {
            "config": (state["config_hash"], self.config.hash()),
            "training data": (state["data_fingerprint"], self.fingerprint),
            "number of processes": (state["world_size"], self.dist.world),
        }
        for what, (saved, now) in mismatch.items():
            if saved != now:
                raise ConfigError(
                    f"{path} was written with a different {what} ({saved} != {now}); "
                    f"use another output.dir or set output.resume = false"
                )
        load = dict(map_location=self.dist.device, weights_only=True)
        if self.dist.sharded:
            self.dist.load_engine(path / ENGINE_DIR)
        else:
            missing = self.trainable & set(
                self.model.load_state_dict(load_file(path / "trainable.safetensors", device="cpu"), strict=False)[0]
            )
            if missing:
                raise ConfigError(f"{path} lacks trainable weights {sorted(missing)[:3]}")
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", **load))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", **load))
        self.scaler.load_state_dict(torch.load(path / "scaler.pt", **load))
        set_rng_state(torch.load(path / f"rng-{self.dist.rank}.pt", weights_only=True), self.dist.device)
        self.step, self.wall, self.log_offset = step, state["wall_seconds"], state["log_offset"]
        self.losses = read_losses(self.log_path, self.log_offset)
        if self.dist.is_main:
            log.info("resuming from %s (step %d of %d)", path, step, self.total_steps)

    # ------------------------------------------------------------------ the result
    def finish(self, result: TrainResult) -> None:
        """Save the model folder (adapter + head + config, or merged weights) and the summary."""
        model = self.model
        if self.dist.kind == "FSDP":  # sharded weights: gather the trained ones into a fresh copy on the main process
            full = self.dist.accelerator.get_state_dict(self.wrapped)
            if self.dist.is_main:
                if self.trainable - set(full):
                    raise RuntimeError(
                        f"FSDP's state dict lacks trained weights {sorted(self.trainable - set(full))[:3]}"
                    )
                model = build_model(self.config)
                model.load_state_dict({k: v for k, v in full.items() if k in self.trainable}, strict=False)
        if self.dist.is_main:
            if self.config.output.merge and model.has_adapter:
                model.merge_adapter()
                model.backbone_trained = True
            model.eval()
            model.save(result.model_dir)
            summary = {
                **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items() if k != "losses"},
                "config_hash": self.config.hash(),
                "data_fingerprint": self.fingerprint,
                "records": len(self.records),
                "processes": self.dist.world,
                "config": self.config.to_dict(),
            }
            text = json.dumps(summary, indent=2)
            write_atomic(self.out / SUMMARY_FILE, text)
            write_atomic(result.model_dir / SUMMARY_FILE, text)
            write_config(self.config, result.model_dir / CONFIG_FILE)
        self.dist.barrier()


def read_losses(path: Path, offset: int) -> list[float]:
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        lines = handle.read(offset).decode("utf-8").splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


class ProgressDisplay:
    """A rich progress bar with loss, learning rate and examples per second."""

    def __init__(self, total: int, done: int, *, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:.1f} ex/s"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("training", total=total, completed=done, loss=float("nan"), lr=0.0, speed=0.0)

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.bar.update(
                self.task, advance=1, loss=record["loss"], lr=record["lr"], speed=record["examples_per_second"]
            )


def train(config: TrainConfig, *, records: Sequence[TrainRecord] | None = None, progress: bool = True) -> TrainResult:
    """Train ``config``'s design on ``records`` (default: the records ``config.data`` names).

    Resumes from the latest checkpoint in ``config.output.dir``; raises :class:`TrainingDiverged` on a
    NaN/inf loss or gradient, leaving the checkpoints intact.
    """
    return Trainer(config, records, progress).run()


# ================================================================================================ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m poolattn.train CONFIG.toml [--set KEY=VALUE ...]`` (also under ``accelerate launch -m``)."""
    parser = argparse.ArgumentParser(
        prog="python -m poolattn.train",
        description="Train an embedding model contrastively; writes OUTPUT_DIR/model (EmbeddingModel.load reads it).",
    )
    parser.add_argument("config", nargs="?", help="TOML file (default: the built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. recipe.lr=1e-4"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .data import DataError

    try:
        result = train(load_train_config(args.config, args.overrides), progress=not args.no_progress)
    except (ConfigError, DataError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(
            f"trained {result.steps} steps in {result.wall_seconds:.1f} s "
            f"({result.examples_per_second:.1f} examples/s), final loss {result.final_loss:.4f}; "
            f"model: {result.model_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
