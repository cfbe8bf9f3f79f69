"""Training configs: TOML and overrides, every key type-checked, errors naming the key, shipped configs."""

from __future__ import annotations

import pytest
from training_common import ROOT, one_thread  # noqa: F401 (autouse fixture)

import poolattn.config
from poolattn.training import ConfigError, load_train_config


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


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["recipe.lrr=1"], "recipe.lrr"),
        (["recipe.batch_size=big"], "recipe.batch_size"),
        (["recipe.lr=0"], "recipe.lr"),
        (["recipe.warmup_steps=-1"], "recipe.warmup_steps"),
        (["recipe.steps=3", "recipe.epochs=1"], "recipe.steps"),
        (["recipe.scheduler=step"], "recipe.scheduler"),
        (["data.hard_negatives=all"], "data.hard_negatives"),
        (["lora.dropout=1.5"], "lora.dropout"),
        (["output.keep_checkpoints=0"], "output.keep_checkpoints"),
    ],
)
def test_config_errors_carry_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, overrides)
    assert err.value.key == key
    assert isinstance(err.value, poolattn.config.ConfigError)


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
