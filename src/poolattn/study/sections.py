"""The report's sections on what the study can conclude (:mod:`.conclusions`): did training learn, the notes of
Table 1 on power and seeds, and the direction of the paper's findings next to ours."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .conclusions import (
    CONTRADICTED,
    HOLDS,
    LEARNED_CHANCE_RATIO,
    LEARNED_MIN_DROP,
    Claim,
    Learning,
    PaperComparison,
    PaperRow,
)
from .markdown import fmt, fmt_p, md_table
from .results import CATEGORY_LABEL, StudyResults, Tables


def power_note(tables: Tables) -> str:
    """The † test's minimum detectable effect per category, so that a Δ without a mark can be read."""
    if not tables.power:
        return ""
    first = next(iter(tables.power.values()))
    n_tests = sum(tables.table1[d][c].within is not None for d in tables.designs for c in tables.categories)
    spread = any(p["max"] - p["min"] >= 5e-4 for p in tables.power.values())
    spans = ", ".join(
        f"{CATEGORY_LABEL.get(c, c)} {fmt(p['median'], 3)}"
        + (f" ({fmt(p['min'], 3)}–{fmt(p['max'], 3)})" if spread else "")
        for c, p in tables.power.items()
    )
    return (
        f"Power: the smallest |Δ| the `†` test detects with {first['power']:.0%} probability (two-sided, at "
        f"{tables.settings['alpha']:g}/{n_tests} = {first['alpha']:.2g}, the level Holm's first step asks of a lone "
        "true difference; (q₁₋α/2 + q_power) × the standard error of Δ"
        + (" (bootstrap over the samples plus the spread over seeds)" if any_seed_spread(tables) else " (bootstrap)")
        + f", q the Student t quantiles at its Welch–Satterthwaite degrees of freedom): {spans}"
        + (" (median over the designs, range in parentheses)" if spread else "")
        + ". A Δ below that without a mark says little: a true difference of that size would often be missed."
    )


def any_seed_spread(tables: Tables) -> bool:
    return any(
        (tables.table1[d][c].within or {}).get("n_seeds", 1) > 1 for d in tables.designs for c in tables.categories
    )


def seeds_note(results: StudyResults) -> str:
    seeds = results.config["seeds"]
    if len(seeds) < 2:
        return (
            f"One training seed ({seeds[0]}): the tests see the evaluation samples' noise only. How far a Δ moves "
            "with another seed (training noise) is not measured, so a mark says that these trained models differ, "
            'not that the designs do; run several seeds (`--set "seeds=[0,1,2]"`) to test the designs.'
        )
    return (
        f"Seeds {seeds}: scores are averaged over the seeds first (per-sample values too). The `†` test adds the "
        "spread of each Δ over the seeds (its standard error × a Student t with Welch–Satterthwaite degrees of "
        "freedom, seeds − 1 where training noise dominates) to its permutation null, and its interval and the power "
        "line include it; `*` compares seed-averaged scores and does not see training noise. See the seed table "
        "below."
    )


