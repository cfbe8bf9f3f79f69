"""Contrastive training: every design trains, GradCache is exact, processes add up, runs resume bit for bit."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import CORPUS

from poolattn import EmbeddingModel
from poolattn.data import TrainRecord
from poolattn.model import Tokenized
from poolattn.train import (
    ConfigError,
    ContrastiveStep,
    Distributed,
    Layout,
    RngState,
    TrainConfig,
    TrainingDiverged,
    build_model,
    check_fsdp,
    configure_deepspeed,
    info_nce,
    load_train_config,
    plan_chunks,
    split_to,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = sorted({word.strip(".,;:!?") for line in CORPUS for word in line.split()} - {""})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and reproducibly) on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_records(n: int = 16, seed: int = 0) -> list[TrainRecord]:
    """Query/positive pairs sharing words (learnable), texts of varied length, 0-2 negatives, mixed instructions."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(2, 7))
        negatives = [" ".join(rng.sample(WORDS, rng.randint(2, 6))) for _ in range(rng.randint(0, 2))]
        instruction = "Retrieve the match" if i % 3 else None
        records.append(TrainRecord(" ".join(words), " ".join(reversed(words)) + " .", negatives, instruction))
    return records


def config_for(backbone: Path, out: Path, *overrides: str) -> TrainConfig:
    base = [
        f"model.backbone={backbone}",
        f"output.dir={out}",
        "recipe.batch_size=8",
        "recipe.lr=3e-3",
        "lora.r=4",
        "lora.alpha=8",
    ]
    return load_train_config(None, [*base, *overrides])


