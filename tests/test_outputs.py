"""Nothing a user owns is destroyed: outputs go only where nothing is, or where the same command wrote before;
one run per folder; temporaries of a killed run are removed by the next; the rest fails in one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import one_error_line, runner
from typer.testing import CliRunner

import poolattn
from poolattn.cli import app

#: The source tree the subprocesses import, and the files poolattn keeps in a folder it writes.
SRC = Path(poolattn.__file__).parents[1]
BOOKKEEPING = (".poolattn-output.json", ".poolattn.lock")


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("first text\nsecond text\n")
    return path


def encode_args(model: Path, texts: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(model), "-i", str(texts), "-o", str(out), "--precision", "fp32", "--format", "npy", *extra]


# ============================================================================================ encode
@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_encode_never_replaces_a_fifo_or_symlink(tiny_llama, texts, tmp_path, kind):
    out = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        (tmp_path / "real.npy").write_bytes(b"precious")
        out.symlink_to(tmp_path / "real.npy")
    name = "FIFO" if kind == "fifo" else "symlink"
    one_error_line(encode_args(tiny_llama, texts, out), f"{out} is a {name}, not a regular file")
    assert stat.S_ISFIFO(os.lstat(out).st_mode) if kind == "fifo" else out.is_symlink()
    if kind == "symlink":
        assert (tmp_path / "real.npy").read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_encode_never_replaces_a_character_device(tiny_llama, texts):
    before = os.stat("/dev/null")
    one_error_line(encode_args(tiny_llama, texts, Path("/dev/null")), "/dev/null is a character device")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_encode_replaces_its_own_file_but_not_another(tiny_llama, texts, tmp_path):
    out = tmp_path / "v.npy"
    assert runner.invoke(app, encode_args(tiny_llama, texts, out)).exit_code == 0
    assert runner.invoke(app, encode_args(tiny_llama, texts, out)).exit_code == 0  # its own file: replaced
    other = tmp_path / "notes.npy"
    other.write_text("my notes")
    one_error_line(encode_args(tiny_llama, texts, other), f"{other} exists and is not an embeddings file")
    assert other.read_text() == "my notes"
    assert runner.invoke(app, encode_args(tiny_llama, texts, other, "--overwrite")).exit_code == 0
    assert np.load(other).shape[0] == 2


def test_encode_removes_the_temporary_a_killed_run_left(tiny_llama, texts, tmp_path):
    out = tmp_path / "v.npy"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".v.npy.tmp-{dead.pid}-abc123"
    stale.write_bytes(b"half")
    live = tmp_path / f".v.npy.tmp-{os.getpid()}-def456"  # a running process's: kept
    live.write_bytes(b"busy")
    assert runner.invoke(app, encode_args(tiny_llama, texts, out)).exit_code == 0
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("tokens", ["0", "-5"])
def test_encode_batch_tokens_must_be_positive(tiny_llama, texts, tmp_path, tokens):
    one_error_line(encode_args(tiny_llama, texts, tmp_path / "v.npy", "--batch-tokens", tokens), "--batch-tokens")
    assert not (tmp_path / "v.npy").exists()


def test_encode_notes_blank_texts(tiny_llama, tmp_path):
    source = tmp_path / "blank.txt"
    source.write_text("\n" * 5 + "a text\n")
    result = CliRunner().invoke(app, encode_args(tiny_llama, source, tmp_path / "v.npy"))
    assert result.exit_code == 0, result.output
    assert "note: 5 of 6 texts are blank; they all get the same vector" in result.output


def test_encode_full_disk_fails_before_encoding(tiny_llama, texts, tmp_path, monkeypatch):
    import shutil

    from poolattn.model import EmbeddingModel

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    monkeypatch.setattr(EmbeddingModel, "encode", lambda *a, **k: pytest.fail("encoded on a full disk"))
    line = one_error_line(encode_args(tiny_llama, texts, tmp_path / "v.npy"), "not enough free space")
    assert f"{tmp_path}:" in line
    assert not (tmp_path / "v.npy").exists()


def test_encode_full_disk_while_writing_is_one_line(tiny_llama, texts, tmp_path, monkeypatch):
    import errno

    from poolattn import textio

    def full(handle, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(textio.np, "save", full)
    out = tmp_path / "v.npy"
    one_error_line(encode_args(tiny_llama, texts, out), "no space left on the device", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]


# ============================================================================================ train
def write_records(path: Path, n: int = 16, same: bool = False) -> Path:
    from training_common import make_records

    records = make_records(n)
    rows = [{"query": "a", "positive": "b"} if same else {"query": r.query, "positive": r.positive} for r in records]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_config(tmp_path: Path, backbone: Path, out: Path, steps: int = 2) -> Path:
    config = tmp_path / "train.toml"
    data = write_records(tmp_path / "pairs.jsonl")
    config.write_text(
        textwrap.dedent(f"""
        [model]
        backbone = "{backbone}"
        pooling = "mean"
        max_length = 16
        [data]
        path = "{data}"
        [recipe]
        steps = {steps}
        batch_size = 8
        lr = 1e-3
        [lora]
        r = 4
        alpha = 8
        [output]
        dir = "{out}"
        checkpoint_every = 0
        """)
    )
    return config


def train_args(config: Path, *sets: str) -> list[str]:
    return ["train", str(config), "--no-progress", *(a for s in sets for a in ("--set", s))]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_every_0_checkpoints_at_the_end_and_a_changed_rerun_is_refused(tiny_llama, tmp_path):
    out = tmp_path / "run"
    config = train_config(tmp_path, tiny_llama, out)
    first = runner.invoke(app, train_args(config))
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    model = tree(out / "model")
    one_error_line(train_args(config, "recipe.lr=5e-4"), f"{out} holds a finished run with a different config")
    assert tree(out / "model") == model
    # output.resume = false starts over, keeping the finished run aside
    again = runner.invoke(app, train_args(config, "recipe.lr=5e-4", "output.resume=false"))
    assert again.exit_code == 0, again.output
    (kept,) = (out / "superseded").iterdir()
    assert tree(kept / "model") == model and (kept / "train_log.jsonl").is_file()


def test_train_refuses_a_folder_it_did_not_write(tiny_llama, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    one_error_line(train_args(train_config(tmp_path, tiny_llama, out)), f"{out} already holds files poolattn train")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_concurrent_train_runs_one_fails_at_once(tiny_llama, tmp_path):
    """Two ``poolattn train`` processes started together into one folder: one trains all 60 steps, the other
    fails at once in one line naming the first's pid; the log holds each step once, in order."""
    out = tmp_path / "run"
    config = train_config(tmp_path, tiny_llama, out, steps=60)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "poolattn", *train_args(config)]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outcomes = {run.pid: (run.wait(timeout=300), run.stdout.read()) for run in runs}
    (loser,) = [pid for pid, (code, _) in outcomes.items() if code == 2]
    (winner,) = [pid for pid, (code, _) in outcomes.items() if code == 0]
    lines = [line for line in outcomes[loser][1].splitlines() if line.strip() and not line.startswith("INFO")]
    assert len(lines) == 1 and f"{out} is in use by another poolattn run (pid {winner})" in lines[0], lines
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


