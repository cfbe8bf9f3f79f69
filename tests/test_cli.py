"""The command line: encode end to end, clear errors for bad input, --help everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poolattn import EmbeddingModel
from poolattn.cli import app
from poolattn.model import cpp_compiler

runner = CliRunner()


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_every_command_has_help_with_examples():
    for command in ("encode", "train", "eval", "experiment", "report", "assets", "export"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output, command


def test_encode_txt_and_jsonl(tiny_llama, tmp_path):
    texts = ["first line", "second, longer line of text", ""]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    for name in ("t.txt", "t.jsonl"):
        out = tmp_path / f"{name}.npy"
        args = ["encode", str(tiny_llama), "--input", str(tmp_path / name), "--output", str(out)]
        result = runner.invoke(app, [*args, "--attention", "bidirectional", "--pooling", "mean", "--precision", "fp32"])
        assert result.exit_code == 0, result.output
        expected = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean").encode(texts)
        np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_encode_compiled(tiny_llama, tmp_path):
    texts = ["first line", "second, longer line of text", "third"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "v.npy"
    args = ["encode", str(tiny_llama), "-i", str(tmp_path / "t.txt"), "-o", str(out), "--precision", "fp32"]
    result = runner.invoke(app, [*args, "--attention", "bidirectional", "--pooling", "mean", "--compile"])
    assert result.exit_code == 0, result.output
    expected = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean").encode(texts)
    np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-5)


def test_precision_follows_the_hardware(monkeypatch):
    from poolattn import backbone

    for native, precision in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(backbone, "bf16_is_faster", lambda native=native: native)
        assert backbone.resolve_precision("auto") == precision
        with backbone.autocast_precision("auto", "cpu"):
            assert torch.is_autocast_enabled("cpu") is native
    assert backbone.resolve_precision("fp32") == "fp32"


def test_bf16_precision_encodes_close_to_float32(tiny_llama, tmp_path):
    texts = ["first line", "second, longer line of text", "third"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / f"{precision}.npy"
        args = ["encode", str(tiny_llama), "-i", str(tmp_path / "t.txt"), "-o", str(outs[precision])]
        result = runner.invoke(app, [*args, "--precision", precision])
        assert result.exit_code == 0, result.output
    fp32, bf16 = np.load(outs["fp32"]), np.load(outs["bf16"])
    assert fp32.dtype == bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)  # autocast was on
    assert (fp32 * bf16).sum(1).min() > 0.99
    args = ["encode", str(tiny_llama), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "x.npy")]
    result = runner.invoke(app, [*args, "--precision", "fp16"])
    assert result.exit_code != 0 and "unknown --precision 'fp16'" in result.output


def test_encode_saved_model_folder(tiny_llama, tmp_path):
    model = EmbeddingModel.from_backbone(tiny_llama, pooling="trainable", attention="bidirectional")
    model.save(tmp_path / "m")
    (tmp_path / "t.txt").write_text("a\nb c\n")
    out = tmp_path / "v.npy"
    args = ["encode", str(tmp_path / "m"), "-i", str(tmp_path / "t.txt"), "-o", str(out), "--precision", "fp32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), model.encode(["a", "b c"]))
    result = runner.invoke(
        app, ["encode", str(tmp_path / "m"), "-i", str(tmp_path / "t.txt"), "-o", str(out), "--pooling", "eos"]
    )
    assert result.exit_code == 2 and "saved with pooling='trainable'" in flat(result.output)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"ok\n\xff\xfe bad\n", "t.txt", "line 2: not valid UTF-8"),
        (b'{"text": "a"}\n{"txt": "b"}\n', "t.jsonl", "line 2: missing field 'text'"),
        (b'{"text": "a"}\n{oops\n', "t.jsonl", "line 2: invalid JSON"),
        (b'{"text": 3}\n', "t.jsonl", "line 1, field 'text': expected a string"),
    ],
)
def test_encode_bad_input_names_file_and_line(tiny_llama, tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "v.npy"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["encode", str(tiny_llama), "-i", str(path), "-o", str(out), "--overwrite"])
    assert result.exit_code == 2
    assert str(path) in flat(result.output) and message in flat(result.output)
    assert out.read_bytes() == b"keep me"  # nothing already written is touched, even with --overwrite


def test_encode_unknown_pooling_and_missing_model(tiny_llama, tmp_path):
    (tmp_path / "t.txt").write_text("a\n")
    args = ["-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "v.npy")]
    result = runner.invoke(app, ["encode", str(tiny_llama), *args, "--pooling", "max"])
    assert result.exit_code == 2 and "unknown pooling 'max'" in flat(result.output)
    result = runner.invoke(app, ["encode", str(tmp_path / "missing"), *args])
    assert result.exit_code == 2 and "not found" in flat(result.output)


def test_report_compare_reaches_the_renderer(tmp_path, monkeypatch):
    from poolattn.study import report

    calls = []
    monkeypatch.setattr(report, "render_report", lambda folder, compare=None: calls.append((folder, compare)) or folder)
    result = runner.invoke(app, ["report", str(tmp_path / "a"), "--compare", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path / "a", tmp_path / "b")]
    assert "--compare" in runner.invoke(app, ["report", "--help"]).output


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_under_accelerate_leaves_no_process_group(tmp_path, fails):
    """A command that joined a process group (as `accelerate launch` makes every process do) destroys it before
    exit, also when it fails: a gloo group left to the interpreter's exit aborts it now and then."""
    import typer

    from poolattn.cli.base import Commands, fail

    commands = typer.Typer(cls=Commands)

    @commands.command()
    def join() -> None:
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert torch.distributed.is_initialized()
        if fails:
            fail("bad input")

    @commands.command()
    def other() -> None:
        """A second command, so that `join` is invoked by name."""

    result = runner.invoke(commands, ["join"])
    assert result.exit_code == (2 if fails else 0), result.output
    assert not torch.distributed.is_initialized()
