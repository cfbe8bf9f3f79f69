"""Training data: readers, validation errors, the default set, and the data order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poolattn import corpora, data
from poolattn.data import (
    DEFAULT_INSTRUCTION,
    DataError,
    DataOrder,
    TrainRecord,
    add_hard_negatives,
    default_training_set,
    read_records,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = [
    {"query": "what is a cat", "positive": "a small feline", "negative": "a large dog", "instruction": "Retrieve"},
    {"query": "q2", "positive": "p2", "negatives": ["n2a", "n2b"], "id": 7},
    {"query": "q3", "positive": "p3"},
    {"query": "q4", "positive": "p4", "negative": ["n4"], "instruction": ""},
]
EXPECTED = [
    TrainRecord("what is a cat", "a small feline", ["a large dog"], "Retrieve"),
    TrainRecord("q2", "p2", ["n2a", "n2b"], None),
    TrainRecord("q3", "p3", [], None),
    TrainRecord("q4", "p4", ["n4"], None),
]


# ----------------------------------------------------------------------------------------------- readers
def test_jsonl_records(tmp_path):
    result = read_records(write_jsonl(tmp_path / "d.jsonl", GOOD))
    assert result.records == EXPECTED
    assert result.skipped == []


def test_default_instruction_fills_only_missing(tmp_path):
    records = read_records(write_jsonl(tmp_path / "d.jsonl", GOOD), instruction="Find it").records
    assert [r.instruction for r in records] == ["Retrieve", "Find it", "Find it", "Find it"]


def test_csv_negative_columns_and_multiline_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        'query,positive,negative,negative_2,instruction\n"a\nmulti-line query",pos a,neg a1,neg a2,Find\nq b,pos b,,,\n'
    )
    assert read_records(path).records == [
        TrainRecord("a\nmulti-line query", "pos a", ["neg a1", "neg a2"], "Find"),
        TrainRecord("q b", "pos b", [], None),
    ]
    path.write_text('query,positive\n"x\ny",p\nq,\n')
    with pytest.raises(DataError, match=r"d\.csv, line 4, field 'positive': empty text"):
        read_records(path)


def test_tsv_with_json_negatives(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('query\tpositive\tnegatives\nq\tp\t["n1", "n2"]\nq2\tp2\tnot json\n')
    with pytest.raises(DataError, match=r"d\.tsv, line 3, field 'negatives': expected a JSON list"):
        read_records(path)
    result = read_records(path, skip_bad=True)
    assert result.records == [TrainRecord("q", "p", ["n1", "n2"], None)]
    assert len(result.skipped) == 1


def test_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "query": ["q1", "q2", None],
            "positive": ["p1", "p2", "p3"],
            "negatives": [["n1"], [], ["n3"]],
            "instruction": ["I", None, None],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet, row 3, field 'query': missing"):
        read_records(tmp_path / "d.parquet")
    result = read_records(tmp_path / "d.parquet", skip_bad=True)
    assert result.records == [TrainRecord("q1", "p1", ["n1"], "I"), TrainRecord("q2", "p2", [], None)]
    pq.write_table(pa.table({"query": [b"ok", b"caf\xe9"], "positive": ["p", "p"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet, row 2, field 'query': not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        read_records(tmp_path / "b.parquet")


def test_datasets_folder(tmp_path):
    import datasets

    rows = {"query": ["q1", "q2"], "positive": ["p1", "p2"], "negatives": [["n1"], []], "label": [1, 0]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds").records == [TrainRecord("q1", "p1", ["n1"]), TrainRecord("q2", "p2")]
    datasets.Dataset.from_dict({"query": ["q"], "positive": [""]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad, row 1, field 'positive': empty text"):
        read_records(tmp_path / "bad")


# -------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"positive": "p"}, ", field 'query': missing"),
        ({"query": "q", "positive": "   "}, ", field 'positive': empty text"),
        ({"query": "q", "positive": 3}, ", field 'positive': expected text, got int 3"),
        ({"query": "q", "positive": "p", "negatives": ["n", ""]}, r", field 'negatives\[1\]': empty text"),
        ({"query": "q", "positive": "p", "negatives": {"a": 1}}, ", field 'negatives': expected text or a list"),
        ({"query": "q", "positive": "p", "negative": "a", "negatives": ["b"]}, ", field 'negatives': give either"),
        ({"query": "q", "positive": "p", "instruction": 5}, ", field 'instruction': expected text"),
        (["q", "p"], ": expected an object with fields, got list"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], row])
    with pytest.raises(DataError, match=rf"bad\.jsonl, line 2{message}"):
        read_records(path)


def test_non_utf8_and_invalid_json_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"query": "q", "positive": "p"}\n{"query": "caf\xe9", "positive": "p"}\n{"query": \n')
    with pytest.raises(DataError) as err:
        read_records(path)
    text = str(err.value)
    assert "2 bad record(s)" in text
    assert "bad.jsonl, line 2: not valid UTF-8 (byte 0xe9 at column 15)" in text
    assert "bad.jsonl, line 3: invalid JSON: Expecting value at column 12" in text
    result = read_records(path, skip_bad=True)
    assert result.records == [TrainRecord("q", "p")]
    assert len(result.skipped) == 2


def test_non_utf8_csv_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"query,positive\nq,p\nq2,\xff\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 3: not valid UTF-8 \(byte 0xff\)"):
        read_records(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'"):
        read_records(tmp_path / "x.txt")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no valid training records"):
        read_records(tmp_path / "empty.jsonl")


def test_errors_are_listed_and_capped(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q"}] * 12)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert "12 bad record(s)" in str(err.value)
    assert "line 10," in str(err.value) and "line 11," not in str(err.value)
    assert "and 2 more" in str(err.value)


# ------------------------------------------------------------------------------------- hard negatives
PAIRS = [
    ("the cat sat on the mat", "cats love mats"),
    ("where is my red car", "in the garage"),
    ("do you like green tea", "green tea is my favourite"),
    ("what time does the train leave", "at noon"),
    ("my red car is very fast", "fast cars are fun"),
    ("tea or coffee", "coffee please"),
]


@pytest.fixture
def fake_pairs(monkeypatch):
    """The movie-dialog train split replaced by six pairs (no packaged data needed)."""

    def movie_dialog_pairs(split):
        assert split == "train", "training must never read the test split"
        return list(PAIRS)

    monkeypatch.setattr(data, "movie_dialog_pairs", movie_dialog_pairs)


def test_default_training_set_random(fake_pairs):
    records = default_training_set(seed=3)
    assert [(r.query, r.positive) for r in records] == PAIRS
    assert all(r.instruction == DEFAULT_INSTRUCTION for r in records)
    replies = {reply for _, reply in PAIRS}
    for record in records:
        assert len(record.negatives) == 1
        assert record.negatives[0] in replies and record.negatives[0] != record.positive
    assert default_training_set(seed=3) == records
    assert [r.negatives for r in default_training_set(seed=4)] != [r.negatives for r in records]


def test_default_training_set_mined_picks_the_lexically_closest_other_reply(fake_pairs):
    records = default_training_set(hard_negatives="mined")
    by_query = {r.query: r.negatives[0] for r in records}
    assert by_query["tea or coffee"] == "green tea is my favourite"  # shares "tea"; its own reply is excluded
    assert by_query["my red car is very fast"] == "green tea is my favourite"  # "is", "my"
    assert by_query["what time does the train leave"] == "in the garage"  # "the"
    assert by_query["do you like green tea"] != "green tea is my favourite"
    assert all(r.negatives[0] != r.positive for r in records)


def test_default_training_set_subset_and_none(fake_pairs):
    records = default_training_set(n_pairs=4, seed=1, hard_negatives="none", instruction="I")
    assert len(records) == 4
    assert all(r.negatives == [] and r.instruction == "I" for r in records)
    assert [(r.query, r.positive) for r in records] == [p for p in PAIRS if p[0] in {r.query for r in records}]
    with pytest.raises(ValueError, match="unknown hard_negatives 'hard'"):
        default_training_set(hard_negatives="hard")


def test_add_hard_negatives_keeps_existing():
    records = [TrainRecord("q1", "p1", ["mine"]), TrainRecord("q2", "p2"), TrainRecord("q3", "p3")]
    out = add_hard_negatives(records, "random", seed=0)
    assert out[0].negatives == ["mine"]
    assert out[1].negatives[0] in {"p1", "p3"} and out[2].negatives[0] in {"p1", "p2"}
    assert records[1].negatives == []  # inputs are not modified


@pytest.mark.slow
def test_real_default_training_set():
    records = default_training_set(n_pairs=200, hard_negatives="mined")
    assert len(records) == 200
    assert all(r.negatives and r.negatives[0] != r.positive for r in records)
    from poolattn.corpora import normalize
    from poolattn.data import movie_dialog_pairs

    test_texts = {normalize(t) for pair in movie_dialog_pairs("test") for t in pair}
    assert not any(normalize(r.query) in test_texts or normalize(r.positive) in test_texts for r in records)


# ------------------------------------------------------------------------------------- movie dialogs
def test_movie_dialog_splits_are_disjoint_and_clean() -> None:
    train, test = data.movie_dialog_pairs("train"), data.movie_dialog_pairs("test")
    assert 3000 < len(test) < 6000 and len(train) > 30000
    for pairs in (train, test):
        keys = [(corpora.normalize(s), corpora.normalize(r)) for s, r in pairs]
        assert len(keys) == len(set(keys))
        assert all(len(t.split()) >= corpora.MOVIE_MIN_WORDS for pair in pairs for t in pair)
    test_texts = {corpora.normalize(t) for pair in test for t in pair}
    assert not test_texts & {corpora.normalize(t) for pair in train for t in pair}
    assert all(corpora.in_test_split(s, corpora.MOVIE_SALT, corpora.MOVIE_TEST_FRACTION) for s, _ in test)
    assert data.movie_dialog_pairs("test") == test  # deterministic
    with pytest.raises(ValueError, match="split must be"):
        data.movie_dialog_pairs("dev")  # type: ignore[arg-type]


def test_default_training_data_never_overlaps_evaluation() -> None:
    evaluation = data.evaluation_texts()
    training = {t for pair in data.movie_dialog_pairs("train") for t in pair}
    assert len(evaluation) > 10000
    assert not training & evaluation
    assert not {corpora.normalize(t) for t in training} & {corpora.normalize(t) for t in evaluation}


# -------------------------------------------------------------------------------------------- data order
def test_data_order_is_a_function_of_seed_and_epoch():
    order = DataOrder(n_records=10, batch_size=3, seed=5)
    assert order.steps_per_epoch == 3
    epoch0 = [order.batch(s) for s in range(3)]
    flat = [i for batch in epoch0 for i in batch]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))  # one batch dropped: a permutation, last cut
    assert order.position(4) == data.Position(epoch=1, index=1)
    assert order.batch(4) == order.permutation(1)[3:6].tolist()
    assert DataOrder(10, 3, seed=5).batch(7) == order.batch(7)
    data._permutation.cache_clear()
    assert DataOrder(10, 3, seed=5).batch(7) == order.batch(7)
    assert order.batch(0) != order.batch(3)  # epochs are reshuffled
    assert [DataOrder(10, 3, seed=6).batch(s) for s in range(3)] != epoch0
    np.testing.assert_array_equal(order.permutation(2), np.random.default_rng([5, 2]).permutation(10))


def test_data_order_needs_a_full_batch():
    with pytest.raises(DataError, match="fewer than one batch"):
        DataOrder(n_records=3, batch_size=4)