KILLED_SAVE = """
import os, signal, sys
import poolattn.model
real = poolattn.model.save_file
def save_then_die(state, path, *args, **kwargs):
    real(state, path, *args, **kwargs)
    if os.path.basename(os.path.dirname(path)).startswith(".model."):
        os.kill(os.getpid(), signal.SIGKILL)  # the final model half written
poolattn.model.save_file = save_then_die
import poolattn
from poolattn.cli import app
sys.argv = ["poolattn", *sys.argv[1:]]
app()
"""


def test_kill_during_the_final_save_leaves_nothing_after_the_rerun(tiny_llama, tmp_path):
    out, clean = tmp_path / "run", tmp_path / "clean"
    config = train_config(tmp_path, tiny_llama, out, steps=3)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, *train_args(config)], env=env, timeout=300)
    assert killed.returncode == -9
    assert [p.name for p in out.iterdir() if p.name.startswith(".model.")]  # the half-written model
    assert not (out / "model").exists()
    rerun = runner.invoke(app, train_args(config))
    assert rerun.exit_code == 0, rerun.output
    assert not [p for p in out.rglob(".*") if p.name not in BOOKKEEPING]
    assert runner.invoke(app, train_args(config, f"output.dir={clean}")).exit_code == 0
    from training_common import saved_weights

    resumed, straight = saved_weights(out / "model"), saved_weights(clean / "model")
    assert resumed.keys() == straight.keys() and all(bool((resumed[k] == straight[k]).all()) for k in resumed)


