"""The study config: validation, error messages that name file, line and key, overrides, and cell hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolattn import backbone
from poolattn.study import StudyError, StudyRunner, load_study, plan_cells

pytest_plugins = ["study_fixtures"]

# ---------------------------------------------------------------------------------------------- config


def test_default_and_paper_configs_validate() -> None:
    default = load_study()
    names = [d.name for d in default.designs]
    assert names == ["M0", "M1", "M2", "M3", "M4", "M5", "M6"]
    assert default.reference == "M1" and default.eval.suite == "offline" and default.eval.profile == "quick"
    signatures = {d.name: (d.attention, d.pooling, d.train) for d in default.designs}
    assert signatures == {
        "M0": ("causal", "eos", False),
        "M1": ("causal", "eos", True),
        "M2": ("causal", "trainable", True),
        "M3": ("causal", "multilayer", True),
        "M4": ("bidirectional", "trainable", True),
        "M5": ("bidirectional", "multilayer", True),
        "M6": ("bidirectional", "mean", True),
    }
    root = Path(__file__).resolve().parents[1]
    shipped = root / "src" / "poolattn" / "configs" / "default.toml"
    assert (root / "configs" / "default.toml").read_bytes() == shipped.read_bytes()
    paper = load_study(root / "configs" / "paper.toml")
    assert paper.eval.suite == "mteb" and paper.recipe.batch_size == 2048 and paper.lora.r == 16
    assert {d.name for d in paper.designs} >= {"M1", "M2", "M3", "M4", "M5"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[train]\n", "[train]\nstepz = 3\n"), r"study.toml, line \d+: train.stepz: unknown key"),
        (("steps = 2", 'steps = "two"'), r"study.toml, line 19: train.steps: = 'two' is not int"),
        (("lr = 1e-3", "lr = -1.0"), r"study.toml, line 21: train.lr: must be positive"),
        (('pooling = "trainable"', 'pooling = "magic"'), r"study.toml, line 8: designs\[M2\].pooling: = 'magic'"),
        (('attention = "bidirectional"', 'attention = "sideways"'), r"line 8: designs\[M2\].attention"),
        (('reference = "M1"', 'reference = "M9"'), r"line 3: reference: 'M9' is not a design"),
        (('suite = "offline"', 'suite = "online"'), r"line 29: eval.suite: = 'online'"),
        (('"FakeSTS", "FakePairs"', '"Nope", "FakePairs"'), r"line 33: layers.tasks: unknown offline task 'Nope'"),
        (("seeds = [0]", "seeds = [0, 0]"), r"line 4: seeds: has duplicates"),
        (("[model]\n", '[model]\ncolour = "red"\n'), r"line 12: model.colour: unknown key"),
        (('suite = "offline"', 'suite = "offline"\nsamples = { Nope = 3 }'), r"eval.samples: unknown offline task"),
        (('suite = "offline"', 'suite = "offline"\nsamples = { FakeSTS = 25 }'), r"FakeSTS = 25; expected .* 1 to 24"),
        (('suite = "offline"', 'suite = "offline"\nsamples = { FakeSTS = true }'), r"FakeSTS = True; expected"),
    ],
)
def test_config_errors_name_file_line_and_key(study_file: Path, fake_suite, edit, message) -> None:
    text = study_file.read_text()
    assert edit[0] in text
    study_file.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(StudyError, match=message):
        load_study(study_file)


def test_overrides(study_file: Path, fake_suite) -> None:
    study = load_study(study_file, ["train.steps=5", "seeds=[1, 2]", "designs.M2.options.n_latents=8"])
    assert study.recipe.steps == 5 and study.seeds == [1, 2]
    assert study.design("M2").options == {"n_latents": 8, "heads": 2}
    with pytest.raises(StudyError, match=r"\(value set by --set\): train.steps"):
        load_study(study_file, ["train.steps=oops"])
    with pytest.raises(StudyError, match="no design named 'M7'"):
        load_study(study_file, ["designs.M7.train=false"])


def test_precision_auto_follows_the_hardware(study_file: Path, fake_suite, monkeypatch: pytest.MonkeyPatch) -> None:
    for native, expected in ((True, ("bf16", "bf16")), (False, ("fp32", "no"))):
        monkeypatch.setattr(backbone, "bf16_is_faster", lambda native=native: native)
        study = load_study(study_file, ["eval.precision=auto", "train.mixed_precision=auto"])
        assert (study.eval.precision, study.recipe.mixed_precision) == expected
    study = load_study(study_file, ["eval.precision=fp32", "train.mixed_precision=no"])
    assert (study.eval.precision, study.recipe.mixed_precision) == ("fp32", "no")
    with pytest.raises(StudyError, match=r"eval\.precision: = 'fp16'"):
        load_study(study_file, ["eval.precision=fp16"])


def test_bad_pooling_options_are_reported_before_any_work(study_file: Path, fake_suite, tmp_path: Path) -> None:
    study = load_study(study_file, ["designs.M2.options.n_latents=-3"])
    with pytest.raises(StudyError, match=r"line 8: designs\[M2\].options: .*n_latents"):
        StudyRunner(study, tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- hashing


def test_cell_hashes(study_file: Path, fake_suite) -> None:
    base = {c.name: c.hash for c in plan_cells(load_study(study_file))}
    assert list(base) == ["M0", "M1-s0", "M2-s0"]
    option = {c.name: c.hash for c in plan_cells(
        load_study(study_file, ["designs.M2.options.n_latents=8"]))}  # fmt: skip
    assert [n for n in base if base[n] != option[n]] == ["M2-s0"]
    recipe = {c.name: c.hash for c in plan_cells(load_study(study_file, ["train.lr=0.01"]))}
    assert [n for n in base if base[n] != recipe[n]] == ["M1-s0", "M2-s0"]  # the untrained base does not train
    shared = {c.name: c.hash for c in plan_cells(load_study(study_file, ["model.max_length=20"]))}
    assert all(base[n] != shared[n] for n in base)
    evaluation = {c.name: c.hash for c in plan_cells(
        load_study(study_file, ["eval.tasks=['FakeSTS']"]))}  # fmt: skip
    assert all(base[n] != evaluation[n] for n in base)
    checkpoints = {c.name: c.hash for c in plan_cells(
        load_study(study_file, ["train.checkpoint_every=5"]))}  # fmt: skip
    assert checkpoints == base  # checkpointing does not change results
    seeds = plan_cells(load_study(study_file, ["seeds=[0, 3]"]))
    assert [c.name for c in seeds] == ["M0", "M1-s0", "M2-s0", "M1-s3", "M2-s3"]
    assert {c.name: c.hash for c in seeds}["M1-s0"] == base["M1-s0"]
