"""LLM2Vec's unsupervised adaptation: MNTP learns, the adapted backbone saves and loads like any backbone, a resumed
run equals an uninterrupted one, config errors name their key, SimCSE runs as a stage, the CLI and a study use it."""

from __future__ import annotations

import json
import random
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_common import one_thread  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

from poolattn import EmbeddingModel
from poolattn.backbone import run_backbone
from poolattn.cli import app
from poolattn.config import ConfigError
from poolattn.training import load_adapt_config
from poolattn.training.adapt import MNTPRun, adapt, measure_folder
from poolattn.training.adapt_config import adapt_texts
from poolattn.training.mntp import FALLBACK_MASK, choose_mask_token, mask_batch, masked_metrics, open_masked_lm

pytest_plugins = ["study_fixtures"]

WORDS = ["cat", "dog", "fox", "bird", "red", "blue", "green", "lazy", "quick", "brown", "jumps", "over", "the"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_factory) -> Path:
    """A tiny decoder whose LM head is tied to its embeddings, initialised wide enough to express predictions."""
    return tiny_factory("llama", tie_word_embeddings=True, initializer_range=0.2)


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory) -> Path:
    """Texts whose masked tokens the context on both sides gives away: each repeats a pair of words three times."""
    rng = random.Random(0)
    lines = []
    for _ in range(150):
        a, b = rng.sample(WORDS, 2)
        lines.append(f"{a} {b} {a} {b} {a} {b}")
    path = tmp_path_factory.mktemp("adapt-data") / "texts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(backbone: Path, data: Path, *extra: str) -> list[str]:
    return [
        f"backbone={backbone}",
        f"data={data}",
        "heldout=16",
        "steps=40",
        "batch_size=8",
        "lr=1e-2",
        "lora.r=8",
        "lora.alpha=16",
        "lora.dropout=0.0",
        "max_length=32",
        "precision=fp32",
        "checkpoint_every=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def adapted(tiny_lm: Path, texts_file: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("adapted") / "run"
    summary = adapt(load_adapt_config(None, settings(tiny_lm, texts_file)), out, progress=False)
    return out, summary


# ------------------------------------------------------------------------------------------------ MNTP learns
def test_mntp_loss_falls(adapted):
    out, summary = adapted
    losses = [json.loads(line)["loss"] for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and summary["mntp"]["steps"] == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.8, (first, last)


def test_adapted_model_predicts_masked_tokens_better_on_heldout_text(adapted, tiny_lm, texts_file):
    out, summary = adapted
    heldout = summary["heldout"]
    before, after = heldout["before"], heldout["after"]
    assert before["masked_tokens"] == after["masked_tokens"] > 20  # the same masks of the same held-out texts
    assert after["loss"] < before["loss"] - 1.0
    assert after["accuracy"] > before["accuracy"] + 0.05
    assert summary["heldout_loss_before"] == before["loss"] and summary["heldout_loss_after"] == after["loss"]
    # measured independently: the unadapted and the adapted folder on the run's held-out texts
    config = load_adapt_config(None, settings(tiny_lm, texts_file))
    texts = adapt_texts(config)
    assert not set(texts.heldout) & set(texts.train)
    _, base = open_masked_lm(str(tiny_lm), max_length=32)
    _, tuned = open_masked_lm(str(out), max_length=32)
    base_metrics = masked_metrics(base, texts.heldout, 0.2, seed=0)
    tuned_metrics = masked_metrics(tuned, texts.heldout, 0.2, seed=0)
    assert base_metrics == before
    assert tuned_metrics["loss"] < base_metrics["loss"] - 1.0


def test_summary_records_mask_token_and_texts(adapted, texts_file):
    _, summary = adapted
    unique = set(texts_file.read_text().splitlines())
    assert summary["mask_token"]["text"] == FALLBACK_MASK  # the tiny tokenizer has no mask token
    assert "no mask token" in summary["mask_token"]["source"]
    assert summary["texts"]["heldout"] == 16 and summary["texts"]["train"] == len(unique) - 16 > 64
    assert summary["storage"] == "weights" and summary["simcse"] is None


# ------------------------------------------------------------------------------------------- save and load
def test_saved_folder_is_a_backbone_with_the_adapted_outputs(adapted, tiny_lm, texts_file):
    out, summary = adapted
    config = load_adapt_config(None, settings(tiny_lm, texts_file))
    texts = adapt_texts(config)
    # reloaded from disk, the folder predicts exactly as the in-memory model measured after folding the adapter in
    assert measure_folder(out, config, texts) == summary["heldout"]["after"]
    model = EmbeddingModel.from_backbone(out, attention="bidirectional", pooling="mean", max_length=32)
    vectors = model.encode(texts.heldout[:4])
    assert vectors.shape == (4, 32)
    base = EmbeddingModel.from_backbone(tiny_lm, attention="bidirectional", pooling="mean", max_length=32)
    assert not torch.allclose(torch.from_numpy(vectors), torch.from_numpy(base.encode(texts.heldout[:4])))
    # saved and reloaded as a poolattn model: the same embeddings
    model.save(out.parent / "embedding")
    again = EmbeddingModel.load(out.parent / "embedding")
    assert torch.equal(torch.from_numpy(again.encode(texts.heldout[:4])), torch.from_numpy(vectors))


def assert_same_bidirectional_states(adapter_folder: Path, merged_folder: Path) -> None:
    """An adapter folder, folded in when loaded, gives the merged folder's last hidden states (bidirectional)."""
    merged = EmbeddingModel.from_backbone(merged_folder, attention="bidirectional", pooling="mean")
    loaded = EmbeddingModel.from_backbone(adapter_folder, attention="bidirectional", pooling="mean")
    batch = merged.tokenize(["cat dog cat dog", "the quick brown fox"])
    with torch.no_grad():
        want = run_backbone(merged.backbone, batch.input_ids, batch.attention_mask, "bidirectional")
        got = run_backbone(loaded.backbone, batch.input_ids, batch.attention_mask, "bidirectional")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_adapter_storage_loads_to_the_merged_weights(adapted, tiny_lm, texts_file, tmp_path):
    out, _ = adapted
    stacked = tmp_path / "stacked"
    summary = adapt(load_adapt_config(None, settings(tiny_lm, texts_file, "merge=false")), stacked, progress=False)
    assert summary["storage"] == "adapter"
    assert (stacked / "adapter_config.json").is_file() and not (stacked / "config.json").exists()
    assert_same_bidirectional_states(stacked, out)


def test_rerun_reuses_a_finished_folder_and_refuses_another_config(adapted, tiny_lm, texts_file):
    out, summary = adapted
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert adapt(load_adapt_config(None, settings(tiny_lm, texts_file)), out, progress=False) == summary
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="different config"):
        adapt(load_adapt_config(None, settings(tiny_lm, texts_file, "steps=41")), out, progress=False)


# ------------------------------------------------------------------------------------------------ resume
def test_resumed_run_equals_uninterrupted_bit_for_bit(tiny_lm, texts_file, tmp_path, monkeypatch):
    extra = ("steps=12", "lora.dropout=0.1", "checkpoint_every=5", "warmup_steps=2")
    config = load_adapt_config(None, settings(tiny_lm, texts_file, *extra))
    reference = adapt(config, tmp_path / "ref", progress=False)

    class Killed(Exception):
        pass

    real_step = MNTPRun.train_step

    def dies_after_seven(self):
        if self.step == 7:
            raise Killed
        return real_step(self)

    monkeypatch.setattr(MNTPRun, "train_step", dies_after_seven)
    with pytest.raises(Killed):
        adapt(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(MNTPRun, "train_step", real_step)
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000005"]
    assert not (tmp_path / "killed" / "adapt_summary.json").exists()
    resumed = adapt(config, tmp_path / "killed", progress=False)

    for name in ("checkpoints/step-00000012/trainable.safetensors", "model.safetensors"):
        got, want = load_file(tmp_path / "killed" / name), load_file(tmp_path / "ref" / name)
        assert got.keys() == want.keys() and got
        for key in want:
            assert torch.equal(got[key], want[key]), (name, key)
    logs = [(tmp_path / d / "adapt_log.jsonl").read_text().splitlines() for d in ("killed", "ref")]
    strip = [[{k: v for k, v in json.loads(x).items() if "second" not in k} for x in lines] for lines in logs]
    assert strip[0] == strip[1] and len(strip[0]) == 12
    assert (
        resumed["heldout"] == reference["heldout"] and resumed["mntp"]["final_loss"] == reference["mntp"]["final_loss"]
    )


# ------------------------------------------------------------------------------------------------ masking
def test_masks_are_a_function_of_the_seed_and_follow_the_probability(tiny_lm):
    _, lm = open_masked_lm(str(tiny_lm), max_length=64)
    batch = lm.batch([" ".join(random.Random(i).choices(WORDS, k=20)) for i in range(32)])
    ids, chosen = lm.corrupt(batch, 0.2, (3, 0, 5))
    again, chosen_again = lm.corrupt(batch, 0.2, (3, 0, 5))
    assert torch.equal(ids, again) and torch.equal(chosen, chosen_again)
    assert not torch.equal(chosen, lm.corrupt(batch, 0.2, (3, 0, 6))[1])
    special = torch.isin(batch.input_ids, torch.tensor(lm.special_ids))
    assert not (chosen & (special | ~batch.attention_mask.bool())).any() and not chosen[:, 0].any()
    eligible = batch.attention_mask.bool() & ~special
    eligible[:, 0] = False
    share = chosen.sum().item() / eligible.sum().item()
    assert 0.15 < share < 0.25
    replaced = ids[chosen] == lm.mask.id
    assert 0.7 < replaced.float().mean().item() < 0.9  # 80 % become the mask token
    assert torch.equal(ids[~chosen], batch.input_ids[~chosen])


def test_mask_token_choice(tiny_lm):
    from poolattn.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_lm))
    assert choose_mask_token(tokenizer, "auto").text == FALLBACK_MASK
    assert choose_mask_token(tokenizer, "<pad>").id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="single token"):
        choose_mask_token(tokenizer, "a whole phrase of words")
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    token = choose_mask_token(tokenizer, "auto")
    assert token.text == "<mask>" and token.source == "the tokenizer's mask token"


