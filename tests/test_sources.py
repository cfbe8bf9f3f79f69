"""Built-in training sets: teacher mining, caching, decontamination against every evaluation task, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from poolattn import data, mining, sentence_corpora, sources
from poolattn.corpora import normalize
from poolattn.data import TrainRecord
from poolattn.evaluate import tasks as evaluation_tasks
from poolattn.training.heldout import split_heldout

SMALL = mining.MiningSettings(pool_size=1500, anchors=1500, min_similarity=0.3, negative_margin=0.05)


def fake_teacher(calls: list[int]):
    """Random unit vectors seeded by the text: a deterministic stand-in for the real teacher."""

    def embed(texts):
        calls.append(len(texts))
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return embed


def test_mine_takes_the_nearest_neighbour_and_a_negative_from_the_band():
    # three clusters of near-identical directions; within a cluster the neighbours are known
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3]
    emb = np.concatenate([c + 0.05 * rng.standard_normal((20, 4)) for c in centres])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = [f"text {i}" for i in range(len(emb))]
    settings = mining.MiningSettings(
        anchors=60, min_similarity=0.5, max_similarity=1.0, negative_ranks=(19, 40), negative_margin=0.3
    )
    pairs = mining.mine(pool, emb.astype(np.float32), settings)
    assert pairs
    for p in pairs:
        a, b, n = (pool.index(t) for t in (p.anchor, p.positive, p.negative))
        sims = emb[a] @ emb.T
        sims[a] = -np.inf
        assert b == int(np.argmax(sims)) and a != b
        assert a // 20 == b // 20  # the positive is in the anchor's cluster
        assert a // 20 != n // 20  # the negative lies beyond the margin: another cluster
        assert p.positive_similarity == pytest.approx(float(emb[a] @ emb[b]), abs=1e-4)
    assert len({frozenset((p.anchor, p.positive)) for p in pairs}) == len(pairs)  # no pair twice, either way


def test_mined_pairs_are_cached_by_pool_and_settings(tmp_path):
    pool = [f"line number {i} of the pool" for i in range(300)]
    settings = mining.MiningSettings(pool_size=300, anchors=300, min_similarity=0.0, negative_margin=0.0)
    calls: list[int] = []
    first = mining.mined_pairs(pool, settings, "fake", fake_teacher(calls), tmp_path)
    again = mining.mined_pairs(pool, settings, "fake", fake_teacher(calls), tmp_path)
    assert calls == [300] and first == again and first
    other = mining.MiningSettings(pool_size=300, anchors=300, min_similarity=0.0, negative_margin=0.0, seed=1)
    mining.mined_pairs(pool, other, "fake", fake_teacher(calls), tmp_path)
    assert calls == [300, 300]  # other settings: mined again, into another file
    assert len(list(tmp_path.glob("mined-*.jsonl"))) == 2


def test_select_pool_drops_blocked_duplicate_and_out_of_range_texts():
    texts = ["One two three four", "one  TWO three four", "too short", "blocked text is here now", "a b c d e"]
    settings = mining.MiningSettings(min_words=4, max_words=4)
    pool = mining.select_pool(texts, settings, {normalize("blocked text is here now")})
    assert pool == ["One two three four"]


@pytest.fixture
def small_mining(monkeypatch, tmp_path):
    """The real pool and decontamination, a small pool and a fake teacher (the real one takes minutes)."""
    calls: list[int] = []
    monkeypatch.setattr(mining, "teacher_encoder", lambda path: fake_teacher(calls))
    monkeypatch.setattr(sources, "pool_size_for", lambda n: SMALL.pool_size)
    monkeypatch.setattr(mining, "MiningSettings", lambda: SMALL)
    monkeypatch.setattr(sources.assets, "cache_dir", lambda: tmp_path)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("path", ["mined", "movie-dialog", "simcse", "bible", "mined+movie-dialog"])
def test_no_evaluation_text_is_ever_trained_on(small_mining, path):
    """For every task of the suite (every profile, optional tasks included when available): no text of the
    task, normalised, appears in a built-in training set."""
    records = sources.builtin_training_set(path, None, seed=0, hard_negatives="auto")
    assert records
    trained = {normalize(t) for r in records for t in (r.query, r.positive, *r.negatives)}
    for task in evaluation_tasks.TASKS.values():
        if not task.available():
            continue
        leaked = trained & {normalize(t) for t in task.load("full").all_texts()}
        assert not leaked, f"{task.name}: {sorted(leaked)[:3]}"


@pytest.mark.slow
def test_builtin_sets_mix_and_count(small_mining):
    mixed = sources.builtin_training_set("mined+movie-dialog", 10, seed=0)
    assert len(mixed) == 10
    assert [r.instruction for r in mixed[:2]] == [sources.STS_INSTRUCTION, data.DEFAULT_INSTRUCTION]
    mined = sources.builtin_training_set("default", 20, seed=0)
    assert all(len(r.negatives) == 1 for r in mined)  # the teacher's hard negative
    assert all(not r.negatives for r in sources.builtin_training_set("mined", 20, seed=0, hard_negatives="none"))
    simcse = sources.builtin_training_set("simcse", 5, seed=0)
    assert all(r.query == r.positive for r in simcse)
    with pytest.raises(data.DataError, match="unknown built-in set 'nope'"):
        sources.builtin_training_set("mined+nope", 5, seed=0)


def test_bible_training_pairs_come_from_books_no_task_holds_out():
    records = sources.builtin_training_set("bible", None, seed=0)
    assert 20000 < len(records) <= len(sentence_corpora.bible_parallel("train"))
    assert all(len(r.negatives) == 1 and r.negatives[0] != r.positive for r in records)
    held_out = {normalize(v.text) for row in sentence_corpora.bible_parallel("test") for v in row}
    trained = {normalize(t) for r in records for t in (r.query, r.positive)}
    assert not trained & {normalize(t) for t in data.evaluation_texts()}
    assert len(trained & held_out) < 50  # only verses repeated word for word in another book
    test_books = {row[0].book for row in sentence_corpora.bible_parallel("test")}
    assert not test_books & {row[0].book for row in sentence_corpora.bible_parallel("train")} and len(test_books) == 20


def test_pool_grows_with_the_pairs_asked_for():
    assert sources.pool_size_for(100) == 8000
    assert sources.pool_size_for(1400) == 12000
    assert sources.pool_size_for(10**6) == sources.pool_size_for(None) == 64000


def test_heldout_split_is_stable_disjoint_and_order_free():
    records = [TrainRecord(f"query {i}", f"positive {i % 40}") for i in range(100)]
    train, held = split_heldout(records, 10)
    _, held2 = split_heldout(list(reversed(records)), 10)
    assert {r.query for r in held} == {r.query for r in held2}  # chosen by content, not position
    held_texts = {t for r in held for t in (r.query, r.positive)}
    assert not any({r.query, r.positive} & held_texts for r in train)  # shared positives leave training too
    assert len(held) == 10 and len(train) < 90
    assert split_heldout(records, 0) == (records, [])
    with pytest.raises(ValueError, match=r"data\.heldout"):
        split_heldout(records, 100)