def trainable_grads(model: EmbeddingModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(model_dir / "pooler.safetensors")
    adapter = model_dir / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        weights.update({f"adapter.{k}": v for k, v in load_file(adapter).items()})
    return weights


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
    from poolattn.train import param_groups

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


# -------------------------------------------------------------------------------------------- the loss
def test_info_nce_matches_a_hand_computation():
    torch.manual_seed(0)
    q, p, n = (F.normalize(torch.randn(k, 6), dim=-1) for k in (3, 3, 2))
    records = [TrainRecord("a", "x", ["n1"]), TrainRecord("b", "y", []), TrainRecord("c", "z", ["n2"])]
    layout = Layout.of([records])
    loss = info_nce(q, p, n, layout, scale=20.0)
    expected = 0.0
    cands = torch.cat([p, n])
    for i in range(3):
        logits = 20.0 * cands @ q[i]
        expected += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(loss, expected / 3)
    # symmetric and query-query terms
    qq = info_nce(q, p, n, layout, scale=20.0, query_query=True)
    expected_qq = 0.0
    for i in range(3):
        logits = torch.cat([20.0 * cands @ q[i], 20.0 * q[[j for j in range(3) if j != i]] @ q[i]])
        expected_qq += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(qq, expected_qq / 3)
    sym = info_nce(q, p, n, layout, scale=20.0, symmetric=True)
    reverse = F.cross_entropy(20.0 * p @ q.T, torch.arange(3))
    torch.testing.assert_close(sym, (loss + reverse) / 2)


def test_info_nce_masks_duplicates_of_the_positive():
    torch.manual_seed(1)
    q, p, n = (F.normalize(torch.randn(k, 4), dim=-1) for k in (3, 3, 1))
    records = [TrainRecord("a", "same", ["same"]), TrainRecord("b", "same", []), TrainRecord("c", "other", [])]
    layout = Layout.of([records])
    loss = info_nce(q, p, n, layout, scale=10.0)
    cands = torch.cat([p, n])
    allowed = {0: [0, 2], 1: [1, 2], 2: [0, 1, 2, 3]}  # "same" twice: neither copy is a negative of the other
    expected = sum(-(10.0 * cands[i] @ q[i] - torch.logsumexp(10.0 * cands[allowed[i]] @ q[i], 0)) for i in range(3))
    torch.testing.assert_close(loss, expected / 3)


def test_layout_of_several_processes_matches_one():
    records = make_records(6)
    one, two = Layout.of([records]), Layout.of([records[:3], records[3:]])

    def texts(shard):
        return [r.query for r in shard] + [r.positive for r in shard] + [x for r in shard for x in r.negatives]

    texts_one, texts_two = texts(records), texts(records[:3]) + texts(records[3:])
    for rows_one, rows_two in (
        (one.query_rows, two.query_rows),
        (one.positive_rows, two.positive_rows),
        (one.negative_rows, two.negative_rows),
    ):
        assert [texts_one[i] for i in rows_one] == [texts_two[i] for i in rows_two]
    assert sum(two.sizes) == sum(one.sizes) == len(texts_one)


def test_plan_chunks_sorts_by_length_and_respects_caps():
    items = [Tokenized([0] * n, [True] * n) for n in (3, 9, 1, 9, 5, 2)]
    assert plan_chunks(items, None, 1000) == [[1], [3], [4], [0], [5], [2]]  # free passes: no padding at all
    assert plan_chunks(items, None, 1000, overhead=100.0) == [[1, 3, 4, 0, 5, 2]]  # costly passes: one chunk
    assert plan_chunks(items, 2, 1000, overhead=100.0) == [[1, 3], [4, 0], [5, 2]]
    assert plan_chunks(items, None, 15, overhead=100.0) == [[1], [3], [4, 0], [5, 2]]  # 15 tokens at most


def partition_cost(ordered: list[int], sizes: list[int], max_texts, max_tokens: int, overhead: float) -> float:
    """Cost of cutting the length-sorted list into chunks of ``sizes`` (inf when a cap is broken)."""
    total, start = 0.0, 0
    for size in sizes:
        if (max_texts and size > max_texts) or (size > 1 and size * ordered[start] > max_tokens):
            return float("inf")
        total, start = total + size * ordered[start] + overhead, start + size
    return total


def test_plan_chunks_is_the_cheapest_partition():
    """Against brute force over every way of cutting the sorted list."""
    import itertools

    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 8))]
        items = [Tokenized([0] * n, [True] * n) for n in lengths]
        caps = (rng.choice([None, 2, 3]), rng.choice([40, 80, 1000]), rng.choice([0.0, 5.0, 20.0]))
        ordered, n = sorted(lengths, reverse=True), len(lengths)
        best = min(
            partition_cost(ordered, [b - a for a, b in itertools.pairwise((0, *cuts, n))], *caps)
            for k in range(n)
            for cuts in itertools.combinations(range(1, n), k)
        )
        chunks = plan_chunks(items, *caps)
        assert sorted(i for c in chunks for i in c) == list(range(n))
        assert [len(items[i].ids) for c in chunks for i in c] == ordered
        assert partition_cost(ordered, [len(c) for c in chunks], *caps) == best


# ------------------------------------------------------------------------------------------- GradCache
def step_grads(backbone: Path, overrides: list[str], grad_cache: bool, records: list[TrainRecord]):
    config = load_train_config(None, [f"model.backbone={backbone}", "lora.r=4", "lora.alpha=8", *overrides])
    torch.manual_seed(0)
    dist = Distributed()  # the process's device (a GPU where there is one): the model goes there, as in training
    model = build_model(config).to(dist.device).train()
    with torch.no_grad():  # a non-zero LoRA B, so dropout on the adapter input changes the forward pass too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    step = ContrastiveStep(model, dist, config.recipe, grad_cache=grad_cache)
    torch.manual_seed(123)
    loss = step([records])
    return float(loss), trainable_grads(model)


