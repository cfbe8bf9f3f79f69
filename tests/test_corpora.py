"""Readers of the shipped data sets, their validation errors and the fixed, stable splits."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from poolattn import corpora, sentence_corpora
from poolattn.corpora import CorpusError


@pytest.fixture
def fake_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point ``corpora.data_path`` at a temporary file with the given content (readers' caches cleared)."""
    readers = (
        corpora.lee_documents,
        corpora.lee_similarity_pairs,
        corpora.word_similarity,
        corpora.trec_questions,
        corpora.sms_spam,
        corpora.vader_snippets,
        corpora.mini_newsgroups,
        corpora.movie_dialog,
        corpora.pang_lee_polarity,
        sentence_corpora.rotten_tomatoes,
        sentence_corpora.bible,
    )

    def make(content: str | bytes, reader) -> Path:
        path = tmp_path / "data.txt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        monkeypatch.setattr(corpora, "data_path", lambda source, relpath: path)
        reader.cache_clear()
        return path

    yield make
    for reader in readers:
        reader.cache_clear()


# ------------------------------------------------------------------------------------------ hashing


def test_stable_hash_is_pinned_and_normalises_text() -> None:
    assert corpora.stable_hash("Hello  World", "salt") == corpora.stable_hash(" hello world ", "salt")
    assert corpora.stable_hash("hello world", "salt") != corpora.stable_hash("hello world", "other")
    assert corpora.stable_hash("hello world", "salt") == 0xBA696646DFAF3AB7
    assert 0.0 <= corpora.stable_fraction("anything", "x") < 1.0


def test_stable_hash_ignores_pythonhashseed() -> None:
    code = "from poolattn.corpora import stable_hash; print(stable_hash('a text', 'split'))"
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(out.stdout.strip())
    assert outputs == {str(corpora.stable_hash("a text", "split"))}


def test_hash_order_prefixes_are_nested() -> None:
    items = [f"text {i}" for i in range(200)]
    order = corpora.hash_order(items, lambda t: t, "salt")
    assert sorted(order) == sorted(items)
    assert order == corpora.hash_order(list(reversed(items)), lambda t: t, "salt")
    assert set(order[:50]) <= set(order[:120])


# ------------------------------------------------------------------------------------------- readers


def test_lee_documents_and_similarity_matrix() -> None:
    docs = corpora.lee_documents()
    pairs = corpora.lee_similarity_pairs()
    assert len(docs) == 50 and len(set(docs)) == 50
    assert "£" in "".join(docs)  # ISO-8859-1 decoded
    assert len(pairs) == 50 * 49 // 2
    assert pairs[0] == corpora.ScoredPair(docs[0], docs[1], 0.3)
    assert pairs[-1] == corpora.ScoredPair(docs[48], docs[49], 0.36)
    assert all(0.0 <= p.score <= 1.0 for p in pairs)


def test_lee_background() -> None:
    docs = corpora.lee_background()
    assert len(docs) == 300
    assert docs[0].startswith("Hundreds of people have been forced to vacate their homes")


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [("wordsim353", 353, ("love", "sex", 6.77)), ("simlex999", 999, ("old", "new", 1.58))],
)
def test_word_similarity(name: str, count: int, first: tuple[str, str, float]) -> None:
    pairs = corpora.word_similarity(name)
    assert len(pairs) == count
    assert tuple(pairs[0]) == first
    assert all(0.0 <= p.score <= 10.0 for p in pairs)


def test_pang_lee_polarity() -> None:
    rows = corpora.pang_lee_polarity()
    assert Counter(r.label for r in rows) == {"neg": 100, "pos": 100}
    assert rows[0] == corpora.LabelledText("simplistic , silly and tedious .", "neg")
    assert any("clichés" in r.text for r in rows)  # Windows-1252 decoded


def test_mini_newsgroups_strip_headers() -> None:
    posts = corpora.mini_newsgroups()
    assert Counter(p.group for p in posts) == {"alt.atheism": 100, "sci.space": 100}
    assert posts[0].subject == "Re: Biblical Rape"
    assert not any(p.body.startswith(("Newsgroups:", "Path:", "From:")) for p in posts)
    assert corpora.clean_subject("Re: RE:  Fwd: Moon base") == "Moon base"


def test_trec_questions_deduplicated() -> None:
    questions = corpora.trec_questions()
    assert len(questions) == len({corpora.normalize(q.text) for q in questions}) == 5379
    assert Counter(q.coarse for q in questions).keys() == set(corpora.TREC_COARSE)
    assert len({q.fine for q in questions}) == 50
    assert all(q.fine.startswith(q.coarse + ":") for q in questions)


def test_sms_spam() -> None:
    rows = corpora.sms_spam()
    assert Counter(r.label for r in rows) == {"ham": 3954, "spam": 557}
    assert rows[0].text.startswith("Go until jurong point")


