"""The built-in training sets, made offline from shipped data; ``data.path`` names one or several joined by ``+``.

* ``mined`` (the default): pairs of movie-dialogue lines that the packaged all-MiniLM-L6-v2 finds to mean the same
  thing (:mod:`poolattn.mining`), each with the teacher's hard negative: general-purpose semantic similarity.
* ``movie-dialog``: statement → reply pairs of the movie-dialogue train split (a conversational signal).
* ``simcse``: each pool line paired with itself (unsupervised SimCSE: dropout is the only noise, so it needs
  ``lora.dropout`` > 0 to teach anything).
* ``bible``: a King James verse paired with its World English Bible rendering (a paraphrase signal), from the
  46 books the Bible evaluation tasks do not hold out (:func:`poolattn.sentence_corpora.bible_parallel`).

The movie sets are built from the movie-dialogue *train* split, which holds no text of the held-out test split or
of any evaluation task (:func:`poolattn.data.evaluation_texts`), and the mined pool drops every evaluation text
again; the ``bible`` set drops every pair with an evaluation text too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from . import assets, mining, sentence_corpora
from .corpora import normalize
from .data import (
    DEFAULT_INSTRUCTION,
    DataError,
    TrainRecord,
    add_hard_negatives,
    default_training_set,
    evaluation_texts,
    movie_dialog_pairs,
    subset,
)

STS_INSTRUCTION = "Retrieve semantically similar text."
DEFAULT_SOURCE = "mined"
TEACHER = "all-MiniLM-L6-v2"


def movie_lines() -> list[str]:
    """Every line (statements and replies) of the movie-dialogue train split, in file order."""
    return [text for pair in movie_dialog_pairs("train") for text in pair]


def pool_size_for(n_pairs: int | None) -> int:
    """Pool lines to embed for ``n_pairs`` mined pairs: one anchor in 7 (a pool of 8,000) to one in 3.5 (24,000)
    yields a pair, so six lines a pair, in steps of 4,000 (each size is mined and cached once), from 8,000 to
    64,000 (all: 64,000)."""
    want = 64000 if n_pairs is None else 6 * n_pairs
    return min(64000, max(8000, -(-want // 4000) * 4000))


def mined_pairs(n_pairs: int | None = None, settings: mining.MiningSettings | None = None) -> list[mining.MinedPair]:
    """Teacher-mined pairs of the movie-dialogue train lines, from a pool sized for ``n_pairs`` (built once, then
    read from the cache)."""
    if settings is None:
        size = pool_size_for(n_pairs)
        settings = replace(mining.MiningSettings(), pool_size=size, anchors=size)
    blocked = {normalize(t) for t in evaluation_texts()}
    pool = mining.select_pool(movie_lines(), settings, blocked)
    return mining.mined_pairs(
        pool,
        settings,
        TEACHER,
        lambda texts: mining.teacher_encoder(str(assets.peer_path("minilm")))(texts),
        assets.cache_dir() / "mined",
    )


def _mined(n: int | None, seed: int, hard_negatives: str, instruction: str | None) -> list[TrainRecord]:
    available = mined_pairs(n)
    if n is not None and len(available) < n:
        raise DataError(f"data.n_pairs = {n}: the mined set has only {len(available)} pairs")
    pairs = subset(available, n, seed)
    keep = hard_negatives in ("auto", "teacher")
    records = [
        TrainRecord(p.anchor, p.positive, [p.negative] if keep else [], instruction or STS_INSTRUCTION) for p in pairs
    ]
    if keep:
        return records
    return add_hard_negatives(records, hard_negatives, seed, pool=[p.positive for p in available])


def _movie(n: int | None, seed: int, hard_negatives: str, instruction: str | None) -> list[TrainRecord]:
    mode = "random" if hard_negatives == "auto" else hard_negatives
    return default_training_set(n, seed, mode, instruction or DEFAULT_INSTRUCTION)


def _simcse(n: int | None, seed: int, hard_negatives: str, instruction: str | None) -> list[TrainRecord]:
    min_words = mining.MiningSettings().min_words
    lines = list(dict.fromkeys(t for t in movie_lines() if len(t.split()) >= min_words))
    records = [TrainRecord(t, t, [], instruction or STS_INSTRUCTION) for t in subset(lines, n, seed)]
    mode = "none" if hard_negatives == "auto" else hard_negatives
    return add_hard_negatives(records, mode, seed, pool=lines)


def _bible(n: int | None, seed: int, hard_negatives: str, instruction: str | None) -> list[TrainRecord]:
    blocked = {normalize(t) for t in evaluation_texts()}
    kjv, web = list(sentence_corpora.BIBLE_VERSIONS).index("kjv"), list(sentence_corpora.BIBLE_VERSIONS).index("web")
    pairs = [
        (row[kjv].text, row[web].text)
        for row in sentence_corpora.bible_parallel("train")
        if normalize(row[kjv].text) not in blocked and normalize(row[web].text) not in blocked
    ]
    records = [TrainRecord(q, p, [], instruction or STS_INSTRUCTION) for q, p in subset(pairs, n, seed)]
    mode = "random" if hard_negatives == "auto" else hard_negatives
    return add_hard_negatives(records, mode, seed, pool=[p for _, p in pairs])


Builder = Callable[[int | None, int, str, str | None], list[TrainRecord]]
SOURCES: dict[str, Builder] = {"mined": _mined, "movie-dialog": _movie, "simcse": _simcse, "bible": _bible}


def is_builtin(path: str) -> bool:
    """Whether ``data.path`` names built-in sets (``default``, ``mined``, ``mined+movie-dialog``, ...)."""
    return all(part in SOURCES or part == "default" for part in path.split("+"))


def builtin_training_set(
    path: str, n_pairs: int | None, seed: int, hard_negatives: str = "auto", instruction: str | None = None
) -> list[TrainRecord]:
    """The records of the built-in sets ``path`` names; with several, ``n_pairs`` is split evenly among them
    and their records alternate, so every batch mixes them."""
    names = [DEFAULT_SOURCE if part == "default" else part for part in path.split("+")]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise DataError(f"data.path: unknown built-in set {unknown[0]!r}; known: {['default', *SOURCES]}")
    share = None if n_pairs is None else -(-n_pairs // len(names))
    parts = [SOURCES[name](share, seed, hard_negatives, instruction) for name in names]
    mixed = [r for group in zip(*parts, strict=False) for r in group] if len(parts) > 1 else parts[0]
    return mixed if n_pairs is None else mixed[:n_pairs]
