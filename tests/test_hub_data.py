"""Hub-style datasets read as published through a field map (``postive`` as in ``yixuantt/ir_data``), with the same
one-line errors as local files, and ``poolattn data``'s summary of a source."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from poolattn.cli import app
from poolattn.config import ConfigError
from poolattn.data import DataError, TrainRecord, read_records
from poolattn.training import load_train_config

IR_ROWS = {
    "query": ["what is a cat", "capital of france", "boiling point of water"],
    "postive": ["a cat is a small feline", "paris is the capital of france", "water boils at 100 degrees"],
    "negative": ["dogs bark", "berlin is in germany", "ice melts at 0 degrees"],
}


@pytest.fixture
def ir_like(tmp_path):
    """The same rows as a saved ``datasets`` dataset (with a train split) and as a Parquet file."""
    import datasets

    data = datasets.Dataset.from_dict(IR_ROWS)
    datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(str(tmp_path / "ir"))
    data.to_parquet(str(tmp_path / "ir.parquet"))
    return tmp_path


def test_field_map_reads_the_published_columns(ir_like):
    expected = [TrainRecord(q, p, [n]) for q, p, n in zip(*IR_ROWS.values(), strict=True)]
    for source in (ir_like / "ir", ir_like / "ir.parquet"):
        assert read_records(source, fields={"positive": "postive"}).records == expected
    assert len(read_records(ir_like / "ir", fields={"positive": "postive"}, split="test").records) == 1
    with pytest.raises(DataError, match=r"no 'dev' split \(splits: \['test', 'train'\]\)"):
        read_records(ir_like / "ir", fields={"positive": "postive"}, split="dev")


def test_unmapped_column_fails_with_one_line_per_record_and_the_hint(ir_like):
    with pytest.raises(DataError) as caught:
        read_records(ir_like / "ir.parquet")
    first, *rows = str(caught.value).splitlines()
    assert 'columns: negative, postive, query; map it with data.fields = { positive = "COLUMN" }' in first
    assert rows[0].strip() == f"{ir_like / 'ir.parquet'}, row 1, field 'positive': missing"
    with pytest.raises(DataError, match=r"bad, row 2, field 'positive': empty text"):
        bad = {**IR_ROWS, "postive": ["ok", " ", "ok"]}
        import datasets

        datasets.Dataset.from_dict(bad).save_to_disk(str(ir_like / "bad"))
        read_records(ir_like / "bad", fields={"positive": "postive"})


def test_train_config_checks_the_field_map(tmp_path):
    config = load_train_config(None, ["data.fields={ positive = 'postive' }", "data.revision=abc123"])
    assert (config.data.fields, config.data.split, config.data.revision) == ({"positive": "postive"}, "train", "abc123")
    with pytest.raises(ConfigError, match=r"data.fields: cannot map field 'answer'") as caught:
        load_train_config(None, ["data.fields={ answer = 'x' }"])
    assert caught.value.key == "data.fields"


def test_paper_configs_train_on_the_hub_dataset():
    from poolattn.study import load_study

    study = load_study("configs/paper.toml")
    train = load_train_config("configs/train_paper.toml")
    for data in (study.data, train.data):
        assert (data.path, data.split, data.fields) == ("yixuantt/ir_data", "train", {"positive": "postive"})


def test_data_command_summarises_a_local_source(ir_like, tiny_llama, monkeypatch):
    import poolattn.data

    monkeypatch.setattr(poolattn.data, "evaluation_texts", lambda: {"Paris is  the capital of FRANCE"})
    args = ["data", str(ir_like / "ir.parquet"), "--field", "positive=postive", "--backbone", str(tiny_llama)]
    result = CliRunner().invoke(app, [*args, "--max-length", "8"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "records: 3 valid, 0 skipped" in out and "columns: negative, postive, query" in out
    assert "field map: positive <- 'postive'" in out and "records with a hard negative: 3" in out
    assert "overlap with the evaluation tasks: 1 record(s) share a text with one of 1 evaluation texts" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")][1:] == [
        "query",
        "positive",
        "negative",
    ]
    bad = CliRunner().invoke(app, ["data", str(ir_like / "ir.parquet"), "--field", "positive", "--no-overlap"])
    assert bad.exit_code == 2 and "is not FIELD=COLUMN" in bad.output
    missing = CliRunner().invoke(app, ["data", str(ir_like / "nope.jsonl"), "--no-overlap"])
    assert missing.exit_code == 2 and "no such file" in missing.output
