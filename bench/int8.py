"""int8 against float32 on a study's trained designs: worst cosine over every text, and the speed-up.

Loads every trained cell of a finished study (``cells/*/train/model``), encodes the benchmark's short texts (TREC
questions) and long texts (the Lee background corpus) in float32 and through :func:`poolattn.quantize.int8_copy`,
and prints per design the worst cosine to float32 over all texts and texts/s of each (best of ``--repeats``
passes). A design passes when its worst cosine is at least 0.99 on every text.

    python bench/int8.py runs/quality-s012 [--short 512] [--long 128] [--max-length 512] [--repeats 2] \
        [--cells M1-s0,M2-s0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import FAITHFUL, timed

from poolattn import EmbeddingModel
from poolattn.corpora import lee_background, trec_questions
from poolattn.quantize import int8_copy


def best_pass(model: EmbeddingModel, texts: list[str], repeats: int) -> tuple[np.ndarray, float]:
    """The vectors and the best of ``repeats`` timed passes (seconds)."""
    passes = [timed(lambda t: model.encode(t, show_progress=False), texts) for _ in range(repeats)]
    return passes[0][0], min(seconds for _, seconds in passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a finished study's folder")
    parser.add_argument("--short", type=int, default=512, help="number of short texts (TREC questions)")
    parser.add_argument("--long", type=int, default=128, help="number of long texts (Lee background corpus)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per text (the study's models: 64)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per variant; best kept")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: every trained cell)")
    args = parser.parse_args()
    folders = sorted(args.study.glob("cells/*/train/model"))
    if args.cells:
        folders = [f for f in folders if f.parents[1].name in args.cells.split(",")]
    if not folders:
        raise SystemExit(f"{args.study}: no trained cell (cells/*/train/model)")
    cases = {"short": [q.text for q in trec_questions()][: args.short], "long": list(lee_background()[: args.long])}
    worst_overall = 1.0
    for folder in folders:
        model = EmbeddingModel.load(folder, max_length=args.max_length)
        quantised = int8_copy(model)
        for case, texts in cases.items():
            if not texts:
                continue
            reference, fp32_seconds = best_pass(model, texts, args.repeats)
            vectors, int8_seconds = best_pass(quantised, texts, args.repeats)
            worst = float((reference * vectors).sum(axis=1).min())
            worst_overall = min(worst_overall, worst)
            verdict = "ok" if worst >= FAITHFUL else f"below {FAITHFUL}"
            print(
                f"{folder.parents[1].name} ({model.config.attention} · {model.config.pooling}) {case}: worst cosine "
                f"{worst:.4f} ({verdict}) · int8 {len(texts) / int8_seconds:.0f} texts/s vs float32 "
                f"{len(texts) / fp32_seconds:.0f}: {fp32_seconds / int8_seconds:.2f}x",
                flush=True,
            )
    print(f"worst cosine over every design and text: {worst_overall:.4f}")


if __name__ == "__main__":
    main()
