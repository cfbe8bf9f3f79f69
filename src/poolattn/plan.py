"""What a run will cost, before anything downloads: every cell's parameters, memory per device, FLOPs and
GPU-hours on one accelerator type, for a study or a training config, and the table that prints them.

The per-design arithmetic lives in :mod:`poolattn.costs`; this module adds up a study's or a training run's cells
and its own stages, and turns FLOPs into time:

* Time: FLOPs / (the accelerator's dense bf16 peak x an assumed model FLOPs utilisation).
* A study's own stages are rows of their own: ``[adapt]`` (LLM2Vec's MNTP once per seed: LoRA under bidirectional
  attention, the LM head on the masked tokens, then SimCSE if set) and ``[layers]`` (one forward pass of the
  untrained base model over the layer tasks' texts). They run on process 0 alone, as evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .costs import (
    CHARS_PER_TOKEN,
    DTYPE_BYTES,
    RUNTIME_OVERHEAD,
    Accelerator,
    CellPlan,
    Params,
    PlanError,
    Shape,
    Workload,
    accelerator,
    backbone_config,
    backbone_forward_flops,
    layer_activation_bytes,
    lora_linears,
    meta_backbone,
    numel,
    plan_cell,
)


def plan_adapt(name: str, adapt: Any, config: Any, tokens: float | None) -> CellPlan:
    """The cost of one seed's adaptation (``adapt``: an :class:`~poolattn.training.adapt_config.AdaptConfig`): MNTP
    through a LoRA adapter under bidirectional attention with the backbone's LM head on the masked tokens, the
    held-out masked-token metrics (three forward passes), then SimCSE if ``simcse_steps`` is set."""
    from pathlib import Path

    from .training.adapt import simcse_config

    shape = Shape.of(config)
    backbone = meta_backbone(config)
    embedding = backbone.get_input_embeddings()
    targets = lora_linears(backbone, adapt.lora.target_modules, None, shape.layers)
    adapter = sum(adapt.lora.r * (m.in_features + m.out_features) for m in targets)
    lm_head = shape.vocab * shape.hidden
    tied = bool(getattr(config, "tie_word_embeddings", False))
    params = Params(numel(backbone), numel(embedding) if embedding is not None else 0, adapter, lm_head)
    cell = CellPlan(name, params, trained=True)
    cell.advice = {
        "activations": ("adapt.batch_size", "a smaller adapt.batch_size or adapt.max_length"),
        "optimizer": ("adapt.lora.r", "a smaller adapt.lora.r"),
    }

    weight_bytes = DTYPE_BYTES[adapt.dtype]
    act_bytes = weight_bytes if adapt.precision == "fp32" else 2
    t = min(float(tokens or adapt.max_length), adapt.max_length)
    lm = 2 * lm_head * adapt.mask_probability * t  # the LM head runs on the masked positions alone
    forward = backbone_forward_flops(params, shape, t, "bidirectional") + lm
    linear = 2 * params.matmul * t
    backward = linear + 2 * (forward - lm - linear) + 6 * adapter * t + lm  # input gradients through frozen weights
    cell.train_flops = adapt.steps * adapt.batch_size * (forward + backward)
    cell.eval_flops = 3 * adapt.heldout * forward

    cell.memory["weights"] = (params.backbone + (0 if tied else lm_head)) * weight_bytes + adapter * 4
    cell.memory["gradients"] = adapter * 4
    cell.memory["optimizer"] = 2 * adapter * 4
    chunk_tokens = adapt.batch_size * adapt.max_length
    layer_inputs = sum(m.in_features for m in targets) / shape.layers
    per_layer = layer_activation_bytes(shape, act_bytes, int(layer_inputs), adapt.lora.dropout > 0)
    logits = adapt.mask_probability * chunk_tokens * shape.vocab * (act_bytes + 8)  # + float32 copy and softmax
    cell.memory["activations"] = chunk_tokens * shape.layers * per_layer + logits
    cell.memory["runtime"] = RUNTIME_OVERHEAD

    if adapt.simcse_steps:
        simcse = simcse_config(adapt, Path("adapted"), Path("simcse"))
        design = SimpleNamespace(attention="bidirectional", pooling="mean", options={})
        texts = Workload(t, adapt.max_length, 2 * adapt.simcse_batch_size, [])
        stage = plan_cell(
            name,
            design,
            trained=True,
            config=config,
            recipe=simcse.recipe,
            lora=simcse.lora,
            model=simcse.model,
            workload=texts,
            steps=adapt.simcse_steps,
            gpus=1,
        )
        cell.train_flops += stage.train_flops
        if stage.peak_memory > cell.peak_memory:  # the stages run one after the other
            cell.memory = stage.memory
            cell.advice["activations"] = ("adapt.simcse_batch_size", "a smaller adapt.simcse_batch_size")
    return cell


def plan_layers(study: Any, config: Any, max_length: int) -> tuple[CellPlan, list[tuple[str, int, float]]] | None:
    """The layer-wise analysis: one forward pass of the untrained base model (every layer's vector at once) over
    the layer tasks' texts; with those texts, or None when it does not run."""
    from .study.cells import layer_tasks, layers_profile

    tasks = layer_tasks(study) if study.layers.enabled else []
    if not tasks:
        return None
    texts = offline_workload(tasks, layers_profile(study), max_length)
    shape = Shape.of(config)
    backbone = meta_backbone(config)
    embedding = backbone.get_input_embeddings()
    params = Params(numel(backbone), numel(embedding) if embedding is not None else 0, 0, 0)
    cell = CellPlan("layers", params, trained=False)
    cell.memory["weights"] = params.backbone * DTYPE_BYTES[study.model.dtype]
    cell.memory["runtime"] = RUNTIME_OVERHEAD
    cell.eval_flops = sum(n * backbone_forward_flops(params, shape, t, study.layers.attention) for _, n, t in texts)
    return cell, texts


# ------------------------------------------------------------------------------------------ evaluation
def mteb_workload(names: Sequence[str], max_length: int) -> list[tuple[str, int, float]]:
    """Texts and mean tokens of MTEB tasks' evaluation splits, from mteb's shipped descriptive statistics."""
    import mteb

    out = []
    for name in names:
        task = mteb.get_task(name)
        stats = task.metadata.descriptive_stats or {}
        texts, chars = 0, 0.0
        for split in task.metadata.eval_splits:
            entry = stats.get(split) or {}
            if not entry:
                continue
            texts += int(entry.get("num_samples", 0))
            chars += float(
                entry.get("number_of_characters")
                or sum(v.get("total_text_length") or 0 for v in entry.values() if isinstance(v, dict))
            )
        if not texts:
            texts, chars = 1000, 1000 * 64 * CHARS_PER_TOKEN  # no statistics: a small task
        out.append((name, texts, min(max_length, chars / texts / CHARS_PER_TOKEN + 2)))
    return out


def offline_workload(
    names: Sequence[str] | None, profile: str, max_length: int, samples: Mapping[str, int] | None = None
) -> list[tuple[str, int, float]]:
    """Texts and mean tokens of the offline suite's tasks (read from the shipped data; ``samples``: per-task
    sample sizes in place of the profile's)."""
    from .evaluate import tasks as registry

    chosen = [registry.get_task(n) for n in names] if names else registry.list_tasks(profile)  # type: ignore[arg-type]
    out = []
    for task in chosen:
        texts = list(task.load(profile, (samples or {}).get(task.name)).all_texts())  # type: ignore[arg-type]
        chars = sum(len(t) for t in texts)
        out.append((task.name, len(texts), min(max_length, chars / max(1, len(texts)) / CHARS_PER_TOKEN + 2)))
    return out


def eval_workload(section: Any, max_length: int) -> list[tuple[str, int, float]]:
    """The evaluation of a study's [eval] table."""
    if section.suite == "mteb":
        names = list(section.tasks or [])
        if not names and section.benchmark:
            import mteb

            names = [t.metadata.name for t in mteb.get_benchmark(section.benchmark).tasks]
        return mteb_workload(names, max_length)
    return offline_workload(section.tasks, section.profile, max_length, getattr(section, "samples", None))


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Every cell's cost, the study's own stages (``[adapt]``, ``[layers]``) and the totals on one accelerator type."""

    source: str
    backbone: str
    gpu: Accelerator
    gpus: int
    mfu_train: float
    mfu_eval: float
    steps: int
    workload: Workload
    cells: list[CellPlan]
    train_key: str  # "train" in a study, "recipe" in a training config
    notes: list[str] = field(default_factory=list)
    #: Rows run once on process 0 besides the cells: one ``adapt-s<seed>`` per adapted seed, ``layers``.
    stages: list[CellPlan] = field(default_factory=list)
    #: The backbone's transformers config the plan was made from.
    config: Any = None

    def hours(self, flops: float, mfu: float) -> float:
        return flops / (self.gpu.bf16_tflops * 1e12 * mfu) / 3600

    def cell_hours(self, cell: CellPlan) -> tuple[float, float]:
        return self.hours(cell.train_flops, self.mfu_train), self.hours(cell.eval_flops, self.mfu_eval)

    @property
    def rows(self) -> list[CellPlan]:
        return [*self.cells, *self.stages]

    def parts(self) -> dict[str, float]:
        """GPU-hours by part: training and evaluation of the cells, ``[adapt]`` and ``[layers]``."""
        out = {
            "training": sum(self.cell_hours(c)[0] for c in self.cells),
            "evaluation": sum(self.cell_hours(c)[1] for c in self.cells),
        }
        for label, prefix in (("[adapt]", "adapt-"), ("[layers]", "layers")):
            chosen = [s for s in self.stages if s.name.startswith(prefix)]
            if chosen:
                out[label] = sum(sum(self.cell_hours(s)) for s in chosen)
        return out

    @property
    def total_hours(self) -> float:
        return sum(self.parts().values())

    @property
    def wall_hours(self) -> float:
        """Training split over the devices; evaluation and the stages on process 0 while the others wait."""
        parts = self.parts()
        return parts["training"] / self.gpus + sum(v for k, v in parts.items() if k != "training")

    def lines(self) -> list[str]:
        g, w = self.gpu, self.workload
        out = [
            f"plan for {self.source}: backbone {self.backbone}",
            f"accelerator: {self.gpus} x {g.name} ({g.bf16_tflops:.0f} TFLOPS dense bf16, {g.memory_gb:.0f} GB); "
            f"assumed MFU {self.mfu_train:.0%} training, {self.mfu_eval:.0%} evaluation",
            f"workload: {self.steps} steps x {w.texts_per_step:,} texts, {w.mean_tokens:.0f} tokens per text "
            f"(at most {w.max_length}); evaluation {sum(n for _, n, _ in w.eval_texts):,} texts in "
            f"{len(w.eval_texts)} tasks",
            *self.notes,
            "",
            f"{'cell':<10}{'backbone':>10}{'adapter':>10}{'head':>10}  {'weights':>8}{'grads':>8}{'optim':>8}"
            f"{'activ':>8}{'peak/dev':>10}  {'train PF':>10}{'eval PF':>10}{'GPU-h':>8}",
        ]
        for cell in self.rows:
            p, m = cell.params, cell.memory
            train_h, eval_h = self.cell_hours(cell)
            out.append(
                f"{cell.name:<10}{count(p.backbone):>10}{count(p.adapter):>10}{count(p.head):>10}  "
                + "".join(f"{gb(m.get(k, 0.0)):>8}" for k in ("weights", "gradients", "optimizer", "activations"))
                + f"{gb(cell.peak_memory):>10}  {cell.train_flops / 1e15:>10,.0f}{cell.eval_flops / 1e15:>10,.0f}"
                f"{hours(train_h + eval_h):>8}"
            )
        peak = max(self.rows, key=lambda c: c.peak_memory)
        parts = ", ".join(f"{hours(v)} {k}" for k, v in self.parts().items())
        out += [
            "",
            f"total: {hours(self.total_hours)} GPU-hours ({parts}); {hours(self.wall_hours)} h wall-clock on "
            f"{self.gpus} x {g.name}",
            f"peak memory: {gb(peak.peak_memory)} GB per device ({peak.name})",
            "memory: GB per device (weights, gradients, AdamW state, activations of the largest chunk with "
            f"gradients, + {RUNTIME_OVERHEAD / 1e9:.0f} GB runtime); PF = 10^15 FLOPs",
        ]
        return out

    def check_fits(self) -> None:
        """Raise :class:`PlanError` naming the key to change when a row needs more memory than a device has."""
        capacity = self.gpu.memory_gb * 1e9
        for cell in self.rows:
            if cell.peak_memory <= capacity:
                continue
            part = max(("weights", "optimizer", "activations"), key=lambda k: cell.memory.get(k, 0.0))
            keys = {
                "weights": ("model.dtype", "a bfloat16 backbone, or a smaller model.backbone"),
                "optimizer": (f"{self.train_key}.finetune", "LoRA instead of full fine-tuning"),
                "activations": (
                    f"{self.train_key}.mini_batch",
                    f"a smaller {self.train_key}.mini_batch or {self.train_key}.forward_tokens, or "
                    f"{self.train_key}.gradient_checkpointing = true",
                ),
                **cell.advice,
            }
            key, advice = keys[part]
            raise PlanError(
                f"{self.source}: {key}: {cell.name} needs {gb(cell.peak_memory)} GB per device, more than "
                f"a {self.gpu.name}'s "
                f"{self.gpu.memory_gb:.0f} GB ({part} {gb(cell.memory[part])} GB); try {advice}",
                key=key,
            )


def count(n: float) -> str:
    """``1.28B``, ``42.0M``, ``0``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "B" else f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def hours(h: float) -> str:
    """``1,798.5``, ``<0.1`` (a short stage does not read as none), ``0``."""
    return "0" if h == 0 else "<0.1" if h < 0.05 else f"{h:,.1f}"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


@dataclass
class PlanOptions:
    """The command line's choices: accelerator, how many, a shape hint, tokens per text and MFUs."""

    gpu: str = "h100"
    gpus: int = 1
    params: str | None = None
    tokens: float | None = None
    negatives: int = 1
    mfu_train: float = 0.35
    mfu_eval: float = 0.45


def make_plan(
    *,
    source: str,
    model: Any,
    recipe: Any,
    lora: Any,
    designs: Sequence[tuple[str, Any, bool]],
    evaluation: Callable[[int], list[tuple[str, int, float]]],
    options: PlanOptions,
    train_key: str,
) -> Plan:
    """A :class:`Plan` for ``designs`` ((name, design, trained) with ``attention``, ``pooling``, ``options``)."""
    if options.gpus < 1:
        raise PlanError("--gpus must be at least 1")
    for name, value in (("--mfu-train", options.mfu_train), ("--mfu-eval", options.mfu_eval)):
        if not 0 < value <= 1:
            raise PlanError(f"{name} must be in (0, 1], got {value}")
    gpu = accelerator(options.gpu)
    config = backbone_config(model.backbone, options.params)
    steps = recipe.steps or 0
    notes = []
    if not steps:
        notes.append(f"{train_key}.steps is unset (epochs): planned as 0 training steps")
    tokens = options.tokens or model.max_length
    if options.tokens is None:
        notes.append(
            f"tokens per text: {tokens} (an upper bound, model.max_length; `poolattn data SOURCE` measures the "
            "data's, then give it as --tokens)"
        )
    if options.params:
        notes.append(f"backbone shape from --params {options.params!r} (no config read)")
    workload = Workload(
        mean_tokens=min(float(tokens), model.max_length),
        max_length=model.max_length,
        texts_per_step=recipe.batch_size * (2 + options.negatives),
        eval_texts=evaluation(model.max_length),
    )
    cells = []
    for name, design, trained in designs:
        try:
            cells.append(
                plan_cell(
                    name,
                    design,
                    trained=trained,
                    config=config,
                    recipe=recipe,
                    lora=lora,
                    model=model,
                    workload=workload,
                    steps=steps,
                    gpus=options.gpus,
                )
            )
        except ValueError as err:
            raise PlanError(f"design {name}: {err}") from None
    return Plan(
        source,
        model.backbone,
        gpu,
        options.gpus,
        options.mfu_train,
        options.mfu_eval,
        steps,
        workload,
        cells,
        train_key,
        notes,
        config=config,
    )


def plan_study(study: Any, options: PlanOptions) -> Plan:
    """The plan of a study: every design x seed, each evaluated on the study's tasks, the [adapt] stage once per
    adapted seed and the layer-wise analysis."""
    from .study.cells import layers_profile, shares_layer_pass
    from .study.config import adapt_config

    designs = [(f"{d.name}-s{seed}", d, d.train) for seed in study.seeds for d in study.designs]
    plan = make_plan(
        source=study.source,
        model=study.model,
        recipe=study.recipe,
        lora=study.lora,
        designs=designs,
        evaluation=lambda max_length: eval_workload(study.eval, max_length),
        options=options,
        train_key="train",
    )
    if any(study.adapted(d) for d in study.designs):
        for seed in study.seeds:
            plan.stages.append(plan_adapt(f"adapt-s{seed}", adapt_config(study, seed), plan.config, options.tokens))
    layers = plan_layers(study, plan.config, study.model.max_length)
    if layers is not None:
        cell, texts = layers
        plan.stages.append(cell)
        shape = Shape.of(plan.config)
        vectors = sum(n for _, n, _ in texts) * shape.layers * shape.hidden * 4
        plan.notes.append(
            f"layer-wise analysis: {sum(n for _, n, _ in texts):,} texts of {len(texts)} tasks, one forward pass of "
            f"the base model; {gb(vectors)} GB of layer vectors in host memory"
        )
        if layers_profile(study) == study.eval.profile:  # shared designs reuse the layer pass's embeddings
            shared = {name for name, _, _ in texts}
            for (_, design, _), row in zip(designs, plan.cells, strict=True):
                if shares_layer_pass(study, design):
                    row.eval_flops -= sum(
                        n * backbone_forward_flops(row.params, shape, t, design.attention)
                        for name, n, t in plan.workload.eval_texts
                        if name in shared
                    )
    return plan


def plan_training(config: Any, source: str, options: PlanOptions) -> Plan:
    """The plan of one training run (no evaluation)."""
    m = config.model
    design = SimpleNamespace(attention=m.attention, pooling=m.pooling, options=m.pooling_options)
    return make_plan(
        source=source,
        model=m,
        recipe=config.recipe,
        lora=config.lora,
        designs=[(m.pooling, design, True)],
        evaluation=lambda max_length: [],
        options=options,
        train_key="recipe",
    )
