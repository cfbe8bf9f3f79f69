"""Training configs: TOML and overrides, every key type-checked, errors naming the key, shipped configs."""

from __future__ import annotations

import math
import re
from typing import get_args, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from training_common import ROOT, one_thread  # noqa: F401 (autouse fixture)

import poolattn.config
from poolattn.training import ConfigError, TrainConfig, load_train_config
from poolattn.training.config import RANGES


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
    monkeypatch.setattr("poolattn.backbone.bf16_is_faster", lambda: native)
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


# ------------------------------------------------------------------------------------------ numeric ranges
def numeric_keys() -> dict[str, type]:
    """Every int or float key of a training config (optional ones included), with its type."""
    keys = {}
    for section, section_type in get_type_hints(TrainConfig).items():
        for name, hint in get_type_hints(section_type).items():
            options = [h for h in get_args(hint) if h is not type(None)] or [hint]
            if len(options) == 1 and options[0] in (int, float):
                keys[f"{section}.{name}"] = options[0]
    return keys


def test_every_numeric_key_has_a_range():
    assert set(numeric_keys()) == set(RANGES)


def toml_value(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # nan, inf, -inf, 1e-05 are TOML floats


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, float]:
    """A numeric key and a value its range refuses: below or above it, or (for floats) NaN or infinite."""
    key = draw(st.sampled_from(sorted(RANGES)))
    allowed, kind = RANGES[key], numeric_keys()[key]
    choices = []
    if kind is float:
        choices.append(st.sampled_from([math.nan, math.inf, -math.inf]))
        if math.isfinite(allowed.low):
            choices.append(st.floats(max_value=allowed.low, exclude_max=not allowed.low_open, allow_nan=False))
        if math.isfinite(allowed.high):
            choices.append(st.floats(min_value=allowed.high, exclude_min=not allowed.high_open, allow_nan=False))
    else:
        if math.isfinite(allowed.low):
            choices.append(st.integers(max_value=int(allowed.low) - (0 if allowed.low_open else 1)))
        if math.isfinite(allowed.high):
            choices.append(st.integers(min_value=int(allowed.high) + (0 if allowed.high_open else 1)))
    return key, draw(st.one_of(choices))


@given(out_of_range())
@settings(max_examples=300, deadline=None)
def test_any_out_of_range_value_is_refused_naming_its_key(case):
    key, value = case
    with pytest.raises(ConfigError) as err:
        load_train_config(None, [f"{key}={toml_value(value)}"])
    assert err.value.key == key and f"{key} must be " in str(err.value)


@st.composite
def in_range(draw: st.DrawFn) -> tuple[str, float]:
    key = draw(st.sampled_from(sorted(RANGES)))
    allowed, kind = RANGES[key], numeric_keys()[key]
    low = max(allowed.low, -1e6)
    high = min(allowed.high, 1e6)
    if kind is int:
        value = draw(st.integers(int(low) + allowed.low_open, int(high) - allowed.high_open))
    else:
        value = draw(st.floats(low, high, exclude_min=allowed.low_open, exclude_max=allowed.high_open))
    return key, value


@given(in_range())
@settings(max_examples=200, deadline=None)
def test_values_in_range_are_accepted(case):
    key, value = case
    section, name = key.split(".")
    config = load_train_config(None, [f"{key}={toml_value(value)}"])
    assert getattr(getattr(config, section), name) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("recipe.max_grad_norm=-1", r"recipe\.max_grad_norm must be positive, got -1\.0"),
        ("recipe.head_lr=-1e-3", r"recipe\.head_lr must be positive, got -0\.001"),
        ("recipe.lr=inf", r"recipe\.lr must be finite and positive, got inf"),
        ("recipe.weight_decay=nan", r"recipe\.weight_decay must be finite and non-negative, got nan"),
        ("recipe.scale=nan", r"recipe\.scale must be finite and positive, got nan"),
        ("model.max_length=1", r"model\.max_length must be at least 2, got 1"),
        ("recipe.seed=-1", r"recipe\.seed must be in \[0, 4294967295\], got -1"),
    ],
)
def test_values_that_would_train_the_wrong_way_are_refused_before_training(override, message):
    with pytest.raises(ConfigError, match=f"^--set '{re.escape(override)}': {message}$"):
        load_train_config(None, [override])