def section_training(results: StudyResults, tables: Tables, learning: Mapping[str, Learning]) -> str:
    """Per trained design: held-out InfoNCE and top-1 before and after training against chance, and the trained
    model against its untrained twin on the suite."""
    trained = [n for n in tables.designs if learning[n].status != "untrained"]
    if not trained:
        return ""

    def mean(name: str, key: str) -> float:
        values = [getattr(learning[name].seeds[s], key) for s in learning[name].measured_seeds]
        return float(np.mean(values)) if values else math.nan

    rows = []
    for name in trained:
        info = learning[name]
        status = info.status
        if info.failed_seeds and len(info.measured_seeds) > 1:
            status += f" (seed {', '.join(info.failed_seeds)} of {len(info.measured_seeds)})"
        reasons = "; ".join(r for s in info.failed_seeds for r in info.seeds[s].reasons)
        measured = bool(info.measured_seeds)
        rows.append(
            [
                name,
                f"**{status}**" if info.flagged else status,
                f"{fmt(mean(name, 'before_loss'), 3)} → {fmt(mean(name, 'after_loss'), 3)}" if measured else "—",
                fmt(mean(name, "chance_loss"), 3) if measured else "—",
                fmt(mean(name, "ratio"), 2) if measured else "—",
                f"{fmt(mean(name, 'before_top1'), 3)} → {fmt(mean(name, 'after_top1'), 3)} "
                f"({fmt(mean(name, 'chance_top1'), 3)})"
                if measured
                else "—",
                reasons,
            ]
        )
    table = md_table(
        ["design", "learned?", "held-out InfoNCE before → after", "chance", "after / chance", "top-1 (chance)", "why"],
        rows,
        "llrrrrl",
    )
    notes = [
        f"A design learned when, in every seed, its held-out InfoNCE after training is at most "
        f"{LEARNED_CHANCE_RATIO:g} × chance (ln of the candidates per query) and at least {LEARNED_MIN_DROP:.0%} "
        "below the same model's before its first step; held-out records are set aside from training "
        "(`data.heldout`) and scored in batches of the training batch size; a design that starts from the "
        "MNTP-adapted backbone also needs that seed's adaptation to end below the causal model's held-out "
        "masked-token loss on the same masked texts. Means over the measured seeds.",
    ]
    if any(learning[n].status == "not measured" for n in trained):
        notes.append(
            "not measured: the training summary holds no held-out numbers (a study run without `data.heldout`, or "
            "one written before they existed); whether those designs learned is unknown."
        )
    for name in trained:
        twin = learning[name].twin
        if twin is None:
            continue
        groups = twin.groups
        parts = ", ".join(
            f"{CATEGORY_LABEL.get(c, c)} {fmt(groups[c]['delta'], signed=True)} (p {fmt_p(groups[c]['pvalue'])})"
            for c in tables.categories
        )
        notes.append(
            f"{name} against its untrained twin {twin.design} (same attention, pooling and options) on the suite: "
            f"Δ {fmt(groups['all']['delta'], signed=True)} over all {len(tables.tasks)} datasets "
            f"(p {fmt_p(groups['all']['pvalue'])}, `†` test, uncorrected); {parts}."
        )
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes)


def section_paper(comparison: PaperComparison | None, tables: Tables) -> str:
    if comparison is None:
        return (
            "The reference design is not the paper's M1 (trained EOS pooling, causal attention), so the directions "
            "cannot be compared design by design."
        )
    alpha = tables.settings["alpha"]
    why = "did not learn" if comparison.reference_learned else "the reference did not learn"

    def reading(r: PaperRow) -> str:
        if not r.design_effect:
            return f"not a design effect ({why})"
        if not r.counted:
            return "variant, not counted"
        return "counted" + ("" if r.exact_head else " (project's head, not the paper's)")

    def finding(r: PaperRow) -> str:
        if r.family_pvalue is None:
            return "—"
        return f"{r.verdict} (p {fmt_p(r.family_pvalue)}, detects {fmt(r.family_mde, 3)})"

    table = md_table(
        ["ours", "paper", "category", "paper Δ", "our Δ", "same direction", "reading", "paper's finding here"],
        [
            [
                r.design,
                r.paper_design,
                CATEGORY_LABEL.get(r.category, r.category),
                f"{fmt(r.paper_delta, signed=True)}{'*' if r.paper_significant else ''}",
                f"{fmt(r.delta, signed=True)}{tables.table1[r.design][r.category].marks}",
                "yes" if r.agree else "**no**",
                reading(r),
                finding(r),
            ]
            for r in comparison.rows
        ],
        "lllrrlll",
    )
    sign, sign_sig = comparison.sign_test, comparison.sign_test_paper_significant
    if sign["n"]:
        agreement = (
            f"The sign of Δ agrees with the paper in **{sign['k']} of {sign['n']}** counted design × category "
            f"comparisons; a coin gives {fmt(sign['expected'], 1)} on average, and at least {sign['k']} with "
            f"probability p = {fmt_p(sign['pvalue'])} (exact binomial test, one-sided)"
            + (
                f". Among the {sign_sig['n']} the paper marks significant: {sign_sig['k']} agree "
                f"(p = {fmt_p(sign_sig['pvalue'])})."
                if sign_sig["n"]
                else "."
            )
            + " The comparisons share the reference and the datasets, so they are not independent coin flips and "
            "the test is optimistic."
        )
    else:
        agreement = "No comparison is counted: every matching design's Δ is not a design effect."
    if comparison.not_counted:
        agreement += f" Not counted ({why}): {', '.join(comparison.not_counted)}."
    agreement += "\n\n" + findings_summary(comparison, alpha)
    lines = [
        f"A claim **holds** or is **contradicted** here only where our `†` test is significant (Holm, p < {alpha:g}; "
        "the best-design claims: the best design against the best of the other group, one test, uncorrected) with "
        "the training noise in it (several seeds); otherwise it is **not resolved**."
    ]
    if tables.single_seed:
        lines.append(
            "With one training seed a significant Δ is a difference between two trained models, not between two "
            "designs (another seed, or the same seed on another machine, may reverse it): every design claim below "
            "is **not resolved** until the study runs several seeds."
        )
    for claim in comparison.claims:
        lines.append(f"- Paper: *{claim.claim}* — here: **{claim.verdict}** ({claim_detail(claim, why)}).")
    lines.append(
        "\nThe backbone, training and evaluation suite differ from the paper's, so agreement or disagreement here is "
        "evidence about this set-up, not a replication of the paper."
    )
    return agreement + "\n\n" + table + "\n\n" + "\n".join(lines)


