"""Run any poolattn :class:`~poolattn.evaluate.encoders.Encoder` through mteb 2 (``mteb.evaluate``).

:class:`MTEBEncoder` puts an encoder behind mteb's ``EncoderProtocol`` with the paper's per-task
instructions (e5-mistral's, :data:`DEFAULT_INSTRUCTIONS`): documents of retrieval and reranking tasks are
encoded without one, every other text with the task's instruction. :func:`run_mteb` evaluates tasks or a
benchmark by name and writes one JSON per task.

The paper's task list (Tang & Yang 2024, "Evaluation"; :data:`PAPER_TASKS`) needs the data sets from the
Hugging Face hub, hence internet access (mteb downloads and caches them on first use)::

    from poolattn import EmbeddingModel
    from poolattn.evaluate.mteb_adapter import PAPER_TASKS, run_mteb

    model = EmbeddingModel.load("runs/m1")
    tasks = [name for names in PAPER_TASKS.values() for name in names]
    run_mteb(model, tasks, None, "results/m1-mteb")
    # or a whole benchmark:  run_mteb(model, None, "MTEB(eng, v1)", "results/m1-mteb")

(``poolattn eval runs/m1 --suite mteb --tasks STS12,SciFact --output DIR`` scores two of them.) Offline, the
poolattn suite's own tasks run through mteb too: :func:`as_mteb_task` turns one into an mteb task over the
shipped data, which is how the tests check that the offline scorers agree with mteb.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, get_args

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.abstask import AbsTask, get_abstask_prompt
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import Licenses, PromptType

from .. import hub
from ..io import SCORE_PACKAGES, package_versions, write_json_atomic
from ..modelinfo import describe
from .encoders import Encoder, SameEmbedding, active_precision, encoder_identity, identity_hash
from .tasks import (
    ALL_TASKS,
    QUERY_ONLY,
    ClassificationData,
    ClusteringData,
    PairData,
    Profile,
    RetrievalData,
    STSData,
    Task,
    get_task,
)

#: The paper's MTEB evaluation (PAPER.md, "Evaluation"): mteb 2 task names by category.
PAPER_TASKS: dict[str, list[str]] = {
    "sts": ["BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark"],
    "classification": [
        "AmazonPolarityClassification",
        "ToxicConversationsClassification",
        "ImdbClassification",
        "Banking77Classification",
        "EmotionClassification",
        "TweetSentimentExtractionClassification",
    ],
    "clustering": [
        "ArxivClusteringP2P",
        "ArxivClusteringS2S",
        "BiorxivClusteringP2P.v2",
        "BiorxivClusteringS2S.v2",
        "MedrxivClusteringP2P.v2",
        "MedrxivClusteringS2S.v2",
        "RedditClustering",
        "RedditClusteringP2P",
        "StackExchangeClustering",
        "StackExchangeClusteringP2P",
        "TwentyNewsgroupsClustering",
    ],
    "pair_classification": ["SprintDuplicateQuestions", "TwitterSemEval2015", "TwitterURLCorpus"],
    "reranking": ["AskUbuntuDupQuestions", "MindSmallReranking", "SciDocsRR", "StackOverflowDupQuestions"],
    "retrieval": [
        "ArguAna",
        "ClimateFEVER",
        "DBPedia",
        "FEVER",
        "FiQA2018",
        "HotpotQA",
        "MSMARCO",
        "NFCorpus",
        "NQ",
        "QuoraRetrieval",
        "SCIDOCS",
        "SciFact",
        "Touche2020",
        "TRECCOVID",
    ],
    "summarization": ["SummEval"],
}

_STS = "Retrieve semantically similar text."
#: e5-mistral's task instructions for the paper's tasks (queries only for retrieval and reranking).
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    **dict.fromkeys(PAPER_TASKS["sts"], _STS),
    "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": (
        "Classify the emotion expressed in the given Twitter message into one of the six emotions: "
        "anger, fear, joy, love, sadness, and surprise"
    ),
    "TweetSentimentExtractionClassification": (
        "Classify the sentiment of a given tweet as either positive, negative, or neutral"
    ),
    "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "BiorxivClusteringP2P.v2": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "BiorxivClusteringS2S.v2": "Identify the main category of Biorxiv papers based on the titles",
    "MedrxivClusteringP2P.v2": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S.v2": "Identify the main category of Medrxiv papers based on the titles",
    "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
    "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
}

#: mteb task types → poolattn category names.
CATEGORY_OF_TYPE: dict[str, str] = {
    "STS": "sts",
    "Classification": "classification",
    "Clustering": "clustering",
    "PairClassification": "pair_classification",
    "Reranking": "reranking",
    "Retrieval": "retrieval",
    "Summarization": "summarization",
}


class MTEBEncoder(AbsEncoder):
    """``encoder`` as an mteb 2 encoder (``EncoderProtocol``, cosine similarity).

    ``instructions`` override the defaults by mteb task name or task type (``"STS"``, ``"Retrieval"``...) or, with
    ``"*"``, for every task; ``None`` or ``""`` means no instruction. ``name`` (``org/model``) and ``revision``
    label the results, ``experiment`` (a design's settings) files them as an mteb experiment of ``name``; the
    model's size, embedding dimension, max tokens, base model and its licence and its training data fill the rest
    of mteb's ``ModelMeta`` where known (:func:`poolattn.modelinfo.describe`).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        instructions: Mapping[str, str | None] | None = None,
        name: str | None = None,
        revision: str | None = None,
        experiment: Mapping[str, Any] | None = None,
    ) -> None:
        self.encoder = encoder
        self.instructions = dict(instructions or {})
        self.watched: dict[str, SameEmbedding] = {}  # per task: whether all its texts got one vector
        label = name or getattr(encoder, "name", None) or type(encoder).__name__
        if "/" not in label:
            label = "poolattn/" + re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")
        known = {k: v for k, v in describe(encoder).items() if v is not None}
        if known.get("license") not in get_args(Licenses):
            known.pop("license", None)
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": label,
                "revision": revision or "no_revision_available",
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": True,
                "framework": ["PyTorch"],
                "experiment_kwargs": {k: v for k, v in (experiment or {}).items() if v not in (None, {}, [])} or None,
                **known,
            }
        )

    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """Override (task name, task type, ``"*"``) > paper default > the task's own prompt > mteb's default."""
        if prompt_type == PromptType.document:
            return None
        for key in (task_metadata.name, task_metadata.type, ALL_TASKS):
            if key in self.instructions:
                return self.instructions[key] or None
        if task_metadata.name in DEFAULT_INSTRUCTIONS:
            return DEFAULT_INSTRUCTIONS[task_metadata.name]
        prompt = task_metadata.prompt
        if isinstance(prompt, Mapping):
            prompt = prompt.get((prompt_type or PromptType.query).value)
        return str(prompt) if prompt else get_abstask_prompt(task_metadata.name) or None

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        vecs = self.encoder.encode(texts, instruction=self.instruction_for(task_metadata, prompt_type))
        self.watched.setdefault(task_metadata.name, SameEmbedding()).update(np.asarray(vecs))
        return vecs


