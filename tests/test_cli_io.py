"""Command-line input and output as people use them: stdin, output formats, --version, eval's --instruction and
--batch-tokens, and help examples that run as printed."""

from __future__ import annotations

import ast
import json
import re
import shlex

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from poolattn import EmbeddingModel, __version__
from poolattn.cli import app

runner = CliRunner()
TEXTS = ["first line", "second, longer line of text", "ünïcode ✓"]


@pytest.fixture(scope="module")
def expected(tiny_llama) -> np.ndarray:
    return EmbeddingModel.from_backbone(tiny_llama).encode(TEXTS)


def encode(tiny_llama, *args: str, input: str | None = None) -> None:
    result = runner.invoke(app, ["encode", str(tiny_llama), "--precision", "fp32", *args], input=input)
    assert result.exit_code == 0, result.output


def test_stdin_input(tiny_llama, tmp_path, expected):
    out = tmp_path / "v.npy"
    encode(tiny_llama, "--input", "-", "--output", str(out), input="\n".join(TEXTS) + "\n")
    np.testing.assert_array_equal(np.load(out), expected)


def test_output_format_follows_suffix_or_flag(tiny_llama, tmp_path, expected):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    for name, flag in (("v.npy", None), ("v.jsonl", None), ("v.parquet", None), ("v.out", "jsonl")):
        out = tmp_path / name
        encode(tiny_llama, "-i", str(tmp_path / "t.txt"), "-o", str(out), *(["--format", flag] if flag else []))
        if out.suffix == ".npy":
            assert np.load(out).dtype == np.float32
            np.testing.assert_array_equal(np.load(out), expected)
        elif out.suffix == ".parquet":
            table = pq.read_table(out)
            assert table.column("text").to_pylist() == TEXTS
            assert str(table.schema.field("embedding").type) == f"fixed_size_list<element: float>[{expected.shape[1]}]"
            np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), expected)
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert [r["text"] for r in rows] == TEXTS
            np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], np.float32), expected)
    result = runner.invoke(
        app, ["encode", str(tiny_llama), "-i", str(tmp_path / "t.txt"), "-o", "x.npy", "--format", "csv"]
    )
    assert result.exit_code == 2 and "unknown --format 'csv'" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"poolattn {__version__}\n"


def test_eval_instruction_and_batch_tokens(tiny_llama, tmp_path, monkeypatch):
    seen: list[tuple[str | None, int | None]] = []
    real = EmbeddingModel.encode

    def spy(self, texts, instruction=None, **kwargs):
        seen.append((instruction, kwargs.get("batch_tokens")))
        return real(self, texts, instruction=instruction, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "encode", spy)
    args = [
        "eval",
        str(tiny_llama),
        "--tasks",
        "NewsgroupSubjectRetrieval",
        "--profile",
        "quick",
        "--precision",
        "fp32",
    ]
    result = runner.invoke(app, [*args, "--instruction", "Find the post", "--batch-tokens", "64", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {batch for _, batch in seen} == {64}
    assert {instruction for instruction, _ in seen} == {"Find the post", None}  # queries get it, documents do not
    stored = json.loads((tmp_path / "NewsgroupSubjectRetrieval.json").read_text())
    assert stored["instruction"] == "Find the post"
    result = runner.invoke(app, [*args, "--batch-tokens", "0", "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--batch-tokens takes a positive number" in result.output


def test_instruction_for_every_task():
    from poolattn.evaluate.tasks import ALL_TASKS, get_task, resolve_instruction

    task = get_task("WordSim353STS")
    assert resolve_instruction(task, {ALL_TASKS: "X"}) == "X"
    assert resolve_instruction(task, {ALL_TASKS: ""}) is None
    assert resolve_instruction(task, {ALL_TASKS: "X", "sts": "Y"}) == "Y"
    assert resolve_instruction(task, {ALL_TASKS: "X", "WordSim353STS": "Z"}) == "Z"


# ------------------------------------------------------------------------------------------ help examples


def example_commands(text: str, *, spans_only: bool = False) -> list[list[str]]:
    """The ``poolattn ...`` command lines in ``text`` (inline ````code```` spans, and unless ``spans_only`` whole
    lines, after a pipe or ``-m`` too), as argument lists without the program name; ``# comments`` dropped."""
    commands = []
    for line in text.splitlines():
        spans = re.findall(r"``poolattn\s+([^`]*)``", line)
        if not spans and not spans_only:
            spans = re.findall(r"(?:^|\|\s*|-m\s+)poolattn\s+(.*)$", line.strip())
        commands += [shlex.split(span, comments=True) for span in spans]
    return commands


def parses(words: list[str]) -> None:
    """Click parses the command line exactly as the shell would hand it over (unknown options, missing or extra
    arguments raise); nothing runs."""
    group = typer.main.get_command(app)
    parent = group.make_context("poolattn", [words[0]])
    command = group.get_command(parent, words[0])
    assert command is not None, f"no command {words[0]!r}"
    command.make_context(words[0], list(words[1:]), parent=parent)


def help_text(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))
def test_help_examples_parse_as_printed(command):
    text = help_text(command)
    examples = example_commands(text[text.index("Example") :])
    assert examples, text
    for words in examples:
        try:
            parses(words)
        except Exception as err:  # click's usage errors
            pytest.fail(f"`poolattn {shlex.join(words)}` from `{command} --help`: {err}")
    for line in text.splitlines():
        if line.strip().startswith("python -c"):
            code = shlex.split(line.strip())[2]
            ast.parse(code)  # the Python one-liners are valid Python


def test_mteb_adapter_docstring_example_parses():
    from poolattn.evaluate import mteb_adapter

    examples = example_commands(mteb_adapter.__doc__ or "", spans_only=True)
    assert examples
    for words in examples:
        parses(words)
    with pytest.raises(Exception, match="unexpected extra argument"):  # the old form: the second name is extra
        parses(["eval", "runs/m1", "--suite", "mteb", "--tasks", "STS12", "SciFact", "--output", "DIR"])


def test_example_finder_sees_pipes_and_launchers():
    text = "printf 'a\\n' | poolattn encode default -i - -o v.npy\naccelerate launch -m poolattn train c.toml  # x"
    assert example_commands(text) == [["encode", "default", "-i", "-", "-o", "v.npy"], ["train", "c.toml"]]