def test_a_backbone_without_lm_head_weights_is_refused(tiny_llama, texts_file, tmp_path):
    from poolattn.backbone import BackboneError

    config = load_adapt_config(None, settings(tiny_llama, texts_file))
    with pytest.raises(BackboneError, match="lm_head"):
        adapt(config, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="no token of the batch"):  # special tokens only
        mask_batch(
            EmbeddingModel.from_backbone(tiny_llama).tokenize([""]),
            probability=0.5,
            mask_id=3,
            vocab_size=10,
            special_ids=[0, 1, 2],
            seed=(0,),
        )


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mask_probability=0", "mask_probability"),
        ("mask_probability=1.5", "mask_probability"),
        ("steps=0", "steps"),
        ("steps=many", "steps"),
        ("lora.r=0", "lora.r"),
        ("lora.dropout=1", "lora.dropout"),
        ("heldout=-1", "heldout"),
        ("precision=fp64", "precision"),
        ("simcse_dropout=1.0", "simcse_dropout"),
        ("stepz=3", "stepz"),
    ],
)
def test_config_errors_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_adapt_config(None, [override])
    assert err.value.key == key and key in str(err.value) and "--set" in str(err.value)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "adapt.toml"
    path.write_text('steps = 10\nmask_token = ""\n')
    with pytest.raises(ConfigError, match=re.escape(str(path))) as err:
        load_adapt_config(path)
    assert err.value.key == "mask_token"


