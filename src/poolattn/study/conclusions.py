"""What a study's numbers let one conclude.

* Did training learn? Per trained design and seed: the held-out InfoNCE loss after training against chance
  (``ln`` of the candidates per query) and against the same model before its first step, from the training
  summary's ``heldout``; for a design started from the MNTP-adapted backbone, also that seed's adaptation
  against the causal model's masked-token loss on the same held-out masks; and the trained design against its
  untrained twin (same attention, pooling and options, ``train = false``) on the suite. A design that did not
  learn is flagged: its Δ is not a design effect.
* The direction of the paper's findings next to ours: the sign of each Δ, how often it agrees against what a
  coin gives (exact binomial test), and each of the paper's claims resolved by our own test (†): it holds or is
  contradicted only where that test is significant with the training noise measured (several seeds), and is "not
  resolved" otherwise: with one seed a † compares two trained models, not two designs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from .results import (
    CATEGORY_LABEL,
    POWER,
    StudyResults,
    Tables,
    compare_designs,
    compute_tables,
    load_results,
    training_noise_measured,
)

HOLDS, CONTRADICTED, MIXED, NOT_RESOLVED = "holds", "contradicted", "mixed", "not resolved"
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
@dataclass
class SeedLearning:
    """One training run's held-out numbers and whether they show learning (see the module's criteria)."""

    measured: bool
    learned: bool | None = None
    reasons: list[str] = field(default_factory=list)
    before_loss: float = math.nan
    after_loss: float = math.nan
    chance_loss: float = math.nan
    ratio: float = math.nan
    drop: float = math.nan
    before_top1: float = math.nan
    after_top1: float = math.nan
    chance_top1: float = math.nan


@dataclass
class TwinComparison:
    """A trained design against its untrained twin: per category and over all datasets (``"all"``), the Δ and the
    uncorrected † test's p-value and interval."""

    design: str
    groups: dict[str, dict[str, float]]


@dataclass
class Learning:
    """Whether a design learned: ``status`` (learned | did not learn | not measured | untrained) and ``flagged``
    (did not learn in at least one seed: its Δ is not read as a design effect)."""

    status: str
    flagged: bool
    seeds: dict[str, SeedLearning] = field(default_factory=dict)
    failed_seeds: list[str] = field(default_factory=list)
    measured_seeds: list[str] = field(default_factory=list)
    twin: TwinComparison | None = None


def seed_learning(heldout: Mapping[str, Any] | None) -> SeedLearning:
    """One training run's held-out numbers and whether they show learning (see the module's criteria)."""
    if heldout is None:
        return SeedLearning(measured=False)
    after, before = heldout["after"], heldout.get("before")
    loss, chance = float(after["heldout_loss"]), float(after["chance_loss"])
    before_loss = float(before["heldout_loss"]) if before else math.nan
    drop = (before_loss - loss) / before_loss if before else math.nan
    reasons = []
    if not loss <= LEARNED_CHANCE_RATIO * chance:
        reasons.append(f"held-out loss {loss:.3f} > {LEARNED_CHANCE_RATIO:g} × chance {chance:.3f}")
    if before and not drop >= LEARNED_MIN_DROP:
        reasons.append(f"held-out loss fell only {drop:.1%} from {before_loss:.3f} before training")
    return SeedLearning(
        measured=True,
        learned=not reasons,
        reasons=reasons,
        before_loss=before_loss,
        after_loss=loss,
        chance_loss=chance,
        ratio=loss / chance,
        drop=drop,
        before_top1=float(before["heldout_top1"]) if before else math.nan,
        after_top1=float(after["heldout_top1"]),
        chance_top1=float(after["chance_top1"]),
    )


def failed_adaptation(start: Mapping[str, Any] | None) -> str | None:
    """Why a cell's start, the backbone adapted by MNTP, did not learn: its held-out masked-token loss after
    adaptation is not below the causal model's on the same masked texts (the bidirectional model it hands on then
    predicts worse than switching the mask off undid). None where it learned or was not measured."""
    if not start or start.get("from") != "adapted":
        return None
    after, causal = start.get("heldout_after"), start.get("heldout_causal")
    if not after or not causal or float(after["loss"]) < float(causal["loss"]):
        return None
    return (
        f"its MNTP adaptation (`{start.get('folder')}`) ended at a held-out masked-token loss {after['loss']:.3f}, "
        f"not below the causal model's {causal['loss']:.3f} on the same masks"
    )


def untrained_twin(results: StudyResults, tables: Tables, name: str) -> str | None:
    """The untrained design with ``name``'s attention, pooling and options, if the study has one."""
    spec = results.designs[name].spec
    for other in tables.designs:
        twin = results.designs[other].spec
        if not twin.get("train", True) and all(twin.get(k) == spec.get(k) for k in ("attention", "pooling", "options")):
            return other
    return None


def twin_comparison(results: StudyResults, tables: Tables, name: str, twin: str) -> TwinComparison:
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
    return TwinComparison(twin, out)


