"""Everyday mistakes get one error line (exit code 2) before any model is loaded or anything encoded, leave nothing
behind, and the console shows no library warning the project causes."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from poolattn import backbone, hub
from poolattn.cli import app

runner = CliRunner()


def forbid_model_load(monkeypatch) -> None:
    """From now on, any attempt to load model weights fails the command (exit code 1, not 2)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("AutoModel", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(backbone, name), "from_pretrained", refuse)


@pytest.fixture
def no_model_load(monkeypatch):
    forbid_model_load(monkeypatch)


@pytest.fixture
def no_internet(monkeypatch, tmp_path):
    """No hub cache, no HF_HUB_OFFLINE, and the hub cannot be reached."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "hub-cache")
    monkeypatch.setattr(hub, "datasets_cache", lambda: tmp_path / "datasets-cache")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)


def one_error_line(args: list[str], *expected: str) -> str:
    """Run the command; it must exit with 2 and print exactly one line, containing every ``expected`` text."""
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("first text\nsecond text\n")
    return path


def test_unknown_task(tiny_llama, tmp_path, no_model_load):
    line = one_error_line(["eval", str(tiny_llama), "--tasks", "NoSuchTask", "-o", str(tmp_path / "r")])
    assert "unknown task 'NoSuchTask'" in line and "WordSim353STS" in line
    assert not (tmp_path / "r").exists()


def test_unknown_profile(tiny_llama, tmp_path, no_model_load):
    one_error_line(["eval", str(tiny_llama), "--profile", "huge", "-o", str(tmp_path / "r")], "unknown profile 'huge'")


def test_wordnet_task_without_wordnet(tiny_llama, tmp_path, no_model_load, monkeypatch):
    from poolattn import corpora

    monkeypatch.setattr(corpora, "wordnet_available", lambda: False)
    args = ["eval", str(tiny_llama), "--tasks", "WordNetGlossRetrieval", "-o", str(tmp_path / "r")]
    one_error_line(args, "WordNetGlossRetrieval", "need WordNet", "wordnet-base")


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_mteb_without_internet_suggests_the_offline_suite(
    tiny_llama, tmp_path, no_model_load, no_internet, monkeypatch, offline
):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["eval", str(tiny_llama), "--suite", "mteb", "--tasks", "STS12", "-o", str(tmp_path / "r")]
    line = one_error_line(args, "mteb/sts12-sts", "--suite offline")
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in line


def test_unknown_mteb_task(tiny_llama, tmp_path, no_model_load):
    args = ["eval", str(tiny_llama), "--suite", "mteb", "--tasks", "NoSuchTask", "-o", str(tmp_path / "r")]
    one_error_line(args, "mteb has no task 'NoSuchTask'")


def test_encode_into_a_folder_leaves_nothing(tiny_llama, texts, tmp_path, no_model_load):
    folder = tmp_path / "out"
    folder.mkdir()
    before = sorted(os.listdir(tmp_path))
    one_error_line(["encode", str(tiny_llama), "-i", str(texts), "-o", str(folder)], f"{folder} is a folder")
    assert sorted(os.listdir(tmp_path)) == before and not any(folder.iterdir())


def test_encode_below_a_file(tiny_llama, texts, tmp_path, no_model_load):
    target = texts / "v.npy"
    one_error_line(["encode", str(tiny_llama), "-i", str(texts), "-o", str(target)], f"{texts} is a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder nobody can create files in)")
def test_encode_where_nothing_can_be_written(tiny_llama, texts, no_model_load):
    one_error_line(["encode", str(tiny_llama), "-i", str(texts), "-o", "/proc/v.npy"], "cannot write in /proc")


def test_encode_output_suffix_unknown(tiny_llama, texts, tmp_path, no_model_load):
    args = ["encode", str(tiny_llama), "-i", str(texts), "-o", str(tmp_path / "v.vec")]
    one_error_line(args, "suffix '.vec'", "--format")


def test_encoder_decoder_folder(texts, tmp_path, no_model_load):
    from tiny import make_tokenizer
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("t5", vocab_size=256, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    folder = tmp_path / "t5"
    AutoModel.from_config(config).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    args = ["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")]
    one_error_line(args, "t5 encoder-decoder model", "decoder-only")


def test_export_of_a_missing_folder(tmp_path, no_model_load):
    missing = tmp_path / "missing"
    one_error_line(["export", str(missing), "-o", str(tmp_path / "st")], f"model folder {missing} not found")
    assert not (tmp_path / "st").exists()


def test_relative_missing_path_is_a_missing_folder_not_a_hub_id(texts, tmp_path, monkeypatch, no_internet):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(backbone.AutoConfig, "from_pretrained", no_hub)
    start = time.perf_counter()
    one_error_line(["encode", "runs/m1", "-i", str(texts), "-o", "v.npy"], "model folder runs/m1 not found")
    # shaped like a hub id and no folder of that name: still answered at once, saying why the hub cannot help
    line = one_error_line(["encode", "nosuch/model", "-i", str(texts), "-o", "v.npy"], "nosuch/model not found")
    assert "cannot be reached" in line
    assert time.perf_counter() - start < 20  # the hub client alone retries for about 30 s


def test_experiment_with_a_missing_backbone_leaves_no_folder(tmp_path, no_model_load):
    out = tmp_path / "study"
    missing = tmp_path / "nope"
    args = ["experiment", "--output", str(out), "--set", f"model.backbone={missing}"]
    one_error_line(args, f"model folder {missing} not found")
    assert not out.exists()


def saved_model(tiny_llama, tmp_path) -> Path:
    from poolattn import EmbeddingModel

    folder = tmp_path / "saved"
    EmbeddingModel.from_backbone(tiny_llama, pooling="trainable", attention="bidirectional").save(folder)
    return folder


def test_invalid_poolattn_json_names_the_file(tiny_llama, texts, tmp_path):
    folder = saved_model(tiny_llama, tmp_path)
    config = folder / "poolattn.json"
    args = ["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")]
    config.write_text('{"backbone": "x",\n  "pooling": }')
    one_error_line(args, f"{config}, line 2, column 14: invalid JSON")
    config.write_text("[1, 2]")
    one_error_line(args, f"{config}: expected a JSON object")
    config.write_text('{"pooling": "mean"}')
    one_error_line(args, f"{config}: missing field 'backbone'")
    config.write_text(json.dumps({"backbone": str(tiny_llama), "max_length": "long"}))
    one_error_line(args, f"{config}: max_length = 'long' is not int")


@pytest.mark.parametrize("damaged", ["backbone", "pooler"])
def test_truncated_safetensors_names_the_file(tiny_llama, texts, tmp_path, monkeypatch, damaged):
    if damaged == "backbone":
        folder = tmp_path / "backbone"
        shutil.copytree(tiny_llama, folder)
        weights = folder / "model.safetensors"
    else:
        folder = saved_model(tiny_llama, tmp_path)
        weights = folder / "pooler.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    forbid_model_load(monkeypatch)
    args = ["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")]
    one_error_line(args, f"{weights}: damaged or truncated weights file")


def test_embeddings_written_through_a_unique_temporary_file(tiny_llama, texts, tmp_path, monkeypatch):
    out = tmp_path / "v.npy"
    (tmp_path / ".v.npy.tmp").mkdir()  # a fixed temporary name would collide with this
    result = runner.invoke(app, ["encode", str(tiny_llama), "-i", str(texts), "-o", str(out), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == 2

    from poolattn import textio

    def broken(handle, array):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(textio.np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        textio.write_embeddings(out, np.zeros((2, 4), np.float32), ["a", "b"], "npy")
    assert np.load(out).shape[0] == 2  # the earlier file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v.npy.tmp", "texts.txt", "v.npy"]


def test_classification_metrics_silent_and_unchanged():
    from poolattn.evaluate.scorers import _classification_metrics

    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 0, 3, 3])  # label 1 and 2 never predicted, label 3 never true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = _classification_metrics(y_true, y_pred)
    from sklearn.metrics import f1_score, precision_score, recall_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = {  # sklearn's default, zero_division="warn"
            "f1": f1_score(y_true, y_pred, average="macro"),
            "f1_weighted": f1_score(y_true, y_pred, average="weighted"),
            "precision": precision_score(y_true, y_pred, average="macro"),
            "precision_weighted": precision_score(y_true, y_pred, average="weighted"),
            "recall": recall_score(y_true, y_pred, average="macro"),
            "recall_weighted": recall_score(y_true, y_pred, average="weighted"),
        }
    assert {k: silent[k] for k in default} == default


def test_peft_wrapping_shows_no_deprecation_notice(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    from poolattn import EmbeddingModel

    model = EmbeddingModel.from_backbone(tiny_llama)
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        get_peft_model(backbone.load_backbone(tiny_llama), LoraConfig(r=2, target_modules="all-linear"))
    assert any("is_gradient_checkpointing" in str(w.message) for w in raw)  # the notice PEFT triggers exists
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.add_lora(r=2, alpha=4, dropout=0.0)
        model.save(tmp_path / "m")
        EmbeddingModel.load(tmp_path / "m")
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []


def test_error_lines_are_neither_wrapped_nor_read_as_markup(tiny_llama, tmp_path, no_model_load):
    name = "[bold]" + "x" * 200
    line = one_error_line(["eval", str(tiny_llama), "--tasks", name, "-o", str(tmp_path / "r")])
    assert f"unknown task {name!r}" in line