# --------------------------------------------------------------------------------- offline tasks in mteb


class _MTEBForm(NamedTuple):
    """How one kind of offline task data becomes an mteb task."""

    base: type[AbsTask]
    type: str
    main_score: str
    attributes: dict[str, Any]
    dataset: Any


def _columns(**splits: Mapping[str, Sequence[Any]]) -> DatasetDict:
    return DatasetDict(
        {split: Dataset.from_dict({k: list(v) for k, v in cols.items()}) for split, cols in splits.items()}
    )


def _sts_form(data: STSData) -> _MTEBForm:
    dataset = _columns(test={"sentence1": data.texts1, "sentence2": data.texts2, "score": data.gold})
    return _MTEBForm(
        AbsTaskSTS, "STS", "cosine_spearman", {"min_score": data.min_score, "max_score": data.max_score}, dataset
    )


def _classification_form(data: ClassificationData) -> _MTEBForm:
    dataset = _columns(
        train={"text": data.train_texts, "label": data.train_labels},
        test={"text": data.texts, "label": data.labels},
    )
    attributes = {"samples_per_label": data.samples_per_label, "n_experiments": data.n_experiments}
    return _MTEBForm(AbsTaskClassification, "Classification", "accuracy", attributes, dataset)


def _clustering_form(data: ClusteringData) -> _MTEBForm:
    attributes = {  # embed every document; bootstrap samples of cluster_size, as the offline scorer does
        "max_fraction_of_documents_to_embed": None,
        "max_document_to_embed": None,
        "max_documents_per_cluster": data.cluster_size,
        "n_clusters": data.n_experiments,
    }
    dataset = _columns(test={"sentences": data.texts, "labels": data.labels})
    return _MTEBForm(AbsTaskClustering, "Clustering", "v_measure", attributes, dataset)