@pytest.mark.parametrize(("pooling", "attention"), [("multilayer", "bidirectional"), ("latent", "causal")])
def test_gradcache_equals_the_plain_step_with_dropout(tiny_llama, pooling, attention, monkeypatch):
    """GradCache (no graphs, cached embedding gradients, RNG replayed per chunk) gives the plain step's gradients.

    With dropout the plain step embeds the same chunks in the same order (its graphs kept), so both draw the same
    dropout masks; without dropout it is one forward over the whole batch.
    """
    records = make_records(8, seed=2)
    design = [f"model.pooling={pooling}", f"model.attention={attention}"]
    drop = [*design, "lora.dropout=0.3", "recipe.mini_batch=3"]
    loss_cache, cached = step_grads(tiny_llama, drop, True, records)
    loss_plain, plain = step_grads(tiny_llama, drop, False, records)
    assert loss_cache == pytest.approx(loss_plain, abs=1e-6)
    assert cached.keys() == plain.keys() and any("lora_A" in k for k in cached)
    for name in cached:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)

    # without the RNG replay the re-forward draws other masks and the gradients are wrong: the test is sensitive
    monkeypatch.setattr(RngState, "replay", lambda self: torch.random.fork_rng(devices=[]))
    _, unreplayed = step_grads(tiny_llama, drop, True, records)
    assert max((unreplayed[k] - plain[k]).abs().max().item() for k in plain) > 1e-3
    monkeypatch.undo()

    no_drop = [*design, "lora.dropout=0.0"]
    _, cached = step_grads(tiny_llama, [*no_drop, "recipe.mini_batch=2"], True, records)
    _, whole = step_grads(tiny_llama, [*no_drop, "recipe.forward_tokens=100000"], False, records)
    for name in cached:
        torch.testing.assert_close(cached[name], whole[name], rtol=1e-5, atol=1e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama):
    records = make_records(8, seed=3)
    design = ["model.pooling=multilayer", "model.attention=bidirectional", "lora.dropout=0.2"]
    _, plain = step_grads(tiny_llama, design, False, records)
    _, checkpointed = step_grads(tiny_llama, [*design, "recipe.gradient_checkpointing=true"], False, records)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


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
    assert again.steps == 2 and len(again.losses) == 2  # finished: resumes at the end and re-saves


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(tiny_llama, tmp_path):
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
    command = [sys.executable, "-m", "poolattn.train", "--no-progress", *(f"--set={s}" for s in settings)]
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

    reference = train(load_train_config(None, [*settings, f"output.dir={tmp_path / 'ref'}"]), progress=False)
    got, want = saved_weights(killed / "model"), saved_weights(reference.model_dir)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    lines = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    assert [line["loss"] for line in lines] == reference.losses


# ---------------------------------------------------------------------------------------- processes
DIST_SCRIPT = """
import sys
from poolattn.train import load_train_config, train
config, out = sys.argv[1], sys.argv[2]
for name, mini_batch in (("plain", "none"), ("gradcache", "3")):
    overrides = [f"output.dir={out}/{name}", f"recipe.mini_batch={mini_batch}"]
    train(load_train_config(config, overrides), progress=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tiny_llama, tmp_path):
    """2 CPU processes (gloo) x 4 examples = 1 process x 8: same losses and updated weights, plain and GradCache."""
    data_file = tmp_path / "records.jsonl"
    data_file.write_text("".join(json.dumps(r.__dict__) + "\n" for r in make_records(16, seed=5)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbackbone = "{tiny_llama}"\npooling = "multilayer"\nattention = "bidirectional"\n'
        f'[data]\npath = "{data_file}"\n'
        "[recipe]\nsteps = 3\nbatch_size = 8\nlr = 1e-3\n"
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n"
    )
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), str(script), str(config), str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, mini_batch in (("plain", "none"), ("gradcache", "3")):
        two = tmp_path / "two" / name
        assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
        one = train(
            load_train_config(config, [f"output.dir={tmp_path / 'one' / name}", f"recipe.mini_batch={mini_batch}"]),
            progress=False,
        )
        lines = [json.loads(line) for line in (two / "train_log.jsonl").read_text().splitlines()]
        np.testing.assert_allclose([line["loss"] for line in lines], one.losses, rtol=1e-5)
        # the synchronised gradient is the one process's (not its mean over processes, which AdamW would hide)
        one_norms = [json.loads(line)["grad_norm"] for line in one.log_path.read_text().splitlines()]
        np.testing.assert_allclose([line["grad_norm"] for line in lines], one_norms, rtol=1e-5)
        got, want = saved_weights(two / "model"), saved_weights(one.model_dir)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=2e-5, msg=f"{name}: {key}")


FSDP_SCRIPT = """
import sys
import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from poolattn.train import load_train_config, train


