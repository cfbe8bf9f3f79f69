"""Nothing a user owns is destroyed: outputs go only where nothing is, or where the same command wrote before;
one run per folder; temporaries of a killed run are removed by the next; the rest fails in one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import one_error_line, runner
from typer.testing import CliRunner

from poolattn.cli import app


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