def test_train_full_disk_is_refused_before_the_first_step(tiny_llama, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    out = tmp_path / "run"
    one_error_line(train_args(train_config(tmp_path, tiny_llama, out)), "not enough free space")
    assert not (out / "train_log.jsonl").exists()


def test_train_full_disk_at_the_final_save_is_one_line(tiny_llama, tmp_path, monkeypatch):
    import errno

    import poolattn.model

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(poolattn.model, "save_file", full)
    out = tmp_path / "run"
    one_error_line(train_args(train_config(tmp_path, tiny_llama, out)), "no space left on the device", str(out))
    assert not (out / "model").exists() and (out / "checkpoints" / "step-00000002").is_dir()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("output.dir=", "output.dir is empty"),
        ("data.instruction=" + "x" * 5000, "data.instruction is 5000 characters; at most 4096"),
        ("recipe.steps=-1", "--set 'recipe.steps=-1': recipe.steps must be positive"),
        ("recipe={steps=-1}", "--set 'recipe={steps=-1}': recipe.steps must be positive"),
    ],
)
def test_train_overrides_refused_in_one_line(tiny_llama, tmp_path, override, message):
    one_error_line(train_args(train_config(tmp_path, tiny_llama, tmp_path / "run"), override), message)
    assert not (tmp_path / "run").exists()


def test_inline_table_override_merges_into_the_files_table(tiny_llama, tmp_path):
    from poolattn.training import load_train_config

    config = load_train_config(train_config(tmp_path, tiny_llama, tmp_path / "run"), ["recipe={steps=1}"])
    assert (config.recipe.steps, config.recipe.lr, config.recipe.batch_size) == (1, 1e-3, 8)


def test_deeply_nested_toml_is_one_line(tmp_path):
    config = tmp_path / "deep.toml"
    config.write_text("x = " + "[" * 2000 + "]" * 2000 + "\n")
    one_error_line(["train", str(config)], f"{config}: not valid TOML: tables or arrays nested too deeply")


def test_huge_csv_cell_names_file_and_line(tiny_llama, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("query,positive\nshort,text\n" + "q," + "x" * 200_000 + "\n")
    config = train_config(tmp_path, tiny_llama, tmp_path / "run")
    one_error_line(train_args(config, f"data.path={data}"), f"{data}, line 3: a cell longer than 131072 characters")


def test_identical_records_are_refused(tiny_llama, tmp_path):
    config = train_config(tmp_path, tiny_llama, tmp_path / "run")
    data = write_records(tmp_path / "same.jsonl", 64, same=True)
    one_error_line(train_args(config, f"data.path={data}"), "all 64 records have the same positive")


# ============================================================================================ adapt
def adapt_args(backbone: Path, out: Path, data: Path) -> list[str]:
    sets = [f"backbone={backbone}", f"data={data}", "steps=2", "batch_size=4", "max_length=16", "heldout=0"]
    return ["adapt", "--output", str(out), "--no-progress", *(a for s in sets for a in ("--set", s))]


@pytest.fixture
def adapt_texts(tmp_path) -> Path:
    path = tmp_path / "adapt.txt"
    path.write_text("".join(f"the quick fox {i} jumps over the lazy dog\n" for i in range(24)))
    return path


def test_adapt_into_another_models_folder_is_refused(tiny_factory, tmp_path, adapt_texts):
    other = tmp_path / "other-model"
    import shutil

    shutil.copytree(tiny_factory("llama", tie_word_embeddings=True), other)
    (other / "README.md").write_text("my model")
    before = tree(other)
    backbone = tiny_factory("llama", tie_word_embeddings=True)
    one_error_line(
        adapt_args(backbone, other, adapt_texts), f"{other} already holds files poolattn adapt did not write"
    )
    assert tree(other) == before


def test_adapt_into_the_backbones_own_folder_is_refused(tiny_factory, tmp_path, adapt_texts):
    import shutil

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_factory("llama", tie_word_embeddings=True), backbone)
    before = tree(backbone)
    one_error_line(adapt_args(backbone, backbone, adapt_texts), f"{backbone} is the backbone's own folder")
    assert tree(backbone) == before


