"""The controlled study: a grid of attention x pooling designs trained and evaluated under one recipe.

One TOML file declares the backbone, the training data and recipe shared by every design, the designs, the
seeds, the reference design and the evaluation (``configs/default.toml`` is the embedded default study;
``configs/paper.toml`` is the paper's set-up). :func:`run_experiment` then

1. trains every design that trains (the same records, built once per seed, in the same order) and evaluates it;
   each (design, seed) is a *cell*, cached under ``cells/<cell>/`` by a hash of everything that determines its
   results, so a rerun skips finished cells and a killed run resumes where it stopped (training from its last
   checkpoint, evaluation from the tasks already scored);
2. runs the layer-wise analysis of the untrained base model (``layers/``): one forward pass per text gives every
   layer's vector; each layer is scored on a set of tasks and compared with every other layer by linear CKA.
   An untrained design that equals one layer's reduction (EOS pooling = the last layer's last token under
   causal attention) is evaluated from the same forward passes;
3. renders the report (:func:`poolattn.report.render_report`).

Layout of the study folder::

    study.json            resolved config, cell hashes, environment, one entry per run
    events.jsonl          one line per cell phase (start/finish/reuse) with timestamps
    cells/<cell>/         cell.json (written last), train/ (poolattn.train output), eval/ (one JSON per task)
    layers/               layers.json and scores/layer-XX/ (one JSON per task)
    report.md, report.html, plots/*.png
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.console import Console

from . import __version__

STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
STARTED_FILE = ".started.json"
EVENTS_FILE = "events.jsonl"
LAYERS_FILE = "layers.json"
ATTENTIONS = ("causal", "bidirectional")
SUITES = ("offline", "mteb")
#: A design that pools like this (untrained, no options) equals one layer of the layer-wise analysis.
LAYER_REDUCTION_OF_POOLING = {"eos": "last", "mean": "mean"}
#: Tasks the layer-wise analysis scores when neither it nor an offline evaluation names any: every category but
#: clustering, whose k-means runs dominate the scoring time (30 layers x 10 bootstrap runs each).
DEFAULT_LAYER_TASKS = (
    "WordSim353STS",
    "SimLex999STS",
    "LeeDocSTS",
    "TRECCoarseClassification",
    "TweetPolarityClassification",
    "MovieDialogReplyPairClassification",
    "MovieDialogReplyReranking",
    "MovieDialogReplyRetrieval",
    "NewsLeadRetrieval",
)
VERSIONED_PACKAGES = (
    "poolattn",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "mteb",
    "sentence-transformers",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
)

console = Console(stderr=True)


class StudyError(ValueError):
    """A study config that cannot be used; the message names the file, line and key."""


# ============================================================================================ the config
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
    (``tasks`` or ``benchmark``). ``instructions`` overrides task instructions by task name or category.
    ``precision``: ``bf16`` runs the evaluation's forward passes under bfloat16 autocast, ``fp32`` in the model's
    dtype, ``auto`` picks bf16 where the hardware computes it natively (resolved when the config is read)."""

    suite: str = "offline"
    profile: str = "quick"
    tasks: list[str] | None = None
    benchmark: str | None = None
    instructions: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"


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


#: The [train] table: the recipe (poolattn.train.RecipeSection, seed excepted) plus these output settings.
TRAIN_OUTPUT_KEYS = ("checkpoint_every", "keep_checkpoints", "merge")
#: [model] keys that the designs set themselves.
DESIGN_MODEL_KEYS = ("attention", "pooling", "pooling_options")


