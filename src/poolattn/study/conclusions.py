"""What a study's numbers let one conclude.

* Did training learn? Per trained design and seed: the held-out InfoNCE loss after training against chance
  (``ln`` of the candidates per query) and against the same model before its first step, from the training
  summary's ``heldout``; and the trained design against its untrained twin (same attention, pooling and options,
  ``train = false``) on the suite. A design that did not learn is flagged: its Δ is not a design effect.
* The direction of the paper's findings next to ours: the sign of each Δ, how often it agrees against what a
  coin gives (exact binomial test), and each of the paper's claims resolved by our own test (†): it holds or is
  contradicted only where that test is significant, and is "not resolved" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import stats
from .results import CATEGORY_LABEL, StudyResults, Tables, compare_designs

#: A design learned when its final held-out loss is at most this fraction of chance ...
LEARNED_CHANCE_RATIO = 0.8
#: ... and at least this fraction below its held-out loss before the first step.
LEARNED_MIN_DROP = 0.10

# Tang & Yang 2024, main table (Mistral-7B, MTEB): Δ vs M1 (EOS, causal) and whether the paper marks it significant.
PAPER_DESIGNS: dict[tuple[str, str], str] = {
    ("causal", "eos"): "M1",
    ("causal", "trainable"): "M2",
    ("causal", "multilayer"): "M3",
    ("bidirectional", "trainable"): "M4",
    ("bidirectional", "multilayer"): "M5",
}
PAPER_REFERENCE = {"sts": 0.8302, "classification": 0.7244, "retrieval": 0.5394, "clustering": 0.4503}
PAPER_DELTAS: dict[str, dict[str, tuple[float, bool]]] = {
    "M2": {"sts": (0.0129, True), "classification": (-0.0035, False), "retrieval": (0.0102, False),
           "clustering": (-0.0076, False)},
    "M3": {"sts": (0.0118, True), "classification": (-0.0033, False), "retrieval": (0.0135, False),
           "clustering": (-0.0017, False)},
    "M4": {"sts": (0.0095, True), "classification": (-0.0483, False), "retrieval": (0.0213, False),
           "clustering": (-0.0493, True)},
    "M5": {"sts": (0.0166, True), "classification": (-0.0143, True), "retrieval": (0.0226, True),
           "clustering": (-0.0246, True)},
}  # fmt: skip


# ============================================================================================ learning
def seed_learning(heldout: Mapping[str, Any] | None) -> dict[str, Any]:
    """One training run's held-out numbers and whether they show learning (see the module's criteria)."""
    if heldout is None:
        return {"measured": False, "learned": None, "reasons": []}
    after, before = heldout["after"], heldout.get("before")
    loss, chance = float(after["heldout_loss"]), float(after["chance_loss"])
    before_loss = float(before["heldout_loss"]) if before else math.nan
    drop = (before_loss - loss) / before_loss if before else math.nan
    reasons = []
    if not loss <= LEARNED_CHANCE_RATIO * chance:
        reasons.append(f"held-out loss {loss:.3f} > {LEARNED_CHANCE_RATIO:g} × chance {chance:.3f}")
    if before and not drop >= LEARNED_MIN_DROP:
        reasons.append(f"held-out loss fell only {drop:.1%} from {before_loss:.3f} before training")
    return {
        "measured": True,
        "learned": not reasons,
        "reasons": reasons,
        "before_loss": before_loss,
        "after_loss": loss,
        "chance_loss": chance,
        "ratio": loss / chance,
        "drop": drop,
        "before_top1": float(before["heldout_top1"]) if before else math.nan,
        "after_top1": float(after["heldout_top1"]),
        "chance_top1": float(after["chance_top1"]),
    }


def untrained_twin(results: StudyResults, tables: Tables, name: str) -> str | None:
    """The untrained design with ``name``'s attention, pooling and options, if the study has one."""
    spec = results.designs[name].spec
    for other in tables.designs:
        twin = results.designs[other].spec
        if not twin.get("train", True) and all(twin.get(k) == spec.get(k) for k in ("attention", "pooling", "options")):
            return other
    return None