@pytest.mark.parametrize(
    ("source", "count"),
    [("tweets", 4140), ("movie_reviews", 10603), ("product_reviews", 3697), ("editorials", 5119)],
)
def test_vader_snippets(source: str, count: int) -> None:
    snippets = corpora.vader_snippets(source)
    assert len(snippets) == count
    assert all(-4.0 <= s.sentiment <= 4.0 and s.source == source for s in snippets)


def test_movie_dialog_raw() -> None:
    pairs = corpora.movie_dialog()
    assert len(pairs) == 64350
    assert pairs[0] == ("you're asking me out. that's so cute. what's your name again?", "forget it.")


# --------------------------------------------------------------------------------------- validation


def test_bible_translations_are_verse_aligned() -> None:
    names = sentence_corpora.bible_book_names()
    assert len(names) == 66 and names[0] == "Genesis" and names[42] == "John" and names[-1] == "Revelation"
    first = {v: sentence_corpora.bible(v)[0].text for v in sentence_corpora.BIBLE_VERSIONS}
    assert first == {
        "kjv": "In the beginning God created the heaven and the earth.",
        "web": "In the beginning God created the heavens and the earth.",
        "ylt": "In the beginning of God's preparing the heavens and the earth --",
    }
    kjv = {v.ref: v.text for v in sentence_corpora.bible("kjv")}
    assert len(kjv) == 31102 and kjv[19023001] == "The LORD is my shepherd; I shall not want."  # brackets dropped
    assert {v.ref for v in sentence_corpora.bible("ylt")} == set(kjv)
    # the WEB puts the closing doxology of Romans at 14:24-26, the KJV at 16:25-27: those verses stay unpaired
    assert {v.ref for v in sentence_corpora.bible("web")} ^ set(kjv) == {
        45014024,
        45014025,
        45014026,
        45016025,
        45016026,
        45016027,
    }
    test, train = sentence_corpora.bible_parallel("test"), sentence_corpora.bible_parallel("train")
    assert (len(test), len(train)) == (10213, 20883)
    held_out = sorted({names[row[0].book - 1] for row in test}, key=names.index)
    assert held_out[:4] == ["2 Kings", "2 Chronicles", "Nehemiah", "Psalms"] and len(held_out) == 20
    assert not {row[0].book for row in test} & {row[0].book for row in train}
    assert all(len({v.ref for v in row}) == 1 for row in test[:500])
    with pytest.raises(ValueError, match="unknown Bible version"):
        sentence_corpora.bible("niv")


def test_rotten_tomatoes() -> None:
    snippets = sentence_corpora.rotten_tomatoes()
    assert Counter(s.category for s in snippets) == {"fresh": 7368, "rotten": 5383, "plot": 1083}
    assert len({s.movie for s in snippets}) == 1434 and not any("&amp;" in s.text for s in snippets)


def test_bible_and_rotten_tomatoes_errors(fake_file) -> None:
    fake_file("x = 1\n", sentence_corpora.bible)
    with pytest.raises(CorpusError, match="no triple-quoted scripture text"):
        sentence_corpora.bible("kjv")
    fake_file(
        'bible = Bible(\n    """\n1. Text.""",\n    {\n        1001001: 1,\n    },\n    {\n    },\n)\n',
        sentence_corpora.bible,
    )
    with pytest.raises(CorpusError, match="verse starts and 0 ends"):
        sentence_corpora.bible("kjv")
    import bz2

    fake_file(
        bz2.compress(b"category,text,movie_name,has_plot_and_reviews\nmeh,Bad.,m,False\n"),
        sentence_corpora.rotten_tomatoes,
    )
    with pytest.raises(CorpusError, match="line 2, field 'category'"):
        sentence_corpora.rotten_tomatoes()


def test_word_similarity_error_names_file_line_field(fake_file) -> None:
    path = fake_file("# header\nlove\tsex\t6.77\ntiger\tcat\tmany\n", corpora.word_similarity)
    with pytest.raises(CorpusError, match=rf"{path}, line 3, field 'score': 'many' is not a number"):
        corpora.word_similarity("wordsim353")


def test_word_similarity_wrong_field_count(fake_file) -> None:
    path = fake_file("love\tsex\n", corpora.word_similarity)
    with pytest.raises(CorpusError, match=rf"{path}, line 1, field 'row': expected 3 tab-separated fields"):
        corpora.word_similarity("wordsim353")


def test_trec_bad_label(fake_file) -> None:
    path = fake_file("HUM:ind Who was it ?\nWHAT:ever Which one ?\n", corpora.trec_questions)
    with pytest.raises(CorpusError, match=rf"{path}, line 2, field 'label': 'WHAT:ever'"):
        corpora.trec_questions()


def test_sms_bad_header_and_label(fake_file) -> None:
    path = fake_file("id,label,text\n0,0,hi\n", corpora.sms_spam)
    with pytest.raises(CorpusError, match=rf"{path}, line 1, field 'header'"):
        corpora.sms_spam()
    path = fake_file(',spam,text\n0,0,"hello\nthere"\n1,2,buy now\n', corpora.sms_spam)
    with pytest.raises(CorpusError, match=rf"{path}, line 4, field 'spam': '2' is not 0 or 1"):
        corpora.sms_spam()