def findings_summary(comparison: PaperComparison, alpha: float) -> str:
    """How many of the paper's significant findings this study resolves, tested as their own family."""
    family, covered = comparison.family, comparison.paper_findings
    if not covered:
        return "None of the paper's significant findings (`*` in its table) is among this study's comparisons."
    verdicts = [r.verdict for r in family]
    holds, contradicted = verdicts.count(HOLDS), verdicts.count(CONTRADICTED)
    mdes = [r.family_mde for r in family if math.isfinite(r.family_mde)]
    power = (
        f" The smallest |Δ| each of these tests detects with 80% probability: {fmt(float(np.median(mdes)), 3)} "
        f"(median; {fmt(min(mdes), 3)}–{fmt(max(mdes), 3)}); a finding whose true Δ is below that is often missed."
        if mdes
        else ""
    )
    return (
        f"**The paper's significant findings, tested as one family:** {holds + contradicted} of {covered} resolved "
        f"here ({holds} hold, {contradicted} contradicted). The {covered} findings the paper marks `*` that this "
        f"study's designs cover were fixed before any of its data was seen, so they form a confirmatory family: "
        f"each is our `†` test of that design and category (training noise included), Holm-corrected over the "
        f"{len(family)} tested (p < {alpha:g}) rather than over all of Table 1; a finding holds or is contradicted "
        "only where that test is significant with several seeds (last column of the table)"
        + (f"; {covered - len(family)} not tested (the design did not learn)" if covered > len(family) else "")
        + "."
        + power
    )


def claim_detail(claim: Claim, why: str) -> str:
    """The evidence behind a claim's verdict, in words."""

    def models(significant: bool, seeds_measured: bool) -> str:
        return " (significant between these two trained models, one seed)" if significant and not seeds_measured else ""

    if claim.kind == "best" and claim.runner_up:
        detail = (
            f"best {claim.best}, {fmt(claim.delta, signed=True)} over {claim.runner_up} (p {fmt_p(claim.pvalue)})"
            + models(claim.significant, claim.seeds_measured)
        )
    elif claim.kind == "best":
        detail = f"best {claim.best}, nothing to compare it with"
    else:
        detail = ", ".join(
            f"{n} {fmt(d.delta, signed=True)}: {d.verdict}{models(d.significant, d.seeds_measured)}"
            for n, d in claim.designs.items()
        )
    if claim.excluded:
        detail += ("; " if detail else "") + f"left out ({why}): {', '.join(claim.excluded)}"
    return detail or "no design"