def twin_comparison(results: StudyResults, tables: Tables, name: str, twin: str) -> dict[str, Any]:
    """Trained minus untrained twin per category and over every dataset of Table 1 (the † test, uncorrected)."""
    groups = {c: [t for t, cat in tables.tasks.items() if cat == c] for c in tables.categories}
    groups["all"] = list(tables.tasks)
    out = {}
    for group, names in groups.items():
        test = compare_designs(results, twin, name, names, results.config["stats"])
        own = np.mean([results.designs[name].tasks[t].score for t in names])
        base = np.mean([results.designs[twin].tasks[t].score for t in names])
        out[group] = {
            "delta": float(own - base),
            "pvalue": test["pvalue"] if test else math.nan,
            "ci_low": test["ci_low"] if test else math.nan,
            "ci_high": test["ci_high"] if test else math.nan,
        }
    return out


def learning_status(results: StudyResults, tables: Tables) -> dict[str, dict[str, Any]]:
    """Per design: ``status`` (learned | did not learn | not measured | untrained), ``flagged`` (did not learn in
    at least one seed: its Δ is not read as a design effect), per-seed numbers and the untrained-twin comparison."""
    out: dict[str, dict[str, Any]] = {}
    for name in tables.designs:
        design = results.designs[name]
        if not design.spec.get("train", True):
            out[name] = {"status": "untrained", "flagged": False, "seeds": {}, "twin": None}
            continue
        seeds = {str(seed): seed_learning(heldout) for seed, heldout in design.heldout.items()}
        measured = [s for s, v in seeds.items() if v["measured"]]
        failed = [s for s in measured if not seeds[s]["learned"]]
        status = "not measured" if not measured else "did not learn" if failed else "learned"
        twin = untrained_twin(results, tables, name)
        out[name] = {
            "status": status,
            "flagged": bool(failed),
            "failed_seeds": failed,
            "measured_seeds": measured,
            "seeds": seeds,
            "twin": twin and {"design": twin, **twin_comparison(results, tables, name, twin)},
        }
    return out


def design_effect(learning: Mapping[str, Mapping[str, Any]], reference: str) -> Callable[[str], bool]:
    """Whether a design's Δ reads as a design effect: neither it nor the reference is flagged."""
    return lambda name: not learning[name]["flagged"] and not learning[reference]["flagged"]


# ====================================================================================== paper directions
def paper_exact(spec: Mapping[str, Any]) -> bool:
    """Whether a design's head is the paper's own: for ``multilayer`` every layer, no per-layer scaling, and the
    last token under causal attention or the plain mean under bidirectional (the other poolers have no variant)."""
    if spec["pooling"] != "multilayer":
        return True
    options = spec.get("options", {})
    reduction = options.get("layer_pooling", "auto")
    if "layers" in options or options.get("layer_norm", "rms") != "none":
        return False
    return reduction in ("auto", "last") if spec["attention"] == "causal" else reduction == "mean"


