"""One training run: the model as the config makes it, the step loop, checkpoints, resume and the saved model.

A run's output folder holds ``model/`` (what :meth:`EmbeddingModel.load` reads), ``train_log.jsonl`` (one line
per step), ``train_summary.json``, ``train_config.toml`` and ``checkpoints/`` (a rerun resumes from the latest).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import get_scheduler

from ..assets import resolve_backbone
from ..data import DataError, DataOrder, ReadResult, TrainRecord
from ..io import move_aside, read_json, write_json_atomic, write_text_atomic
from ..model import EmbeddingModel
from ..outputs import check_free_space, owned_run, save_failure
from ..targets import OutputError
from ..threads import apply_budget, pin_threads
from .checkpoints import checkpoints, rng_state, set_rng_state
from .config import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ENGINE_DIR,
    HELDOUT_FILE,
    LOG_FILE,
    MODEL_DIR,
    SUMMARY_FILE,
    ConfigError,
    RecipeSection,
    TrainConfig,
    TrainingDiverged,
    write_config,
)
from .contrastive import ContrastiveStep, NonFiniteLoss
from .distributed import Distributed
from .heldout import heldout_metrics, split_heldout
from .records import fingerprint, read_training_data

log = logging.getLogger(__name__)


# ======================================================================================= model set-up
def finetune_lora(model: EmbeddingModel, config: TrainConfig) -> None:
    lora = config.lora
    model.add_lora(
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        top_layers=lora.top_layers,
    )


def finetune_full(model: EmbeddingModel, config: TrainConfig) -> None:
    model.backbone.requires_grad_(True)
    model.backbone_trained = True


def finetune_frozen(model: EmbeddingModel, config: TrainConfig) -> None:
    model.backbone.requires_grad_(False)


#: ``recipe.finetune`` (one of :data:`~poolattn.training.config.FINETUNE_MODES`) -> what makes the model trainable.
FINETUNERS: dict[str, Callable[[EmbeddingModel, TrainConfig], None]] = {
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
        num_layers=m.num_layers,
    )
    if recipe.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    FINETUNERS[recipe.finetune](model, config)
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
        # every generator seeded alike on every process: what set-up draws (the LoRA adapter's initial weights)
        # is the same everywhere and on every rerun
        set_seed(self.recipe.seed)
        data = ReadResult(list(records), [], "records") if records is not None else read_training_data(config)
        self.records, self.heldout_records = split_heldout(data.records, config.data.heldout)
        check_learnable(self.records, data.source)
        self.skipped = len(data.skipped)
        self.heldout: dict[str, Any] = {}
        self.order = DataOrder(len(self.records), self.recipe.batch_size, config.order_seed)
        self.total_steps = self.recipe.steps or (self.recipe.epochs or 1) * self.order.steps_per_epoch
        self.model = build_model(config).to(self.dist.device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        betas = (0.9, 0.999 if self.recipe.adam_beta2 is None else self.recipe.adam_beta2)
        optimizer = torch.optim.AdamW(param_groups(self.model, self.recipe), lr=self.recipe.lr, betas=betas)
        scheduler = get_scheduler(
            self.recipe.scheduler,
            optimizer,
            num_warmup_steps=self.recipe.warmup_steps,
            num_training_steps=self.total_steps,
        )
        # the engine's wrappers: `wrapped` runs the forward passes; tokenising, collating and saving use the model
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
        # this process's share of the cores, taken once: the run (and a resumed run, from its checkpoint) keeps
        # it, since the number of threads changes the sums' rounding and so the weights
        self.threads = apply_budget() if self.dist.device.type == "cpu" else torch.get_num_threads()
        self.step = 0
        self.wall = 0.0
        self.log_offset = 0
        self.losses: list[float] = []
        # from here on the generators drive dropout only: each process draws its own masks, reproducibly
        torch.manual_seed(seed_for(self.recipe.seed, self.dist.rank))

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """Train (or resume, or return the finished result) holding the output folder's lock."""
        recognise = (CONFIG_FILE, SUMMARY_FILE, LOG_FILE, CHECKPOINT_DIR)
        with owned_run(self.out, "train", recognise=recognise) if self.dist.is_main else nullcontext():
            return self.train_all()

    def train_all(self) -> TrainResult:
        if (finished := self.finished_result()) is not None:  # a rerun of a finished run rewrites nothing
            return finished
        if self.dist.is_main:
            self.check_space()
            write_config(self.config, self.out / CONFIG_FILE)
        self.dist.barrier()  # the folder exists before any process looks in it
        self.resume()
        # the untrained twin's held-out numbers, taken once, before the first step
        self.heldout = read_json(self.out / HELDOUT_FILE) or {}
        if self.heldout_records and (self.step == 0 or "before" not in self.heldout):
            self.heldout = {"before": self.measure_heldout()}
        if self.dist.is_main:
            self.log_path.touch()
            # lines past the resumed checkpoint belong to steps that run again: drop them
            os.truncate(self.log_path, self.log_offset)
        writer = self.tensorboard()
        memory = PeakMemory(self.dist.device)  # the peak of training, not of the set-up
        started, first_step = time.perf_counter(), self.step
        with (
            open(self.log_path, "a", encoding="utf-8") if self.dist.is_main else nullcontext() as log_file,
            ProgressDisplay(self.total_steps, self.step, enabled=self.progress) as display,
        ):
            while self.step < self.total_steps:
                pin_threads(self.threads)
                record = self.train_step()
                if log_file is not None:  # the main process alone logs
                    log_file.write(json.dumps(record) + "\n")
                    # on disk before a checkpoint records the log's length as covered
                    log_file.flush()
                    self.log_offset = log_file.tell()
                    if writer is not None:
                        for key in ("loss", "lr", "grad_norm", "examples_per_second"):
                            if record[key] is not None:  # DeepSpeed may not report a gradient norm
                                writer.add_scalar(f"train/{key}", record[key], self.step)
                display.update(record)
                every = self.config.output.checkpoint_every
                # every `checkpoint_every` steps and after the last (a finished run resumes there, then saves)
                if (every and self.step % every == 0) or self.step == self.total_steps:
                    self.save_checkpoint()
        if writer is not None:
            writer.close()
        seconds = time.perf_counter() - started
        if self.heldout_records:
            self.heldout["after"] = self.measure_heldout()
        examples = (self.step - first_step) * self.recipe.batch_size  # this call's steps only, not resumed ones
        result = TrainResult(
            model_dir=self.out / MODEL_DIR,
            steps=self.step,
            wall_seconds=self.wall,
            examples_per_second=examples / seconds if examples else 0.0,
            final_loss=self.losses[-1] if self.losses else float("nan"),
            losses=list(self.losses),
            log_path=self.log_path,
            trainable_parameters=sum(p.numel() for p in self.params),
            peak_memory_bytes=int(self.dist.reduce_max(memory.read())),  # the largest of any process
            skipped_records=self.skipped,
        )
        self.finish(result)
        return result

    def finished_result(self) -> TrainResult | None:
        """The stored result of this run (same config, data and steps) when it finished earlier and resuming is on.

        A finished run of another config, data or length is refused (resuming), or moved aside into
        ``superseded/`` (``output.resume = false``): a trained model is never replaced unseen."""
        if not self.config.output.resume:
            if self.dist.is_main:
                self.supersede()
            self.dist.barrier()
            return None
        summary = read_json(self.out / SUMMARY_FILE)
        model_dir = self.out / MODEL_DIR
        if not (summary and (model_dir / SUMMARY_FILE).is_file()):
            return None  # the model folder's summary is written last
        stored = {
            "config": (summary.get("config_hash"), self.config.hash()),
            "training data": (summary.get("data_fingerprint"), self.fingerprint),
            "number of steps": (summary.get("steps"), self.total_steps),
        }
        if changed := [what for what, (saved, now) in stored.items() if saved != now]:
            raise ConfigError(
                f"{self.out} holds a finished run with a different {changed[0]}; use another output.dir, or set "
                f"output.resume = false to start over (the finished run is then moved to {self.out / SUPERSEDED_DIR})"
            )
        stored = {f.name: summary[f.name] for f in fields(TrainResult) if f.name in summary}
        size = self.log_path.stat().st_size if self.log_path.is_file() else 0
        stored.update(model_dir=model_dir, log_path=self.log_path, losses=read_losses(self.log_path, size))
        try:
            result = TrainResult(**stored)
        except TypeError:  # a summary from an older layout
            return None
        log.info("%s finished earlier (%d steps): nothing to do", self.out, result.steps)
        return result

    def supersede(self) -> None:
        """Move the previous run's results into ``superseded/run-<time>`` (kept, never deleted)."""
        previous = [self.out / name for name in RUN_FILES if (self.out / name).exists()]
        if not previous:
            return
        staging = self.out / "run"
        staging.mkdir()
        for path in previous:
            os.replace(path, staging / path.name)
        kept = move_aside(staging, self.out / SUPERSEDED_DIR)
        log.info("output.resume = false: the previous run in %s moved to %s", self.out, kept)

    def check_space(self) -> None:
        """Refuse to start when the output folder cannot hold the model and one checkpoint."""
        trained = sum(p.numel() * p.element_size() for p in self.params)
        saved = trained
        if self.recipe.finetune == "full" or self.config.output.merge:
            saved = sum(p.numel() * p.element_size() for p in self.model.backbone.parameters())
        check_free_space(self.out, saved + 3 * trained, "the trained model and a checkpoint")

    def train_step(self) -> dict[str, Any]:
        """One optimiser step; returns its log line."""
        start = time.perf_counter()
        # the global batch: the same indices on every process, whatever their number
        indices = self.order.batch(self.step)
        # process r embeds the r-th slice; the loss still compares every process's texts (gathered)
        per_process = self.recipe.batch_size // self.dist.world
        shards = [
            [self.records[i] for i in indices[r * per_process : (r + 1) * per_process]] for r in range(self.dist.world)
        ]
        self.optimizer.zero_grad(set_to_none=False)
        try:
            # forward and backward of the whole global batch (plain or GradCache): gradients accumulate in .grad
            loss = float(self.step_fn(shards))
        except NonFiniteLoss as err:
            self.diverged(f"loss is {err.value}")  # raises before any update: the weights stay good
        if not self.dist.sharded:
            for param in self.params:
                if param.grad is None:  # an unreached parameter still steps (weight decay, moments), as in one process
                    param.grad = torch.zeros_like(param)
        # fp16: clipping and the logged norm need the true gradients, not the scaled ones (a no-op otherwise)
        self.scaler.unscale_(self.optimizer)
        # no recipe.max_grad_norm: an infinite bound clips nothing but still measures the norm for the log
        max_norm = self.recipe.max_grad_norm if self.recipe.max_grad_norm is not None else float("inf")
        grad_norm = self.dist.clip_grad_norm(self.wrapped, self.params, max_norm)
        # under fp16 an overflow is the scaler's to handle: it skips the step and lowers its scale
        if grad_norm is not None and not math.isfinite(grad_norm) and self.recipe.mixed_precision != "fp16":
            self.diverged(f"the gradient norm is {grad_norm} (loss {loss:.6g})")
        # the learning rates this step uses, read before the scheduler moves them on
        lrs = {group.get("name", "backbone"): group["lr"] for group in self.optimizer.param_groups}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - start
        self.wall += seconds
        self.losses.append(loss)
        # where the batch just trained on came from (self.step already counts it)
        position = self.order.position(self.step - 1)
        return {
            "step": self.step,
            "epoch": position.epoch,
            "loss": loss,
            "lr": lrs.get("backbone", lrs.get("head")),  # a frozen backbone has no group: the head's
            "head_lr": lrs.get("head"),
            "grad_norm": grad_norm,
            "examples_per_second": self.recipe.batch_size / seconds,
            "step_seconds": seconds,
            "wall_seconds": self.wall,
        }

    def measure_heldout(self) -> dict[str, float]:
        """Held-out InfoNCE and top-1 accuracy now (every process computes the same; the main one stores them)."""
        metrics = heldout_metrics(
            self.model,
            self.heldout_records,
            self.recipe.batch_size,
            self.recipe.scale,
            self.step_fn.autocast,
            module=self.wrapped,
        )
        metrics["step"] = self.step
        if self.dist.is_main:
            stored = {"before": self.heldout.get("before"), "after": metrics} if self.step else {"before": metrics}
            write_json_atomic(self.out / HELDOUT_FILE, stored)
            log.info(
                "held-out at step %d: InfoNCE %.4f (chance %.4f), top-1 %.3f (chance %.3f)",
                self.step,
                metrics["heldout_loss"],
                metrics["chance_loss"],
                metrics["heldout_top1"],
                metrics["chance_top1"],
            )
        return metrics

    def diverged(self, what: str, *, applied: bool = False) -> None:
        """Raise :class:`TrainingDiverged` about the coming step (``applied``: the step just taken)."""
        found = checkpoints(self.ckpt_dir)
        last = f"the last checkpoint is {found[-1][1]}" if found else "no checkpoint was written"
        if applied or self.dist.kind == "DEEPSPEED":
            done = "that step was applied, nothing was saved from it"
        else:
            done = "that step was not applied"
        raise TrainingDiverged(
            f"training diverged at step {self.step if applied else self.step + 1}: {what}; {done} and {last} "
            f"(checkpoints hold finite weights only; lower recipe.lr or enable recipe.max_grad_norm)"
        )

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` when a trained weight is NaN or infinite, before anything is saved."""
        finite = all(bool(torch.isfinite(param).all()) for param in self.params)
        if self.dist.reduce_max(0.0 if finite else 1.0):
            self.diverged("a trained weight is not finite", applied=True)

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
        """Write model, optimiser, scheduler, scaler, RNG states (one per process) and position atomically; only
        from finite weights."""
        self.check_finite()
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
                "threads": self.threads,
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
        self.threads = int(state.get("threads") or self.threads)
        self.step, self.wall, self.log_offset = step, state["wall_seconds"], state["log_offset"]
        self.losses = read_losses(self.log_path, self.log_offset)
        if self.dist.is_main:
            log.info("resuming from %s (step %d of %d)", path, step, self.total_steps)

    # ------------------------------------------------------------------ the result
    def finish(self, result: TrainResult) -> None:
        """Save the model folder (adapter + head + config, or merged weights) and the summary."""
        self.check_finite()
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
            try:
                model.save(result.model_dir)
            except (OSError, RuntimeError, SafetensorError) as err:
                raise OutputError(save_failure(err, result.model_dir)) from None
            summary = {
                **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items() if k != "losses"},
                "config_hash": self.config.hash(),
                "data_fingerprint": self.fingerprint,
                "records": len(self.records),
                "heldout": self.heldout or None,
                "processes": self.dist.world,
                "config": self.config.to_dict(),
            }
            text = json.dumps(summary, indent=2)
            write_text_atomic(self.out / SUMMARY_FILE, text)
            write_text_atomic(result.model_dir / SUMMARY_FILE, text)
            write_config(self.config, result.model_dir / CONFIG_FILE)
        self.dist.barrier()


#: Where ``output.resume = false`` moves a previous run's results.
SUPERSEDED_DIR = "superseded"
#: What a run writes in its folder (and a run started over moves aside).
RUN_FILES = (MODEL_DIR, SUMMARY_FILE, LOG_FILE, CONFIG_FILE, HELDOUT_FILE, CHECKPOINT_DIR, "tensorboard")


def check_learnable(records: Sequence[TrainRecord], source: str) -> None:
    """Refuse records from which nothing can be learned: a single distinct positive and no negatives leave
    every query one candidate, its own positive (in-batch duplicates are masked): loss 0, gradient 0."""
    if records and len({r.positive for r in records}) < 2 and not any(r.negatives for r in records):
        raise DataError(
            f"{source}: all {len(records)} records have the same positive and none has a negative; "
            "contrastive training needs at least two different positives"
        )


def read_losses(path: Path, offset: int) -> list[float]:
    """The losses logged in the first ``offset`` bytes of a step log."""
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
