"""How each evaluation task's data is built from the shipped corpora: fixed splits and nested samples.

A builder takes a sample size ``n`` and returns the task's data; a smaller sample is always a subset of a
larger one (the first ``n`` items in stable-hash order, :func:`sample`), so the quick profile's samples are
also in the full profile's. Long documents are clipped to :data:`MAX_DOC_WORDS` words before encoding.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from .. import corpora, sentence_corpora
from ..corpora import hash_order, in_test_split, normalize
from ..sentence_corpora import Verse
from .task_data import ClassificationData, ClusteringData, PairData, RetrievalData, STSData

MAX_DOC_WORDS = 128  # long documents are clipped (about 160 tokens) before encoding


def clip(text: str, max_words: int = MAX_DOC_WORDS) -> str:
    """``text`` cut to its first ``max_words`` words (rejoined with single spaces when cut)."""
    words = text.split()
    if len(words) <= max_words:
        return text
    return " ".join(words[:max_words])


def text_id(text: str, salt: str) -> str:
    """A stable id for a text (its stable hash), the same in every profile."""
    return f"{corpora.stable_hash(text, salt):016x}"


def sample(items: Sequence[Any], n: int, key: Callable[[Any], str], salt: str) -> list[Any]:
    """The first ``n`` items in stable-hash order, returned in their original order (prefix = subset)."""
    chosen = hash_order(range(len(items)), lambda i: key(items[i]), salt)[:n]
    return [items[i] for i in sorted(chosen)]


def sts(pairs: Sequence[corpora.ScoredPair], n: int, prefix: str, lo: float, hi: float) -> STSData:
    indexed = list(enumerate(pairs))
    chosen = sample(indexed, n, lambda ip: f"{ip[1].text1}\t{ip[1].text2}", prefix)
    return STSData(
        ids=tuple(f"{prefix}-{i}" for i, _ in chosen),
        texts1=tuple(clip(p.text1) for _, p in chosen),
        texts2=tuple(clip(p.text2) for _, p in chosen),
        gold=tuple(p.score for _, p in chosen),
        min_score=lo,
        max_score=hi,
    )


def classification(
    items: Sequence[corpora.LabelledText], n: int, salt: str, test_fraction: float, samples_per_label: int
) -> ClassificationData:
    names = tuple(sorted({it.label for it in items}))
    code = {name: i for i, name in enumerate(names)}
    test = [it for it in items if in_test_split(it.text, salt, test_fraction)]
    pool = [it for it in items if not in_test_split(it.text, salt, test_fraction)]
    test = sample(test, n, lambda it: it.text, salt)
    return ClassificationData(
        train_texts=tuple(it.text for it in pool),
        train_labels=tuple(code[it.label] for it in pool),
        ids=tuple(text_id(it.text, salt) for it in test),
        texts=tuple(it.text for it in test),
        labels=tuple(code[it.label] for it in test),
        label_names=names,
        samples_per_label=samples_per_label,
    )


def clustering(items: Sequence[tuple[str, str]], n: int, salt: str) -> ClusteringData:
    """``items`` are (text, label); a sample of ``n`` documents, bootstrapped at size ``n``."""
    chosen = sample(corpora.dedupe(items, lambda it: it[0]), n, lambda it: it[0], salt)
    return ClusteringData(
        ids=tuple(text_id(t, salt) for t, _ in chosen),
        texts=tuple(t for t, _ in chosen),
        labels=tuple(label for _, label in chosen),
        cluster_size=len(chosen),
    )


def retrieval(pairs: Sequence[tuple[str, str]], salt: str, corpus: Sequence[str] = ()) -> RetrievalData:
    """(query, relevant document) pairs (a query may have several); ``corpus`` adds distractors."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    for query, doc in pairs:
        qid, did = "q" + text_id(query, salt), "d" + text_id(doc, salt)
        queries.setdefault(qid, query)
        docs.setdefault(did, doc)
        qrels[qid][did] = 1
    for doc in corpus:
        docs.setdefault("d" + text_id(doc, salt), doc)
    return RetrievalData(tuple(queries), tuple(queries.values()), tuple(docs), tuple(docs.values()), dict(qrels))


def trec_test_fine() -> list[tuple[str, str]]:
    """(question, fine label) of the TREC test split."""
    return [(q.text, q.fine) for q in corpora.trec_questions() if in_test_split(q.text, "trec", TREC_TEST_FRACTION)]


TREC_TEST_FRACTION = 0.2
VADER_POLARITY_MARGIN = 0.5  # |mean rating| below this counts as neutral and is left out