def _pair_form(data: PairData) -> _MTEBForm:
    dataset = _columns(test={"sentence1": data.texts1, "sentence2": data.texts2, "labels": data.labels})
    # cosine_ap: the offline main score (mteb's similarity_ap for a cosine model, up to float ties)
    return _MTEBForm(AbsTaskPairClassification, "PairClassification", "cosine_ap", {}, dataset)


def _retrieval_form(data: RetrievalData) -> _MTEBForm:
    split = RetrievalSplitData(
        queries=Dataset.from_dict({"id": list(data.query_ids), "text": list(data.queries)}),
        corpus=Dataset.from_dict({"id": list(data.doc_ids), "text": list(data.docs)}),
        relevant_docs={q: dict(rels) for q, rels in data.qrels.items()},
        top_ranked={q: list(c) for q, c in data.candidates.items()} if data.candidates is not None else None,
    )
    if data.candidates is not None:
        return _MTEBForm(AbsTaskRetrieval, "Reranking", "map_at_1000", {}, {"default": {"test": split}})
    return _MTEBForm(AbsTaskRetrieval, "Retrieval", "ndcg_at_10", {}, {"default": {"test": split}})


_FORMS: dict[type, Any] = {
    STSData: _sts_form,
    ClassificationData: _classification_form,
    ClusteringData: _clustering_form,
    PairData: _pair_form,
    RetrievalData: _retrieval_form,
}


def _metadata(task: Task, mteb_type: str, main_score: str) -> TaskMetadata:
    prompt: str | dict[str, str] = {"query": task.instruction} if task.category in QUERY_ONLY else task.instruction
    return TaskMetadata(
        name=task.name,
        description=f"{task.description} Source: {task.source}. Split: {task.split}.",
        reference=None,
        dataset={"path": f"poolattn/{task.name}", "revision": "shipped"},
        type=mteb_type,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
        date=None,
        domains=None,
        task_subtypes=None,
        license="not specified",
        annotations_creators=None,
        dialect=None,
        sample_creation="found",
        bibtex_citation="",
        prompt=prompt,
    )