def learning_status(results: StudyResults, tables: Tables) -> dict[str, Learning]:
    """Per design: whether it learned (:class:`Learning`), with per-seed numbers and the untrained-twin
    comparison."""
    out: dict[str, Learning] = {}
    for name in tables.designs:
        design = results.designs[name]
        if not design.spec.get("train", True):
            out[name] = Learning(status="untrained", flagged=False)
            continue
        seeds = {str(seed): seed_learning(heldout) for seed, heldout in design.heldout.items()}
        for cell in design.cells:
            reason, seed = failed_adaptation(cell.get("start")), seeds.get(str(cell.get("seed")))
            if reason and seed is not None and seed.measured:
                seed.learned = False
                seed.reasons.append(reason)
        measured = [s for s, v in seeds.items() if v.measured]
        failed = [s for s in measured if not seeds[s].learned]
        twin = untrained_twin(results, tables, name)
        out[name] = Learning(
            status="not measured" if not measured else "did not learn" if failed else "learned",
            flagged=bool(failed),
            seeds=seeds,
            failed_seeds=failed,
            measured_seeds=measured,
            twin=twin_comparison(results, tables, name, twin) if twin else None,
        )
    return out


def design_effect(learning: Mapping[str, Learning], reference: str) -> Callable[[str], bool]:
    """Whether a design's Δ reads as a design effect: neither it nor the reference is flagged."""
    return lambda name: not learning[name].flagged and not learning[reference].flagged


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


@dataclass
class PaperRow:
    """Our Δ of one design and category next to the paper's."""

    design: str
    paper_design: str
    category: str
    paper_delta: float
    paper_significant: bool
    delta: float
    significant: bool
    seeds_measured: bool
    agree: bool
    exact_head: bool
    counted: bool
    design_effect: bool
    #: The paper's significant findings are tested as one family (:func:`test_paper_findings`): Holm-adjusted
    #: p of our † test within it, its significance, the smallest |Δ| it detects (80% power) and the verdict.
    family_pvalue: float | None = None
    family_significant: bool = False
    family_mde: float = math.nan
    verdict: str = NOT_RESOLVED


@dataclass
class ClaimDesign:
    """One design's evidence on a paper claim: its Δ, whether our † test is significant and what that makes of it."""

    delta: float
    significant: bool
    seeds_measured: bool
    verdict: str


@dataclass
class Claim:
    """A paper claim resolved by our tests: ``verdict`` holds | contradicted | mixed | not resolved.

    ``kind`` "direction": a sign per design (``designs``); "best": the best design against the best of the other
    group (``best``, ``runner_up``, ``delta``, ``pvalue``, ``significant``)."""

    claim: str
    kind: str
    verdict: str = NOT_RESOLVED
    category: str = ""
    designs: dict[str, ClaimDesign] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    best: str | None = None
    runner_up: str | None = None
    delta: float = math.nan
    pvalue: float = math.nan
    significant: bool = False
    seeds_measured: bool = True

    @property
    def resolved(self) -> bool:
        return self.verdict in (HOLDS, CONTRADICTED)


@dataclass
class PaperComparison:
    """The paper's directions next to ours: the rows, the sign tests of agreement and the claims."""

    rows: list[PaperRow]
    sign_test: dict[str, float]
    sign_test_paper_significant: dict[str, float]
    not_counted: list[str]
    reference_learned: bool
    claims: list[Claim]

    @property
    def family(self) -> list[PaperRow]:
        """The paper's significant findings that our tests speak to (counted, learned), tested as one family."""
        return [r for r in self.rows if r.family_pvalue is not None]

    @property
    def paper_findings(self) -> int:
        """How many of the paper's significant findings this study's designs and categories cover."""
        return sum(r.paper_significant and r.counted for r in self.rows)


def paper_comparison(results: StudyResults, tables: Tables, learning: Mapping[str, Learning]) -> PaperComparison | None:
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
            ours = float(entry.delta)  # type: ignore[arg-type]
            rows.append(
                PaperRow(
                    design=name,
                    paper_design=paper_name,
                    category=category,
                    paper_delta=paper_delta,
                    paper_significant=paper_sig,
                    delta=ours,
                    significant=entry.significant,
                    seeds_measured=entry.seeds_measured,
                    agree=(ours > 0) == (paper_delta > 0) and ours != 0,
                    exact_head=paper_exact(spec[name]),
                    counted=counted[paper_name] == name,
                    design_effect=effect(name),
                )
            )
    if not rows:
        return None
    test_paper_findings(rows, tables)
    tested = [r for r in rows if r.counted and r.design_effect and r.delta != 0]
    return PaperComparison(
        rows=rows,
        sign_test=stats.sign_agreement([r.agree for r in tested]),
        sign_test_paper_significant=stats.sign_agreement([r.agree for r in tested if r.paper_significant]),
        not_counted=sorted({r.design for r in rows if r.counted and not r.design_effect}),
        reference_learned=not learning[tables.reference].flagged,
        claims=paper_claims(results, tables, spec, effect),
    )


