"""The offline suite: task registry, fixed splits, MTEB-exact scorers, per-sample scores and the runner."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from poolattn import assets, corpora, sentence_corpora, stats
from poolattn.evaluate import offline
from poolattn.evaluate.encoders import EmbeddingCache, SentenceTransformerEncoder
from poolattn.evaluate.scorers import K_VALUES, score_ranking, score_sts, undersample
from poolattn.evaluate.tasks import (
    _BUILT,
    CATEGORIES,
    QUERY_ONLY,
    STS_INSTRUCTION,
    TASKS,
    ClassificationData,
    RetrievalData,
    STSData,
    Task,
    data_hash,
    get_task,
    list_tasks,
    n_samples,
    resolve_instruction,
)


class HashEncoder:
    """Hashed bag of words (instruction words included) plus a little text-seeded noise; L2-normalised."""

    name = "hash-bow"

    def __init__(self, dim: int = 128) -> None:
        self.dim = dim
        self.calls: list[tuple[str | None, list[str]]] = []

    def encode(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        self.calls.append((instruction, list(texts)))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, 0] = 0.5
            for word in re.findall(r"\w+", f"{instruction or ''} {text}".lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[i, 1 + h % (self.dim - 1)] += 1.0 if h & 1 else -1.0
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
            out[i] += 0.05 * np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


#: One small task per category for the comparisons with mteb.
ONE_PER_CATEGORY = {
    "sts": "WordSim353STS",
    "classification": "MovieReviewPolarityClassification",
    "clustering": "NewsgroupTopicClustering",
    "pair_classification": "MovieDialogReplyPairClassification",
    "reranking": "MovieDialogReplyReranking",
    "retrieval": "NewsLeadRetrieval",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path, HashEncoder]:
    encoder = HashEncoder()
    out = tmp_path_factory.mktemp("quick")
    results = offline.run_suite(encoder, out, tasks=list(ONE_PER_CATEGORY.values()), profile="quick", progress=False)
    return results, out, encoder


# ------------------------------------------------------------------------------------------ registry


def test_registry_covers_mteb_categories() -> None:
    by_category: dict[str, list[str]] = {}
    for task in list_tasks(include_unavailable=True):
        by_category.setdefault(task.category, []).append(task.name)
        assert task.description and task.source and task.split and task.instruction
        assert task.sizes["quick"] <= task.sizes["full"]
    assert set(by_category) == set(CATEGORIES)
    for category in ("sts", "classification", "clustering", "retrieval"):
        assert len([n for n in by_category[category] if not get_task(n).optional]) >= 3
    with pytest.raises(KeyError, match="unknown task 'Nope'; known: LeeDocSTS"):
        get_task("Nope")
    with pytest.raises(ValueError, match="unknown profile"):
        list_tasks("huge")  # type: ignore[arg-type]


#: Content hashes of every built-in task: the splits and samples are fixed (changing them is deliberate).
PINNED = {
    ("LeeDocSTS", "full"): "637c625b3c59279b",
    ("LeeDocSTS", "quick"): "637c625b3c59279b",
    ("WordSim353STS", "full"): "b218fe2c6bf5fadf",
    ("WordSim353STS", "quick"): "b218fe2c6bf5fadf",
    ("SimLex999STS", "full"): "ffabad51368664b3",
    ("SimLex999STS", "quick"): "ffabad51368664b3",
    ("TRECCoarseClassification", "full"): "442a3e52c067d532",
    ("TRECCoarseClassification", "quick"): "457e61577322f53e",
    ("SMSSpamClassification", "full"): "33c519124e19464c",
    ("SMSSpamClassification", "quick"): "5c67d2dec62aa4f3",
    ("TweetPolarityClassification", "full"): "084b2f42124ff309",
    ("TweetPolarityClassification", "quick"): "4b2bb71d4a2929af",
    ("ProductReviewPolarityClassification", "full"): "aa9e31a6e599b29b",
    ("ProductReviewPolarityClassification", "quick"): "9e1fb88a6372c3a7",
    ("MovieReviewPolarityClassification", "full"): "7d30ce8749eb1d66",
    ("MovieReviewPolarityClassification", "quick"): "64d5f548466a5f59",
    ("TRECFineClustering", "full"): "26a0b17490e1dc2c",
    ("TRECFineClustering", "quick"): "a024f7eb794e7444",
    ("NewsgroupTopicClustering", "full"): "8183f596ea39883b",
    ("NewsgroupTopicClustering", "quick"): "eb3068b4c3bf8bcc",
    ("TextSourceClustering", "full"): "6502805b1017aec7",
    ("TextSourceClustering", "quick"): "94c29e805f9fc364",
    ("MovieDialogReplyPairClassification", "full"): "539f09e9f27f1573",
    ("MovieDialogReplyPairClassification", "quick"): "47feee0aec2bc31d",
    ("MovieDialogReplyReranking", "full"): "770b54696f70a453",
    ("MovieDialogReplyReranking", "quick"): "5964031f39192420",
    ("MovieDialogReplyRetrieval", "full"): "272174b2c9f6511d",
    ("MovieDialogReplyRetrieval", "quick"): "22cd1c2f2b6268ee",
    ("NewsgroupSubjectRetrieval", "full"): "19d3fbf4cadb99af",
    ("NewsgroupSubjectRetrieval", "quick"): "c01db7eac6510525",
    ("NewsLeadRetrieval", "full"): "ead87e939b0d6d1c",
    ("NewsLeadRetrieval", "quick"): "d9abc1e2c06f4d68",
    ("BibleKJVWEBGradedSTS", "full"): "56e84fda8244b467",
    ("BibleKJVWEBGradedSTS", "quick"): "5531e8316fc225e9",
    ("BibleWEBYLTGradedSTS", "full"): "6c84f9124aa36128",
    ("BibleWEBYLTGradedSTS", "quick"): "7157108ad1bf0b62",
    ("BibleKJVYLTGradedSTS", "full"): "74ed2f718072c441",
    ("BibleKJVYLTGradedSTS", "quick"): "9710f960bebb5b95",
    ("BibleKJVWEBParaphrasePairClassification", "full"): "acfc627972d40710",
    ("BibleKJVWEBParaphrasePairClassification", "quick"): "21ee8809fdf126e1",
    ("BibleWEBYLTParaphrasePairClassification", "full"): "e14be971cff97a25",
    ("BibleWEBYLTParaphrasePairClassification", "quick"): "8af74c837ed77114",
    ("BibleKJVWEBVerseRetrieval", "full"): "12fe4b6e5ce837c9",
    ("BibleKJVWEBVerseRetrieval", "quick"): "3b1091c99f41c347",
    ("BibleYLTKJVVerseRetrieval", "full"): "4ea856294bee4784",
    ("BibleYLTKJVVerseRetrieval", "quick"): "818c09c0c2a3b79d",
    ("BibleKJVWEBVerseReranking", "full"): "39bff31d660628f9",
    ("BibleKJVWEBVerseReranking", "quick"): "47183727d7a8dce6",
    ("BibleBookClustering", "full"): "0d2e46d539cc0e01",
    ("BibleBookClustering", "quick"): "db79638ea6b3b371",
    ("RottenTomatoesPlotRetrieval", "full"): "3dd126ce85e9c171",
    ("RottenTomatoesPlotRetrieval", "quick"): "50657a7be199365c",
    ("RottenTomatoesSentimentClassification", "full"): "cf1c70ff19cae2a7",
    ("RottenTomatoesSentimentClassification", "quick"): "b362f481485bb460",
    ("RottenTomatoesSubjectivityClassification", "full"): "976fd63aa5d4b337",
    ("RottenTomatoesSubjectivityClassification", "quick"): "2cb426e94cc3bc7b",
}


@pytest.mark.parametrize("task", [t for t in TASKS.values() if not t.optional], ids=lambda t: t.name)
def test_quick_is_a_subset_of_full_and_splits_are_pinned(task: Task) -> None:
    full, quick = task.load("full"), task.load("quick")
    assert n_samples(quick) <= n_samples(full)
    assert quick.all_texts() <= full.all_texts()
    if isinstance(full, RetrievalData):
        assert set(quick.query_ids) <= set(full.query_ids) and set(quick.doc_ids) <= set(full.doc_ids)
        assert all(quick.qrels[q].items() <= full.qrels[q].items() for q in quick.query_ids)
    else:
        assert set(quick.ids) <= set(full.ids)
    if isinstance(full, ClassificationData):
        assert quick.train_texts == full.train_texts and not set(full.texts) & set(full.train_texts)
        # quick's n-shot draws are the first draws of full's sequence
        draws = undersample(full.train_labels, full.n_experiments, full.samples_per_label)
        assert (
            undersample(full.train_labels, quick.n_experiments, quick.samples_per_label) == draws[: quick.n_experiments]
        )
    if isinstance(full, RetrievalData):
        assert not set(full.queries) & set(full.docs)
    for profile, data in (("full", full), ("quick", quick)):
        assert data_hash(data) == PINNED[(task.name, profile)], (task.name, profile)


#: Samples (full, quick) of the sentence-level tasks.
SENTENCE_TASK_SIZES = {
    "BibleKJVWEBGradedSTS": (1200, 150),
    "BibleWEBYLTGradedSTS": (1200, 150),
    "BibleKJVYLTGradedSTS": (1200, 150),
    "BibleKJVWEBParaphrasePairClassification": (1000, 200),
    "BibleWEBYLTParaphrasePairClassification": (1000, 200),
    "BibleKJVWEBVerseRetrieval": (500, 50),
    "BibleYLTKJVVerseRetrieval": (500, 50),
    "BibleKJVWEBVerseReranking": (250, 40),
    "BibleBookClustering": (1000, 100),
    "RottenTomatoesPlotRetrieval": (500, 50),
    "RottenTomatoesSentimentClassification": (1000, 60),
    "RottenTomatoesSubjectivityClassification": (1000, 60),
}


def _all(data) -> list[str]:
    return sorted(data.all_texts())


@pytest.mark.parametrize("name", SENTENCE_TASK_SIZES)
def test_sentence_tasks_have_their_sizes_and_sentences(name: str) -> None:
    task = get_task(name)
    data = task.load("full")
    assert (n_samples(data), n_samples(task.load("quick"))) == SENTENCE_TASK_SIZES[name]
    texts = {ClassificationData: lambda d: d.texts, RetrievalData: lambda d: d.queries}.get(type(data), _all)(data)
    assert 15 <= np.mean([len(t.split()) for t in texts]) <= 30  # sentences, not words or documents


def test_bible_tasks_known_items() -> None:
    sts = get_task("BibleKJVWEBGradedSTS").load("full")
    assert sts.gold[:3] == (2.0, 1.0, 0.0) and sorted(set(sts.gold)) == [0.0, 1.0, 2.0]
    assert sts.gold.count(2.0) == sts.gold.count(1.0) == sts.gold.count(0.0) == 400
    assert sts.ids[0] == "bible-sts-kjv-web-19119083"  # Psalm 119:83
    assert sts.texts1[0] == "For I am become like a bottle in the smoke; yet do I not forget thy statutes."
    assert sts.texts2[0] == "For I have become like a wineskin in the smoke. I don't forget your statutes."
    pairs = get_task("BibleKJVWEBParaphrasePairClassification").load("full")
    assert pairs.ids[:2] == ("pos-bible-pairs-kjv-web-19074014", "neg-bible-pairs-kjv-web-19074014")
    assert pairs.labels.count(1) == pairs.labels.count(0) == 500 and pairs.texts1[0] == pairs.texts1[1]
    assert pairs.texts2[1] == "You opened up spring and stream. You dried up mighty rivers."  # Psalm 74:15
    retrieval = get_task("BibleKJVWEBVerseRetrieval").load("full")
    assert len(retrieval.docs) == 1385 and all(len(r) == 1 for r in retrieval.qrels.values())
    reranking = get_task("BibleKJVWEBVerseReranking").load("full")
    assert reranking.candidates is not None and len(reranking.docs) == 3527
    assert all(len(c) == 20 and c[0] in reranking.qrels[q] for q, c in reranking.candidates.items())
    clusters = get_task("BibleBookClustering").load("full")
    assert len(set(clusters.labels)) == 20 and clusters.labels[0] == "2 Kings"
    used = {
        t for name in SENTENCE_TASK_SIZES if name.startswith("Bible") for t in get_task(name).load("full").all_texts()
    }
    held_out = {v.text for row in sentence_corpora.bible_parallel("test") for v in row}
    assert used <= held_out  # every Bible evaluation text comes from a held-out book


def test_rotten_tomatoes_tasks_known_items() -> None:
    sentiment = get_task("RottenTomatoesSentimentClassification").load("full")
    assert sentiment.label_names == ("negative", "positive") and sentiment.labels.count(1) == 572
    assert len(sentiment.train_texts) == 8872 and not set(sentiment.texts) & set(sentiment.train_texts)
    subjectivity = get_task("RottenTomatoesSubjectivityClassification").load("full")
    assert subjectivity.label_names == ("objective", "subjective") and subjectivity.labels.count(1) == 506
    assert len(subjectivity.train_texts) == 7724
    plots = get_task("RottenTomatoesPlotRetrieval").load("full")
    assert len(plots.docs) == 156 and len({d for r in plots.qrels.values() for d in r}) <= 156
    assert plots.queries[0].startswith("A puppy dog so desperate for attention")


def test_undersample_matches_mteb() -> None:
    from datasets import Dataset
    from mteb.abstasks.classification import AbsTaskClassification

    labels = [i % 3 for i in range(40)] + [1] * 7
    dataset = Dataset.from_dict({"text": [str(i) for i in range(len(labels))], "label": labels})
    task = AbsTaskClassification.__new__(AbsTaskClassification)
    task.seed, task.samples_per_label, task.label_column_name = 42, 4, "label"
    idxs, expected = None, []
    for i in range(5):
        _, idxs, chosen = task._undersample_data(dataset, i, idxs)
        expected.append(chosen)
    assert undersample(labels, 5, 4) == expected


# ------------------------------------------------------------------------------------------- scorers


def _embed_table(vectors: dict[str, list[float]]):
    def embed(texts, instruction):
        rows = np.asarray([vectors[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    return embed


def test_ranking_scores_by_hand() -> None:
    vectors = {"q1": [1, 0], "q2": [0, 1], "a": [1, 0.1], "b": [0.1, 1], "c": [1, 1]}
    data = RetrievalData(
        ("q1", "q2"), ("q1", "q2"), ("da", "db", "dc"), ("a", "b", "c"), {"q1": {"da": 1}, "q2": {"da": 1}}
    )
    score = score_ranking(data, _embed_table(vectors), None, main="ndcg_cut_10")
    # q1 ranks a first (nDCG 1); q2 ranks b, c, a: relevant at rank 3, nDCG = 1/log2(4)
    assert score.per_sample["score"] == pytest.approx([1.0, 0.5])
    assert score.main == pytest.approx(0.75)
    assert score.metrics["mrr_at_10"] == pytest.approx((1 + 1 / 3) / 2)
    assert score.metrics["recall_at_1"] == pytest.approx(0.5)
    reranked = dataclasses.replace(data, candidates={"q1": ("da", "dc"), "q2": ("da", "db")})
    score = score_ranking(reranked, _embed_table(vectors), None, main="map_cut_1000")
    assert score.per_sample["score"] == pytest.approx([1.0, 0.5])


def test_sts_score_by_hand() -> None:
    vectors = {"a": [1, 0], "b": [1, 0.2], "c": [0, 1], "d": [1, 1]}
    data = STSData(("p1", "p2", "p3"), ("a", "a", "a"), ("b", "c", "d"), (5.0, 0.0, 3.0), 0.0, 5.0)
    score = score_sts(data, _embed_table(vectors), None)
    assert score.main == pytest.approx(1.0)
    assert score.per_sample["statistic"] == "spearman" and score.per_sample["gold"] == [5.0, 0.0, 3.0]


def test_encoder_output_is_validated() -> None:
    class Bad:
        name = "bad"

        def encode(self, texts, *, instruction=None):
            return np.ones((len(texts), 4), dtype=np.float32)

    cache = EmbeddingCache(Bad())
    with pytest.raises(ValueError, match=r"row 0 has norm 2\.0000; rows must be L2-normalised"):
        cache(["a", "b"], None)


# --------------------------------------------------------------------------------------- vs mteb


def _mteb_scores(encoder, names: list[str], profile: str, prediction_folder: Path | None = None) -> dict:
    import mteb

    from poolattn.evaluate.mteb_adapter import MTEBEncoder, as_mteb_task

    tasks = [as_mteb_task(name, profile) for name in names]
    result = mteb.evaluate(
        MTEBEncoder(encoder), tasks, cache=None, show_progress_bar=False, prediction_folder=prediction_folder
    )
    return {r.task_name: r.scores["test"][0] for r in result.task_results}


def test_main_scores_equal_mteb(quick_results, tmp_path: Path) -> None:
    """The same embeddings through mteb's own task classes give the same main scores.

    mteb rounds retrieval/reranking means to 5 decimals; the unrounded per-query scores are compared
    with mteb's own metric code applied to the rankings mteb saved.
    """
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    results, _, _ = quick_results
    ours = {r["task"]: r for r in results}
    theirs = _mteb_scores(HashEncoder(), list(ONE_PER_CATEGORY.values()), "quick", tmp_path)  # same embeddings
    for category, name in ONE_PER_CATEGORY.items():
        mine, mteb_score = ours[name], theirs[name]
        if category in QUERY_ONLY:
            assert abs(mine["main_score"] - mteb_score["main_score"]) <= 5e-6 + 1e-12, name
            predictions = json.loads((tmp_path / f"{name}_predictions.json").read_text())["default"]["test"]
            data = get_task(name).load("quick")
            per_query = calculate_retrieval_scores(predictions, data.qrels, K_VALUES).all_scores
            key = "map_cut_1000" if category == "reranking" else "ndcg_cut_10"
            expected = [per_query[q][key] for q in mine["per_sample"]["ids"]]
            np.testing.assert_allclose(mine["per_sample"]["score"], expected, rtol=0, atol=1e-12)
        else:
            assert mine["main_score"] == pytest.approx(mteb_score["main_score"], abs=1e-9), name
        for metric, value in mine["metrics"].items():
            if metric in mteb_score and not metric.startswith(("similarity_", "max_", "dot_")):
                assert value == pytest.approx(mteb_score[metric], abs=1e-5 + 1e-9), (name, metric)


@pytest.mark.slow
def test_every_task_equals_mteb(tmp_path: Path) -> None:
    encoder = HashEncoder()
    names = [t.name for t in list_tasks()]
    results = offline.run_suite(encoder, tmp_path / "suite", profile="quick", progress=False)
    theirs = _mteb_scores(encoder, names, "quick")
    for r in results:
        tolerance = 5e-6 if r["category"] in QUERY_ONLY else 1e-9
        assert abs(r["main_score"] - theirs[r["task"]]["main_score"]) <= tolerance + 1e-12, r["task"]


# ---------------------------------------------------------------------------------------- runner


def test_result_files_and_per_sample_recompute_main_score(quick_results) -> None:
    results, out, _ = quick_results
    assert [r["task"] for r in results] == list(ONE_PER_CATEGORY.values())
    for r in results:
        stored = json.loads((out / f"{r['task']}.json").read_text())
        assert stored == json.loads(json.dumps(r))
        assert set(offline.RESULT_KEYS) <= set(stored)
        assert stored["profile"] == "quick" and stored["model_id"] == "hash-bow"
        assert stored["versions"]["mteb"] and stored["versions"]["numpy"]
        assert stats.score_from_samples(stored["per_sample"]) == pytest.approx(stored["main_score"], abs=1e-12)
        expected_statistic = {"sts": "spearman", "pair_classification": "average_precision"}.get(r["category"], "mean")
        assert stored["per_sample"]["statistic"] == expected_statistic
        assert stored["encode_seconds"] >= 0 and stored["n_samples"] > 0
    classification = next(r for r in results if r["category"] == "classification")
    assert all(0 <= s <= 1 for s in classification["per_sample"]["score"])
    clustering = next(r for r in results if r["category"] == "clustering")
    assert len(clustering["per_sample"]["ids"]) == 10
    assert not list(out.glob(".*.tmp"))


def test_instructions_queries_only_for_retrieval(quick_results) -> None:
    _, _, encoder = quick_results
    retrieval = get_task("NewsLeadRetrieval")
    data = retrieval.load("quick")
    seen = {(instruction, text) for instruction, texts in encoder.calls for text in texts}
    assert all((retrieval.instruction, q) in seen for q in data.queries)
    assert all((None, d) in seen for d in data.docs)
    sts = get_task("WordSim353STS")
    assert all((sts.instruction, t) in seen for t in sts.load("quick").all_texts())
    # every (instruction, text) is encoded once per run
    flat = [(instruction, text) for instruction, texts in encoder.calls for text in texts]
    assert len(flat) == len(set(flat))


def test_stored_results_are_reused_or_recomputed(tmp_path: Path) -> None:
    encoder = HashEncoder()
    tasks = ["WordSim353STS", "NewsLeadRetrieval"]
    first = offline.run_suite(encoder, tmp_path, tasks=tasks, profile="quick", config_hash="abc", progress=False)
    calls = len(encoder.calls)
    again = offline.run_suite(encoder, tmp_path, tasks=tasks, profile="quick", config_hash="abc", progress=False)
    assert len(encoder.calls) == calls and again == json.loads(json.dumps(first))
    offline.run_suite(encoder, tmp_path, tasks=tasks[:1], profile="quick", config_hash="other", progress=False)
    assert len(encoder.calls) > calls
    calls = len(encoder.calls)
    (tmp_path / "NewsLeadRetrieval.json").write_text('{"task": "NewsLeadRetrieval"')  # truncated file
    offline.run_suite(encoder, tmp_path, tasks=tasks, profile="quick", config_hash="other", progress=False)
    assert len(encoder.calls) > calls
    stored = json.loads((tmp_path / "NewsLeadRetrieval.json").read_text())
    assert stored["config_hash"] == "other"


def save_untrained_and_trained(backbone: Path, folder: Path) -> tuple[Path, Path]:
    """Two saved models of one design on one backbone: untrained, and with a trained (perturbed) LoRA adapter.
    Their names and config hashes are equal; only their weights differ."""
    import torch

    from poolattn import EmbeddingModel

    EmbeddingModel.from_backbone(backbone).save(folder / "untrained")
    trained = EmbeddingModel.from_backbone(backbone)
    trained.add_lora(r=4, alpha=8, dropout=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trained.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    trained.save(folder / "trained")
    return folder / "untrained", folder / "trained"


@pytest.fixture(scope="module")
def untrained_and_trained(tiny_factory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_untrained_and_trained(tiny_factory("llama"), tmp_path_factory.mktemp("models"))


def counted(model):
    """``model`` with a list of the sizes of its encode calls."""
    model.calls = []
    encode = model.encode
    model.encode = lambda texts, **kw: model.calls.append(len(texts)) or encode(texts, **kw)
    return model


def test_a_stored_result_is_reused_only_for_the_same_weights(untrained_and_trained, tmp_path: Path) -> None:
    from poolattn import EmbeddingModel

    untrained, trained = (counted(EmbeddingModel.load(f)) for f in untrained_and_trained)
    assert (untrained.name, untrained.config_hash()) == (trained.name, trained.config_hash())
    run = {"tasks": ["WordSim353STS"], "profile": "quick", "progress": False}
    (of_trained,) = offline.run_suite(trained, tmp_path, **run)
    (of_untrained,) = offline.run_suite(untrained, tmp_path, **run)  # into the trained model's folder
    assert untrained.calls and of_untrained["n_encoded"] == of_trained["n_encoded"] > 0
    (alone,) = offline.run_suite(counted(EmbeddingModel.load(untrained_and_trained[0])), tmp_path / "own", **run)
    assert of_untrained["main_score"] == alone["main_score"] != of_trained["main_score"]
    assert of_untrained["weights"] == untrained.fingerprint() != of_trained["weights"] == trained.fingerprint()
    calls = len(untrained.calls)
    assert offline.run_suite(untrained, tmp_path, **run)[0]["main_score"] == alone["main_score"]
    assert len(untrained.calls) == calls  # the same model again: reused


def test_a_stored_result_is_reused_only_at_the_same_precision(untrained_and_trained, tmp_path: Path) -> None:
    from poolattn import EmbeddingModel
    from poolattn.evaluate import evaluate_model

    model = counted(EmbeddingModel.load(untrained_and_trained[1]))
    run = {"suite": "offline", "device": "cpu", "tasks": ["WordSim353STS"], "profile": "quick", "progress": False}
    (bf16,) = evaluate_model(model, tmp_path, precision="bf16", **run)
    calls = len(model.calls)
    (fp32,) = evaluate_model(model, tmp_path, precision="fp32", **run)
    assert len(model.calls) > calls and (bf16["precision"], fp32["precision"]) == ("bf16", "fp32")
    (fresh,) = evaluate_model(
        counted(EmbeddingModel.load(untrained_and_trained[1])), tmp_path / "b", precision="fp32", **run
    )
    assert fp32["main_score"] == fresh["main_score"] != bf16["main_score"]
    calls = len(model.calls)
    assert evaluate_model(model, tmp_path, precision="fp32", **run)[0]["main_score"] == fp32["main_score"]
    assert len(model.calls) == calls
    stored = json.loads((tmp_path / "WordSim353STS.json").read_text())
    assert stored["precision"] == "fp32" and stored["max_length"] == 512 and stored["poolattn_version"]


def test_result_identity_covers_max_length_template_and_version(untrained_and_trained, tmp_path, monkeypatch):
    from poolattn import EmbeddingModel

    model = counted(EmbeddingModel.load(untrained_and_trained[0]))
    run = {"tasks": ["WordSim353STS"], "profile": "quick", "progress": False}
    offline.run_suite(model, tmp_path, **run)
    changes = [
        lambda: setattr(model.config, "max_length", 100),
        lambda: setattr(model.config, "instruction_template", "{instruction}: {text}"),
        lambda: monkeypatch.setattr("poolattn.evaluate.encoders.__version__", "0.0.0-other"),
    ]
    for change in changes:
        calls = len(model.calls)
        change()
        offline.run_suite(model, tmp_path, config_hash="fixed", **run)  # the same config hash each time
        assert len(model.calls) > calls


def test_a_peer_is_fingerprinted_by_its_folder(tiny_llama, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, models

    from poolattn.fingerprints import files_fingerprint

    SentenceTransformer(modules=[models.Transformer(str(tiny_llama)), models.Pooling(32)]).save(str(tmp_path / "a"))
    peer = SentenceTransformerEncoder(tmp_path / "a")
    assert peer.fingerprint() == files_fingerprint(tmp_path / "a") and peer.max_length == 256
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert SentenceTransformerEncoder(tmp_path / "b").fingerprint() == peer.fingerprint()
    with open(tmp_path / "b" / "config.json", "a") as handle:
        handle.write(" ")  # one byte more in one file
    assert SentenceTransformerEncoder(tmp_path / "b").fingerprint() != peer.fingerprint()
    in_memory = SentenceTransformerEncoder(peer.model)  # no folder: its tensors
    assert in_memory.fingerprint() == SentenceTransformerEncoder(peer.model).fingerprint()


def test_instruction_overrides(tmp_path: Path) -> None:
    encoder = HashEncoder()
    result = offline.run_suite(
        encoder,
        tmp_path,
        tasks=["WordSim353STS"],
        profile="quick",
        instructions={"sts": "Category instruction", "WordSim353STS": None},
        progress=False,
    )
    assert result[0]["instruction"] is None
    assert {instruction for instruction, _ in encoder.calls} == {None}
    task = get_task("SimLex999STS")
    assert resolve_instruction(task, {"sts": "Category instruction"}) == "Category instruction"
    assert resolve_instruction(task) == STS_INSTRUCTION


def test_summarize_and_table(quick_results, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    results, _, _ = quick_results
    summary = offline.summarize(results)
    assert list(summary) == list(CATEGORIES)
    assert summary["sts"] == pytest.approx(results[0]["main_score"])
    offline.print_summary(results, console=Console(width=140, force_terminal=False))
    printed = capsys.readouterr().out
    assert "NewsLeadRetrieval" in printed and "pair_classification" in printed


def test_unknown_task_and_unavailable_wordnet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets, "wordnet_dir", lambda: None)
    assert "WordNetGlossRetrieval" not in [t.name for t in list_tasks()]
    with pytest.raises(ValueError, match="need WordNet"):
        offline.run_suite(HashEncoder(), tmp_path, tasks=["WordNetGlossRetrieval"], progress=False)
    with pytest.raises(KeyError, match="unknown task"):
        offline.run_suite(HashEncoder(), tmp_path, tasks=["NoSuchTask"], progress=False)


def test_wordnet_tasks_when_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "wordnet"
    folder.mkdir()
    (folder / "lexnames").write_text("05\tnoun.animal\t1\n13\tnoun.food\t1\n")
    # each example shares a sense-specific word (k0, k1, ...) with its definition
    animals = [
        f'{i:08d} 05 n 01 beast{i} 0 000 | an animal of kind k{i} that lives; "a k{i} beast ran off"' for i in range(12)
    ]
    foods = [
        f'{i + 100:08d} 13 n 01 dish{i} 0 000 | a food of kind f{i} to eat; "the f{i} dish was eaten"'
        for i in range(12)
    ]
    (folder / "data.noun").write_text("\n".join(animals + foods) + "\n")
    for pos in ("verb", "adj", "adv"):
        (folder / f"data.{pos}").write_text("")
    monkeypatch.setattr(assets, "wordnet_dir", lambda: folder)
    corpora.wordnet_senses.cache_clear()
    _BUILT.clear()
    try:
        names = [t.name for t in list_tasks()]
        assert {"WordNetGlossRetrieval", "WordNetLexnameClustering"} <= set(names)
        results = offline.run_suite(
            HashEncoder(), tmp_path / "out", tasks=["WordNetGlossRetrieval", "WordNetLexnameClustering"], progress=False
        )
        retrieval, clustering = results
        assert retrieval["n_samples"] == 24 and clustering["n_samples"] == 24
        assert 0 < retrieval["main_score"] <= 1 and 0 <= clustering["main_score"] <= 1
        data = get_task("WordNetGlossRetrieval").load()
        docs = dict(zip(data.doc_ids, data.docs, strict=True))
        for qid, query in zip(data.query_ids, data.queries, strict=True):
            (relevant,) = data.qrels[qid]
            assert query.split()[1] in docs[relevant].split()  # an example is paired with its own definition
        assert set(get_task("WordNetLexnameClustering").load().labels) == {"noun.animal", "noun.food"}
    finally:
        corpora.wordnet_senses.cache_clear()
        _BUILT.clear()


@pytest.mark.slow
def test_sentence_transformer_peer(tmp_path: Path) -> None:
    encoder = SentenceTransformerEncoder(assets.peer_path("minilm"), name="minilm")
    vecs = encoder.encode(["a cat sat on the mat", "a dog sat on the rug"], instruction="ignored")
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    templated = SentenceTransformerEncoder(encoder.model, instruction_template="{instruction}: {text}")
    assert not np.allclose(templated.encode(["a cat"], instruction="Classify"), encoder.encode(["a cat"]))
    result = offline.run_suite(encoder, tmp_path, tasks=["WordSim353STS"], profile="quick", progress=False)[0]
    assert result["main_score"] > 0.5  # a trained peer ranks word relatedness well


def test_a_task_sample_size_in_place_of_the_profiles(tmp_path: Path) -> None:
    task = get_task("BibleKJVWEBGradedSTS")
    quick, larger, full = task.load("quick"), task.load("quick", 300), task.load("full")
    assert (n_samples(quick), n_samples(larger), n_samples(full)) == (150, 300, 1200)
    assert set(quick.ids) <= set(larger.ids) <= set(full.ids)  # each sample is inside the next larger one
    assert larger.ids == full.ids[:300]
    for bad in (0, 1201):
        with pytest.raises(ValueError, match=r"BibleKJVWEBGradedSTS: samples = .*must be 1 to 1200"):
            task.load("quick", bad)
    encoder = HashEncoder()
    tasks = ["BibleKJVWEBGradedSTS", "NewsLeadRetrieval"]
    results = offline.run_suite(
        encoder, tmp_path, tasks=tasks, profile="quick", samples={"BibleKJVWEBGradedSTS": 300}, progress=False
    )
    assert [r["n_samples"] for r in results] == [300, n_samples(get_task("NewsLeadRetrieval").load("quick"))]
    assert results[0]["data_hash"] == data_hash(larger) != data_hash(quick)
    planned = offline.plan_suite("quick", tasks, samples={"BibleKJVWEBGradedSTS": 300})
    assert len(planned["BibleKJVWEBGradedSTS"]) == results[0]["n_texts"]