def test_vader_sentiment_out_of_range(fake_file) -> None:
    path = fake_file("id\tsentiment\ttext\r\n1\t2.5\tgood\r\n2\t9.0\tawesome\r\n", corpora.vader_snippets)
    with pytest.raises(CorpusError, match=rf"{path}, line 3, field 'sentiment': 9.0 is outside"):
        corpora.vader_snippets("tweets")


def test_lee_similarity_wrong_columns(fake_file, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "lee_documents", lambda: ("a", "b", "c"))
    path = fake_file("1\t0.5\t0.2\n0\t1\n0\t0\t1\n", corpora.lee_similarity_pairs)
    with pytest.raises(CorpusError, match=rf"{path}, line 2, field 'row': expected 3 columns, found 2"):
        corpora.lee_similarity_pairs()


def test_lee_documents_empty_line_and_count(fake_file) -> None:
    path = fake_file("doc one\n\ndoc three\n", corpora.lee_documents)
    with pytest.raises(CorpusError, match=rf"{path}, line 2, field 'document': empty line"):
        corpora.lee_documents()


def test_invalid_encoding_is_reported_with_line(fake_file) -> None:
    path = fake_file(b"HUM:ind Who ?\nHUM:ind Wh\xff ?\n", corpora.trec_questions)
    with pytest.raises(CorpusError, match=rf"{path}, line 2, field 'text': not valid utf-8"):
        corpora.trec_questions()


def test_newsgroup_pickle_refuses_foreign_globals(fake_file) -> None:
    evil = zlib.compress(pickle.dumps(os.getcwd, protocol=0))  # a global outside the allowed set
    path = fake_file(evil, corpora.mini_newsgroups)
    with pytest.raises(CorpusError, match=rf"{path}, field 'pickle': cannot load: refusing to load"):
        corpora.mini_newsgroups()
    fake_file(b"not zlib", corpora.mini_newsgroups)
    with pytest.raises(CorpusError, match="field 'pickle'"):
        corpora.mini_newsgroups()


def test_newsgroup_pickle_missing_field(fake_file) -> None:
    buffer = io.BytesIO()
    pickle.dump({"data": ["Subject: x\n\nbody"]}, buffer, protocol=0)
    path = fake_file(zlib.compress(buffer.getvalue()), corpora.mini_newsgroups)
    with pytest.raises(CorpusError, match=rf"{path}, field 'target': missing"):
        corpora.mini_newsgroups()


def test_movie_dialog_wrong_header(fake_file) -> None:
    path = fake_file("statement,reply\nhi,there\n", corpora.movie_dialog)
    with pytest.raises(CorpusError, match=rf"{path}, line 1, field 'header'"):
        corpora.movie_dialog()


# ------------------------------------------------------------------------------------------ WordNet


def _write_wordnet(folder: Path) -> None:
    """A tiny database laid out as Debian's wordnet-base (no lexnames file)."""
    folder.mkdir()
    licence = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    (folder / "data.noun").write_text(
        licence + "02084071 05 n 02 dog 0 domestic_dog 0 000 | a member of the genus Canis; occurs in many breeds; "
        '"the dog barked all night"\n' + "00001740 03 n 01 entity 0 000 | that which is perceived to exist\n"
    )
    (folder / "data.verb").write_text(
        licence + '00001740 29 v 01 breathe 0 000 | draw air into the lungs; "he breathed"\n'
    )
    (folder / "data.adj").write_text(licence)
    (folder / "data.adv").write_text(licence)


def test_parse_wordnet(tmp_path: Path) -> None:
    _write_wordnet(tmp_path / "wn")
    senses = corpora.parse_wordnet(tmp_path / "wn")
    assert senses[0] == corpora.WordNetSense(
        "02084071n",
        "noun.animal",
        ("dog", "domestic dog"),
        "a member of the genus Canis; occurs in many breeds",
        ("the dog barked all night",),
    )
    assert senses[1].examples == () and senses[1].lexname == "noun.Tops"
    assert senses[2] == corpora.WordNetSense(
        "00001740v", "verb.body", ("breathe",), "draw air into the lungs", ("he breathed",)
    )


def test_parse_wordnet_lexnames_file_and_bad_line(tmp_path: Path) -> None:
    _write_wordnet(tmp_path / "wn")
    (tmp_path / "wn" / "lexnames").write_text("03\tnoun.top\t1\n05\tnoun.beast\t1\n29\tverb.body\t2\n")
    assert corpora.parse_wordnet(tmp_path / "wn")[0].lexname == "noun.beast"
    (tmp_path / "wn" / "data.adv").write_text("00001 44 r 01 fast 0 000 | quickly\n")
    with pytest.raises(CorpusError, match=r"data\.adv, line 1, field 'synset'"):
        corpora.parse_wordnet(tmp_path / "wn")
    (tmp_path / "wn" / "lexnames").write_text("adj.all 00\n")
    with pytest.raises(CorpusError, match=r"lexnames, line 1, field 'lexname'"):
        corpora.parse_wordnet(tmp_path / "wn")
