"""The study config: one TOML file declares the backbone, the training data and recipe shared by every design, the
designs, the seeds, the reference design and the evaluation (``configs/default.toml`` is the embedded default
study; ``configs/paper.toml`` is the paper's set-up). An optional ``[adapt]`` table (the keys of
:class:`~poolattn.training.adapt_config.AdaptConfig`, plus ``designs``) adapts the backbone once per seed with
LLM2Vec's MNTP (+ SimCSE) before contrastive training; ``designs`` says which trained designs start from it:
``"bidirectional"`` (default, as LLM2Vec), ``"all"`` or a list of names.

:func:`load_study` reads it into a typed :class:`Study`; every error is a :class:`StudyError` that names the
file, the line (or ``--set``) and the key.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from ..backbone import PRECISIONS, resolve_precision
from ..config import ConfigError, KeyLocator, apply_overrides, build_dataclass, parse_toml, read_toml
from ..evaluate import SUITES
from ..evaluate import tasks as task_registry
from ..outputs import COMPONENT
from ..pooling import POOLERS
from ..training import DataSection, LoraSection, ModelSection, OutputSection, RecipeSection, TrainConfig
from ..training.adapt_config import AdaptConfig

ATTENTIONS = ("causal", "bidirectional")
#: The [train] table: the recipe (poolattn.training.RecipeSection, seed excepted) plus these output settings.
TRAIN_OUTPUT_KEYS = ("checkpoint_every", "keep_checkpoints", "merge")
#: [model] keys that the designs set themselves.
DESIGN_MODEL_KEYS = ("attention", "pooling", "pooling_options")
#: poolattn.training config sections -> the study table that holds them.
TRAIN_SECTIONS = {"recipe": "train", "output": "train", "lora": "lora", "model": "model", "data": "data"}
DEFAULT_SOURCE = "the embedded default study (poolattn/configs/default.toml)"
#: AdaptConfig keys that a study sets itself: the backbone and dtype from [model], the seed from ``seeds``.
ADAPT_STUDY_KEYS = ("backbone", "dtype", "seed")
#: ``adapt.designs``: which trained designs start from the adapted backbone (or a list of design names).
ADAPT_DESIGN_CHOICES = ("bidirectional", "all")

T = TypeVar("T")


class StudyError(ConfigError):
    """A study config that cannot be used; the message names the file, line and key."""


@dataclass
class Design:
    """One arm of the study: attention x pooling (+ options); ``train = false`` evaluates the untrained model."""

    name: str
    attention: str
    pooling: str
    options: dict[str, Any] = field(default_factory=dict)
    train: bool = True
    label: str = ""

    def identity(self) -> dict[str, Any]:
        """What determines this design's results (the name and label do not)."""
        return {"attention": self.attention, "pooling": self.pooling, "options": self.options, "train": self.train}


@dataclass
class EvalSection:
    """``suite = "offline"`` (the shipped suite; ``profile`` full | quick, optional ``tasks``) or ``"mteb"``
    (``tasks`` or ``benchmark``). ``instructions`` overrides task instructions by task name or category;
    ``samples`` sets an offline task's sample size in place of the profile's (up to its full profile's).
    ``precision``: ``bf16`` runs the evaluation's forward passes under bfloat16 autocast, ``fp32`` in the model's
    dtype, ``auto`` picks bf16 where the hardware computes it natively (resolved when the config is read)."""

    suite: str = "offline"
    profile: str = "quick"
    tasks: list[str] | None = None
    benchmark: str | None = None
    instructions: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    samples: dict[str, int] = field(default_factory=dict)


@dataclass
class LayersSection:
    """Layer-wise analysis of the untrained base model on the offline suite (``tasks``: a cheap subset)."""

    enabled: bool = True
    attention: str = "causal"
    profile: str | None = None
    tasks: list[str] | None = None
    cka_texts: int = 512


@dataclass
class StatsSection:
    """Resampling settings of the statistics (bootstrap CIs, permutation tests) and the significance level."""

    n_resamples: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0