def paper_comparison(
    results: StudyResults, tables: Tables, learning: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Our Δ next to the paper's for the designs that match the paper's by (attention, pooling), when our
    reference is the paper's (trained EOS, causal). Agreement is the sign of Δ. Per paper design one of ours is
    counted (the first with the paper's exact head, else the first); the others are shown as variants. The sign
    test counts the rows whose Δ reads as a design effect."""
    spec = {name: results.designs[name].spec for name in tables.designs}
    ref = spec[tables.reference]
    if PAPER_DESIGNS.get((ref["attention"], ref["pooling"])) != "M1" or not ref.get("train", True):
        return None
    effect = design_effect(learning, tables.reference)
    counted: dict[str, str] = {}
    for name in tables.designs:
        paper_name = PAPER_DESIGNS.get((spec[name]["attention"], spec[name]["pooling"]))
        if name == tables.reference or paper_name not in PAPER_DELTAS or not spec[name].get("train", True):
            continue
        if paper_name not in counted or (paper_exact(spec[name]) and not paper_exact(spec[counted[paper_name]])):
            counted[paper_name] = name
    rows = []
    for name in tables.designs:
        paper_name = PAPER_DESIGNS.get((spec[name]["attention"], spec[name]["pooling"]))
        if name == tables.reference or paper_name not in counted or not spec[name].get("train", True):
            continue
        for category, (paper_delta, paper_sig) in PAPER_DELTAS[paper_name].items():
            if category not in tables.categories:
                continue
            entry = tables.table1[name][category]
            ours = entry["delta"]
            rows.append(
                {
                    "design": name,
                    "paper_design": paper_name,
                    "category": category,
                    "paper_delta": paper_delta,
                    "paper_significant": paper_sig,
                    "delta": ours,
                    "marks": entry["marks"],
                    "significant": "†" in entry["marks"],
                    "agree": (ours > 0) == (paper_delta > 0) and ours != 0,
                    "exact_head": paper_exact(spec[name]),
                    "counted": counted[paper_name] == name,
                    "design_effect": effect(name),
                }
            )
    if not rows:
        return None
    tested = [r for r in rows if r["counted"] and r["design_effect"] and r["delta"] != 0]
    return {
        "rows": rows,
        "sign_test": stats.sign_agreement([r["agree"] for r in tested]),
        "sign_test_paper_significant": stats.sign_agreement([r["agree"] for r in tested if r["paper_significant"]]),
        "not_counted": sorted({r["design"] for r in rows if r["counted"] and not r["design_effect"]}),
        "reference_learned": not learning[tables.reference]["flagged"],
        "claims": paper_claims(results, tables, spec, effect),
    }


def verdict(delta: float, significant: bool, sign: int) -> str:
    """A claim that Δ has ``sign``: it holds or is contradicted only where our test is significant."""
    if not significant or delta == 0:
        return "not resolved"
    return "holds" if (delta > 0) == (sign > 0) else "contradicted"


def overall(verdicts: Sequence[str]) -> str:
    if not verdicts:
        return "not resolved"
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return "not resolved" if set(verdicts) <= {"not resolved"} else "mixed"


def paper_claims(
    results: StudyResults, tables: Tables, spec: Mapping[str, Mapping[str, Any]], effect: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """The paper's conclusions, each resolved by our † test (designs that did not learn are left out)."""

    def find(attention: str, pooling: str) -> list[str]:
        return [
            n
            for n in tables.designs
            if spec[n]["attention"] == attention and spec[n]["pooling"] == pooling and spec[n].get("train", True)
        ]

    bidir_trainable = find("bidirectional", "trainable") + find("bidirectional", "multilayer")
    multilayer = find("causal", "multilayer") + find("bidirectional", "multilayer")
    trained = [n for n in tables.designs if spec[n].get("train", True) and effect(n)]
    claims = []
    for category, sign, words in (
        ("sts", 1, "help STS"),
        ("retrieval", 1, "help retrieval"),
        ("clustering", -1, "do not help clustering"),
        ("classification", -1, "do not help classification"),
    ):
        if category not in tables.categories or not bidir_trainable:
            continue
        designs = {}
        for n in bidir_trainable:
            if effect(n):
                entry = tables.table1[n][category]
                designs[n] = {"delta": entry["delta"], "verdict": verdict(entry["delta"], "†" in entry["marks"], sign)}
        claims.append(
            {
                "claim": f"bidirectional attention + trainable pooling ({', '.join(bidir_trainable)}) {words}",
                "designs": designs,
                "excluded": [n for n in bidir_trainable if not effect(n)],
                "verdict": overall([d["verdict"] for d in designs.values()]),
            }
        )
    for category in ("sts", "retrieval"):
        if category not in tables.categories or not multilayer:
            continue
        claims.append(best_claim(results, tables, category, trained, multilayer))
    return claims


def best_claim(
    results: StudyResults, tables: Tables, category: str, trained: Sequence[str], multilayer: Sequence[str]
) -> dict[str, Any]:
    """ "Multi-layer pooling is the best design" for a category: the best design against the best of the other
    group (multi-layer or not), by the † test over the category's datasets (one test, uncorrected)."""
    claim = f"multi-layer trainable pooling is the best design for {CATEGORY_LABEL[category]}"
    record: dict[str, Any] = {"claim": claim, "designs": {}, "excluded": [], "verdict": "not resolved"}
    if not trained:
        return record
    best = max(trained, key=lambda n: tables.table1[n][category]["score"])
    others = [n for n in trained if (n in multilayer) != (best in multilayer)]
    record["best"] = best
    if not others:
        return record
    runner_up = max(others, key=lambda n: tables.table1[n][category]["score"])
    names = [t for t, c in tables.tasks.items() if c == category]
    test = compare_designs(results, runner_up, best, names, results.config["stats"])
    delta = tables.table1[best][category]["score"] - tables.table1[runner_up][category]["score"]
    significant = test is not None and test["pvalue"] < tables.settings["alpha"]
    record.update(
        runner_up=runner_up,
        delta=delta,
        pvalue=test["pvalue"] if test else math.nan,
        verdict=verdict(delta, significant, 1 if best in multilayer else -1),
    )
    return record
