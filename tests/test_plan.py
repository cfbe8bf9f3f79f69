"""The cost plan: exact parameter counts without weights (a config folder or a --params hint), the paper's figures,
and a refusal naming the key when a cell cannot fit a device."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from poolattn.cli import app
from poolattn.costs import PlanError, hinted_config
from poolattn.plan import PlanOptions, plan_study, plan_training
from poolattn.study import load_study
from poolattn.training import load_train_config

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory):
    """A Mistral config, and no weights."""
    from transformers import MistralConfig

    folder = tmp_path_factory.mktemp("mistral-config")
    MistralConfig(**TINY).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("pooling", "options"), [("multilayer", {"preset": "paper"}), ("eos", {})])
def test_counts_match_the_built_model(config_folder, pooling, options):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModel

    from poolattn.pooling.registry import build_pooler

    overrides = [
        f"model.backbone={config_folder}",
        f"model.pooling={pooling}",
        f"model.pooling_options={options!r}".replace("'", '"').replace(":", " ="),
        "recipe.mini_batch=4",
        "lora.r=4",
    ]
    plan = plan_training(load_train_config(None, overrides), "test", PlanOptions())
    (cell,) = plan.cells
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(config_folder))
    assert cell.params.backbone == sum(p.numel() for p in backbone.parameters())
    adapted = get_peft_model(backbone, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert cell.params.adapter == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    pooler = build_pooler(pooling, hidden_size=64, num_layers=2, attention="bidirectional", options=options)
    assert cell.params.head == sum(p.numel() for p in pooler.parameters())


def test_the_paper_study_at_mistral_7b_offline():
    plan = plan_study(load_study("configs/paper.toml"), PlanOptions(gpu="h100", gpus=8, params="family=mistral"))
    cells = {c.name: c for c in plan.cells}
    m1, m5 = cells["M1-s0"], cells["M5-s0"]
    assert m1.params.backbone == 7_110_660_096  # Mistral-7B-v0.1 without its LM head
    assert m1.params.adapter == 41_943_040  # r 16 on every linear layer
    assert 1.27e9 < m5.params.head < 1.30e9  # the paper's head at H = 4096
    assert not cells["M0-s0"].train_flops and cells["M0-s0"].eval_flops == m1.eval_flops
    # 6·N per token trained through LoRA with GradCache's extra forward, and the attention term on top
    tokens = 1000 * 2048 * 3 * 512
    assert 6 * m1.params.matmul * tokens < m1.train_flops < 1.4 * 6 * m1.params.matmul * tokens  # + recomputation
    plan.check_fits()
    assert 40e9 < m5.peak_memory < 80e9
    text = "\n".join(plan.lines())
    assert "989 TFLOPS dense bf16" in text and "assumed MFU 35% training" in text and "GPU-hours" in text


def test_a_config_that_cannot_fit_is_refused_naming_the_key():
    study = load_study("configs/paper.toml", ["train.gradient_checkpointing=false"])
    plan = plan_study(study, PlanOptions(gpu="h200", params="family=mistral"))
    with pytest.raises(PlanError, match=r"train\.mini_batch: M1-s0 needs .* GB per device, more than a h200's 141 GB"):
        plan.check_fits()
    runner = CliRunner()
    args = ["experiment", "configs/paper.toml", "--plan", "--params", "family=mistral"]
    refused = runner.invoke(app, [*args, "--set", "train.gradient_checkpointing=false"])
    assert refused.exit_code == 2 and "error: configs/paper.toml: train.mini_batch:" in refused.output
    fits = runner.invoke(app, [*args, "--gpus", "8"])
    assert fits.exit_code == 0 and "h wall-clock on 8 x h100" in fits.output
    train = runner.invoke(app, ["train", "configs/train_paper.toml", "--plan", "--params", "family=mistral"])
    assert train.exit_code == 0 and "multilayer" in train.output


def test_offline_without_a_config_asks_for_a_hint():
    result = CliRunner().invoke(app, ["experiment", "configs/qwen2_0.5b.toml", "--plan", "--gpu", "h100"])
    assert result.exit_code == 2 and "--params" in result.output
    bad = CliRunner().invoke(app, ["experiment", "configs/paper.toml", "--plan", "--gpu", "tpu", "--params", "7B"])
    assert bad.exit_code == 2 and "unknown --gpu 'tpu'" in bad.output


def test_a_count_hint_gives_a_model_of_about_that_size():
    from poolattn.costs import Params, meta_backbone

    model = meta_backbone(hinted_config("7.2B"))
    n = sum(p.numel() for p in model.parameters())
    assert 6.0e9 < n < 8.5e9
    assert Params(n, 0, 0, 0).matmul == n
    with pytest.raises(PlanError, match="unknown key 'width'"):
        hinted_config("width=3")


def test_the_adapt_stage_and_the_layer_analysis_are_rows_of_the_total():
    options = PlanOptions(gpu="h100", gpus=8, params="family=mistral")
    plan = plan_study(load_study("configs/paper.toml"), options)  # [layers], no [adapt]
    assert [s.name for s in plan.stages] == ["layers"]
    (layers,) = plan.stages
    assert layers.params.backbone == 7_110_660_096 and not layers.train_flops and layers.eval_flops > 0
    assert plan.parts()["[layers]"] > 0 and "[adapt]" not in plan.parts()
    text = "\n".join(plan.lines())
    assert "\nlayers " in text and "[layers])" in text and "adapt-s0" not in text

    overrides = ["adapt.steps=1000", "adapt.batch_size=16", "adapt.max_length=512", "layers.enabled=false"]
    adapted = plan_study(load_study("configs/paper.toml", overrides), options)
    (adapt,) = adapted.stages
    assert adapt.name == "adapt-s0" and adapt.params.adapter == 41_943_040  # LLM2Vec's r 16 on every linear
    assert adapt.params.head == 32000 * 4096  # Mistral's own (untied) LM head
    tokens = 1000 * 16 * 512
    assert 4 * adapt.params.matmul * tokens < adapt.train_flops < 1.3 * 4 * adapt.params.matmul * tokens
    assert adapt.memory["weights"] > (adapt.params.backbone + adapt.params.head) * 2
    hours = adapted.parts()
    assert "[layers]" not in hours and hours["[adapt]"] > 0
    assert adapted.total_hours == pytest.approx(sum(sum(adapted.cell_hours(r)) for r in adapted.rows))
    assert adapted.wall_hours == pytest.approx(hours["training"] / 8 + hours["evaluation"] + hours["[adapt]"])
    assert max(r.peak_memory for r in adapted.rows) == adapt.peak_memory  # no checkpointing in MNTP
    assert f"peak memory: {adapt.peak_memory / 1e9:.1f} GB per device (adapt-s0)" in "\n".join(adapted.lines())
    with pytest.raises(PlanError, match=r"adapt\.batch_size: adapt-s0 needs .* more than a h100's 80 GB"):
        adapted.check_fits()
    plain = plan_study(load_study("configs/paper.toml", ["layers.enabled=false"]), options)
    assert not plain.stages and plan.total_hours > plain.total_hours


def test_the_estimate_counts_the_evaluations_sample_sizes() -> None:
    """``eval.samples`` enlarges what the estimate counts for the evaluation, not for the layer pass (real suite)."""
    from poolattn.evaluate.offline import plan_suite
    from poolattn.study.config import load_study
    from poolattn.study.estimate import eval_texts

    tasks = ["BibleKJVWEBGradedSTS", "NewsLeadRetrieval"]
    base = load_study(None, [f"eval.tasks={json.dumps(tasks)}"])
    larger = load_study(None, [f"eval.tasks={json.dumps(tasks)}", "eval.samples={ BibleKJVWEBGradedSTS = 300 }"])
    planned = plan_suite("quick", tasks, samples={"BibleKJVWEBGradedSTS": 300})
    assert len(eval_texts(larger)) == sum(len({t for _, t in p}) for p in planned.values()) > len(eval_texts(base))
    assert eval_texts(larger, tasks) == eval_texts(base, tasks)
