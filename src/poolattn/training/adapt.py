"""LLM2Vec's unsupervised adaptation of a decoder as a stage: masked next-token prediction (MNTP) under
bidirectional attention with a LoRA adapter, the adapter folded into the backbone (or kept), then optionally
unsupervised SimCSE (the same text twice, dropout as the noise, InfoNCE through :func:`poolattn.training.train`).

:func:`adapt` writes an output folder that loads like any backbone
(``EmbeddingModel.from_backbone(folder, attention="bidirectional", ...)``, ``model.backbone = folder``):

    config.json, model.safetensors, tokenizer files   the adapted causal LM (``merge = true``), or
    adapter_config.json, adapter_model.safetensors    the last stage's adapter, folded into its base when loaded
    adapt_summary.json    written last: mask token, steps, and the masked-token loss and accuracy on the held-out
                          texts of the causal base, and under bidirectional attention before MNTP, after it and
                          (with SimCSE) of the final folder as saved
    adapt_config.toml, adapt_log.jsonl (one line per MNTP step), checkpoints/ (a rerun resumes from the latest)
    mntp/, simcse-start/, simcse/   with SimCSE: the MNTP-adapted weights, SimCSE's start and its training run

A rerun resumes from the latest checkpoint and gives the weights of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from .._version import __version__
from ..assets import resolve_backbone
from ..backbone import ADAPTER_CONFIG, autocast_precision, resolve_precision
from ..data import DataOrder, TrainRecord
from ..io import now, read_json, write_json_atomic
from ..model import EmbeddingModel
from ..outputs import owned_run, replace_dir
from ..targets import make_temp
from ..threads import apply_budget, pin_threads
from .adapt_config import ADAPT_CONFIG_FILE, ADAPT_LOG, ADAPT_SUMMARY, AdaptConfig, AdaptTexts, adapt_texts
from .adapt_config import write_adapt_config as write_config
from .checkpoints import checkpoints, rng_state, set_rng_state
from .config import (
    CHECKPOINT_DIR,
    ConfigError,
    DataSection,
    ModelSection,
    OutputSection,
    RecipeSection,
    TrainConfig,
    TrainingDiverged,
)
from .mntp import MaskedLM, masked_metrics, open_masked_lm
from .trainer import ProgressDisplay, read_losses, seed_for, train, trainable_state

log = logging.getLogger(__name__)

#: Subfolders of a run with SimCSE: the MNTP-adapted weights, SimCSE's start (attention dropout on) and its run.
MNTP_DIR, SIMCSE_START_DIR, SIMCSE_DIR = "mntp", "simcse-start", "simcse"


def device_for_run() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class MNTPRun:
    """The MNTP stage: set-up, resume, the step loop, checkpoints and the adapted causal LM."""

    def __init__(self, config: AdaptConfig, texts: AdaptTexts, out: Path, progress: bool) -> None:
        from accelerate.utils import set_seed

        self.config, self.texts, self.out, self.progress = config, texts, out, progress
        self.ckpt_dir, self.log_path = out / CHECKPOINT_DIR, out / ADAPT_LOG
        self.device = device_for_run()
        set_seed(config.seed)  # the adapter's initial weights are a function of the seed
        self.backbone = resolve_backbone(config.backbone)
        self.causal, self.lm = open_masked_lm(
            self.backbone,
            dtype=config.dtype,
            max_length=config.max_length,
            mask_token=config.mask_token,
            device=self.device,
        )
        self.model, self.mask = self.lm.model, self.lm.mask
        self.causal_lm = MaskedLM(self.model, self.lm.head, self.mask, self.lm.softcap, attention="causal")
        lora = config.lora
        self.model.add_lora(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.scheduler = get_scheduler(
            "linear", self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.order = DataOrder(len(texts.train), config.batch_size, config.seed)
        self.fingerprint = texts.fingerprint()
        # taken once and kept by the run and its resumption: the number of threads changes the weights' rounding
        self.threads = apply_budget() if self.device.type == "cpu" else torch.get_num_threads()
        self.step, self.wall, self.log_offset = 0, 0.0, 0
        self.losses: list[float] = []
        self.heldout: dict[str, Any] = {}
        torch.manual_seed(seed_for(config.seed, 0))  # from here on the generator drives dropout only

    def metrics(self, lm: MaskedLM) -> dict[str, Any]:
        with autocast_precision(self.config.precision, self.device):
            return masked_metrics(lm, self.texts.heldout, self.config.mask_probability, self.config.seed)

    def run(self) -> dict[str, Any]:
        self.resume()
        if not self.heldout and self.texts.heldout:  # the unadapted model, measured once before the first step
            self.heldout = {"causal_base": self.metrics(self.causal_lm), "before": self.metrics(self.lm)}
        self.log_path.touch()
        os.truncate(self.log_path, self.log_offset)  # lines past the resumed checkpoint belong to steps run again
        self.model.train()
        first, started = self.step, time.perf_counter()
        with (
            open(self.log_path, "a", encoding="utf-8") as log_file,
            ProgressDisplay(self.config.steps, self.step, enabled=self.progress) as display,
        ):
            while self.step < self.config.steps:
                pin_threads(self.threads)
                record = self.train_step()
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                self.log_offset = log_file.tell()
                display.update(record)
                every = self.config.checkpoint_every
                if every and (self.step % every == 0 or self.step == self.config.steps):
                    self.save_checkpoint()
        self.model.eval()
        seconds = time.perf_counter() - started
        return {
            "steps": self.step,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "wall_seconds": round(self.wall, 3),
            "texts_per_second": (self.step - first) * self.config.batch_size / seconds if self.step > first else None,
            "trainable_parameters": sum(p.numel() for p in self.params),
        }

    def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        texts = [self.texts.train[i] for i in self.order.batch(self.step)]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_precision(self.config.precision, self.device):
            loss, correct, count = self.lm.loss(
                self.lm.batch(texts), self.config.mask_probability, (self.config.seed, 0, self.step)
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(f"MNTP diverged at step {self.step + 1}: loss is {value} (lower lr)")
        loss.backward()
        limit = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - start
        self.wall += seconds
        self.losses.append(value)
        return {
            "step": self.step,
            "loss": value,
            "accuracy": correct / count,
            "masked_tokens": count,
            "lr": lr,
            "grad_norm": grad_norm,
            "examples_per_second": len(texts) / seconds,
            "step_seconds": seconds,
            "wall_seconds": self.wall,
        }

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Adapter, optimiser, scheduler, RNG state and position, written next to the target and renamed."""
        final = self.ckpt_dir / f"step-{self.step:08d}"
        tmp = self.ckpt_dir / f".step-{self.step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(self.model), tmp / "trainable.safetensors")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(self.device), tmp / "rng.pt")
        state = {
            "step": self.step,
            "log_offset": self.log_offset,
            "wall_seconds": self.wall,
            "config_hash": self.config.hash(),
            "texts_fingerprint": self.fingerprint,
            "heldout": self.heldout,
            "threads": self.threads,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(self.ckpt_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> None:
        found = checkpoints(self.ckpt_dir)
        if not found:
            return
        step, path = found[-1]
        state = json.loads((path / "state.json").read_text())
        for what, saved, current in (
            ("config", state["config_hash"], self.config.hash()),
            ("set of texts", state["texts_fingerprint"], self.fingerprint),
        ):
            if saved != current:
                raise ConfigError(f"{path} was written with a different {what}; use another output folder")
        weights = load_file(path / "trainable.safetensors", device="cpu")
        missing = self.trainable & set(self.model.load_state_dict(weights, strict=False)[0])
        if missing:
            raise ConfigError(f"{path} lacks adapter weights {sorted(missing)[:3]}")
        load = dict(map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", **load))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", **load))
        set_rng_state(torch.load(path / "rng.pt", weights_only=True), self.device)
        self.step, self.wall, self.log_offset = step, state["wall_seconds"], state["log_offset"]
        self.heldout = state.get("heldout") or {}
        self.threads = int(state.get("threads") or self.threads)
        self.losses = read_losses(self.log_path, self.log_offset)
        log.info("resuming MNTP from %s (step %d of %d)", path, step, self.config.steps)

    # ------------------------------------------------------------------ the result
    def merge(self) -> None:
        """Fold the adapter into the causal LM's decoder."""
        self.model.merge_adapter()
        setattr(self.causal, self.causal.base_model_prefix, self.model.backbone)

    def save_adapter(self, folder: Path) -> None:
        """The adapter alone, on top of the backbone it was trained on, with the tokenizer."""
        self.model.backbone.save_pretrained(folder)
        self.model.tokenizer.save_pretrained(folder)
        point_adapter_at(folder, self.backbone)

    def save_weights(self, folder: Path) -> None:
        """The whole causal LM (adapter folded in) and the tokenizer."""
        self.causal.save_pretrained(folder)
        self.model.tokenizer.save_pretrained(folder)


def point_adapter_at(folder: Path, base: str) -> None:
    """Set an adapter folder's base model (a subfolder name is read relative to the folder when loaded)."""
    path = folder / ADAPTER_CONFIG
    raw = json.loads(path.read_text())
    raw["base_model_name_or_path"] = base
    path.write_text(json.dumps(raw, indent=2))


def write_into(out: Path, save: Any) -> None:
    """Write a model with ``save(folder)`` into a temporary folder, then move its files into ``out``."""
    tmp = make_temp(out / "adapted", folder=True)
    try:
        save(tmp)
        stale = {ADAPTER_CONFIG, "adapter_model.safetensors", "config.json", "model.safetensors"}
        for name in stale - {p.name for p in tmp.iterdir()}:  # a previous run's other storage kind
            (out / name).unlink(missing_ok=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ============================================================================================== SimCSE
def simcse_start(out: Path, dropout: float) -> Path:
    """The MNTP-adapted weights with attention dropout on (linked, not copied): SimCSE's noise, as in LLM2Vec."""
    source, start = out / MNTP_DIR, out / SIMCSE_START_DIR
    tmp = make_temp(start, folder=True)
    for item in source.iterdir():
        if item.name != "config.json":
            (tmp / item.name).symlink_to(Path("..", MNTP_DIR, item.name))
    config = json.loads((source / "config.json").read_text())
    for key in ("attention_dropout", "attn_pdrop"):
        if key in config:
            config[key] = dropout
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    replace_dir(tmp, start)
    return start


def simcse_config(config: AdaptConfig, start: Path, out: Path) -> TrainConfig:
    """The contrastive run of the SimCSE stage: mean pooling, bidirectional, a fresh LoRA adapter."""
    return TrainConfig(
        model=ModelSection(
            backbone=str(start),
            attention="bidirectional",
            pooling="mean",
            dtype=config.dtype,
            max_length=config.max_length,
        ),
        data=DataSection(hard_negatives="none"),
        recipe=RecipeSection(
            steps=config.simcse_steps,
            batch_size=config.simcse_batch_size,
            lr=config.simcse_lr,
            scale=20.0,  # temperature 0.05, as in SimCSE and LLM2Vec
            finetune="lora",
            mixed_precision="bf16" if resolve_precision(config.precision) == "bf16" else "no",
            seed=config.seed,
        ),
        lora=config.lora,
        output=OutputSection(
            dir=str(out),
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=config.keep_checkpoints,
        ),
    )


def run_simcse(config: AdaptConfig, texts: AdaptTexts, out: Path, run: MNTPRun, progress: bool) -> dict[str, Any]:
    """SimCSE on the MNTP-adapted weights, then the result written into ``out`` (folded in, or as an adapter on
    ``mntp/``)."""
    replace_dir(write_temp(out, run.save_weights), out / MNTP_DIR)
    start = simcse_start(out, config.simcse_dropout)
    records = [TrainRecord(text, text) for text in texts.train]
    result = train(simcse_config(config, start, out / SIMCSE_DIR), records=records, progress=progress)
    trained = EmbeddingModel.load(result.model_dir)
    if config.merge:
        trained.merge_adapter()
        base = run.causal.base_model
        base.load_state_dict(trained.backbone.state_dict())
        write_into(out, run.save_weights)
    else:

        def save_adapter(folder: Path) -> None:
            for item in (result.model_dir / "adapter").iterdir():
                shutil.copy2(item, folder / item.name)
            run.model.tokenizer.save_pretrained(folder)
            point_adapter_at(folder, MNTP_DIR)

        write_into(out, save_adapter)
    losses = result.losses
    return {"steps": result.steps, "first_loss": losses[0] if losses else None, "final_loss": result.final_loss}


def write_temp(out: Path, save: Any) -> Path:
    """A temporary folder in ``out`` holding what ``save(folder)`` writes (removed if that fails)."""
    tmp = make_temp(out / "stage", folder=True)
    try:
        save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


# ============================================================================================== the stage
def adapt(config: AdaptConfig, output: str | os.PathLike[str], *, progress: bool = True) -> dict[str, Any]:
    """Adapt ``config.backbone`` into ``output`` (MNTP, then SimCSE when ``simcse_steps``); returns the summary.

    A finished folder of the same config is reused; a different config's is refused, and so is a folder adapt did
    not write (the backbone's own above all); one run at a time per folder. A rerun resumes from the latest
    checkpoint. Raises :class:`TrainingDiverged` on a NaN/inf loss."""
    out = Path(output)
    source = Path(resolve_backbone(config.backbone))
    if source.exists() and out.exists() and source.resolve() == out.resolve():
        raise ConfigError(f"{out} is the backbone's own folder; write the adapted backbone into a new folder")
    with owned_run(out, "adapt", recognise=(ADAPT_CONFIG_FILE, ADAPT_SUMMARY)):
        return adapt_into(config, out, progress)


def adapt_into(config: AdaptConfig, out: Path, progress: bool) -> dict[str, Any]:
    """:func:`adapt`'s work, in a folder it holds."""
    summary = read_json(out / ADAPT_SUMMARY)
    if summary is not None:
        if summary.get("config_hash") == config.hash():
            return summary
        raise ConfigError(f"{out} holds an adaptation with a different config; use another output folder")
    write_config(config, out / ADAPT_CONFIG_FILE)
    texts = adapt_texts(config)
    run = MNTPRun(config, texts, out, progress)
    mntp = run.run()
    if config.merge or config.simcse_steps:
        run.merge()
    heldout = dict(run.heldout)
    if texts.heldout:
        heldout["after"] = run.metrics(run.lm)
    simcse = None
    if config.simcse_steps:
        simcse = run_simcse(config, texts, out, run, progress)
        if texts.heldout:  # the saved folder, reloaded: what a study starts from
            heldout["final"] = measure_folder(out, config, texts)
    else:
        write_into(out, run.save_weights if config.merge else run.save_adapter)
    summary = {
        "backbone": run.backbone,
        "adapted_backbone": str(out.resolve()),
        "storage": "weights" if config.merge else "adapter",
        "mask_token": asdict(run.mask),
        "mask_probability": config.mask_probability,
        "texts": {
            "source": texts.source,
            "train": len(texts.train),
            "heldout": len(texts.heldout),
            "fingerprint": texts.fingerprint(),
        },
        "mntp": mntp,
        "simcse": simcse,
        "heldout": heldout,
        "heldout_loss_before": heldout.get("before", {}).get("loss"),
        "heldout_loss_after": (heldout.get("final") or heldout.get("after") or {}).get("loss"),
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "poolattn_version": __version__,
        "finished": now(),
    }
    write_json_atomic(out / ADAPT_SUMMARY, summary)
    return summary


def measure_folder(folder: Path, config: AdaptConfig, texts: AdaptTexts) -> dict[str, Any]:
    """Masked-token loss and accuracy of an adapted folder as saved (bidirectional, held-out texts)."""
    device = device_for_run()
    _, lm = open_masked_lm(
        str(folder), dtype=config.dtype, max_length=config.max_length, mask_token=config.mask_token, device=device
    )
    with autocast_precision(config.precision, device):
        return masked_metrics(lm, texts.heldout, config.mask_probability, config.seed)
