"""What a study will cost on this machine, measured before it starts.

A few seconds of real work on the study's backbone at its own batch size and text length — one training step's
forward and backward pass (LoRA-like: activation gradients, no weight gradients), one encode of a sample of the
study's own evaluation texts — turned into an ETA of the whole grid: adaptation, training, evaluation (the
distinct texts of every task, each encoded once per design) and the layer pass. The grid's progress lines
refine it from the cells run so far.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..backbone import autocast_precision, resolve_precision
from ..model import EmbeddingModel
from .cells import Cell, layer_tasks, layers_profile
from .config import Study

#: Probe texts are this share of ``model.max_length`` tokens (short texts dominate the shipped data).
PROBE_LENGTH_SHARE = 0.5


@dataclass(frozen=True)
class Estimate:
    """Measured rates and the ETA they give, per phase (seconds)."""

    step_seconds: float
    encode_texts_per_second: float
    probe_tokens: int
    phases: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return sum(self.phases.values())

    def cell_seconds(self, cells: list[Cell]) -> dict[bool, float]:
        """Expected seconds of a trained (True) and an untrained (False) cell among ``cells``: the evaluation's
        share each, plus the training's and the adaptation's per trained cell."""
        n_trained = sum(c.design.train for c in cells)
        evaluation = self.phases.get("evaluation", 0.0) / max(1, len(cells))
        training = self.phases.get("training", 0.0) + self.phases.get("adaptation", 0.0)
        return {True: evaluation + training / max(1, n_trained), False: evaluation}

    def line(self) -> str:
        from .progress import fmt_seconds

        parts = " · ".join(f"{name} {fmt_seconds(seconds)}" for name, seconds in self.phases.items() if seconds)
        return (
            f"measured: a training step {self.step_seconds:.2f} s ({self.probe_tokens}-token texts), encoding "
            f"{self.encode_texts_per_second:.0f} texts/s (a sample of the evaluation's) "
            f"→ ETA {fmt_seconds(self.total_seconds)} ({parts})"
        )


def _time(fn: Any, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


#: Evaluation texts encoded to measure the encode rate (a seeded sample of the study's own).
PROBE_TEXTS = 64


def measure(
    study: Study, backbone: str, device: torch.device, sample: list[str] | None = None
) -> tuple[float, float, int]:
    """(seconds of one training step at the recipe's batch, encoded texts per second on ``sample`` — else on
    synthetic texts of the probe length —, tokens per probe text)."""
    model = EmbeddingModel.from_backbone(
        backbone,
        attention="causal",
        pooling="mean",
        dtype=study.model.dtype,
        max_length=study.model.max_length,
        num_layers=study.model.num_layers,
    ).to(device)
    tokens = max(4, int(study.model.max_length * PROBE_LENGTH_SHARE))
    texts_per_step = study.recipe.batch_size * (3 if study.data.hard_negatives not in (None, "none") else 2)
    vocab = int(model.backbone.config.vocab_size)
    ids = torch.randint(0, vocab, (texts_per_step, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    precision = resolve_precision(study.recipe.mixed_precision, "bf16", "fp32")
    embeddings = model.backbone.get_input_embeddings()

    def step() -> None:
        with autocast_precision(precision, device):
            inputs = embeddings(ids).detach().requires_grad_()
            hidden = model.backbone(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        hidden.float().pow(2).mean().backward()

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    step_seconds = _time(step)
    texts = sample or [" ".join(["word"] * tokens)] * PROBE_TEXTS
    encode_seconds = _time(lambda: model.encode(texts, show_progress=False), repeats=1)
    return step_seconds, len(texts) / encode_seconds, tokens


def eval_texts(study: Study, tasks: list[str] | None = None, profile: str | None = None) -> list[str] | None:
    """The texts one design encodes in the offline suite (``tasks``: these instead of the evaluation's): each
    task's distinct texts (a classification task's test texts and the union of its n-shot draws, not its whole
    pool), task after task, since each task has its own instruction (None for MTEB: unknown before it
    downloads)."""
    if study.eval.suite != "offline":
        return None
    from ..evaluate.offline import select_tasks

    profile = profile or study.eval.profile
    samples = study.eval.samples if tasks is None else {}
    texts: list[str] = []
    for task in select_tasks(study.eval.tasks if tasks is None else tasks, profile):  # type: ignore[arg-type]
        texts += sorted(encoded_texts(task.load(profile, samples.get(task.name))))  # type: ignore[arg-type]
    return texts


def encoded_texts(data: Any) -> set[str]:
    """The distinct texts a task's scorer encodes (a classification task: its test texts and its draws)."""
    from ..evaluate.scorers import classification_draws
    from ..evaluate.task_data import ClassificationData

    if not isinstance(data, ClassificationData):
        return data.all_texts()
    return {data.train_texts[i] for i in classification_draws(data)[1]} | set(data.texts)


def estimate(study: Study, cells: list[Cell], backbone: str, device: torch.device) -> Estimate:
    """Measure here and add up the pending cells' phases.

    The probes run the backbone as the cells do (cut to ``model.num_layers`` where set); adaptation and the layer
    pass run all its layers (adaptation also its LM head), so their share is scaled by the matmul work per token.
    Every trained cell also scores its held-out pairs before its first step and after its last."""
    texts = eval_texts(study)
    sample = random.Random(0).sample(texts, min(PROBE_TEXTS, len(texts))) if texts else None
    step_seconds, texts_per_second, tokens = measure(study, backbone, device, sample)
    whole, with_head = depth_factors(study, backbone)
    trained = [c for c in cells if c.design.train]
    heldout_texts = 2 * 2 * study.data.heldout  # query and positive, before and after training
    phases = {"training": len(trained) * (study.recipe.steps * step_seconds + heldout_texts / texts_per_second)}
    if study.adapt is not None:
        seeds = {c.seed for c in trained if study.adapted(c.design)}
        share = (study.adapt.batch_size * study.adapt.max_length) / max(1, study.recipe.batch_size * 2 * tokens)
        phases["adaptation"] = len(seeds) * study.adapt.steps * step_seconds * share * with_head
    n_texts = None if texts is None else len(texts)
    if n_texts is not None:
        phases["evaluation"] = len(cells) * n_texts / texts_per_second
        if study.layers.enabled:
            layer_texts = eval_texts(study, layer_tasks(study), layers_profile(study)) or []
            phases["layer pass"] = len(layer_texts) / texts_per_second * whole
    return Estimate(step_seconds, texts_per_second, tokens, phases)


def depth_factors(study: Study, backbone: str) -> tuple[float, float]:
    """Parameters per token of the whole backbone, and of the whole backbone with its LM head, each relative to
    the backbone as the cells run it (its first ``model.num_layers`` decoder layers), counted on the meta device."""
    from transformers import AutoConfig

    from ..backbone import decoder_layers
    from ..costs import meta_backbone, numel, text_config

    config = AutoConfig.from_pretrained(backbone)
    per_layer = [numel(layer) for layer in decoder_layers(meta_backbone(config))]
    used = sum(per_layer[: study.model.num_layers])
    whole = sum(per_layer)
    head = text_config(config).hidden_size * text_config(config).vocab_size
    return whole / used, (whole + head) / used