def test_paper_findings(rows: Sequence[PaperRow], tables: Tables) -> None:
    """The findings the paper marks significant, fixed before any data is seen, as one confirmatory family: each
    by our † test (its uncorrected p, training noise included), Holm-adjusted over the family alone rather than
    over all of Table 1, with the smallest |Δ| it detects at 80% power at the level Holm's first step asks."""
    family = [
        r
        for r in rows
        if r.paper_significant and r.counted and r.design_effect and tables.table1[r.design][r.category].within
    ]
    if not family:
        return
    alpha = tables.settings["alpha"]
    tests = [tables.table1[r.design][r.category].within for r in family]
    adjusted = stats.holm([t["pvalue"] for t in tests])  # type: ignore[index]
    for row, test, p in zip(family, tests, adjusted, strict=True):
        assert test is not None
        row.family_pvalue = float(p)
        row.family_significant = bool(p < alpha)
        row.family_mde = stats.minimum_detectable_effect(
            test["se_total"], alpha=alpha / len(family), power=POWER, df=test["df"]
        )
        row.verdict = verdict(row.delta, row.family_significant, 1 if row.paper_delta > 0 else -1, row.seeds_measured)


def verdict(delta: float, significant: bool, sign: int, seeds_measured: bool = True) -> str:
    """A claim that Δ has ``sign``: it holds or is contradicted only where our test is significant with the
    training noise measured (several seeds); a significant Δ of one seed compares two trained models."""
    if not significant or not seeds_measured or delta == 0:
        return NOT_RESOLVED
    return HOLDS if (delta > 0) == (sign > 0) else CONTRADICTED


def overall(verdicts: Sequence[str]) -> str:
    if not verdicts:
        return NOT_RESOLVED
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return NOT_RESOLVED if set(verdicts) <= {NOT_RESOLVED} else MIXED


def paper_claims(
    results: StudyResults, tables: Tables, spec: Mapping[str, Mapping[str, Any]], effect: Callable[[str], bool]
) -> list[Claim]:
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
                delta = float(entry.delta)  # type: ignore[arg-type]
                designs[n] = ClaimDesign(
                    delta=delta,
                    significant=entry.significant,
                    seeds_measured=entry.seeds_measured,
                    verdict=verdict(delta, entry.significant, sign, entry.seeds_measured),
                )
        claims.append(
            Claim(
                claim=f"bidirectional attention + trainable pooling ({', '.join(bidir_trainable)}) {words}",
                kind="direction",
                verdict=overall([d.verdict for d in designs.values()]),
                category=category,
                designs=designs,
                excluded=[n for n in bidir_trainable if not effect(n)],
                seeds_measured=all(d.seeds_measured for d in designs.values()),
            )
        )
    for category in ("sts", "retrieval"):
        if category not in tables.categories or not multilayer:
            continue
        claims.append(best_claim(results, tables, category, trained, multilayer))
    return claims


def best_claim(
    results: StudyResults, tables: Tables, category: str, trained: Sequence[str], multilayer: Sequence[str]
) -> Claim:
    """ "Multi-layer pooling is the best design" for a category: the best design against the best of the other
    group (multi-layer or not), by the † test over the category's datasets (one test, uncorrected)."""
    claim = Claim(
        f"multi-layer trainable pooling is the best design for {CATEGORY_LABEL[category]}", "best", category=category
    )
    if not trained:
        return claim
    best = max(trained, key=lambda n: tables.table1[n][category].score)
    others = [n for n in trained if (n in multilayer) != (best in multilayer)]
    claim.best = best
    if not others:
        return claim
    runner_up = max(others, key=lambda n: tables.table1[n][category].score)
    names = [t for t, c in tables.tasks.items() if c == category]
    test = compare_designs(results, runner_up, best, names, results.config["stats"])
    claim.runner_up = runner_up
    claim.delta = tables.table1[best][category].score - tables.table1[runner_up][category].score
    claim.pvalue = test["pvalue"] if test else math.nan
    claim.significant = test is not None and test["pvalue"] < tables.settings["alpha"]
    claim.seeds_measured = training_noise_measured(results, runner_up, best)
    claim.verdict = verdict(claim.delta, claim.significant, 1 if best in multilayer else -1, claim.seeds_measured)
    return claim


# ============================================================================================== a study
@dataclass
class Findings:
    """A study folder's results, its tables and what they let one conclude."""

    results: StudyResults
    tables: Tables
    learning: dict[str, Learning]
    comparison: PaperComparison | None

    @property
    def effect(self) -> Callable[[str], bool]:
        return design_effect(self.learning, self.tables.reference)


def analyse(folder: str | Path) -> Findings:
    """Load a study folder and compute its tables, learning verdicts and the paper comparison."""
    results = load_results(folder)
    tables = compute_tables(results)
    learning = learning_status(results, tables)
    return Findings(results, tables, learning, paper_comparison(results, tables, learning))
