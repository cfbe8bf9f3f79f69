"""Why do seeds disagree? Train one design of a study several times, varying one source of randomness at a time
(the data sample, the data order, the initialisation), and print each run's held-out InfoNCE against chance.

    python bench/seeds.py                                   # the default study's M1, seeds 0-2, three ways
    python bench/seeds.py --design M6 --set train.lr=1e-3 --seeds 0 1 2 3
    python bench/seeds.py --vary init --set model.num_layers=12
    python bench/seeds.py --eval BibleKJVWEBGradedSTS,NewsLeadRetrieval   # also each model's scores, their SD

Each run is a real training run of the study's recipe (its folder under ``--out``, reused when rerun); "all"
varies the three together (a study's ``seeds``), "order+init" keeps the data sample of seed 0, "init" keeps the
sample and the order of seed 0 and changes only the adapter's and head's initial weights (and dropout).
``--eval`` scores every trained model on offline tasks (quick profile, stored beside it and reused) and prints,
per way of varying, each task's mean and standard deviation over the seeds: the spread a design's score has.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

VARY = {
    "all": lambda seed: {},
    "order+init": lambda seed: {"data.seed": 0},
    "init": lambda seed: {"data.seed": 0, "recipe.order_seed": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a study config (default: the embedded default study)")
    parser.add_argument("--design", default="M1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vary", nargs="+", choices=sorted(VARY), default=["all", "order+init", "init"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a study override")
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--eval", dest="tasks", default="", help="comma-separated offline tasks to score")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]

    from poolattn import training
    from poolattn.assets import resolve_backbone
    from poolattn.study.config import load_study, train_config

    study = load_study(Path(args.config) if args.config else None, args.overrides)
    design = study.design(args.design)
    backbone = resolve_backbone(study.model.backbone)
    if study.adapted(design):
        raise SystemExit(f"{design.name} starts from the adapted backbone: pick a design that trains from the base")
    print(f"{study.name} · {design.name} ({design.attention} · {design.pooling}) · overrides {args.overrides}")
    for vary in args.vary:
        losses = []
        scores: dict[str, list[float]] = {}
        for seed in args.seeds:
            config = train_config(study, design, seed, backbone, Path("unused"))
            fixed = VARY[vary](seed)
            # explicit seeds, so that the same run reached by two ways of varying is one folder, trained once
            data = replace(config.data, seed=fixed.get("data.seed", config.data_seed))
            recipe = replace(config.recipe, order_seed=fixed.get("recipe.order_seed", config.order_seed))
            out = args.out / f"{design.name}-s{seed}-d{data.seed}-o{recipe.order_seed}-{config.hash()[:6]}"
            config = replace(config, data=data, recipe=recipe, output=replace(config.output, dir=str(out)))
            started = time.perf_counter()
            training.train(config, progress=False)
            summary = json.loads((out / training.SUMMARY_FILE).read_text())
            heldout = summary.get("heldout") or {}
            after, before = heldout.get("after") or {}, heldout.get("before") or {}
            chance = after.get("chance_loss") or math.nan
            losses.append(after.get("heldout_loss", math.nan))
            print(
                f"  vary {vary:10s} seed {seed}: held-out InfoNCE {before.get('heldout_loss', math.nan):.3f} → "
                f"{losses[-1]:.3f} ({losses[-1] / chance:.2f} x chance {chance:.2f}), "
                f"top-1 {after.get('heldout_top1', math.nan):.3f}"
                f" · {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            for task, score in evaluate(out, tasks, study.eval.precision).items():
                scores.setdefault(task, []).append(score)
        print(f"vary {vary:10s}: held-out InfoNCE {spread(losses)}", flush=True)
        for task, values in scores.items():
            print(f"vary {vary:10s}: {task} {spread(values)}", flush=True)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"mean {statistics.mean(values):.3f}, SD {sd:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def evaluate(run: Path, tasks: list[str], precision: str) -> dict[str, float]:
    """The trained model's main score per task (quick profile; stored under the run and reused)."""
    if not tasks:
        return {}
    from poolattn import training
    from poolattn.evaluate import evaluate_model
    from poolattn.model import EmbeddingModel

    model = EmbeddingModel.load(run / training.MODEL_DIR)
    model.merge_adapter()
    results = evaluate_model(
        model, run / "eval", suite="offline", precision=precision, device="cpu", tasks=tasks, profile="quick",
        progress=False,
    )  # fmt: skip
    return {r["task"]: float(r["main_score"]) for r in results}


if __name__ == "__main__":
    main()