@dataclass
class Study:
    """A validated study config."""

    name: str
    description: str
    reference: str
    seeds: list[int]
    designs: list[Design]
    model: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    lora: dict[str, Any]
    eval: EvalSection
    layers: LayersSection
    stats: StatsSection
    source: str
    raw: dict[str, Any]
    overrides: list[str] = field(default_factory=list)

    def design(self, name: str) -> Design:
        return next(d for d in self.designs if d.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as stored in ``study.json``."""
        return {
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "seeds": self.seeds,
            "designs": [asdict(d) for d in self.designs],
            "model": self.model,
            "data": self.data,
            "train": self.train,
            "lora": self.lora,
            "eval": asdict(self.eval),
            "layers": asdict(self.layers),
            "stats": asdict(self.stats),
            "source": self.source,
            "overrides": self.overrides,
        }


def default_config_text() -> str:
    """The embedded default study (``poolattn/configs/default.toml``)."""
    return resources.files("poolattn").joinpath("configs/default.toml").read_text(encoding="utf-8")


class KeyLocator:
    """Finds the line of a key in TOML text, for error messages (best effort; ``None`` when not found)."""

    HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _key_line(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
        for number in range(start, stop):
            if pattern.search(self.lines[number].split("#", 1)[0]):
                return number + 1
        return None

    def _section(self, section: str) -> tuple[int, int]:
        """[start, stop) line indices of a table's body; (0, 0) when the table is absent."""
        headers = [(i, m.group(1)) for i, line in enumerate(self.lines) if (m := self.HEADER.match(line))]
        if section == "":
            return 0, headers[0][0] if headers else len(self.lines)
        for k, (i, name) in enumerate(headers):
            if name == section:
                return i, headers[k + 1][0] if k + 1 < len(headers) else len(self.lines)
        return 0, 0

    def line(self, section: str, key: str | None = None) -> int | None:
        """Line of ``key`` in ``[section]`` ("" = top level), or of the section header."""
        start, stop = self._section(section)
        if key is None:
            return start + 1 if stop and section else None
        return self._key_line(key, start, stop)

    def design(self, name: str, key: str | None = None) -> int | None:
        """Line of a design entry (found by its name) or of one of its keys."""
        pattern = re.compile(rf"name\s*=\s*[\"']{re.escape(str(name))}[\"']")
        for number, line in enumerate(self.lines):
            if pattern.search(line.split("#", 1)[0]):
                if key is None or re.search(rf"(^|[\s{{,]){re.escape(key)}\s*=", line):
                    return number + 1
                following = self._key_line(key, number + 1, min(len(self.lines), number + 12))
                return following or number + 1
        return None


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
        return StudyError(f"{where}: {key}: {problem}")

    def section_fail(self, section: str, key: str, problem: str) -> StudyError:
        dotted = f"{section}.{key}" if section else key
        return self.fail(dotted, problem, self.locate.line(section, key) or self.locate.line(section))

    def table(self, section: str) -> dict[str, Any]:
        value = self.raw.get(section, {})
        if not isinstance(value, dict):
            raise self.fail(section, f"must be a table, got {value!r}", self.locate.line("", section))
        return dict(value)

    def typed(self, cls: type, section: str, values: Mapping[str, Any], exclude: Sequence[str] = ()) -> Any:
        """Build dataclass ``cls`` from ``values`` with every key and type checked."""
        from .train import ConfigError, build_dataclass

        known = {f.name for f in fields(cls)} - set(exclude)
        for key in values:
            if key not in known:
                raise self.section_fail(section, key, f"unknown key; known keys: {sorted(known)}")
        try:
            return build_dataclass(cls, dict(values), "", "")
        except ConfigError as err:
            message = str(err).removeprefix(": ")
            key = message.split(" ", 1)[0].split("=", 1)[0].strip("'\"")
            if key in known:
                raise self.section_fail(section, key, message.removeprefix(key).lstrip()) from None
            raise self.fail(section, message, self.locate.line(section)) from None

    def read(self) -> Study:
        from .train import DataSection, LoraSection, ModelSection, OutputSection, RecipeSection

        top_level = {"name", "description", "reference", "seeds", "designs"}
        sections = {"model", "data", "train", "lora", "eval", "layers", "stats"}
        for key in self.raw:
            if key not in top_level | sections:
                known = sorted(top_level | sections)
                raise self.fail(key, f"unknown key; known keys and tables: {known}", self.locate.line("", key))
        name = self.top("name", str, "study")
        description = self.top("description", str, "")
        seeds = self.top("seeds", list, [0])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise self.fail(
                "seeds",
                f"must be a non-empty list of non-negative integers, got {seeds!r}",
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
        from .backbone import resolve_precision

        evaluation.precision = resolve_precision(evaluation.precision, "bf16", "fp32")
        model_dict = {k: v for k, v in asdict(model).items() if k not in DESIGN_MODEL_KEYS}
        train_dict = {
            **{k: v for k, v in asdict(recipe).items() if k != "seed"},
            **{k: getattr(output, k) for k in TRAIN_OUTPUT_KEYS},
        }
        study = Study(
            name=name,
            description=description,
            reference=reference,
            seeds=list(seeds),
            designs=designs,
            model=model_dict,
            data=asdict(data),
            train=train_dict,
            lora=asdict(lora),
            eval=evaluation,
            layers=layers,
            stats=stats,
            source=self.source,
            raw=self.raw,
        )
        self.check_recipe(study)
        return study

    #: poolattn.train config sections -> the study table that holds them
    TRAIN_SECTIONS: ClassVar[dict[str, str]] = {
        "recipe": "train",
        "output": "train",
        "lora": "lora",
        "model": "model",
        "data": "data",
    }

    def check_recipe(self, study: Study) -> None:
        """Every trained design must make a valid training config; errors name the study's own table and key."""
        from .train import ConfigError

        for design in study.designs:
            if not design.train:
                continue
            try:
                train_config(study, design, study.seeds[0], study.model["backbone"], Path("unused"))
            except ConfigError as err:
                message = str(err).removeprefix(f"{study.source}: ")
                match = re.search(r"\b(recipe|output|lora|model|data)\.(\w+)", message)
                if match is None:
                    raise self.fail(f"designs[{design.name}]", message, self.locate.design(design.name)) from None
                section, key = self.TRAIN_SECTIONS[match.group(1)], match.group(2)
                message = message.replace(match.group(0), f"{section}.{key}")
                raise self.section_fail(section, key, message.removeprefix(f"{section}.{key} ")) from None

    def top(self, key: str, kind: type, default: Any) -> Any:
        value = self.raw.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.fail(key, f"expected {kind.__name__}, got {value!r}", self.locate.line("", key))
        return value

    def designs(self) -> list[Design]:
        from .pooling import POOLERS

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
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
                raise self.fail(f"{label}.name", f"must be a word of letters, digits, _ . + - (got {name!r})")
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
        from .backbone import PRECISIONS
        from .evaluate import offline

        choices = {
            ("eval", "suite"): (evaluation.suite, SUITES),
            ("eval", "precision"): (evaluation.precision, PRECISIONS),
            ("eval", "profile"): (evaluation.profile, offline.PROFILES),
            ("layers", "attention"): (layers.attention, ATTENTIONS),
        }
        if layers.profile is not None:
            choices[("layers", "profile")] = (layers.profile, offline.PROFILES)
        for (section, key), (value, allowed) in choices.items():
            if value not in allowed:
                raise self.section_fail(section, key, f"= {value!r}; choose one of {list(allowed)}")
        known = list(offline.TASKS)
        if evaluation.suite == "offline":
            for task in evaluation.tasks or []:
                if task not in offline.TASKS:
                    raise self.section_fail("eval", "tasks", f"unknown offline task {task!r}; known: {known}")
            if evaluation.benchmark is not None:
                raise self.section_fail("eval", "benchmark", "only the mteb suite takes a benchmark")
        elif (evaluation.tasks is None) == (evaluation.benchmark is None):
            raise self.section_fail("eval", "tasks", "the mteb suite needs exactly one of tasks and benchmark")
        for task in layers.tasks or []:
            if task not in offline.TASKS:
                raise self.section_fail("layers", "tasks", f"unknown offline task {task!r}; known: {known}")
        for key, value, low in (("cka_texts", layers.cka_texts, 2), ("n_resamples", stats.n_resamples, 1)):
            if value < low:
                raise self.section_fail("layers" if key == "cka_texts" else "stats", key, f"must be >= {low}")
        for key, value in (("confidence", stats.confidence), ("alpha", stats.alpha)):
            if not 0 < value < 1:
                raise self.section_fail("stats", key, f"= {value!r}; must be in (0, 1)")


def apply_override(raw: dict[str, Any], item: str) -> str:
    """Apply one ``section.key=value`` (``designs.<name>.<key>=value`` for a design); returns the dotted key."""
    from .train import parse_value

    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise StudyError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=20")
    value = parse_value(text.strip())
    parts = key.split(".")
    node: Any = raw
    if parts[0] == "designs" and len(parts) >= 3:
        entries = raw.get("designs") or []
        matches = [d for d in entries if isinstance(d, dict) and d.get("name") == parts[1]]
        if not matches:
            names = [d.get("name") for d in entries if isinstance(d, dict)]
            raise StudyError(f"--set {item!r}: no design named {parts[1]!r}; designs: {names}")
        node, parts = matches[0], parts[2:]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StudyError(f"--set {item!r}: {part!r} is a value, not a table")
    node[parts[-1]] = value
    if key.startswith("designs.") and len(key.split(".")) >= 3:
        _, name, rest = key.split(".", 2)
        return f"designs[{name}].{rest}"
    return key


def load_study(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Study:
    """Read, override (``section.key=value``) and validate a study config; ``None`` is the embedded default."""
    if path is None:
        text, source = default_config_text(), "the embedded default study (poolattn/configs/default.toml)"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StudyError(f"{path}: no such study config") from None
        except UnicodeDecodeError as err:
            raise StudyError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{source}: not valid TOML: {err}") from None
    overridden = {apply_override(raw, item) for item in overrides}
    study = ConfigReader(raw, text, source, overridden).read()
    study.overrides = list(overrides)
    return study


# ================================================================================================ cells
def train_config(study: Study, design: Design, seed: int, backbone: str, out_dir: Path) -> Any:
    """The :class:`poolattn.train.TrainConfig` of one cell (raises ``ConfigError`` naming the key)."""
    from .train import TrainConfig, build_dataclass

    recipe = {k: v for k, v in study.train.items() if k not in TRAIN_OUTPUT_KEYS}
    output = {k: study.train[k] for k in TRAIN_OUTPUT_KEYS}
    raw = {
        "model": {
            **study.model,
            "backbone": backbone,
            "attention": design.attention,
            "pooling": design.pooling,
            "pooling_options": dict(design.options),
        },
        "data": dict(study.data),
        "recipe": {**recipe, "seed": seed},
        "lora": dict(study.lora),
        "output": {**output, "dir": str(out_dir)},
    }
    return build_dataclass(TrainConfig, raw, study.source, "")


@dataclass
class Cell:
    """One (design, seed) of the grid; ``seed`` is None for an untrained design without parameters."""

    design: Design
    seed: int | None
    hash: str

    @property
    def name(self) -> str:
        return self.design.name if self.seed is None else f"{self.design.name}-s{self.seed}"


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_identity(study: Study) -> dict[str, Any]:
    """The data section plus the content hash of a local data file (so an edited file is noticed)."""
    identity = dict(study.data)
    path = Path(str(study.data.get("path", "")))
    if path.is_file():
        identity["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return identity


def eval_identity(study: Study) -> dict[str, Any]:
    return asdict(study.eval)


def cell_hash(study: Study, design: Design, seed: int | None) -> str:
    """Hash of everything that determines a cell's results: the design, the shared model settings, the
    evaluation, the seed and, for a design that trains, the data and the recipe (checkpointing excluded)."""
    payload: dict[str, Any] = {
        "design": design.identity(),
        "model": study.model,
        "eval": eval_identity(study),
        "seed": seed,
    }
    if design.train:
        recipe = {k: v for k, v in study.train.items() if k not in ("checkpoint_every", "keep_checkpoints")}
        payload.update(data=data_identity(study), train=recipe, lora=study.lora)
    return digest(payload)


def plan_cells(study: Study, parameters: Mapping[str, int] | None = None) -> list[Cell]:
    """The grid in run order: untrained designs first, then each seed's trained designs.

    ``parameters`` (design -> number of pooler parameters) makes an untrained design with a parameter-free
    pooler a single seed-independent cell; without it every untrained design is treated as parameter-free.
    """
    parameters = parameters or {}
    cells: list[Cell] = []
    for design in study.designs:
        if not design.train and parameters.get(design.name, 0) == 0:
            cells.append(Cell(design, None, cell_hash(study, design, None)))
    for seed in study.seeds:
        for design in study.designs:
            if design.train or parameters.get(design.name, 0) > 0:
                cells.append(Cell(design, seed, cell_hash(study, design, seed)))
    return cells


def layers_hash(study: Study) -> str:
    """Hash of the layer-wise analysis: the shared model settings, its own section and the instructions."""
    return digest(
        {
            "model": study.model,
            "layers": asdict(study.layers),
            "eval_profile": study.eval.profile,
            "instructions": study.eval.instructions,
            "precision": study.eval.precision,
            "tasks": layer_tasks(study),
        }
    )


def layer_tasks(study: Study) -> list[str]:
    """``layers.tasks``, else the offline evaluation's tasks without clustering, else :data:`DEFAULT_LAYER_TASKS`."""
    from .evaluate import offline

    if study.layers.tasks is not None:
        wanted = study.layers.tasks
    elif study.eval.suite == "offline":
        selected = offline.select_tasks(study.eval.tasks, study.eval.profile)  # type: ignore[arg-type]
        wanted = [t.name for t in selected if t.category != "clustering"]
    else:
        wanted = list(DEFAULT_LAYER_TASKS)
    return [t for t in wanted if offline.get_task(t).available()]


def layers_profile(study: Study) -> str:
    return study.layers.profile or study.eval.profile


def shares_layer_pass(study: Study, design: Design) -> bool:
    """Whether ``design`` (untrained, no options) equals a layer of the layer-wise analysis, so its evaluation
    embeddings come from the same forward passes."""
    reduction = "last" if study.layers.attention == "causal" else "mean"
    return (
        study.layers.enabled
        and study.eval.suite == "offline"
        and not design.train
        and not design.options
        and design.attention == study.layers.attention
        and LAYER_REDUCTION_OF_POOLING.get(design.pooling) == reduction
    )


# ========================================================================================= environment
def environment() -> dict[str, Any]:
    """Versions, hardware and command line, so anyone can rerun the study."""
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with suppress(OSError, ValueError, AttributeError):
        memory = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "versions": versions,
        "hardware": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "memory_bytes": memory,
            "gpus": gpus,
        },
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    from .evaluate.offline import write_json_atomic

    write_json_atomic(path, payload)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ============================================================================================ progress
class GridProgress:
    """One line per phase of the grid: cell i/N, design, phase, elapsed time and an ETA from the cells run so far.

    Lines (not a live display) so that the training and evaluation displays beneath stay intact and a log file
    reads well.
    """

    def __init__(self, cells: Sequence[Cell], events: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total = len(cells)
        self.pending = {c.name: c for c in cells}
        self.durations: dict[bool, list[float]] = {True: [], False: []}
        self.started = time.perf_counter()
        self.events = events

    def log(self, **event: Any) -> None:
        if not self.enabled:
            return
        self.events.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": now(), **event}) + "\n")

    def eta(self) -> str:
        known = self.durations[True] + self.durations[False]
        if not known:
            return "ETA after the first cell"
        fallback = float(np.mean(known))
        seconds = sum(
            float(np.mean(self.durations[c.design.train])) if self.durations[c.design.train] else fallback
            for c in self.pending.values()
        )
        return f"ETA {fmt_seconds(seconds)}"

    def phase(self, index: int, cell_name: str, design: Design | None, phase: str) -> None:
        what = f"{design.attention} · {design.pooling}" if design else "base model"
        elapsed = fmt_seconds(time.perf_counter() - self.started)
        if not self.enabled:
            return
        step = f"{index}/{self.total}" if index else "layers"
        console.print(
            f"[bold cyan]\\[{step}][/] [bold]{cell_name}[/] ({what}) · [magenta]{phase}[/] "
            f"· elapsed {elapsed} · {self.eta()}"
        )
        self.log(cell=cell_name, phase=phase, event="start")

    def done(self, cell: Cell, seconds: float, reused: bool) -> None:
        self.pending.pop(cell.name, None)
        if not reused:
            self.durations[cell.design.train].append(seconds)
        self.log(cell=cell.name, event="reused" if reused else "finished", seconds=round(seconds, 2), hash=cell.hash)


def fmt_seconds(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"


# ====================================================================================== layer analysis
class LayerStore:
    """Every layer's vector of every text the base model was asked for (one forward pass per text)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.vectors: dict[tuple[str | None, str], np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0

    def get(self, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        """(N, L, H) float32 for ``texts``; texts not seen yet are encoded (all layers at once)."""
        instruction = instruction or None
        missing = list(dict.fromkeys(t for t in texts if (instruction, t) not in self.vectors))
        if missing:
            start = time.perf_counter()
            layers = self.model.encode_layers(missing, instruction)
            self.seconds += time.perf_counter() - start
            self.encoded += len(missing)
            for text, vec in zip(missing, layers, strict=True):
                self.vectors[(instruction, text)] = vec
        return np.stack([self.vectors[(instruction, t)] for t in texts]) if texts else np.zeros((0, 0, 0), np.float32)

    def sample(self, n: int) -> np.ndarray:
        """(L, n, H): the stored vectors of (at most) ``n`` texts chosen by a stable hash of the text."""
        keys = sorted(self.vectors, key=lambda k: hashlib.sha256(f"{k[0]}\x00{k[1]}".encode()).hexdigest())[:n]
        return np.stack([self.vectors[k] for k in keys], axis=1)


class LayerEncoder:
    """Serves one layer's cached vectors behind the evaluation suite's ``Encoder`` protocol (1-based ``layer``)."""

    def __init__(self, store: LayerStore, layer: int, name: str) -> None:
        self.store, self.layer, self.name = store, layer, name

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        vectors = self.store.get(texts, instruction)
        return np.ascontiguousarray(vectors[:, self.layer - 1], dtype=np.float32)


def linear_cka(layers: np.ndarray) -> np.ndarray:
    """Linear CKA (Kornblith et al. 2019) between every pair of layers; ``layers`` is (L, n, H).

    With column-centred features X the Gram matrix X Xᵀ is already centred, so CKA = <K_a, K_b>_F /
    (||K_a||_F ||K_b||_F).
    """
    x = layers.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    grams = np.einsum("lnh,lmh->lnm", x, x).reshape(x.shape[0], -1)
    hsic = grams @ grams.T
    norms = np.sqrt(np.clip(np.diag(hsic), 1e-300, None))
    return hsic / np.outer(norms, norms)


# ================================================================================================ runner
class Processes:
    """This process's place when the study runs under ``accelerate launch``: every process trains, process 0
    evaluates and writes the study record while the others wait (polling files, so no collective times out)."""

    def __init__(self, poll_seconds: float = 5.0) -> None:
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        self.poll_seconds = poll_seconds

    def wait_for(self, done: Callable[[], bool]) -> None:
        while not done():
            time.sleep(self.poll_seconds)


class StudyRunner:
    """Runs the cells of a study into a folder, reusing every finished result."""

    def __init__(self, study: Study, out: Path, *, progress: bool = True) -> None:
        from transformers import AutoConfig

        from .cli import resolve_backbone

        self.study, self.out, self.progress = study, out, progress
        self.backbone = resolve_backbone(study.model["backbone"])
        backbone_config = AutoConfig.from_pretrained(self.backbone)
        self.hidden_size = int(backbone_config.hidden_size)
        self.num_layers = int(backbone_config.num_hidden_layers)
        self.parameters = self.inspect_designs()
        self.cells = plan_cells(study, self.parameters)
        self.layers_hash = layers_hash(study)
        self.records: dict[int, Any] = {}
        self.store: LayerStore | None = None
        self.procs = Processes()
        console.quiet = not self.procs.is_main
        self.grid = GridProgress(self.cells, out / EVENTS_FILE, enabled=self.procs.is_main)

    def inspect_designs(self) -> dict[str, int]:
        """Build every design's pooler on the meta device: validates its options, counts its parameters."""
        import torch

        from .pooling import build_pooler

        counts = {}
        for design in self.study.designs:
            try:
                with torch.device("meta"):
                    pooler = build_pooler(
                        design.pooling,
                        hidden_size=self.hidden_size,
                        num_layers=self.num_layers,
                        attention=design.attention,
                        options=dict(design.options),
                    )
            except ValueError as err:
                line = KeyLocator(self.study_text()).design(design.name, "options")
                where = f"{self.study.source}, line {line}" if line else self.study.source
                raise StudyError(f"{where}: designs[{design.name}].options: {err}") from None
            counts[design.name] = sum(p.numel() for p in pooler.parameters())
        return counts

    def study_text(self) -> str:
        path = Path(self.study.source)
        return path.read_text(encoding="utf-8") if path.is_file() else default_config_text()

    # ------------------------------------------------------------------ the study record
    def write_study(self, run: dict[str, Any]) -> None:
        if not self.procs.is_main:
            return
        path = self.out / STUDY_FILE
        previous = read_json(path) or {}
        runs = [r for r in previous.get("runs", []) if r.get("id") != run["id"]] + [run]
        write_json(
            path,
            {
                "poolattn_version": __version__,
                "config": self.study.to_dict(),
                "study_hash": digest([c.hash for c in self.cells] + [self.layers_hash]),
                "backbone_path": self.backbone,
                "backbone": {"hidden_size": self.hidden_size, "num_layers": self.num_layers},
                "reference": self.study.reference,
                "cells": [
                    {
                        "name": c.name,
                        "design": c.design.name,
                        "seed": c.seed,
                        "hash": c.hash,
                        "head_parameters": self.parameters[c.design.name],
                    }
                    for c in self.cells
                ],
                "layers": {"enabled": self.study.layers.enabled, "hash": self.layers_hash},
                "environment": environment(),
                "runs": runs,
            },
        )

    def ordered_cells(self) -> list[Cell]:
        """Cells served by the base model's layer pass first (the layer analysis reuses their forward passes)."""
        shared = [c for c in self.cells if shares_layer_pass(self.study, c.design)]
        return shared + [c for c in self.cells if c not in shared]

    def run(self) -> None:
        started = time.perf_counter()
        run = {"id": now(), "started": now(), "finished": None, "wall_seconds": None, "computed": [], "reused": []}
        self.write_study(run)
        self.grid.log(event="run-start", cells=len(self.cells))
        console.print(
            f"[bold]study {self.study.name!r}[/]: {len(self.study.designs)} designs x {len(self.study.seeds)} "
            f"seed(s) = {len(self.cells)} cells{' + layer-wise analysis' if self.study.layers.enabled else ''} "
            f"→ {self.out}"
        )
        ordered = self.ordered_cells()
        n_shared = sum(shares_layer_pass(self.study, c.design) for c in ordered)
        for index, cell in enumerate(ordered, start=1):
            cell_started = time.perf_counter()
            reused = self.cell_done(cell)
            if reused:
                console.print(
                    f"[bold cyan]\\[{index}/{len(ordered)}][/] [bold]{cell.name}[/]: finished earlier, reused"
                )
            elif self.procs.is_main:
                self.run_cell(index, cell)
            else:
                self.follow_cell(cell)
            (run["reused"] if reused else run["computed"]).append(cell.name)
            self.grid.done(cell, time.perf_counter() - cell_started, reused)
            if index == n_shared and self.study.layers.enabled:
                self.run_layers()
        if n_shared == 0 and self.study.layers.enabled:
            self.run_layers()
        run.update(finished=now(), wall_seconds=round(time.perf_counter() - started, 2))
        self.write_study(run)
        self.grid.log(event="run-finish", wall_seconds=run["wall_seconds"])

    def follow_cell(self, cell: Cell) -> None:
        """On a training process other than the first: take part in the cell's training, then wait for process 0
        to evaluate it (by polling the file system, so a long evaluation cannot time out a collective)."""
        if cell.design.train:
            folder = self.cell_dir(cell)
            self.procs.wait_for(lambda: (read_json(folder / STARTED_FILE) or {}).get("hash") == cell.hash)
            self.ensure_trained(cell, folder / "train")
        self.procs.wait_for(lambda: self.cell_done(cell))

    # ------------------------------------------------------------------ cells
    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def cell_done(self, cell: Cell) -> bool:
        record = read_json(self.cell_dir(cell) / CELL_FILE)
        return bool(record and record.get("complete") and record.get("hash") == cell.hash)

    def run_cell(self, index: int, cell: Cell) -> None:
        folder = self.cell_dir(cell)
        started = read_json(folder / STARTED_FILE)
        if folder.exists() and (started is None or started.get("hash") != cell.hash):
            console.print(f"  {cell.name}: its config changed since the stored results; starting it afresh")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if started is None or started.get("hash") != cell.hash:
            write_json(folder / STARTED_FILE, {"hash": cell.hash, "started": now()})
        timings: dict[str, float] = {}
        train_summary = None
        if cell.design.train:
            self.grid.phase(index, cell.name, cell.design, "train")
            start = time.perf_counter()
            model, train_summary = self.train_cell(cell, folder / "train")
            timings["train_phase_seconds"] = time.perf_counter() - start
        elif shares_layer_pass(self.study, cell.design):
            model = None
        else:
            model = self.base_model(cell.design, cell.seed or 0)
        self.grid.phase(index, cell.name, cell.design, "eval")
        start = time.perf_counter()
        encode = self.evaluate(cell, model, folder / "eval")
        timings["eval_phase_seconds"] = time.perf_counter() - start
        write_json(
            folder / CELL_FILE,
            {
                "name": cell.name,
                "design": asdict(cell.design),
                "seed": cell.seed,
                "hash": cell.hash,
                "complete": True,
                "finished": now(),
                "head_parameters": self.parameters[cell.design.name],
                "train": train_summary,
                "encode": encode,
                "eval": {"suite": self.study.eval.suite, "dir": "eval", "tasks": self.eval_task_names()},
                "timings": {k: round(v, 3) for k, v in timings.items()},
            },
        )

    def base_model(self, design: Design, seed: int) -> Any:
        from .model import EmbeddingModel

        model = self.study.model
        return EmbeddingModel.from_backbone(
            self.backbone,
            attention=design.attention,
            pooling=design.pooling,
            pooling_options=dict(design.options),
            dtype=model["dtype"],
            max_length=model["max_length"],
            seed=seed,
        ).to(self.procs.device)

    def records_for(self, config: Any) -> Any:
        """The training records of a seed, built once and handed to every design of that seed."""
        from .train import load_training_records

        seed = config.recipe.seed
        if seed not in self.records:
            self.records[seed] = load_training_records(config)
        return self.records[seed]

    def ensure_trained(self, cell: Cell, train_dir: Path) -> dict[str, Any]:
        """Train the cell's design (resuming from its last checkpoint) unless a finished model is there."""
        from .train import MODEL_DIR, SUMMARY_FILE, train

        assert cell.seed is not None
        config = train_config(self.study, cell.design, cell.seed, self.backbone, train_dir)
        summary = read_json(train_dir / SUMMARY_FILE)
        if summary and summary.get("config_hash") == config.hash() and (train_dir / MODEL_DIR).is_dir():
            console.print(f"  {cell.name}: training finished earlier, model reused")
            return summary
        train(config, records=self.records_for(config), progress=self.progress and self.procs.is_main)
        if not self.procs.is_main:
            return {}
        summary = read_json(train_dir / SUMMARY_FILE)
        assert summary is not None
        return summary

    def train_cell(self, cell: Cell, train_dir: Path) -> tuple[Any, dict[str, Any]]:
        from .model import EmbeddingModel
        from .train import MODEL_DIR

        summary = self.ensure_trained(cell, train_dir)
        model = EmbeddingModel.load(train_dir / MODEL_DIR).to(self.procs.device)
        model.merge_adapter()  # same function, faster encoding
        keep = (
            "steps",
            "wall_seconds",
            "examples_per_second",
            "final_loss",
            "trainable_parameters",
            "peak_memory_bytes",
            "records",
            "config_hash",
        )
        return model, {k: summary.get(k) for k in keep} | {"log": f"train/{Path(summary['log_path']).name}"}

    def eval_task_names(self) -> list[str]:
        from .evaluate import offline

        evaluation = self.study.eval
        if evaluation.suite == "offline":
            return [t.name for t in offline.select_tasks(evaluation.tasks, evaluation.profile)]
        return list(evaluation.tasks or [])

    def evaluate(self, cell: Cell, model: Any, out: Path) -> dict[str, Any]:
        """Score a cell's model (``None``: the base model's shared layer pass); returns its encoding cost."""
        from .backbone import autocast_precision

        evaluation = self.study.eval
        if evaluation.suite == "mteb":
            from .evaluate.mteb_adapter import run_mteb

            start = time.perf_counter()
            with autocast_precision(evaluation.precision, self.procs.device):
                run_mteb(
                    model,
                    evaluation.tasks,
                    evaluation.benchmark,
                    out,
                    instructions=evaluation.instructions or None,
                    model_name=cell.name,
                    revision=cell.hash,
                    progress=self.progress,
                )
            return {"texts": None, "seconds": time.perf_counter() - start, "source": "mteb"}
        from .evaluate import offline

        if model is None:
            store = self.layer_store()
            before = (store.encoded, store.seconds)
            encoder: Any = LayerEncoder(store, self.num_layers, f"{cell.name}:base-layer-{self.num_layers}")
        else:
            encoder = model
        with autocast_precision(evaluation.precision, self.procs.device):
            results = offline.run_suite(
                encoder,
                out,
                tasks=evaluation.tasks,
                profile=evaluation.profile,  # type: ignore[arg-type]
                model_id=cell.name,
                config_hash=cell.hash,
                instructions=evaluation.instructions or None,
                progress=self.progress,
            )
        if model is None:
            texts, seconds = store.encoded - before[0], store.seconds - before[1]
            return {"texts": texts, "seconds": seconds, "source": "shared layer pass (all layers in one forward)"}
        texts = sum(int(r.get("n_encoded") or 0) for r in results)
        seconds = sum(float(r.get("encode_seconds") or 0.0) for r in results)
        return {"texts": texts, "seconds": seconds, "source": "encode"}

    # ------------------------------------------------------------------ layers
    def layer_store(self) -> LayerStore:
        if self.store is None:
            from .model import EmbeddingModel

            model = self.study.model
            base = EmbeddingModel.from_backbone(
                self.backbone,
                attention=self.study.layers.attention,
                pooling="eos" if self.study.layers.attention == "causal" else "mean",
                dtype=model["dtype"],
                max_length=model["max_length"],
            ).to(self.procs.device)
            self.store = LayerStore(base)
        return self.store

    def run_layers(self) -> None:
        """Score every layer of the base model on the layer tasks and compute the layer x layer CKA."""
        from .evaluate import offline

        folder = self.out / "layers"
        if not self.procs.is_main:
            self.procs.wait_for(lambda: (read_json(folder / LAYERS_FILE) or {}).get("hash") == self.layers_hash)
            return
        stored = read_json(folder / LAYERS_FILE)
        if stored and stored.get("hash") == self.layers_hash:
            console.print("[bold cyan]\\[layers][/] layer-wise analysis finished earlier, reused")
            self.grid.log(cell="layers", event="reused", hash=self.layers_hash)
            self.store = None
            return
        from .backbone import autocast_precision

        self.grid.phase(0, "layers", None, f"layer-wise analysis ({self.num_layers} layers)")
        start = time.perf_counter()
        store = self.layer_store()
        tasks = layer_tasks(self.study)
        profile = layers_profile(self.study)
        per_task: dict[str, dict[str, Any]] = {}
        for layer in range(1, self.num_layers + 1):
            encoder = LayerEncoder(store, layer, f"base-layer-{layer}")
            with autocast_precision(self.study.eval.precision, self.procs.device):
                results = offline.run_suite(
                    encoder,
                    folder / "scores" / f"layer-{layer:02d}",
                    tasks=tasks,
                    profile=profile,  # type: ignore[arg-type]
                    model_id=encoder.name,
                    config_hash=self.layers_hash,
                    instructions=self.study.eval.instructions or None,
                    progress=False,
                )
            for result in results:
                entry = per_task.setdefault(
                    result["task"], {"task": result["task"], "category": result["category"], "scores": []}
                )
                entry["scores"].append(float(result["main_score"]))
            if self.progress and (layer % 5 == 0 or layer == self.num_layers):
                console.print(f"  layers: scored {layer}/{self.num_layers}")
        sample = store.sample(self.study.layers.cka_texts)
        cka = linear_cka(sample)
        write_json(
            folder / LAYERS_FILE,
            {
                "hash": self.layers_hash,
                "attention": self.study.layers.attention,
                "reduction": "last token" if self.study.layers.attention == "causal" else "mean over tokens",
                "num_layers": self.num_layers,
                "profile": profile,
                "tasks": list(per_task.values()),
                "cka": {"n_texts": int(sample.shape[1]), "matrix": np.round(cka, 6).tolist()},
                "encode": {"texts": store.encoded, "seconds": round(store.seconds, 3)},
                "seconds": round(time.perf_counter() - start, 3),
                "finished": now(),
            },
        )
        self.grid.log(cell="layers", event="finished", seconds=round(time.perf_counter() - start, 2))
        self.store = None  # frees the (texts x layers x hidden) vectors


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence library chatter (transformers/peft) while the grid's own display runs."""
    import logging

    loggers = [logging.getLogger(name) for name in ("transformers", "peft", "accelerate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_experiment(
    config_path: Path | None, output_dir: Path, overrides: Sequence[str] = (), *, progress: bool = True
) -> Path:
    """Run (or resume) the study of ``config_path`` (``None``: the embedded default) into ``output_dir`` and
    render its report; returns the path of ``report.md``."""
    from .report import render_report

    study = load_study(config_path, overrides)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_logs():
        runner = StudyRunner(study, out, progress=progress)
        runner.run()
    if not runner.procs.is_main:
        return out / "report.md"
    return render_report(out)
