"""Several processes equal one (DDP and FSDP on CPUs through gloo); engine settings the trainer cannot honour."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from training_common import ROOT, make_records, one_thread, saved_weights  # noqa: F401 (autouse fixture)

from poolattn.training import ConfigError, build_model, load_train_config, train
from poolattn.training.contrastive import split_to
from poolattn.training.distributed import check_fsdp, configure_deepspeed

# ---------------------------------------------------------------------------------------- processes
DIST_SCRIPT = """
import sys
from poolattn.training import load_train_config, train
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
from poolattn.training import load_train_config, train


def accelerator(*args, _make=accelerate.Accelerator, **kwargs):
    PartialState(cpu=True)  # gloo; accelerate turns FSDP on only for GPU process groups, so relabel this one
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return _make(*args, **kwargs)


accelerate.Accelerator = accelerator
config, out = sys.argv[1], sys.argv[2]
settings = [f"output.dir={out}", "recipe.mini_batch=3", "output.checkpoint_every=1", "output.keep_checkpoints=2"]
train(load_train_config(config, settings), progress=False)
PartialState().destroy_process_group()  # a gloo group left to the interpreter's exit aborts it now and then
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