def accelerator(*args, _make=accelerate.Accelerator, **kwargs):
    PartialState(cpu=True)  # gloo; accelerate turns FSDP on only for GPU process groups, so relabel this one
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return _make(*args, **kwargs)


accelerate.Accelerator = accelerator
config, out = sys.argv[1], sys.argv[2]
settings = [f"output.dir={out}", "recipe.mini_batch=3", "output.checkpoint_every=1", "output.keep_checkpoints=2"]
train(load_train_config(config, settings), progress=False)
"""


@pytest.mark.slow
def test_fsdp_processes_equal_one_and_resume_bit_for_bit(tiny_llama, tmp_path):
    """The shipped FSDP config (version 2, on CPUs through gloo): 2 processes x 4 = 1 process x 8 with GradCache,
    checkpoints through accelerate's save_state, and a resumed run gives exactly the weights of an uninterrupted one."""
    data_file = tmp_path / "records.jsonl"
    data_file.write_text("".join(json.dumps(r.__dict__) + "\n" for r in make_records(16, seed=5)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbackbone = "{tiny_llama}"\npooling = "multilayer"\nattention = "bidirectional"\n'
        f'[data]\npath = "{data_file}"\n[recipe]\nsteps = 3\nbatch_size = 8\nlr = 1e-3\n'
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n"
    )
    shipped = (ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()
    accelerate_config = tmp_path / "fsdp.yaml"
    accelerate_config.write_text(
        shipped.replace("MistralDecoderLayer", "LlamaDecoderLayer").replace("num_processes: 8", "num_processes: 2")
    )
    script = tmp_path / "run.py"
    script.write_text(FSDP_SCRIPT)
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    launch += ["--main_process_port", str(free_port()), str(script), str(config), str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (two / "checkpoints" / "step-00000003" / "engine").is_dir()  # FSDP's own sharded state
    one = train(load_train_config(config, [f"output.dir={tmp_path / 'one'}", "recipe.mini_batch=3"]), progress=False)
    lines = [json.loads(line) for line in (two / "train_log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([line["loss"] for line in lines], one.losses, rtol=1e-5)
    one_norms = [json.loads(line)["grad_norm"] for line in one.log_path.read_text().splitlines()]
    np.testing.assert_allclose([line["grad_norm"] for line in lines], one_norms, rtol=1e-5)
    first = saved_weights(two / "model")
    for key, value in saved_weights(one.model_dir).items():
        torch.testing.assert_close(first[key], value, rtol=1e-5, atol=2e-5, msg=key)

    shutil.rmtree(two / "checkpoints" / "step-00000003")
    shutil.rmtree(two / "model")
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = saved_weights(two / "model")
    assert all(torch.equal(resumed[key], first[key]) for key in first)
    assert [json.loads(line)["loss"] for line in (two / "train_log.jsonl").read_text().splitlines()] == [
        line["loss"] for line in lines
    ]


# ------------------------------------------------------------------------------------------- engines
def test_deepspeed_config_is_filled_from_the_recipe():
    recipe = load_train_config(None, ["recipe.max_grad_norm=0.5"]).recipe
    ds = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 1,
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
    }
    configure_deepspeed(ds, recipe, per_process=4, hidden_size=32)
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"], ds["train_micro_batch_size_per_gpu"]) == (
        1,
        0.5,
        4,
    )
    assert ds["zero_optimization"]["reduce_bucket_size"] == 32 * 32 and ds["train_batch_size"] == "auto"
    unclipped = {"zero_optimization": {"stage": 1}}
    configure_deepspeed(
        unclipped, load_train_config(None, ["recipe.max_grad_norm=none"]).recipe, per_process=1, hidden_size=8
    )
    assert unclipped["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"zero_optimization": {"stage": 3}}, r"ZeRO-3 partitions the weights.*use ZeRO-2"),
        ({"gradient_accumulation_steps": 4}, r"gradient_accumulation_steps = 4 but a step accumulates"),
        ({"gradient_clipping": 2.0}, r"gradient_clipping = 2\.0 but recipe\.max_grad_norm sets it: 1\.0"),
        ({"train_micro_batch_size_per_gpu": 16}, r"train_micro_batch_size_per_gpu = 16"),
        ({"optimizer": {"type": "AdamW"}}, r"remove 'optimizer' from the DeepSpeed config"),
        ({"scheduler": {"type": "WarmupLR"}}, r"remove 'scheduler'"),
    ],
)
def test_deepspeed_settings_the_trainer_cannot_honour_are_refused(setting, message):
    ds = {"zero_optimization": {"stage": 2}, **setting}
    with pytest.raises(ConfigError, match=message):
        configure_deepspeed(ds, load_train_config(None).recipe, per_process=4, hidden_size=32)


def test_fsdp_settings_the_trainer_cannot_honour_are_refused(tiny_llama):
    lora = build_model(load_train_config(None, [f"model.backbone={tiny_llama}", "lora.r=4"]))
    recipe = load_train_config(None, ["recipe.mixed_precision=bf16"]).recipe
    check_fsdp(lora, recipe, version=2, use_orig_params=False)
    check_fsdp(lora, recipe, version=1, use_orig_params=True)
    with pytest.raises(ConfigError, match="needs fsdp_use_orig_params: true"):
        check_fsdp(lora, recipe, version=1, use_orig_params=False)
    with pytest.raises(ConfigError, match="'fp16' is not supported with FSDP"):
        check_fsdp(
            lora, load_train_config(None, ["recipe.mixed_precision=fp16"]).recipe, version=2, use_orig_params=True
        )
    mixed = build_model(load_train_config(None, [f"model.backbone={tiny_llama}", "model.dtype=bfloat16", "lora.r=4"]))
    with pytest.raises(ConfigError, match=r"one dtype.*\['bfloat16', 'float32'\].*model\.dtype = 'float32'"):
        check_fsdp(mixed, recipe, version=2, use_orig_params=True)


def test_split_to_gives_every_process_as_many_chunks():
    chunks = [[0, 1, 2, 3], [4, 5], [6]]
    split = split_to(chunks, 5)
    assert len(split) == 5 and sorted(i for chunk in split for i in chunk) == list(range(7))
    assert split_to(chunks, 3) == chunks and split_to(chunks, 2) == chunks
    with pytest.raises(ConfigError, match=r"raise recipe\.mini_batch"):
        split_to([[0], [1]], 3)


@pytest.mark.parametrize(
    ("name", "kind"), [("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP"), ("deepspeed_zero2.yaml", "DEEPSPEED")]
)
def test_shipped_accelerate_configs_are_valid(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / name))
    assert str(config.distributed_type).endswith(kind)
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (8, 1, "no")
    if kind == "DEEPSPEED":
        assert (
            config.deepspeed_config["zero_stage"] == 2 and config.deepspeed_config["gradient_accumulation_steps"] == 1
        )
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    text = (ROOT / "configs" / "accelerate" / name).read_text()
    assert f"accelerate launch --config_file configs/accelerate/{name} -m poolattn train" in text
    assert f"--config_file configs/accelerate/{name}" in (ROOT / "README.md").read_text()


# -------------------------------------------------------------------------------------------- configs
def test_config_from_toml_with_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\npooling = "mean"\n[model.pooling_options]\npreset = "compact"\n[recipe]\nlr = 1\n')
    config = load_train_config(
        path,
        [
            "recipe.mini_batch=4",
            "recipe.head_lr=2e-3",
            "model.attention=causal",
            "model.pooling_options.n_latents=8",
            "lora.target_modules=['q_proj', 'v_proj']",
            "recipe.max_grad_norm=none",
        ],
    )
    assert config.model.pooling == "mean" and config.model.attention == "causal"
    assert config.model.pooling_options == {"preset": "compact", "n_latents": 8}
    assert config.recipe.lr == 1.0 and isinstance(config.recipe.lr, float)
    assert config.recipe.mini_batch == 4 and config.recipe.head_lr == 2e-3
    assert config.recipe.max_grad_norm is None
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert load_train_config(path).hash() != config.hash()
    assert load_train_config(path, ["output.dir=elsewhere"]).hash() == load_train_config(path).hash()


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr("poolattn.backbone.native_bf16", lambda: native)
    config = load_train_config(None, ["recipe.mixed_precision=auto"])
    assert config.recipe.mixed_precision == ("bf16" if native else "no")
    assert config.hash() == load_train_config(None, [f"recipe.mixed_precision={'bf16' if native else 'no'}"]).hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["recipe.lrr=1"], r"unknown key 'recipe\.lrr'; known keys: \[.*'lr'"),
        (["recipes.lr=1"], r"unknown key 'recipes'"),
        (["recipe.batch_size=big"], r"recipe\.batch_size = 'big' is not int"),
        (["recipe.batch_size=2.5"], r"recipe\.batch_size = 2\.5 is not int"),
        (["recipe.symmetric=1"], r"recipe\.symmetric = 1 is not bool"),
        (["recipe.steps=0"], r"recipe\.steps must be positive"),
        (["recipe.steps=3", "recipe.epochs=1"], "not both"),
        (["recipe.finetune=partial"], r"recipe\.finetune = 'partial'; choose one of"),
        (["recipe.mixed_precision=fp8"], r"recipe\.mixed_precision"),
        (["lora.dropout=1.5"], r"lora\.dropout must be in"),
        (["recipe"], "is not KEY=VALUE"),
        (["lora.r=4", "lora.r.x=1"], "is a value, not a table"),
        (["lora.alpha.x=1"], r"lora\.alpha = \{.x.: 1\} is not int"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, overrides)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[recipe\nlr = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_train_config(bad)
    bad.write_text("[recipe]\nsteps = 1\nbatch = 2\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'recipe\.batch'"):
        load_train_config(bad)


@pytest.mark.parametrize("name", ["train_default.toml", "train_paper.toml"])
def test_shipped_configs_are_valid(name):
    config = load_train_config(ROOT / "configs" / name)
    assert config.recipe.finetune == "lora" and config.lora.target_modules == "all-linear"
    if name == "train_paper.toml":
        assert (config.recipe.batch_size, config.recipe.steps, config.recipe.warmup_steps) == (2048, 1000, 100)
        assert (config.lora.r, config.lora.alpha, config.lora.dropout, config.recipe.lr) == (16, 32, 0.1, 1e-5)
        assert config.recipe.mini_batch and config.recipe.mixed_precision == "bf16"
        assert config.model.max_length == 512


def test_written_config_round_trips(tiny_llama, tmp_path):
    config = config_for(
        tiny_llama, tmp_path, "recipe.steps=1", "model.pooling_options.n_latents=4", "model.pooling=latent"
    )
    train(config, records=make_records(), progress=False)
    assert load_train_config(tmp_path / "train_config.toml") == config
