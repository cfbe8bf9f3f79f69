"""The mteb 2 adapter, run offline on mteb tasks defined over the shipped data."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before mteb / huggingface_hub are imported: nothing may be downloaded

import mteb
import numpy as np
import pytest
from mteb.types import PromptType
from test_evaluate import HashEncoder, counted, save_untrained_and_trained

from poolattn.evaluate import evaluate_model, offline
from poolattn.evaluate.mteb_adapter import (
    DEFAULT_INSTRUCTIONS,
    PAPER_TASKS,
    MTEBEncoder,
    as_mteb_task,
    run_mteb,
)
from poolattn.evaluate.tasks import get_task


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_paper_task_list_matches_the_paper_and_mteb() -> None:
    counts = {category: len(names) for category, names in PAPER_TASKS.items()}
    assert counts == {
        "sts": 8,
        "classification": 6,
        "clustering": 11,
        "pair_classification": 3,
        "reranking": 4,
        "retrieval": 14,
        "summarization": 1,
    }
    names = [name for group in PAPER_TASKS.values() for name in group]
    known = {task.metadata.name: task for task in mteb.get_tasks(tasks=names)}  # metadata only, no download
    assert set(names) == set(known)
    for category, group in PAPER_TASKS.items():
        for name in group:
            assert DEFAULT_INSTRUCTIONS[name]
            assert known[name].metadata.type.lower().replace("pairclassification", "pair_classification") == category


def test_instruction_resolution() -> None:
    model = MTEBEncoder(HashEncoder(), instructions={"SciFact": "Custom", "Clustering": None})
    sts, scifact, msmarco = (mteb.get_task(n).metadata for n in ("STS12", "SciFact", "MSMARCO"))
    reddit = mteb.get_task("RedditClustering").metadata
    assert model.instruction_for(sts, None) == "Retrieve semantically similar text."
    assert model.instruction_for(msmarco, PromptType.query) == DEFAULT_INSTRUCTIONS["MSMARCO"]
    assert model.instruction_for(msmarco, PromptType.document) is None
    assert model.instruction_for(scifact, PromptType.query) == "Custom"
    assert model.instruction_for(reddit, None) is None
    offline_task = as_mteb_task("NewsLeadRetrieval").metadata
    expected = get_task("NewsLeadRetrieval").instruction
    assert model.instruction_for(offline_task, PromptType.query) == expected
    assert model.mteb_model_meta.name == "poolattn/hash-bow"


def test_run_mteb_offline_matches_the_offline_suite(tmp_path: Path) -> None:
    names = ["WordSim353STS", "NewsLeadRetrieval"]
    encoder = HashEncoder()
    records = run_mteb(encoder, [as_mteb_task(n) for n in names], None, tmp_path / "mteb", progress=False)
    ours = {
        r["task"]: r["main_score"]
        for r in offline.run_suite(HashEncoder(), tmp_path / "offline", tasks=names, profile="quick", progress=False)
    }
    assert [r["task"] for r in records] == names
    assert records[0]["category"] == "sts" and records[1]["category"] == "retrieval"
    assert records[0]["main_score"] == pytest.approx(ours["WordSim353STS"], abs=1e-9)
    assert records[1]["main_score"] == pytest.approx(ours["NewsLeadRetrieval"], abs=5e-6)
    stored = json.loads((tmp_path / "mteb" / "NewsLeadRetrieval.json").read_text())
    assert stored["main_metric"] == "ndcg_at_10" and stored["scores"]["test"][0]["ndcg_at_10"] == pytest.approx(
        records[1]["main_score"]
    )
    # retrieval documents are encoded without an instruction, queries with the task's
    data = get_task("NewsLeadRetrieval").load("quick")
    seen = {(instruction, text) for instruction, texts in encoder.calls for text in texts}
    assert all((None, d) in seen for d in data.docs)
    assert all((get_task("NewsLeadRetrieval").instruction, q) in seen for q in data.queries)
    # mteb's result cache in output_dir/mteb makes a second run skip the finished tasks
    calls = len(encoder.calls)
    again = run_mteb(encoder, [as_mteb_task(n) for n in names], None, tmp_path / "mteb", progress=False)
    assert len(encoder.calls) == calls
    # (mteb stores scores rounded)
    assert [r["main_score"] for r in again] == pytest.approx([r["main_score"] for r in records], abs=1e-5)


def test_evaluate_model_dispatches_both_suites_under_the_precision(tmp_path: Path) -> None:
    import torch

    class AutocastProbe(HashEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.autocast: set[bool] = set()

        def encode(self, texts, *, instruction=None):
            self.autocast.add(torch.is_autocast_enabled("cpu"))
            return super().encode(texts, instruction=instruction)

    labels = {"model_id": "probe", "config_hash": "h1", "progress": False}
    encoder = AutocastProbe()
    offline_results = evaluate_model(
        encoder,
        tmp_path / "offline",
        suite="offline",
        precision="bf16",
        device="cpu",
        tasks=["WordSim353STS"],
        profile="quick",
        **labels,
    )
    assert encoder.autocast == {True}
    assert offline_results[0]["model_id"] == "probe" and offline_results[0]["config_hash"] == "h1"
    encoder = AutocastProbe()
    records = evaluate_model(
        encoder,
        tmp_path / "mteb",
        suite="mteb",
        precision="fp32",
        device="cpu",
        tasks=[as_mteb_task("WordSim353STS")],
        **labels,
    )
    assert encoder.autocast == {False}
    assert records[0]["model_id"] == "poolattn/probe" and records[0]["config_hash"] == "h1"
    with pytest.raises(ValueError, match="unknown suite 'online'"):
        evaluate_model(encoder, tmp_path, suite="online", precision="fp32", device="cpu")


def test_mteb_encoder_returns_the_encoders_vectors() -> None:
    encoder = HashEncoder()
    model = MTEBEncoder(encoder)
    meta = as_mteb_task("WordSim353STS").metadata
    batches = [{"text": ["a cat", "a dog"]}, {"text": ["a bird"]}]
    vecs = model.encode(batches, task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_array_equal(vecs, HashEncoder().encode(["a cat", "a dog", "a bird"], instruction=meta.prompt))


def test_run_mteb_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of tasks"):
        run_mteb(HashEncoder(), None, None, tmp_path)
    with pytest.raises(ValueError, match="exactly one of tasks"):
        run_mteb(HashEncoder(), ["STS12"], "MTEB(eng, v1)", tmp_path)
    with pytest.raises((ValueError, KeyError)):
        run_mteb(HashEncoder(), ["NoSuchTask"], None, tmp_path)


def test_mteb_results_are_filed_under_the_exact_model(tiny_llama: Path, tmp_path: Path) -> None:
    from poolattn import EmbeddingModel
    from poolattn.evaluate.encoders import encoder_identity, identity_hash

    folders = save_untrained_and_trained(tiny_llama, tmp_path / "models")
    untrained, trained = (counted(EmbeddingModel.load(f)) for f in folders)
    out = tmp_path / "mteb"
    (of_trained,) = run_mteb(trained, [as_mteb_task("WordSim353STS")], None, out, progress=False)
    (of_untrained,) = run_mteb(untrained, [as_mteb_task("WordSim353STS")], None, out, progress=False)
    assert untrained.calls  # not the trained model's stored result
    assert of_untrained["main_score"] != of_trained["main_score"]
    expected = identity_hash(encoder_identity(untrained, untrained.config_hash(), "fp32"))
    assert of_untrained["revision"] == expected != of_trained["revision"]
    assert of_untrained["weights"] == untrained.fingerprint() and of_untrained["precision"] == "fp32"
    calls = len(untrained.calls)
    run_mteb(untrained, [as_mteb_task("WordSim353STS")], None, out, progress=False)
    assert len(untrained.calls) == calls  # the same model again: mteb's cache serves it
    (bf16,) = evaluate_model(
        untrained, out, suite="mteb", precision="bf16", device="cpu", tasks=[as_mteb_task("WordSim353STS")]
    )
    assert len(untrained.calls) > calls  # another precision is another revision
    assert bf16["precision"] == "bf16" and bf16["revision"] != of_untrained["revision"]


class ConstantEncoder(HashEncoder):
    """One vector for every text: a model that cannot tell texts apart."""

    name = "constant"

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        return np.tile(np.eye(1, self.dim, dtype=np.float32), (len(texts), 1))


def test_an_undefined_score_says_why(tmp_path: Path) -> None:
    (record,) = run_mteb(ConstantEncoder(), [as_mteb_task("WordSim353STS")], None, tmp_path / "m", progress=False)
    assert np.isnan(record["main_score"])
    assert "cosine_spearman is undefined: all" in record["undefined"] and "same embedding" in record["undefined"]
    (offline_record,) = offline.run_suite(ConstantEncoder(), tmp_path / "o", tasks=["WordSim353STS"], profile="quick")
    assert np.isnan(offline_record["main_score"]) and "same embedding" in offline_record["undefined"]
    (fine,) = run_mteb(HashEncoder(), [as_mteb_task("WordSim353STS")], None, tmp_path / "h", progress=False)
    assert np.isfinite(fine["main_score"]) and "undefined" not in fine


def test_a_design_is_filed_as_an_experiment(tmp_path: Path) -> None:
    experiment = {"design": "M1", "seed": 0, "attention": "causal", "pooling": "eos", "options": {}}
    names = ["WordSim353STS"]
    (record,) = run_mteb(
        HashEncoder(),
        [as_mteb_task(n) for n in names],
        None,
        tmp_path,
        model_name="poolattn/study",
        experiment=experiment,
    )
    assert record["experiment"] == "attention_causal__design_M1__pooling_eos__seed_0"
    (path,) = (tmp_path / "mteb").rglob("WordSim353STS.json")
    assert path.parent.name == record["experiment"] and path.parent.parent.name == "experiments"
