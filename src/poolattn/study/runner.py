"""Runs a study into a folder: trains and evaluates every cell, runs the layer-wise analysis, renders the report.

:func:`run_experiment`

1. trains every design that trains (the same records, built once per seed, in the same order) and evaluates it;
   each (design, seed) is a *cell*, cached under ``cells/<cell>/`` by a hash of everything that determines its
   results, so a rerun skips finished cells and a killed run resumes where it stopped (training from its last
   checkpoint, evaluation from the tasks already scored);
2. runs the layer-wise analysis of the untrained base model (``layers/``): one forward pass per text gives every
   layer's vector; each layer is scored on a set of tasks and compared with every other layer by linear CKA.
   An untrained design that equals one layer's reduction (EOS pooling = the last layer's last token under
   causal attention) is evaluated from the same forward passes;
3. renders the report (:func:`poolattn.study.report.render_report`).

Layout of the study folder::

    study.json            resolved config, cell hashes, environment, one entry per run
    events.jsonl          one line per cell phase (start/finish/reuse) with timestamps
    cells/<cell>/         cell.json (written last), train/ (poolattn.training output), eval/ (one JSON per task)
    cells/.superseded/    cells whose config changed since they ran, moved aside as <cell>-<UTC time>/
    adapt/s<seed>-<hash>/ with an [adapt] table: the seed's adapted backbone (poolattn.training.adapt output)
    layers/               layers.json and scores/layer-XX/ (one JSON per task)
    report.md, report.html, plots/*.png
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig

from .. import training
from .._version import __version__
from ..assets import resolve_backbone
from ..backbone import check_source
from ..config import KeyLocator
from ..data import TrainRecord
from ..evaluate import evaluate_model
from ..evaluate.offline import select_tasks
from ..io import move_aside, now, read_json, write_json_atomic
from ..machine import environment, summary_line
from ..model import EmbeddingModel
from ..outputs import owned_run
from ..pooling import build_pooler
from ..stats import linear_cka
from ..training import TrainConfig
from .cells import Cell, digest, layer_tasks, layers_hash, layers_profile, plan_cells, shares_layer_pass
from .config import Design, Study, StudyError, adapt_config, default_config_text, load_study, train_config
from .estimate import estimate
from .layers import LayerEncoder, LayerStore
from .progress import GridProgress, PhaseClock, console
from .report import render_report

STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
STARTED_FILE = ".started.json"
EVENTS_FILE = "events.jsonl"
LAYERS_FILE = "layers.json"
SUPERSEDED_DIR = ".superseded"
ADAPT_DIR = "adapt"


class Processes:
    """This process's place when the study runs under ``accelerate launch``: every process trains, process 0
    evaluates and writes the study record while the others wait (polling files, so no collective times out)."""

    def __init__(self, poll_seconds: float = 5.0) -> None:
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
        self.study, self.out, self.progress = study, out, progress
        self.backbone = resolve_backbone(study.model.backbone)
        backbone_config = AutoConfig.from_pretrained(self.backbone)
        self.hidden_size = int(backbone_config.hidden_size)
        self.num_layers = int(backbone_config.num_hidden_layers)
        self.parameters = self.inspect_designs()
        self.cells = plan_cells(study, self.parameters)
        self.layers_hash = layers_hash(study)
        self.records: dict[int, list[TrainRecord]] = {}
        self.store: LayerStore | None = None
        self.procs = Processes()
        console.quiet = not self.procs.is_main
        self.grid = GridProgress(self.cells, out / EVENTS_FILE, enabled=self.procs.is_main)
        self.clock = PhaseClock()

    def inspect_designs(self) -> dict[str, int]:
        """Build every design's pooler on the meta device: validates its options, counts its parameters."""
        counts = {}
        for design in self.study.designs:
            try:
                with torch.device("meta"):
                    pooler = build_pooler(
                        design.pooling,
                        hidden_size=self.hidden_size,
                        num_layers=self.study.model.num_layers or self.num_layers,
                        attention=design.attention,
                        options=dict(design.options),
                    )
            except ValueError as err:
                line = KeyLocator(self.study_text()).design(design.name, "options")
                where = f"{self.study.source}, line {line}" if line else self.study.source
                key = f"designs[{design.name}].options"
                raise StudyError(f"{where}: {key}: {err}", key) from None
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
        write_json_atomic(
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
                        "start": self.start_of(c),
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
        run: dict[str, Any] = {
            "id": now(),
            "started": now(),
            "finished": None,
            "wall_seconds": None,
            "computed": [],
            "reused": [],
            "phases": {},
        }
        self.write_study(run)
        self.grid.log(event="run-start", cells=len(self.cells))
        console.print(
            f"[bold]study {self.study.name!r}[/]: {len(self.study.designs)} designs x {len(self.study.seeds)} "
            f"seed(s) = {len(self.cells)} cells{' + layer-wise analysis' if self.study.layers.enabled else ''} "
            f"→ {self.out}"
        )
        ordered = self.ordered_cells()
        self.print_cost([c for c in ordered if not self.cell_done(c)])
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
            run.update(phases=self.clock.snapshot(), wall_seconds=round(time.perf_counter() - started, 2))
            self.write_study(run)  # an interrupted run keeps its phase times
        if n_shared == 0 and self.study.layers.enabled:
            self.run_layers()
        run.update(finished=now(), wall_seconds=round(time.perf_counter() - started, 2), phases=self.clock.snapshot())
        self.write_study(run)
        self.grid.log(event="run-finish", wall_seconds=run["wall_seconds"])

    def print_cost(self, pending: list[Cell]) -> None:
        """This machine and what the pending cells will cost on it, measured on the backbone first."""
        if not self.procs.is_main:
            return
        console.print(f"  machine: {summary_line()}")
        if not pending or not self.progress:
            return
        with self.clock("cost estimate"):
            cost = estimate(self.study, pending, self.backbone, self.procs.device)
        console.print(f"  {cost.line()}")
        self.grid.expect(cost.cell_seconds(pending))
        self.grid.log(event="estimate", seconds=round(cost.total_seconds, 1), phases=cost.phases)

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
            kept = move_aside(folder, folder.parent / SUPERSEDED_DIR)
            console.print(f"  {cell.name}: its config changed; its stored results moved to {kept}; starting afresh")
        folder.mkdir(parents=True, exist_ok=True)
        if started is None or started.get("hash") != cell.hash:
            write_json_atomic(folder / STARTED_FILE, {"hash": cell.hash, "started": now()})
        timings: dict[str, float] = {}
        train_summary = None
        model: EmbeddingModel | None
        if cell.design.train:
            self.grid.phase(index, cell.name, cell.design, "train")
            start = time.perf_counter()
            with self.clock("training"):
                model, train_summary = self.train_cell(cell, folder / "train")
            timings["train_phase_seconds"] = time.perf_counter() - start
        elif shares_layer_pass(self.study, cell.design):
            model = None
        else:
            model = self.base_model(cell.design, cell.seed or 0)
        self.grid.phase(index, cell.name, cell.design, "eval")
        start = time.perf_counter()
        with self.clock("evaluation"):
            encode = self.evaluate(cell, model, folder / "eval")
        timings["eval_phase_seconds"] = time.perf_counter() - start
        write_json_atomic(
            folder / CELL_FILE,
            {
                "name": cell.name,
                "design": asdict(cell.design),
                "seed": cell.seed,
                "hash": cell.hash,
                "complete": True,
                "finished": now(),
                "head_parameters": self.parameters[cell.design.name],
                "start": self.start_record(cell),
                "train": train_summary,
                "encode": encode,
                "eval": {"suite": self.study.eval.suite, "dir": "eval", "tasks": self.eval_task_names()},
                "timings": {k: round(v, 3) for k, v in timings.items()},
            },
        )

    def base_model(self, design: Design, seed: int) -> EmbeddingModel:
        model = self.study.model
        return EmbeddingModel.from_backbone(
            self.backbone,
            attention=design.attention,
            pooling=design.pooling,
            pooling_options=dict(design.options),
            dtype=model.dtype,
            max_length=model.max_length,
            num_layers=model.num_layers,
            seed=seed,
        ).to(self.procs.device)

    def records_for(self, config: TrainConfig) -> list[TrainRecord]:
        """The training records of a data seed, built once and handed to every design of that seed."""
        seed = config.data_seed
        if seed not in self.records:
            with self.clock("mining"):
                self.records[seed] = training.load_training_records(config)
        return self.records[seed]

    def ensure_trained(self, cell: Cell, train_dir: Path) -> dict[str, Any]:
        """Train the cell's design (resuming from its last checkpoint) unless a finished model is there."""
        assert cell.seed is not None
        start = str(self.adapted_backbone(cell.seed)) if self.start_of(cell) == "adapted" else self.backbone
        config = train_config(self.study, cell.design, cell.seed, start, train_dir)
        summary = read_json(train_dir / training.SUMMARY_FILE)
        if summary and summary.get("config_hash") == config.hash() and (train_dir / training.MODEL_DIR).is_dir():
            console.print(f"  {cell.name}: training finished earlier, model reused")
            return summary
        training.train(config, records=self.records_for(config), progress=self.progress and self.procs.is_main)
        if not self.procs.is_main:
            return {}
        summary = read_json(train_dir / training.SUMMARY_FILE)
        assert summary is not None
        return summary

    # ------------------------------------------------------------------ adapted starts
    def start_of(self, cell: Cell) -> str:
        """What a cell's design starts from: ``adapted`` (its seed's adapted backbone) or ``base``."""
        return "adapted" if cell.seed is not None and self.study.adapted(cell.design) else "base"

    def adapt_dir(self, seed: int) -> Path:
        return self.out / ADAPT_DIR / f"s{seed}-{adapt_config(self.study, seed).hash()}"

    def adapted_backbone(self, seed: int) -> Path:
        """The seed's adapted backbone, adapted on first use (an interrupted adaptation resumes)."""
        folder = self.adapt_dir(seed)
        if not self.procs.is_main:
            self.procs.wait_for(lambda: (folder / training.ADAPT_SUMMARY).is_file())
        elif not (folder / training.ADAPT_SUMMARY).is_file():
            config = adapt_config(self.study, seed)
            stages = "MNTP" + (" + SimCSE" if config.simcse_steps else "")
            console.print(f"  adapting the backbone for seed {seed} ({stages}, LLM2Vec) → {folder}")
            with self.clock("adaptation"):
                summary = training.adapt(config, folder, progress=self.progress)
            console.print(
                f"  adapted: held-out masked-token loss {summary['heldout_loss_before']:.3f} → "
                f"{summary['heldout_loss_after']:.3f}"
                if summary.get("heldout_loss_before") is not None
                else "  adapted"
            )
        return folder

    def start_record(self, cell: Cell) -> dict[str, Any]:
        """The start of a cell's design, for cell.json and the report."""
        if self.start_of(cell) == "base":
            return {"from": "base", "backbone": self.backbone}
        assert cell.seed is not None
        folder = self.adapt_dir(cell.seed)
        summary = read_json(folder / training.ADAPT_SUMMARY) or {}
        heldout = summary.get("heldout") or {}
        return {
            "from": "adapted",
            "folder": str(folder.relative_to(self.out)),
            "mntp_steps": (summary.get("mntp") or {}).get("steps"),
            "simcse_steps": (summary.get("simcse") or {}).get("steps", 0),
            "mask_probability": summary.get("mask_probability"),
            "heldout_before": heldout.get("before"),
            "heldout_after": heldout.get("final") or heldout.get("after"),
            "heldout_causal": heldout.get("causal_base"),
        }

    def train_cell(self, cell: Cell, train_dir: Path) -> tuple[EmbeddingModel, dict[str, Any]]:
        summary = self.ensure_trained(cell, train_dir)
        model = EmbeddingModel.load(train_dir / training.MODEL_DIR).to(self.procs.device)
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
        evaluation = self.study.eval
        if evaluation.suite == "offline":
            return [t.name for t in select_tasks(evaluation.tasks, evaluation.profile)]  # type: ignore[arg-type]
        return list(evaluation.tasks or [])

    def evaluate(self, cell: Cell, model: EmbeddingModel | None, out: Path) -> dict[str, Any]:
        """Score a cell's model (``None``: the base model's shared layer pass); returns its encoding cost."""
        evaluation = self.study.eval
        store: LayerStore | None = None
        encoder: EmbeddingModel | LayerEncoder
        if model is None:
            store = self.layer_store()
            before = (store.encoded, store.seconds)
            encoder = LayerEncoder(store, self.num_layers, f"{cell.name}:base-layer-{self.num_layers}")
        else:
            encoder = model
        start = time.perf_counter()
        results = evaluate_model(
            encoder,
            out,
            suite=evaluation.suite,
            precision=evaluation.precision,
            device=self.procs.device,
            tasks=evaluation.tasks,
            benchmark=evaluation.benchmark,
            profile=evaluation.profile,
            model_id=cell.name if evaluation.suite == "offline" else self.mteb_name,
            config_hash=cell.hash,
            instructions=evaluation.instructions or None,
            experiment={"design": cell.design.name, "seed": cell.seed, **cell.design.identity()},
            progress=self.progress,
            samples=evaluation.samples or None,
        )
        if evaluation.suite == "mteb":
            return {"texts": None, "seconds": time.perf_counter() - start, "source": "mteb"}
        if store is not None:
            texts, seconds = store.encoded - before[0], store.seconds - before[1]
            return {"texts": texts, "seconds": seconds, "source": "shared layer pass (all layers in one forward)"}
        texts = sum(int(r.get("n_encoded") or 0) for r in results)
        seconds = sum(float(r.get("encode_seconds") or 0.0) for r in results)
        return {"texts": texts, "seconds": seconds, "source": "encode"}

    @property
    def mteb_name(self) -> str:
        """The study as one mteb model (``poolattn/<study>``); each cell is an experiment of it."""
        return "poolattn/" + (re.sub(r"[^A-Za-z0-9._-]+", "-", self.study.name).strip("-") or "study")

    # ------------------------------------------------------------------ layers
    def layer_store(self) -> LayerStore:
        if self.store is None:
            model = self.study.model
            base = EmbeddingModel.from_backbone(
                self.backbone,
                attention=self.study.layers.attention,
                pooling="eos" if self.study.layers.attention == "causal" else "mean",
                dtype=model.dtype,
                max_length=model.max_length,
            ).to(self.procs.device)
            self.store = LayerStore(base)
        return self.store

    def run_layers(self) -> None:
        """Score every layer of the base model on the layer tasks and compute the layer x layer CKA."""
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
        with self.clock("layer pass"):
            self.compute_layers(folder)

    def compute_layers(self, folder: Path) -> None:
        self.grid.phase(0, "layers", None, f"layer-wise analysis ({self.num_layers} layers)")
        start = time.perf_counter()
        store = self.layer_store()
        tasks = layer_tasks(self.study)
        profile = layers_profile(self.study)
        per_task: dict[str, dict[str, Any]] = {}
        for layer in range(1, self.num_layers + 1):
            encoder = LayerEncoder(store, layer, f"base-layer-{layer}")
            results = evaluate_model(
                encoder,
                folder / "scores" / f"layer-{layer:02d}",
                suite="offline",
                precision=self.study.eval.precision,
                device=self.procs.device,
                tasks=tasks,
                profile=profile,
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
                if "undefined" in result:
                    entry.setdefault("undefined", result["undefined"])
            if self.progress and (layer % 5 == 0 or layer == self.num_layers):
                console.print(f"  layers: scored {layer}/{self.num_layers}")
        sample = store.sample(self.study.layers.cka_texts)
        cka = linear_cka(sample)
        write_json_atomic(
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
    study = load_study(config_path, overrides)
    backbone = resolve_backbone(study.model.backbone)
    check_source(backbone)  # a missing backbone fails before the folder is made
    check_model_folder(backbone)
    out = Path(output_dir)
    main = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch` the first process holds the folder
    claimed = owned_run(out, "experiment", recognise=(STUDY_FILE, "cells")) if main else nullcontext()
    with claimed, _quiet_logs():
        runner = StudyRunner(study, out, progress=progress)
        runner.run()
        if not runner.procs.is_main:
            return out / "report.md"
        return render_report(out)


def check_model_folder(backbone: str) -> None:
    """Refuse, before anything is written, a local backbone folder whose config transformers cannot read."""
    if not Path(backbone).is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(backbone)
    except (ValueError, OSError) as err:
        reason = " ".join(str(err).split()).split(". ")[0]
        message = f"model.backbone = {backbone!r} is not a model folder transformers can read: {reason}"
        raise StudyError(message) from None