def test_shipped_config_and_defaults():
    root = Path(__file__).resolve().parents[1]
    shipped = load_adapt_config(root / "configs" / "adapt.toml")
    assert shipped == load_adapt_config(None)
    assert shipped.mask_probability == 0.2 and shipped.data == "default" and shipped.merge


def test_data_too_small_is_named(tiny_lm, tmp_path):
    from poolattn.data import DataError

    path = tmp_path / "few.txt"
    path.write_text("one text\nanother text\n")
    with pytest.raises(DataError, match=r"few\.txt"):
        adapt_texts(load_adapt_config(None, [f"data={path}", "heldout=1"]))


# ------------------------------------------------------------------------------------------------ SimCSE
def test_simcse_stage_adapts_from_the_mntp_weights(tiny_lm, texts_file, tmp_path):
    extra = ("steps=6", "simcse_steps=3", "simcse_batch_size=8", "simcse_lr=1e-3", "simcse_dropout=0.2")
    config = load_adapt_config(None, settings(tiny_lm, texts_file, *extra))
    summary = adapt(config, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert summary["simcse"]["steps"] == 3 and summary["heldout"]["final"]["masked_tokens"] > 0
    assert json.loads((out / "simcse-start" / "config.json").read_text())["attention_dropout"] == 0.2
    assert json.loads((out / "config.json").read_text())["attention_dropout"] == 0.0  # the noise stays in SimCSE
    mntp = load_file(out / "mntp" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    changed = [k for k in mntp if not torch.equal(mntp[k], final[k])]
    assert changed and all("proj" in k for k in changed)  # SimCSE's adapter, folded into the linear layers
    model = EmbeddingModel.from_backbone(out, attention="bidirectional", pooling="mean")
    assert model.encode(["cat dog"]).shape == (1, 32)
    # kept as an adapter: SimCSE's adapter over the MNTP weights, folded in when loaded, equal to the merged folder
    stacked = tmp_path / "stacked"
    kept = adapt(load_adapt_config(None, settings(tiny_lm, texts_file, *extra, "merge=false")), stacked, progress=False)
    assert kept["storage"] == "adapter" and kept["simcse"] == summary["simcse"]
    assert json.loads((stacked / "adapter_config.json").read_text())["base_model_name_or_path"] == "mntp"
    assert_same_bidirectional_states(stacked, out)


def test_no_heldout_texts(tiny_lm, texts_file, tmp_path):
    summary = adapt(load_adapt_config(None, settings(tiny_lm, texts_file, "heldout=0", "steps=2")), tmp_path / "r")
    assert summary["heldout"] == {} and summary["heldout_loss_before"] is None and summary["texts"]["heldout"] == 0
    assert (tmp_path / "r" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_help_has_examples_that_parse():
    result = CliRunner().invoke(app, ["adapt", "--help"])
    assert result.exit_code == 0 and "Example" in result.output
    text = " ".join(result.output.split())
    commands = re.findall(r"poolattn adapt [^\n]*?--output \S+(?: --set \S+)*", text)
    assert len(commands) >= 3
    root = Path(__file__).resolve().parents[1]
    for command in commands:
        words = shlex.split(command)[2:]
        config = words[0] if not words[0].startswith("--") else None
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        load_adapt_config(root / config if config else None, overrides)


def test_cli_adapts_and_reports(tiny_lm, texts_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["adapt", "--output", "out", "--no-progress"]
    for item in settings(tiny_lm, texts_file, "steps=4"):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out masked-token loss" in " ".join(result.output.split())
    assert (tmp_path / "out" / "adapt_summary.json").is_file()
    bad = CliRunner().invoke(app, ["adapt", "--output", "out2", "--set", "mask_probability=2"])
    assert bad.exit_code == 2 and "mask_probability" in bad.output


# ------------------------------------------------------------------------------------------------ study
def test_study_records_what_each_design_started_from(fake_suite, tiny_lm, texts_file, tmp_path):
    from study_fixtures import make_study_file

    from poolattn.study import load_study, run_experiment
    from poolattn.study.cells import plan_cells

    study_file = make_study_file(tmp_path, tiny_lm)
    plain = {c.name: c.hash for c in plan_cells(load_study(study_file))}
    adapt_table = (
        f'\n[adapt]\ndata = "{texts_file}"\nheldout = 16\nsteps = 4\nbatch_size = 8\nlr = 1e-2\nmax_length = 32\n'
        'precision = "fp32"\nlora = { r = 4, alpha = 8, dropout = 0.0 }\n'
    )
    study_file.write_text(study_file.read_text() + adapt_table)
    study = load_study(study_file)
    assert study.adapt_designs == ["M2"]  # the bidirectional trained design, as LLM2Vec
    hashes = {c.name: c.hash for c in plan_cells(study)}
    assert hashes["M1-s0"] == plain["M1-s0"] and hashes["M0"] == plain["M0"]
    assert hashes["M2-s0"] != plain["M2-s0"]  # the adapted start is part of the cell
    out = tmp_path / "run"
    report = run_experiment(study_file, out, progress=False)
    record = json.loads((out / "study.json").read_text())
    starts = {c["name"]: c["start"] for c in record["cells"]}
    assert starts == {"M0": "base", "M1-s0": "base", "M2-s0": "adapted"}
    assert record["config"]["adapt"]["designs"] == ["M2"] and record["config"]["adapt"]["steps"] == 4
    m2 = json.loads((out / "cells" / "M2-s0" / "cell.json").read_text())
    assert m2["start"]["from"] == "adapted" and m2["start"]["mntp_steps"] == 4
    adapt_heldout = json.loads((out / m2["start"]["folder"] / "adapt_summary.json").read_text())["heldout"]
    assert m2["start"]["heldout_causal"] == adapt_heldout["causal_base"] and "loss" in adapt_heldout["causal_base"]
    adapted_dir = out / m2["start"]["folder"]
    assert (adapted_dir / "adapt_summary.json").is_file()
    model_config = json.loads((out / "cells" / "M2-s0" / "train" / "model" / "poolattn.json").read_text())
    assert Path(model_config["backbone"]) == adapted_dir.resolve()
    m1 = json.loads((out / "cells" / "M1-s0" / "cell.json").read_text())
    assert m1["start"]["from"] == "base"
    text = report.read_text()
    assert "Start of training: M2 from the backbone adapted" in text and "the other designs from the base" in text


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('designs = ["M0"]', "adapt.designs"),
        ('designs = "some"', "adapt.designs"),
        ("steps = 0", "adapt.steps"),
        ("lora = { r = 0 }", "adapt.lora.r"),
        ("seed = 3", "adapt.seed"),
        ("stepz = 3", "adapt.stepz"),
    ],
)
def test_study_adapt_errors_name_their_key(fake_suite, tiny_lm, tmp_path, table, key):
    from study_fixtures import make_study_file

    from poolattn.study import StudyError, load_study

    study_file = make_study_file(tmp_path, tiny_lm)
    study_file.write_text(study_file.read_text() + f"\n[adapt]\n{table}\n")
    with pytest.raises(StudyError) as err:
        load_study(study_file)
    assert err.value.key == key and key in str(err.value) and str(study_file) in str(err.value)


def test_study_adapt_designs_all_and_list(fake_suite, tiny_lm, tmp_path):
    from study_fixtures import make_study_file

    from poolattn.study import load_study

    study_file = make_study_file(tmp_path, tiny_lm)
    base = study_file.read_text()
    study_file.write_text(base + '\n[adapt]\ndesigns = "all"\n')
    assert load_study(study_file).adapt_designs == ["M1", "M2"]
    study_file.write_text(base + '\n[adapt]\ndesigns = ["M1"]\n')
    study = load_study(study_file)
    assert study.adapt_designs == ["M1"] and study.to_dict()["adapt"]["designs"] == ["M1"]
    from poolattn.study.config import default_config_text

    # the embedded default study gives its bidirectional designs LLM2Vec's start
    assert tomllib.loads(default_config_text())["adapt"]["designs"] == "bidirectional"