def vader_polarity(source: str) -> list[corpora.LabelledText]:
    return [
        corpora.LabelledText(s.text, "positive" if s.sentiment > 0 else "negative")
        for s in corpora.vader_snippets(source)
        if abs(s.sentiment) >= VADER_POLARITY_MARGIN
    ]


@cache
def movie_eval_pool() -> tuple[tuple[str, str], ...]:
    """Movie-dialog test pairs for evaluation, in stable-hash order of the statement.

    One reply per statement, and no statement that is also a reply (dialogue chains), so that no query
    text appears in the corpus.
    """
    test = corpora.dedupe(corpora.movie_dialog_split("test"), lambda p: p[0])
    statements = {normalize(s) for s, _ in test}
    replies = {normalize(r) for _, r in test}
    pool = [(s, r) for s, r in test if normalize(s) not in replies and normalize(r) not in statements]
    return tuple(hash_order(pool, lambda p: p[0], "movie-eval"))


def _next_other_reply(pool: Sequence[tuple[str, str]], k: int, step: int) -> str:
    """The reply of the ``step``-th following pool entry whose reply differs from entry ``k``'s."""
    own, seen = normalize(pool[k][1]), 0
    for j in range(1, len(pool)):
        reply = pool[(k + j) % len(pool)][1]
        if normalize(reply) != own:
            seen += 1
            if seen == step:
                return reply
    raise ValueError("the movie-dialog pool has too few distinct replies")


def movie_pairs(n: int) -> PairData:
    pool = movie_eval_pool()
    ids, t1, t2, labels = [], [], [], []
    for k, (statement, reply) in enumerate(pool[:n]):
        sid = text_id(statement, "movie-eval")
        for label, other in ((1, reply), (0, _next_other_reply(pool, k, 1))):
            ids.append(f"{'pos' if label else 'neg'}-{sid}")
            t1.append(statement)
            t2.append(other)
            labels.append(label)
    return PairData(tuple(ids), tuple(t1), tuple(t2), tuple(labels))


MOVIE_RERANK_NEGATIVES = 19


def movie_reranking(n: int) -> RetrievalData:
    pool = movie_eval_pool()
    base = retrieval(pool[:n], "movie-eval")
    candidates, extra = {}, []
    for k, qid in enumerate(base.query_ids):
        negatives = [_next_other_reply(pool, k, step) for step in range(1, MOVIE_RERANK_NEGATIVES + 1)]
        extra.extend(negatives)
        ids = [next(iter(base.qrels[qid]))] + ["d" + text_id(r, "movie-eval") for r in negatives]
        candidates[qid] = tuple(dict.fromkeys(ids))
    full = retrieval(pool[:n], "movie-eval", corpus=extra)
    return RetrievalData(full.query_ids, full.queries, full.doc_ids, full.docs, full.qrels, candidates)


MOVIE_CORPUS_PER_QUERY = 4


def movie_retrieval(n: int) -> RetrievalData:
    pool = movie_eval_pool()
    distractors = [r for _, r in pool[: MOVIE_CORPUS_PER_QUERY * n]]
    return retrieval(pool[:n], "movie-eval", corpus=distractors)


def newsgroup_retrieval(n: int) -> RetrievalData:
    posts = [p for p in corpora.mini_newsgroups() if corpora.clean_subject(p.subject)]
    chosen = sample(posts, n, lambda p: p.body, "newsgroups")
    return retrieval([(corpora.clean_subject(p.subject), clip(p.body)) for p in chosen], "newsgroups")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def lead_and_rest(doc: str) -> tuple[str, str] | None:
    """A news article split after its first sentence, or None if either part is too short."""
    parts = _SENTENCE_END.split(doc, maxsplit=1)
    if len(parts) != 2 or len(parts[0].split()) < 6 or len(parts[1].split()) < 30:
        return None
    return parts[0].strip(), clip(parts[1].strip())


def lee_lead_retrieval(n: int) -> RetrievalData:
    docs = corpora.dedupe(corpora.lee_background(), lambda d: d)
    items = [split for d in docs if (split := lead_and_rest(d)) is not None]
    return retrieval(sample(items, n, lambda it: it[0], "lee-lead"), "lee-lead")


def _wordnet_blocked() -> set[str]:
    return {normalize(t) for pair in corpora.movie_dialog() for t in pair}


def wordnet_gloss_retrieval(n: int) -> RetrievalData:
    blocked = _wordnet_blocked()
    items = [
        (s.examples[0], s.definition)
        for s in corpora.wordnet_senses()
        if s.examples and len(s.definition.split()) >= 3 and normalize(s.examples[0]) not in blocked
    ]
    items = corpora.dedupe(corpora.dedupe(items, lambda it: it[0]), lambda it: it[1])
    return retrieval(sample(items, n, lambda it: it[0], "wordnet-gloss"), "wordnet-gloss")