# ============================================================================================ export
def test_export_overwrite_removes_only_what_export_wrote(tiny_llama, tmp_path):
    out = tmp_path / "st"
    args = ["export", str(tiny_llama), "--output", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "plot.png").write_bytes(b"png")
    one_error_line(args, "--overwrite replaces an earlier export")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra" / "plot.png").read_bytes() == b"png"
    assert (out / "modules.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_results_must_exist_and_be_json(tiny_llama, tmp_path):
    missing = tmp_path / "nope"
    args = ["export", str(tiny_llama), "--output", str(tmp_path / "st"), "--results"]
    one_error_line([*args, str(missing)], f"{missing}: no such folder of evaluation results")
    bad = tmp_path / "results"
    bad.mkdir()
    (bad / "STS.json").write_text('{"task": "STS",\n "main_score": }')
    one_error_line([*args, str(bad)], f"{bad / 'STS.json'}, line 2, column 16: invalid JSON")
    assert not (tmp_path / "st").exists()


# ============================================================================================ experiment, eval
def test_experiment_into_a_file_leaves_it_alone(tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    one_error_line(["experiment", "--output", str(target)], f"{target} is a file, not a folder")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("garbage", ["etc", "bad-json"])
def test_experiment_with_an_unreadable_backbone_leaves_no_folder(tmp_path, garbage):
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / ("README" if garbage == "etc" else "config.json")).write_text('{"model_type": garbage')
    out = tmp_path / "study"
    one_error_line(
        ["experiment", "--output", str(out), "--set", f"model.backbone={backbone}"],
        f"model.backbone = '{backbone}' is not a model folder transformers can read",
    )
    assert not out.exists()


@pytest.mark.parametrize("name", [".", "..", ".superseded", "a/b"])
def test_design_names_are_safe_path_components(tmp_path, name):
    out = tmp_path / "study"
    line = one_error_line(["experiment", "--output", str(out), "--set", f"designs.M1.name={name}"], "designs[")
    assert "not starting with '.'" in line and repr(name) in line
    assert not out.exists()


def test_eval_into_a_file_or_someone_elses_folder_is_refused_before_scoring(tiny_llama, tmp_path, monkeypatch):
    from test_cli_errors import forbid_model_load

    forbid_model_load(monkeypatch)
    target = tmp_path / "afile"
    target.write_text("mine")
    args = ["eval", str(tiny_llama), "--profile", "quick", "--tasks", "WordSim353STS", "--output"]
    one_error_line([*args, str(target)], f"{target} is a file, not a folder")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    one_error_line([*args, str(folder)], f"{folder} already holds files poolattn eval did not write (notes.txt)")
    assert target.read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_eval_tasks_naming_nothing_is_refused(tiny_llama, tmp_path):
    one_error_line(["eval", str(tiny_llama), "--tasks", ",,,", "--output", str(tmp_path / "e")], "names no task")
    assert not (tmp_path / "e").exists()


# ============================================================================================ saved folders, cache
def test_instruction_template_with_other_fields_is_refused():
    from poolattn.model import EmbeddingConfig

    for template in ("{0} {instruction} {text}", "{instruction} {text} {text}", "{instruction} {text"):
        with pytest.raises(ValueError, match="instruction_template"):
            EmbeddingConfig(backbone="x", instruction_template=template)
    EmbeddingConfig(backbone="x", instruction_template="{{json}} {instruction}: {text}")


def test_saved_attn_implementation_must_be_a_known_one(tiny_llama, tmp_path, texts, monkeypatch):
    from poolattn import EmbeddingModel

    folder = tmp_path / "saved"
    EmbeddingModel.from_backbone(tiny_llama).save(folder)
    config = json.loads((folder / "poolattn.json").read_text())
    (folder / "poolattn.json").write_text(json.dumps({**config, "attn_implementation": "kernels-community/flash-attn"}))
    from test_cli_errors import forbid_model_load

    forbid_model_load(monkeypatch)
    one_error_line(
        ["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")],
        "attn_implementation = 'kernels-community/flash-attn' is none of eager, sdpa",
        "--trust-remote-code",
    )


@pytest.mark.parametrize(
    "command",
    [
        ["assets"],
        ["encode", "default", "-i", "{texts}", "-o", "{out}/v.npy"],
        ["train", "--set", "recipe.steps=1", "--set", "output.dir={out}/train"],
        ["adapt", "--output", "{out}/adapt"],
        ["eval", "default", "--output", "{out}/eval"],
    ],
    ids=lambda command: command[0],
)
def test_cache_pointing_at_a_file_is_one_line_in_every_command(tmp_path, monkeypatch, command):
    cache = tmp_path / "cache"
    cache.write_text("")
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text\n")
    monkeypatch.setenv("POOLATTN_CACHE", str(cache))
    args = [a.format(texts=texts, out=tmp_path / "out") for a in command]
    one_error_line(args, f"POOLATTN_CACHE={cache} is a file, not a folder")
    assert not (tmp_path / "out").exists()
