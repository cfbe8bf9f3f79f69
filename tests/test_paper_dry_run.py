"""A CPU dry run of configs/paper.toml's exact path: every key of the file, scaled down by --set only (a tiny random
Mistral-architecture backbone, a few steps), on hub-style records read through its field map, LoRA on all linear
layers, GradCache with a global batch larger than the mini batch, gradient checkpointing, two processes through
accelerate, mteb's mock tasks (one per category) through the mteb adapter, and the report at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOCK_TASKS = {
    "sts": "MockSTSTask",
    "classification": "MockClassificationTask",
    "clustering": "MockClusteringTask",
    "pair_classification": "MockPairClassificationTask",
    "reranking": "MockRerankingTask",
    "retrieval": "MockRetrievalTask",
    "summarization": "MockSummarizationTask",
}
#: Makes mteb's mock tasks selectable by name (they are not in mteb's registry), then runs the study.
SCRIPT = """
import sys
import mteb
from mteb.mocks.mock_tasks import (classification, clustering, pair_classification, reranking, retrieval, sts,
                                   summarization)
from poolattn.study import run_experiment

MOCKS = {c.metadata.name: c for m in (classification, clustering, pair_classification, reranking, retrieval, sts,
                                      summarization) for c in vars(m).values() if isinstance(c, type)
         and hasattr(c, "metadata") and c.__module__ == m.__name__}
real = mteb.get_tasks

def get_tasks(tasks=None, **kwargs):
    if tasks and all(t in MOCKS for t in tasks):
        return [MOCKS[t]() for t in tasks]
    return real(tasks=tasks, **kwargs)

mteb.get_tasks = get_tasks
config, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
print("REPORT", run_experiment(config, out, overrides=overrides, progress=False))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_paper_config_dry_run_on_cpu(tiny_factory, tmp_path):
    import datasets

    backbone = tiny_factory("mistral")
    rows = [
        (f"query {i} about topic {i % 5}", f"an answer on topic {i % 5} number {i}", f"off text {i}") for i in range(24)
    ]
    data = datasets.Dataset.from_dict({k: [r[j] for r in rows] for j, k in enumerate(("query", "postive", "negative"))})
    data.to_parquet(str(tmp_path / "ir.parquet"))
    overrides = [
        f"model.backbone={backbone}",
        "model.max_length=128",  # the byte-level tiny tokenizer spends up to 87 tokens on a mock task's instruction
        "model.dtype=float32",
        f"data.path={tmp_path / 'ir.parquet'}",
        "train.steps=2",
        "train.batch_size=8",  # global, over both processes
        "train.mini_batch=2",
        "train.forward_tokens=48",
        "train.warmup_steps=1",
        "train.checkpoint_every=1",
        f"eval.tasks={json.dumps(list(MOCK_TASKS.values()))}",
        'layers.tasks=["WordSim353STS"]',
        "layers.cka_texts=16",
        "stats.n_resamples=200",
    ]
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), str(script), str(ROOT / "configs" / "paper.toml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "study"
    done = subprocess.run(
        [*launch, str(out), *overrides], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    errors = [line for line in done.stderr.splitlines() if "rror" in line]
    assert done.returncode == 0, "\n".join(errors)[-3000:]
    report = (out / "report.md").read_text()
    study = json.loads((out / "study.json").read_text())
    names = [d["name"] for d in study["config"]["designs"]] if "config" in study else None
    assert names is None or names == ["M0", "M1", "M2", "M3", "M4", "M5", "M3+", "M5+", "M6"]
    for name in ("M1", "M5", "M6"):
        summary = json.loads(next(out.glob(f"cells/{name}-s0/train/train_summary.json")).read_text())
        assert summary["processes"] == 2 and summary["steps"] == 2
    for task in MOCK_TASKS.values():
        assert task in report
    undefined = json.loads((out / "results.json").read_text())["undefined"]
    print("undefined scores:", undefined)
    for task, entry in undefined.items():  # a genuine tie of the 2-sample mock tasks is named with its reason
        assert entry["reason"] and f"- {task} (" in report
    filed = [p for p in (out / "cells").rglob("MockSTSTask.json") if p.parent.parent.name == "experiments"]
    assert {p.parts[-5] for p in filed} == {"poolattn__paper"}  # one model: <org__model>/<revision>/experiments/<name>
    assert any("design_M1" in p.parent.name for p in filed)