def wordnet_lexname_clustering(n: int) -> ClusteringData:
    blocked = _wordnet_blocked()
    items = [
        (s.definition, s.lexname)
        for s in corpora.wordnet_senses()
        if len(s.definition.split()) >= 3 and normalize(s.definition) not in blocked
    ]
    return clustering(items, n, "wordnet-lexname")


# ------------------------------------------------------------------------------------------- Bible text
#: Grades of the structure-graded Bible STS: the same verse, another verse of its chapter, a verse of another book.
BIBLE_GRADES = (2.0, 1.0, 0.0)
BIBLE_RERANK_CANDIDATES = 20


def _version(name: str) -> int:
    return list(sentence_corpora.BIBLE_VERSIONS).index(name)


@cache
def bible_pool(a: str, b: str) -> tuple[tuple[Verse, Verse], ...]:
    """(version ``a``, version ``b``) renderings of the held-out books' verses, in canonical order; a verse is
    kept only when both renderings differ and neither text occurs twice in its version's held-out books."""
    rows = [(row[_version(a)], row[_version(b)]) for row in sentence_corpora.bible_parallel("test")]
    counts: dict[str, int] = defaultdict(int)
    for x, y in rows:
        counts["a" + normalize(x.text)] += 1
        counts["b" + normalize(y.text)] += 1
    return tuple(
        (x, y)
        for x, y in rows
        if normalize(x.text) != normalize(y.text)
        and counts["a" + normalize(x.text)] == 1
        and counts["b" + normalize(y.text)] == 1
    )


def _chapters(pool: Sequence[tuple[Verse, Verse]]) -> dict[tuple[int, int], list[int]]:
    """Pool indices by (book, chapter), in verse order."""
    chapters: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (x, _) in enumerate(pool):
        chapters[(x.book, x.chapter)].append(i)
    return chapters


def _anchors(pool: Sequence[tuple[Verse, Verse]], salt: str) -> list[int]:
    """Pool indices in stable-hash order of the verse reference (take a prefix to sample)."""
    return hash_order(range(len(pool)), lambda i: str(pool[i][0].ref), salt)


def _neighbour(chapter: list[int], i: int) -> int | None:
    """The next verse of ``i``'s chapter (the previous one for the last verse); None for a one-verse chapter."""
    k = chapter.index(i)
    if len(chapter) < 2:
        return None
    return chapter[k + 1] if k + 1 < len(chapter) else chapter[k - 1]


def bible_graded_sts(n: int, a: str, b: str, salt: str) -> STSData:
    """Pairs (verse in ``a``, verse in ``b``) graded by where the second lies: :data:`BIBLE_GRADES` in turn."""
    pool = bible_pool(a, b)
    chapters = _chapters(pool)
    order = _anchors(pool, salt)
    ids, t1, t2, gold = [], [], [], []
    for k, i in enumerate(order[:n]):
        x, _ = pool[i]
        grade = BIBLE_GRADES[k % len(BIBLE_GRADES)]
        if grade == 2.0:
            j = i
        elif grade == 1.0:
            others = [m for m in chapters[(x.book, x.chapter)] if m != i]
            j = hash_order(others, lambda m: str(pool[m][0].ref), salt)[0] if others else i
            grade = 1.0 if others else 2.0
        else:
            j = next(m for m in order[k + 1 :] + order if pool[m][0].book != x.book)
        ids.append(f"{salt}-{x.ref}")
        t1.append(x.text)
        t2.append(pool[j][1].text)
        gold.append(grade)
    return STSData(tuple(ids), tuple(t1), tuple(t2), tuple(gold), 0.0, 2.0)


def bible_pairs(n: int, a: str, b: str, salt: str) -> PairData:
    """Per verse, 1 = its rendering in ``b``, 0 = ``b``'s rendering of the neighbouring verse (a near miss)."""
    pool = bible_pool(a, b)
    chapters = _chapters(pool)
    ids, t1, t2, labels = [], [], [], []
    for i in _anchors(pool, salt):
        if len(ids) == 2 * n:
            break
        x, y = pool[i]
        j = _neighbour(chapters[(x.book, x.chapter)], i)
        if j is None:
            continue
        for label, other in ((1, y.text), (0, pool[j][1].text)):
            ids.append(f"{'pos' if label else 'neg'}-{salt}-{x.ref}")
            t1.append(x.text)
            t2.append(other)
            labels.append(label)
    return PairData(tuple(ids), tuple(t1), tuple(t2), tuple(labels))