@dataclass
class Study:
    """A validated study config. ``model`` keeps the design keys (attention, pooling, pooling_options) at their
    defaults and ``recipe`` its seed: each design and seed sets them (:func:`train_config`)."""

    name: str
    description: str
    reference: str
    seeds: list[int]
    designs: list[Design]
    model: ModelSection
    data: DataSection
    recipe: RecipeSection
    output: OutputSection
    lora: LoraSection
    eval: EvalSection
    layers: LayersSection
    stats: StatsSection
    source: str
    raw: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    #: The ``[adapt]`` table (LLM2Vec's MNTP, + SimCSE), run once per seed before contrastive training; None: none.
    adapt: AdaptConfig | None = None
    #: The trained designs that start from the adapted backbone (``adapt.designs``).
    adapt_designs: list[str] = field(default_factory=list)

    def design(self, name: str) -> Design:
        return next(d for d in self.designs if d.name == name)

    def adapted(self, design: Design) -> bool:
        """Whether ``design`` trains from the adapted backbone rather than the base."""
        return self.adapt is not None and design.name in self.adapt_designs

    def adapt_table(self) -> dict[str, Any] | None:
        """The [adapt] table as stored: every adaptation setting but those the study sets, and the designs."""
        if self.adapt is None:
            return None
        values = {k: v for k, v in self.adapt.to_dict().items() if k not in ADAPT_STUDY_KEYS}
        return {**values, "designs": list(self.adapt_designs)}

    def model_table(self) -> dict[str, Any]:
        """The [model] table as stored: every model setting but those the designs set."""
        return {k: v for k, v in asdict(self.model).items() if k not in DESIGN_MODEL_KEYS}

    def train_table(self) -> dict[str, Any]:
        """The [train] table as stored: the recipe without its seed, then the output settings it holds."""
        return {
            **{k: v for k, v in asdict(self.recipe).items() if k != "seed"},
            **{k: getattr(self.output, k) for k in TRAIN_OUTPUT_KEYS},
        }

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as stored in ``study.json``."""
        return {
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "seeds": self.seeds,
            "designs": [asdict(d) for d in self.designs],
            "model": self.model_table(),
            "data": asdict(self.data),
            "train": self.train_table(),
            "lora": asdict(self.lora),
            "eval": asdict(self.eval),
            "layers": asdict(self.layers),
            "stats": asdict(self.stats),
            "adapt": self.adapt_table(),
            "source": self.source,
            "overrides": self.overrides,
        }


def study_from_dict(stored: Mapping[str, Any]) -> Study:
    """The typed :class:`Study` of a stored config (``study.json``'s ``config``, :meth:`Study.to_dict`); tables
    it lacks take their defaults and ``raw`` is the stored config itself. Raises ``ConfigError`` naming the key."""
    train = dict(stored.get("train") or {})
    adapt = dict(stored.get("adapt") or {})
    adapt_designs = adapt.pop("designs", [])
    return Study(
        name=stored["name"],
        description=stored.get("description", ""),
        reference=stored["reference"],
        seeds=list(stored["seeds"]),
        designs=[build_dataclass(Design, dict(d), f"designs[{i}].") for i, d in enumerate(stored["designs"])],
        model=build_dataclass(ModelSection, dict(stored.get("model") or {}), "model."),
        data=build_dataclass(DataSection, dict(stored.get("data") or {}), "data."),
        recipe=build_dataclass(RecipeSection, {k: v for k, v in train.items() if k not in TRAIN_OUTPUT_KEYS}, "train."),
        output=build_dataclass(OutputSection, {k: v for k, v in train.items() if k in TRAIN_OUTPUT_KEYS}, "train."),
        lora=build_dataclass(LoraSection, dict(stored.get("lora") or {}), "lora."),
        eval=build_dataclass(EvalSection, dict(stored.get("eval") or {}), "eval."),
        layers=build_dataclass(LayersSection, dict(stored.get("layers") or {}), "layers."),
        stats=build_dataclass(StatsSection, dict(stored.get("stats") or {}), "stats."),
        source=stored.get("source", ""),
        raw=dict(stored),
        overrides=list(stored.get("overrides") or []),
        adapt=build_dataclass(AdaptConfig, adapt, "adapt.") if stored.get("adapt") else None,
        adapt_designs=list(adapt_designs),
    )


def train_config(study: Study, design: Design, seed: int, backbone: str, out_dir: Path) -> TrainConfig:
    """The :class:`poolattn.training.TrainConfig` of one cell (raises ``ConfigError`` whose ``key`` names the
    training config's key, e.g. ``recipe.lr``)."""
    return TrainConfig(
        model=replace(
            study.model,
            backbone=backbone,
            attention=design.attention,
            pooling=design.pooling,
            pooling_options=dict(design.options),
        ),
        data=replace(study.data),
        recipe=replace(study.recipe, seed=seed),
        lora=copy.deepcopy(study.lora),
        output=replace(study.output, dir=str(out_dir)),
    )


def adapt_config(study: Study, seed: int) -> AdaptConfig:
    """The adaptation of one seed: the study's [adapt] table on its backbone, dtype and seed."""
    assert study.adapt is not None
    return replace(study.adapt, backbone=study.model.backbone, dtype=study.model.dtype, seed=seed)


def default_config_text() -> str:
    """The embedded default study (``poolattn/configs/default.toml``)."""
    return resources.files("poolattn").joinpath("configs/default.toml").read_text(encoding="utf-8")


class ConfigReader:
    """Turns raw TOML data into a :class:`Study`, raising :class:`StudyError` that name file, line and key."""

    def __init__(self, raw: dict[str, Any], text: str, source: str, overridden: set[str]) -> None:
        self.raw, self.source, self.overridden = raw, source, overridden
        self.locate = KeyLocator(text)

    def fail(self, key: str, problem: str, line: int | None = None) -> StudyError:
        where = self.source
        if any(key == o or key.startswith(f"{o}.") or o.startswith(f"{key}.") for o in self.overridden):
            where += " (value set by --set)"
        elif line is not None:
            where += f", line {line}"
        return StudyError(f"{where}: {key}: {problem}", key)

    def section_fail(self, section: str, key: str, problem: str) -> StudyError:
        dotted = f"{section}.{key}" if section else key
        return self.fail(dotted, problem, self.locate.line(section, key) or self.locate.line(section))

    def table(self, section: str) -> dict[str, Any]:
        value = self.raw.get(section, {})
        if not isinstance(value, dict):
            raise self.fail(section, f"must be a table, got {value!r}", self.locate.line("", section))
        return dict(value)

    def typed(self, cls: type[T], section: str, values: Mapping[str, Any], exclude: Sequence[str] = ()) -> T:
        """Build dataclass ``cls`` from ``values`` with every key and type checked."""
        known = {f.name for f in fields(cls)} - set(exclude)  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                raise self.section_fail(section, key, f"unknown key; known keys: {sorted(known)}")
        try:
            return build_dataclass(cls, dict(values))
        except ConfigError as err:
            message = str(err)
            if err.key in known:
                raise self.section_fail(section, err.key, message.removeprefix(err.key).lstrip()) from None
            if err.key and err.key.split(".")[0] in known:  # a key of a nested table (adapt.lora.r)
                line = self.locate.line(section, err.key.split(".")[0]) or self.locate.line(section)
                raise self.fail(f"{section}.{err.key}", message.removeprefix(err.key).lstrip(), line) from None
            raise self.fail(section, message, self.locate.line(section)) from None

    def read(self) -> Study:
        top_level = {"name", "description", "reference", "seeds", "designs"}
        sections = {"model", "data", "train", "lora", "eval", "layers", "stats", "adapt"}
        for key in self.raw:
            if key not in top_level | sections:
                known = sorted(top_level | sections)
                raise self.fail(key, f"unknown key; known keys and tables: {known}", self.locate.line("", key))
        name = self.top("name", str, "study")
        description = self.top("description", str, "")
        seeds = self.top("seeds", list, [0])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
            raise self.fail(
                "seeds",
                f"must be a non-empty list of integers in [0, {2**32 - 1}], got {seeds!r}",
                self.locate.line("", "seeds"),
            )
        if len(set(seeds)) != len(seeds):
            raise self.fail("seeds", f"has duplicates: {seeds!r}", self.locate.line("", "seeds"))
        designs = self.designs()
        reference = self.top("reference", str, designs[0].name)
        if reference not in {d.name for d in designs}:
            raise self.fail(
                "reference",
                f"{reference!r} is not a design; designs: {[d.name for d in designs]}",
                self.locate.line("", "reference"),
            )
        model = self.typed(ModelSection, "model", self.table("model"), exclude=DESIGN_MODEL_KEYS)
        data = self.typed(DataSection, "data", self.table("data"))
        train_raw = self.table("train")
        recipe_raw = {k: v for k, v in train_raw.items() if k not in TRAIN_OUTPUT_KEYS}
        output_raw = {k: v for k, v in train_raw.items() if k in TRAIN_OUTPUT_KEYS}
        if "seed" in recipe_raw:
            raise self.section_fail("train", "seed", "set the seeds with the top-level key seeds = [...]")
        recipe = self.typed(RecipeSection, "train", recipe_raw, exclude=("seed",))
        output = self.typed(OutputSection, "train", output_raw)
        lora = self.typed(LoraSection, "lora", self.table("lora"))
        evaluation = self.typed(EvalSection, "eval", self.table("eval"))
        layers = self.typed(LayersSection, "layers", self.table("layers"))
        stats = self.typed(StatsSection, "stats", self.table("stats"))
        self.check_eval(evaluation, layers, stats)
        evaluation.precision = resolve_precision(evaluation.precision, "bf16", "fp32")
        study = Study(
            name=name,
            description=description,
            reference=reference,
            seeds=list(seeds),
            designs=designs,
            model=model,
            data=data,
            recipe=recipe,
            output=output,
            lora=lora,
            eval=evaluation,
            layers=layers,
            stats=stats,
            source=self.source,
            raw=self.raw,
        )
        if "adapt" in self.raw:
            study.adapt, study.adapt_designs = self.adapt_section(designs)
        self.check_recipe(study)
        return study

    def adapt_section(self, designs: list[Design]) -> tuple[AdaptConfig, list[str]]:
        """The [adapt] table and the names of the designs that start from the adapted backbone."""
        table = self.table("adapt")
        for key in ADAPT_STUDY_KEYS:
            if key in table:
                where = {"backbone": "model.backbone", "dtype": "model.dtype", "seed": "seeds = [...]"}[key]
                raise self.section_fail("adapt", key, f"the study sets it (from {where})")
        which = table.pop("designs", "bidirectional")
        config = self.typed(AdaptConfig, "adapt", table)
        trained = [d for d in designs if d.train]
        if which == "bidirectional":
            return config, [d.name for d in trained if d.attention == "bidirectional"]
        if which == "all":
            return config, [d.name for d in trained]
        names = {d.name for d in trained}
        if not isinstance(which, list) or not all(isinstance(n, str) and n in names for n in which):
            raise self.section_fail(
                "adapt",
                "designs",
                f"= {which!r}; expected one of {list(ADAPT_DESIGN_CHOICES)} or a list of trained designs "
                f"(of {sorted(names)})",
            )
        return config, list(dict.fromkeys(which))

    def check_recipe(self, study: Study) -> None:
        """Every trained design must make a valid training config; errors name the study's own table and key."""
        for design in study.designs:
            if not design.train:
                continue
            try:
                train_config(study, design, study.seeds[0], study.model.backbone, Path("unused"))
            except ConfigError as err:
                message = str(err)
                section, _, rest = (err.key or "").partition(".")
                key = rest.split(".", 1)[0]
                if section not in TRAIN_SECTIONS or not key:
                    raise self.fail(f"designs[{design.name}]", message, self.locate.design(design.name)) from None
                table = TRAIN_SECTIONS[section]
                message = message.replace(f"{section}.{key}", f"{table}.{key}")
                raise self.section_fail(table, key, message.removeprefix(f"{table}.{key} ")) from None

    def top(self, key: str, kind: type, default: Any) -> Any:
        value = self.raw.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.fail(key, f"expected {kind.__name__}, got {value!r}", self.locate.line("", key))
        return value

    def designs(self) -> list[Design]:
        entries = self.raw.get("designs")
        if not isinstance(entries, list) or not entries:
            raise self.fail("designs", "declare at least one design: designs = [{ name = ..., ... }]")
        known = {f.name for f in fields(Design)}
        designs: list[Design] = []
        for index, entry in enumerate(entries):
            label = f"designs[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(label, f"expected a table, got {entry!r}")
            name = entry.get("name")
            if not isinstance(name, str) or not COMPONENT.fullmatch(name):
                raise self.fail(
                    f"{label}.name", f"must be a word of letters, digits, _ . + - not starting with '.' (got {name!r})"
                )
            line = self.locate.design(name)
            if name in {d.name for d in designs}:
                raise self.fail(f"designs[{name}].name", "duplicate design name", line)
            for key in entry:
                if key not in known:
                    raise self.fail(
                        f"designs[{name}].{key}",
                        f"unknown key; known keys: {sorted(known)}",
                        self.locate.design(name, key),
                    )
            checks: dict[str, tuple[Callable[[Any], bool], str]] = {
                "attention": (lambda v: v in ATTENTIONS, f"one of {list(ATTENTIONS)}"),
                "pooling": (lambda v: v in POOLERS, f"one of {sorted(POOLERS)}"),
                "options": (lambda v: isinstance(v, dict), 'a table, e.g. { preset = "compact" }'),
                "train": (lambda v: isinstance(v, bool), "true or false"),
                "label": (lambda v: isinstance(v, str), "a string"),
            }
            for key, (ok, expected) in checks.items():
                if key in ("attention", "pooling") and key not in entry:
                    raise self.fail(f"designs[{name}].{key}", f"missing; expected {expected}", line)
                if key in entry and not ok(entry[key]):
                    raise self.fail(
                        f"designs[{name}].{key}",
                        f"= {entry[key]!r}; expected {expected}",
                        self.locate.design(name, key),
                    )
            designs.append(Design(**{k: entry[k] for k in entry}))
        return designs

    def check_eval(self, evaluation: EvalSection, layers: LayersSection, stats: StatsSection) -> None:
        choices = {
            ("eval", "suite"): (evaluation.suite, SUITES),
            ("eval", "precision"): (evaluation.precision, PRECISIONS),
            ("eval", "profile"): (evaluation.profile, task_registry.PROFILES),
            ("layers", "attention"): (layers.attention, ATTENTIONS),
        }
        if layers.profile is not None:
            choices[("layers", "profile")] = (layers.profile, task_registry.PROFILES)
        for (section, key), (value, allowed) in choices.items():
            if value not in allowed:
                raise self.section_fail(section, key, f"= {value!r}; choose one of {list(allowed)}")
        known = list(task_registry.TASKS)
        if evaluation.suite == "offline":
            for task in evaluation.tasks or []:
                if task not in task_registry.TASKS:
                    raise self.section_fail("eval", "tasks", f"unknown offline task {task!r}; known: {known}")
            if evaluation.benchmark is not None:
                raise self.section_fail("eval", "benchmark", "only the mteb suite takes a benchmark")
            for task, n in evaluation.samples.items():
                if task not in task_registry.TASKS:
                    raise self.section_fail("eval", "samples", f"unknown offline task {task!r}; known: {known}")
                full = task_registry.TASKS[task].sizes["full"]
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= full:
                    raise self.section_fail("eval", "samples", f"{task} = {n!r}; expected an integer 1 to {full}")
        elif evaluation.samples:
            raise self.section_fail("eval", "samples", "only the offline suite takes sample sizes")
        elif (evaluation.tasks is None) == (evaluation.benchmark is None):
            raise self.section_fail("eval", "tasks", "the mteb suite needs exactly one of tasks and benchmark")
        for task in layers.tasks or []:
            if task not in task_registry.TASKS:
                raise self.section_fail("layers", "tasks", f"unknown offline task {task!r}; known: {known}")
        for key, value, low in (("cka_texts", layers.cka_texts, 2), ("n_resamples", stats.n_resamples, 1)):
            if value < low:
                raise self.section_fail("layers" if key == "cka_texts" else "stats", key, f"must be >= {low}")
        for key, value in (("confidence", stats.confidence), ("alpha", stats.alpha)):
            if not 0 < value < 1:
                raise self.section_fail("stats", key, f"= {value!r}; must be in (0, 1)")


def load_study(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Study:
    """Read, override (``section.key=value``, ``designs.<name>.<key>=value``) and validate a study config;
    ``None`` is the embedded default."""
    try:
        if path is None:
            text, source = default_config_text(), DEFAULT_SOURCE
            raw = parse_toml(text, source)
        else:
            source = str(path)
            raw, text = read_toml(path, "study config")
        overridden = apply_overrides(raw, overrides, named_lists=("designs",))
    except ConfigError as err:
        raise StudyError(str(err), err.key) from None
    study = ConfigReader(raw, text, source, overridden).read()
    study.overrides = list(overrides)
    return study
