"""Several training processes and accelerate's engine (DDP, FSDP or DeepSpeed ZeRO-2).

Each process (``accelerate launch``) embeds its slice of the global batch; embeddings are all-gathered, every
process computes the same global loss and back-propagates it through its own rows. The engine synchronises the
gradients once per step, at the last chunk's backward, scaled so that N processes x b examples equal one process
x N*b.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..model import EmbeddingModel
from .config import ConfigError, RecipeSection

log = logging.getLogger(__name__)


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