def bible_retrieval(n: int, a: str, b: str, salt: str) -> RetrievalData:
    """Verse in ``a`` -> its rendering in ``b``; the corpus also holds ``b``'s renderings of the neighbouring
    verses of each query (near misses)."""
    pool = bible_pool(a, b)
    chapters = _chapters(pool)
    chosen = _anchors(pool, salt)[:n]
    distractors = []
    for i in chosen:
        chapter = chapters[(pool[i][0].book, pool[i][0].chapter)]
        k = chapter.index(i)
        distractors += [pool[m][1].text for m in chapter[max(0, k - 1) : k + 2] if m != i]
    return retrieval([(pool[i][0].text, pool[i][1].text) for i in chosen], salt, corpus=distractors)


def bible_reranking(n: int, a: str, b: str, salt: str) -> RetrievalData:
    """Verse in ``a`` -> its rendering in ``b`` among ``b``'s renderings of the nearest verses of its chapter
    (:data:`BIBLE_RERANK_CANDIDATES` candidates; chapters shorter than that are skipped)."""
    pool = bible_pool(a, b)
    chapters = _chapters(pool)
    pairs, negatives = [], []
    for i in _anchors(pool, salt):
        if len(pairs) == n:
            break
        chapter = chapters[(pool[i][0].book, pool[i][0].chapter)]
        if len(chapter) < BIBLE_RERANK_CANDIDATES:
            continue
        k = chapter.index(i)
        start = min(max(0, k - BIBLE_RERANK_CANDIDATES // 2), len(chapter) - BIBLE_RERANK_CANDIDATES)
        window = chapter[start : start + BIBLE_RERANK_CANDIDATES]
        pairs.append((pool[i][0].text, pool[i][1].text))
        negatives.append([pool[m][1].text for m in window if m != i])
    base = retrieval(pairs, salt, corpus=[t for group in negatives for t in group])
    candidates = {
        qid: (next(iter(base.qrels[qid])), *("d" + text_id(t, salt) for t in group))
        for qid, group in zip(base.query_ids, negatives, strict=True)
    }
    return dataclasses.replace(base, candidates=candidates)


def bible_book_clustering(n: int, version: str, salt: str) -> ClusteringData:
    """Verses of the held-out books in ``version``, labelled by book."""
    names = sentence_corpora.bible_book_names()
    rows = [row[_version(version)] for row in sentence_corpora.bible_parallel("test")]
    return clustering([(v.text, names[v.book - 1]) for v in rows], n, salt)


# --------------------------------------------------------------------------------------- Rotten Tomatoes
RT_SENTIMENT_LABELS = {"fresh": "positive", "rotten": "negative"}
RT_MIN_PLOT_SENTENCE_WORDS = 5


def rt_sentiment() -> list[corpora.LabelledText]:
    """Critic snippets labelled by the critic's verdict: fresh = positive, rotten = negative."""
    return [
        corpora.LabelledText(s.text, RT_SENTIMENT_LABELS[s.category])
        for s in sentence_corpora.rotten_tomatoes()
        if s.category in RT_SENTIMENT_LABELS
    ]


def rt_subjectivity() -> list[corpora.LabelledText]:
    """Plot-summary sentences (objective) and as many critic snippets (subjective, first in stable-hash order)."""
    snippets = sentence_corpora.rotten_tomatoes()
    objective = corpora.dedupe(
        (
            sentence.strip()
            for s in snippets
            if s.category == "plot"
            for sentence in _SENTENCE_END.split(s.text)
            if len(sentence.split()) >= RT_MIN_PLOT_SENTENCE_WORDS
        ),
        lambda t: t,
    )
    reviews = sample([s.text for s in snippets if s.category != "plot"], len(objective), lambda t: t, "rt-subj")
    return [corpora.LabelledText(t, "objective") for t in objective] + [
        corpora.LabelledText(t, "subjective") for t in reviews
    ]


def rt_plot_retrieval(n: int) -> RetrievalData:
    """Critic snippet (>= 6 words) -> the plot summary of the movie it reviews; the corpus holds every plot
    summary of a movie with reviewed snippets."""
    snippets = sentence_corpora.rotten_tomatoes()
    plots = {s.movie: clip(s.text) for s in snippets if s.category == "plot"}
    reviews = [s for s in snippets if s.category != "plot" and s.movie in plots and len(s.text.split()) >= 6]
    chosen = sample(reviews, n, lambda s: s.text, "rt-plot")
    corpus = sorted({plots[s.movie] for s in reviews})
    return retrieval([(s.text, plots[s.movie]) for s in chosen], "rt-plot", corpus=corpus)
