"""The offline suite per category: datasets, samples and mean words per text, and whether it meets its targets.

Builds every available task of a profile (no model is run) and prints one row per task, grouped by category:
samples (scored pairs, test texts, documents or queries), mean words per distinct text (classification: its test
texts) and whether the task is sentence-level (6-50 words on average, >= 500 samples). The closing lines check
the suite's targets: at least 3 categories with >= 6 datasets, and at least 2 sentence-level tasks each in STS,
pair classification and retrieval.

    python bench/suite_table.py [--profile full] [--markdown]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from poolattn.evaluate.tasks import CATEGORIES, ClassificationData, Task, list_tasks, n_samples

SENTENCE_WORDS = (6, 50)  # fewer: words; more: documents
SENTENCE_SAMPLES = 500


def sentence_level(samples: int, words: float) -> bool:
    return SENTENCE_WORDS[0] <= words <= SENTENCE_WORDS[1] and samples >= SENTENCE_SAMPLES


def mean_words(task: Task, profile: str) -> float:
    data = task.load(profile)  # type: ignore[arg-type]
    texts = data.texts if isinstance(data, ClassificationData) else data.all_texts()
    return float(np.mean([len(t.split()) for t in texts]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=["full", "quick"])
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (as in the README)")
    args = parser.parse_args()
    rows: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
    tasks = {task.name: task for task in list_tasks(args.profile)}
    for task in tasks.values():
        rows[task.category].append((task.name, n_samples(task.load(args.profile)), mean_words(task, args.profile)))
    if args.markdown:
        print(f"| category | task | samples ({args.profile}) | quick | mean words | source |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
    for category in CATEGORIES:
        if not args.markdown:
            print(f"{category} ({len(rows[category])} datasets)")
        for name, samples, words in rows[category]:
            sentence = sentence_level(samples, words)
            if args.markdown:
                quick = n_samples(tasks[name].load("quick"))
                source = tasks[name].source.split(",")[0]
                print(f"| {category} | {name} | {samples:,} | {quick:,} | {words:.1f} | {source} |")
            else:
                print(f"  {name:<45} {samples:>6} samples {words:>6.1f} words{'  sentence-level' if sentence else ''}")
    if args.markdown:
        return
    six = [c for c in CATEGORIES if len(rows[c]) >= 6]
    print(f"categories with >= 6 datasets: {len(six)} ({', '.join(six)}); target >= 3")
    for category in ("sts", "pair_classification", "retrieval"):
        count = sum(sentence_level(s, w) for _, s, w in rows[category])
        print(f"{category}: {count} sentence-level tasks of >= {SENTENCE_SAMPLES} samples; target >= 2")


if __name__ == "__main__":
    main()
