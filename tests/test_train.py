"""Training runs: every design trains, models save and reload, runs stop on divergence and resume bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from training_common import config_for, make_records, one_thread, saved_weights  # noqa: F401 (autouse fixture)

from poolattn import EmbeddingModel
from poolattn.training import ConfigError, TrainingDiverged, build_model, load_train_config, train
from poolattn.training.trainer import param_groups

# ----------------------------------------------------------------------------------------- every design
DESIGNS = [
    ("eos", "causal"),
    ("mean", "causal"),
    ("weighted_mean", "causal"),
    ("latent", "causal"),
    ("trainable", "causal"),
    ("multilayer", "causal"),
    ("multilayer", "bidirectional"),
]


@pytest.mark.parametrize(("pooling", "attention"), DESIGNS)
def test_every_design_trains(tiny_llama, tmp_path, pooling, attention):
    config = config_for(
        tiny_llama, tmp_path, f"model.pooling={pooling}", f"model.attention={attention}", "recipe.steps=24"
    )
    result = train(config, records=make_records(), progress=False)
    assert result.steps == 24 and len(result.losses) == 24
    assert np.mean(result.losses[-4:]) < 0.6 * np.mean(result.losses[:4]), result.losses
    lines = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 25))
    assert [line["loss"] for line in lines] == result.losses
    assert {"lr", "examples_per_second", "wall_seconds", "grad_norm"} <= set(lines[0])
    assert result.trainable_parameters == sum(v.numel() for v in saved_weights(result.model_dir).values())
    assert result.examples_per_second > 0 and result.peak_memory_bytes > 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 24 and summary["config"]["model"]["pooling"] == pooling


def test_saved_model_loads_and_merged_weights_embed_alike(tiny_llama, tmp_path):
    records = make_records()
    texts = [r.positive for r in records[:5]]
    embeddings = {}
    for merge in (False, True):
        config = config_for(
            tiny_llama, tmp_path / str(merge), "model.pooling=latent", "recipe.steps=6", f"output.merge={merge}"
        )
        result = train(config, records=records, progress=False)
        model = EmbeddingModel.load(result.model_dir)
        assert model.has_adapter is not merge
        assert (result.model_dir / "train_summary.json").is_file()
        embeddings[merge] = model.encode(texts)
    np.testing.assert_allclose(embeddings[False], embeddings[True], atol=2e-5)
    untrained = EmbeddingModel.from_backbone(tiny_llama, pooling="latent", seed=0).encode(texts)
    assert np.abs(untrained - embeddings[False]).max() > 1e-3


def test_full_and_frozen_finetuning(tiny_llama, tmp_path):
    records = make_records()
    full = train(config_for(tiny_llama, tmp_path / "full", "recipe.finetune=full", "recipe.steps=3"), records=records)
    assert (full.model_dir / "backbone").is_dir()
    reloaded = EmbeddingModel.load(full.model_dir)
    base = EmbeddingModel.from_backbone(tiny_llama)
    changed = [
        not torch.equal(a, b) for a, b in zip(reloaded.backbone.parameters(), base.backbone.parameters(), strict=True)
    ]
    assert any(changed)
    frozen = train(
        config_for(tiny_llama, tmp_path / "frozen", "recipe.finetune=frozen", "model.pooling=latent", "recipe.steps=3"),
        records=records,
    )
    head = EmbeddingModel.from_backbone(tiny_llama, pooling="latent")
    assert frozen.trainable_parameters == sum(p.numel() for p in head.pooler.parameters())
    with pytest.raises(ConfigError, match="nothing to train"):
        train(config_for(tiny_llama, tmp_path / "x", "recipe.finetune=frozen", "model.pooling=eos"), records=records)


def test_records_from_a_file_with_bad_lines(tiny_llama, tmp_path):
    from poolattn.data import DataError

    rows = [{"query": r.query, "positive": r.positive} for r in make_records(9)] + [{"query": "no positive"}]
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = [f"data.path={data_file}", "recipe.steps=1", "data.hard_negatives=random"]
    with pytest.raises(DataError, match=r"data\.jsonl, line 10, field 'positive': missing"):
        train(config_for(tiny_llama, tmp_path / "a", *settings), progress=False)
    result = train(config_for(tiny_llama, tmp_path / "b", *settings, "data.skip_bad=true"), progress=False)
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert result.skipped_records == summary["skipped_records"] == 1
    assert summary["records"] == 9


def test_head_gets_its_own_learning_rate(tiny_llama, tmp_path):
    config = config_for(tiny_llama, tmp_path, "model.pooling=latent", "recipe.lr=1e-4", "recipe.head_lr=1e-2")
    model = build_model(config)
    groups = param_groups(model, config.recipe)
    head_ids = {id(p) for p in model.pooler.parameters()}
    for group in groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert in_head == {group["name"] == "head"}
        assert group["lr"] == (1e-2 if group["name"] == "head" else 1e-4)
        assert group["weight_decay"] == (0.01 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
    counted = sum(p.numel() for g in groups for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_bf16_autocast_trains(tiny_llama, tmp_path):
    records = make_records()
    fp32 = train(config_for(tiny_llama, tmp_path / "a", "recipe.steps=2"), records=records, progress=False)
    bf16 = train(
        config_for(tiny_llama, tmp_path / "b", "recipe.steps=2", "recipe.mixed_precision=bf16"),
        records=records,
        progress=False,
    )
    assert all(np.isfinite(bf16.losses))
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], abs=0.1)
    assert bf16.losses[0] != fp32.losses[0]


# ---------------------------------------------------------------------------------- divergence, resume
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path):
    config = config_for(
        tiny_llama,
        tmp_path,
        "recipe.lr=1e30",
        "recipe.max_grad_norm=none",
        "recipe.steps=6",
        "output.checkpoint_every=1",
        "output.keep_checkpoints=2",
    )
    with pytest.raises(TrainingDiverged, match=r"at step (\d+): (loss|the gradient norm) is (nan|inf)") as err:
        train(config, records=make_records(), progress=False)
    bad_step = int(str(err.value).split("at step ")[1].split(":")[0])
    assert bad_step >= 2
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts[-1] == f"step-{bad_step - 1:08d}"
    assert not [name for name in ckpts if name.startswith(".")]
    assert str(tmp_path / "checkpoints" / ckpts[-1]) in str(err.value)
    state = json.loads((tmp_path / "checkpoints" / ckpts[-1] / "state.json").read_text())
    assert state["step"] == bad_step - 1
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == bad_step - 1
    assert not (tmp_path / "model").exists()


def test_resume_refuses_a_different_config(tiny_llama, tmp_path):
    records = make_records()
    train(config_for(tiny_llama, tmp_path, "recipe.steps=2", "output.checkpoint_every=1"), records=records)
    with pytest.raises(ConfigError, match="different config"):
        train(config_for(tiny_llama, tmp_path, "recipe.steps=3", "output.checkpoint_every=1"), records=records)
    again = train(config_for(tiny_llama, tmp_path, "recipe.steps=2", "output.checkpoint_every=1"), records=records)
    assert again.steps == 2 and len(again.losses) == 2  # finished: the stored result


@pytest.mark.parametrize("checkpoint_every", [0, 1])
def test_rerunning_a_finished_run_rewrites_nothing(tiny_llama, tmp_path, monkeypatch, checkpoint_every):
    from poolattn.training.trainer import Trainer

    records = make_records()
    config = config_for(tiny_llama, tmp_path, "recipe.steps=2", f"output.checkpoint_every={checkpoint_every}")
    first = train(config, records=records, progress=False)
    assert first.examples_per_second > 0
    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    monkeypatch.setattr(Trainer, "train_step", lambda self: pytest.fail("a finished run trained again"))
    again = train(config, records=records, progress=False)
    assert again == first  # examples_per_second included: the stored figure, not this call's 0.0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tmp_path.rglob("*")) if p.is_file()} == written
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["examples_per_second"] == first.examples_per_second


def test_non_finite_weights_are_never_checkpointed_or_saved(tiny_llama, tmp_path):
    config = config_for(tiny_llama, tmp_path, "recipe.steps=3", "output.checkpoint_every=1")
    config.recipe.weight_decay = math.nan  # past the config's checks: the first update makes every matrix NaN
    with pytest.raises(TrainingDiverged) as err:
        train(config, records=make_records(), progress=False)
    message = str(err.value)
    assert message.startswith("training diverged at step 1: a trained weight is not finite; that step was applied")
    assert "no checkpoint was written" in message and "good" not in message
    assert list((tmp_path / "checkpoints").glob("*")) == []
    assert not (tmp_path / "model").exists() and not (tmp_path / "train_summary.json").exists()


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(tiny_llama, tmp_path, monkeypatch):
    """SIGKILL a run after a checkpoint, rerun it, and get exactly the weights of an uninterrupted run."""
    data_file = tmp_path / "records.jsonl"
    data_file.write_text("".join(json.dumps(r.__dict__) + "\n" for r in make_records(24, seed=4)))
    settings = [
        f"model.backbone={tiny_llama}",
        "model.pooling=multilayer",
        "model.attention=bidirectional",
        f"data.path={data_file}",
        "recipe.steps=40",
        "recipe.batch_size=8",
        "recipe.lr=2e-3",
        "recipe.warmup_steps=5",
        "lora.r=4",
        "lora.alpha=8",
        "lora.dropout=0.1",
        "output.checkpoint_every=5",
    ]
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "poolattn", "train", "--no-progress", *(f"--set={s}" for s in settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([*command, f"--set=output.dir={killed}"], env=env, stderr=subprocess.PIPE)
    log_file, deadline = killed / "train_log.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        checkpointed = (killed / "checkpoints" / "step-00000005").is_dir() and log_file.is_file()
        if checkpointed and len(log_file.read_text().splitlines()) >= 7:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (killed / "model").exists()
    resumed = subprocess.run([*command, f"--set=output.dir={killed}"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    monkeypatch.setenv("POOLATTN_THREADS", "1")  # as many threads as the processes above had
    reference = train(load_train_config(None, [*settings, f"output.dir={tmp_path / 'ref'}"]), progress=False)
    got, want = saved_weights(killed / "model"), saved_weights(reference.model_dir)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    lines = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    assert [line["loss"] for line in lines] == reference.losses


def test_written_config_round_trips(tiny_llama, tmp_path):
    config = config_for(
        tiny_llama, tmp_path, "recipe.steps=1", "model.pooling_options.n_latents=4", "model.pooling=latent"
    )
    train(config, records=make_records(), progress=False)
    assert load_train_config(tmp_path / "train_config.toml") == config


def test_adam_beta2_reaches_the_optimiser_and_leaves_other_hashes_alone(tiny_llama, tmp_path):
    from poolattn.training.trainer import Trainer

    default = config_for(tiny_llama, tmp_path / "a", "recipe.steps=2")
    set_ = config_for(tiny_llama, tmp_path / "b", "recipe.steps=2", "recipe.adam_beta2=0.95")
    assert set_.hash() != default.hash()
    assert config_for(tiny_llama, tmp_path / "c", "recipe.steps=2", "recipe.adam_beta2=0.999").hash() != default.hash()
    for config, beta2 in ((default, 0.999), (set_, 0.95)):
        trainer = Trainer(config, make_records(), progress=False)
        assert {group["betas"] for group in trainer.optimizer.param_groups} == {(0.9, beta2)}