def as_mteb_task(name: str, profile: Profile = "quick") -> AbsTask:
    """Offline task ``name`` (its data under ``profile``) as an mteb 2 task, evaluated by mteb's own code."""
    task = get_task(name)
    form = _FORMS[type(data := task.load(profile))](data)

    def load_data(self: AbsTask, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = form.dataset
        self.data_loaded = True

    namespace = {"metadata": _metadata(task, form.type, form.main_score), "load_data": load_data, **form.attributes}
    return type(f"{task.name}MTEBTask", (form.base,), namespace)()


# ------------------------------------------------------------------------------------------------ runner


def run_mteb(
    encoder: Encoder,
    tasks: Sequence[str | AbsTask] | None,
    benchmark: str | None,
    output_dir: str | os.PathLike[str],
    *,
    instructions: Mapping[str, str | None] | None = None,
    model_name: str | None = None,
    config_hash: str | None = None,
    precision: str | None = None,
    revision: str | None = None,
    experiment: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``encoder`` with mteb 2 on ``tasks`` (names or mteb task objects) or on a ``benchmark``.

    mteb's own result files go to ``output_dir/mteb``, filed under the model's name and ``revision`` (and
    ``experiments/<name>/`` for an ``experiment``: a design's settings, one study being one model); re-runs
    skip the tasks finished under both unless ``overwrite``. ``revision`` defaults to a hash of the exact model
    (:func:`~.encoders.encoder_identity`: ``config_hash`` (default: ``encoder.config_hash()``), weights
    fingerprint, ``precision`` (default: the autocast in force), max length, instruction template, poolattn's
    version), so another model's results are never taken for this one's. A summary per task is written to
    ``output_dir/<task>.json`` and returned: ``task``, ``category``, ``main_metric``, ``main_score``, ``scores``
    (mteb's full scores by split), ``model_id``, ``revision``, the identity's fields, ``versions``.
    """
    selected = select_mteb_tasks(tasks, benchmark)
    if config_hash is None and callable(getattr(encoder, "config_hash", None)):
        config_hash = encoder.config_hash()  # type: ignore[attr-defined]
    identity = encoder_identity(encoder, config_hash, precision or active_precision())
    revision = revision or identity_hash(identity)
    model = MTEBEncoder(encoder, instructions=instructions, name=model_name, revision=revision, experiment=experiment)
    out = Path(output_dir)
    results = mteb.evaluate(
        model,
        selected,
        cache=mteb.ResultCache(cache_path=out / "mteb"),
        overwrite_strategy="always" if overwrite else "only-missing",
        show_progress_bar=progress,
    )
    meta = {t.metadata.name: t.metadata for t in selected}
    versions = package_versions(SCORE_PACKAGES)
    records = []
    for result in results.task_results:
        task_meta = meta[result.task_name]
        score = float(result.get_score())
        record = {
            "task": result.task_name,
            "category": CATEGORY_OF_TYPE.get(task_meta.type, task_meta.type.lower()),
            "main_metric": task_meta.main_score,
            "main_score": score,
            **({} if math.isfinite(score) else {"undefined": undefined_reason(model, result.task_name, task_meta)}),
            "scores": result.scores,
            "evaluation_time": result.evaluation_time,
            "model_id": model.mteb_model_meta.name,
            "revision": revision,
            "experiment": model.mteb_model_meta.experiment_name,
            **identity,
            "versions": versions,
        }
        write_json_atomic(out / f"{result.task_name}.json", _plain(record))
        records.append(record)
    return records


def undefined_reason(model: MTEBEncoder, task: str, metadata: TaskMetadata) -> str:
    """Why ``task``'s main score is NaN; a result reused from mteb's cache was not watched being encoded."""
    watched = model.watched.get(task)
    if watched is None:
        return f"{metadata.main_score} is undefined (NaN) in mteb's stored result"
    return watched.undefined_reason(metadata.main_score)


def select_mteb_tasks(tasks: Sequence[str | AbsTask] | None, benchmark: str | None) -> list[AbsTask]:
    """mteb's tasks by name (task objects pass through) or a benchmark's; ``ValueError`` for unknown names."""
    if (tasks is None) == (benchmark is None):
        raise ValueError("give exactly one of tasks (a list of task names) and benchmark (a benchmark name)")
    if benchmark is not None:
        try:
            return list(mteb.get_benchmark(benchmark).tasks)
        except KeyError:
            raise ValueError(f"mteb has no benchmark {benchmark!r} (e.g. 'MTEB(eng, v2)')") from None
    assert tasks is not None
    names = [t for t in tasks if isinstance(t, str)]
    by_name: dict[str, AbsTask] = {}
    for name in dict.fromkeys(names):
        try:
            by_name[name] = next(iter(mteb.get_tasks(tasks=[name])))
        except (KeyError, StopIteration):
            raise ValueError(
                f"mteb has no task {name!r} (the offline suite's tasks run with --suite offline)"
            ) from None
    return [by_name[t] if isinstance(t, str) else t for t in tasks]


def check_mteb_data(tasks: Sequence[AbsTask]) -> None:
    """Refuse, before anything is encoded, tasks whose data sets are neither in the local cache nor fetchable from
    the Hugging Face hub (no internet, or ``HF_HUB_OFFLINE``); tasks built over shipped data pass."""
    paths = [t.metadata.dataset["path"] for t in tasks if "load_data" not in vars(type(t))]
    missing = {path: reason for path in dict.fromkeys(paths) if (reason := hub.why_unavailable(path, "dataset"))}
    if missing:
        path, reason = next(iter(missing.items()))
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"mteb reads its data sets from the Hugging Face hub: {path}{more}: {reason}; "
            "score the shipped data instead with --suite offline"
        )


def _plain(value: Any) -> Any:
    """JSON-ready copy (numpy scalars and arrays to Python values)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
