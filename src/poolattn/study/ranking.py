"""Does the ranking hold? Within a study: in how many training seeds each design beats the reference on each
category. Between two studies: their rankings side by side (Kendall's τ, ``scipy.stats.kendalltau``) and whether
the second agrees on what the first resolves (a † with the training noise measured, by a design that learned; and
the paper claims the first resolves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats

from .conclusions import NOT_RESOLVED, Findings
from .markdown import fmt, fmt_p, md_table
from .results import CATEGORY_LABEL, seed_deltas


@dataclass
class SeedWins:
    """In ``wins`` of ``n`` training seeds the design's category score is above the reference's (seeds paired by
    number); ``pvalue``: the exact two-sided binomial test of ``wins`` against a coin (``scipy.stats.binomtest``)."""

    wins: int
    n: int
    pvalue: float

    @property
    def share(self) -> float:
        return self.wins / self.n if self.n else math.nan


def seed_wins(findings: Findings) -> dict[str, dict[str, SeedWins]]:
    """Per design other than the reference and per category, the seeds in which it beats the reference; empty
    with fewer than two seeds."""
    results, tables = findings.results, findings.tables
    out: dict[str, dict[str, SeedWins]] = {}
    for name in tables.designs:
        if name == tables.reference:
            continue
        for category in tables.categories:
            names = [t for t, c in tables.tasks.items() if c == category]
            deltas = seed_deltas(results, tables.reference, name, names)
            if deltas is None:
                continue
            wins = sum(d > 0 for d in deltas)
            pvalue = float(scipy.stats.binomtest(wins, len(deltas), 0.5).pvalue)
            out.setdefault(name, {})[category] = SeedWins(wins, len(deltas), pvalue)
    return out


@dataclass
class CategoryRanking:
    """One category's designs from best to worst in each study (the designs both have), and their agreement."""

    category: str
    first: list[str]
    second: list[str]
    kendall_tau: float
    pvalue: float

    @property
    def same_best(self) -> bool:
        return bool(self.first) and self.first[0] == self.second[0]


@dataclass
class ResolvedCheck:
    """A Δ the first study resolves (design − reference on a category) and what the second study says."""

    design: str
    category: str
    delta: float
    other_delta: float | None
    other_resolved: bool

    @property
    def agree(self) -> bool:
        """The second study's Δ points the same way (whether or not it resolves it)."""
        return self.other_delta is not None and (self.other_delta > 0) == (self.delta > 0) and self.other_delta != 0


@dataclass
class ClaimCheck:
    """A paper claim the first study resolves and the second study's verdict on it (None: not tested there)."""

    claim: str
    verdict: str
    other_verdict: str | None

    @property
    def agree(self) -> bool:
        """The second study does not resolve the claim otherwise (it may leave it unresolved)."""
        return self.other_verdict in (None, NOT_RESOLVED, self.verdict)

    @property
    def confirmed(self) -> bool:
        return self.other_verdict == self.verdict


@dataclass
class RankingComparison:
    """Two studies' rankings side by side and whether they agree on what the first resolves."""

    first: str
    second: str
    categories: list[CategoryRanking]
    resolved: list[ResolvedCheck]
    claims: list[ClaimCheck]

    @property
    def agree(self) -> bool | None:
        """Whether the second study agrees on everything the first resolves (every such Δ in the same direction,
        no such claim resolved otherwise); None: the first resolves nothing."""
        checks = [c.agree for c in self.resolved] + [c.agree for c in self.claims]
        return all(checks) if checks else None

    @property
    def contradicted(self) -> bool:
        """Whether the second study resolves the opposite of something the first resolves (a Δ of the other sign
        resolved there, or a claim resolved otherwise), not only points the other way."""
        return any(not c.agree and c.other_resolved for c in self.resolved) or any(not c.agree for c in self.claims)


def ranking(findings: Findings, category: str, designs: list[str]) -> list[str]:
    """``designs`` by the category score, best first."""
    return sorted(designs, key=lambda n: -findings.tables.table1[n][category].score)


def compare_rankings(first: Findings, second: Findings) -> RankingComparison:
    """The rankings of the designs (by name) and categories both studies have, and the second study's word on
    every Δ and paper claim the first resolves."""
    common = [d for d in first.tables.designs if d in second.tables.designs]
    categories = [c for c in first.tables.categories if c in second.tables.categories]
    rankings = []
    for category in categories:
        a = [first.tables.table1[d][category].score for d in common]
        b = [second.tables.table1[d][category].score for d in common]
        tau = scipy.stats.kendalltau(a, b) if len(common) > 1 else None
        rankings.append(
            CategoryRanking(
                category,
                ranking(first, category, common),
                ranking(second, category, common),
                float(tau.statistic) if tau is not None else math.nan,
                float(tau.pvalue) if tau is not None else math.nan,
            )
        )
    same_reference = first.tables.reference == second.tables.reference
    resolved = []
    for name in first.tables.designs:
        if name == first.tables.reference or not first.effect(name):
            continue
        for category in first.tables.categories:
            entry = first.tables.table1[name][category]
            if not entry.design_level:
                continue
            other = second.tables.table1.get(name, {}).get(category) if same_reference else None
            resolved.append(
                ResolvedCheck(
                    name,
                    category,
                    float(entry.delta),  # type: ignore[arg-type]
                    other.delta if other is not None else None,
                    other is not None and other.design_level and second.effect(name),
                )
            )
    claims = []
    if first.comparison is not None:
        theirs = {(c.kind, c.category): c for c in second.comparison.claims} if second.comparison else {}
        for claim in first.comparison.claims:
            if claim.resolved:
                other = theirs.get((claim.kind, claim.category))
                claims.append(ClaimCheck(claim.claim, claim.verdict, other.verdict if other else None))
    return RankingComparison(str(first.results.folder), str(second.results.folder), rankings, resolved, [*claims])


# ============================================================================================== report
def section_seed_wins(findings: Findings, wins: dict[str, dict[str, SeedWins]]) -> str:
    """The share of seeds in which each design beats the reference, per category."""
    if not wins:
        return ""
    tables = findings.tables
    header = ["design", *(CATEGORY_LABEL.get(c, c) for c in tables.categories)]
    rows = [
        [name, *(f"{w[c].wins}/{w[c].n}" if c in w else "—" for c in tables.categories)] for name, w in wins.items()
    ]
    n = max(w.n for row in wins.values() for w in row.values())
    alpha = tables.settings["alpha"]
    needed = math.ceil(math.log2(2 / alpha))
    return (
        f"### Seeds in which a design beats {tables.reference}\n\n"
        + md_table(header, rows)
        + f"\n\nEach cell: in how many of the training seeds the design's category score is above {tables.reference}'s "
        "(seeds paired by number; an untrained design is compared with every seed). A design effect shows in "
        "(nearly) every seed; about half is what training noise alone gives. "
        + (
            f"With {n} seeds even {n}/{n} is not significant by itself (exact binomial test: two-sided p < {alpha:g} "
            f"needs at least {needed} seeds, all agreeing)."
            if n < needed
            else f"The exact binomial test of k/{n} against a coin is in `results.json`."
        )
    )


def section_comparison(comparison: RankingComparison, first: Findings, second: Findings) -> str:
    """The two studies' rankings side by side and whether the second agrees on what the first resolves."""
    rows = [
        [
            label(r.category),
            " > ".join(r.first),
            " > ".join(r.second),
            f"{fmt(r.kendall_tau, 2)} (p {fmt_p(r.pvalue)})",
            "yes" if r.same_best else "**no**",
        ]
        for r in comparison.categories
    ]
    here, there = first.results.config["name"], second.results.config["name"]
    header = ["category", f"here ({here})", f"`{comparison.second}` ({there})", "Kendall τ", "same best"]
    table = md_table(header, rows, "lllrl")
    lines = []
    if comparison.agree is None:
        lines.append(
            "This study resolves no Δ (no `†` with its training noise measured, by a design that learned) and no "
            "paper claim, so there is nothing for the other study to confirm: the rankings above order point "
            "estimates and may differ by noise alone."
        )
    else:
        verdict = (
            "agrees with it"
            if comparison.agree
            else "**contradicts** it (it resolves the opposite)"
            if comparison.contradicted
            else "does **not confirm** it (a Δ points the other way there, without being resolved)"
        )
        lines.append(f"On what this study resolves, the other study {verdict}:")
    if comparison.resolved:
        same = sum(c.agree for c in comparison.resolved)
        confirmed = sum(c.agree and c.other_resolved for c in comparison.resolved)
        lines.append(
            f"- Δ: {same} of the {len(comparison.resolved)} that this study resolves point the same way there, "
            f"{confirmed} of them resolved there too"
            + (
                "; the others differ: " + ", ".join(f"{c.design} on {label(c.category)}" for c in differ)
                if (differ := [c for c in comparison.resolved if not c.agree])
                else ""
            )
            + "."
        )
    for claim in comparison.claims:
        lines.append(
            f"- Paper: *{claim.claim}*: **{claim.verdict}** here, **{claim.other_verdict or 'not tested'}** there."
        )
    if first.tables.reference != second.tables.reference:
        lines.append(
            f"The studies have different references ({first.tables.reference}, {second.tables.reference}): their Δ "
            "are not compared."
        )
    kendall = [r.kendall_tau for r in comparison.categories if math.isfinite(r.kendall_tau)]
    if kendall:
        lines.append(
            f"Kendall's τ of the category scores over the {len(comparison.categories[0].first)} designs both have: "
            f"median {fmt(float(np.median(kendall)), 2)} (1: the same order, −1: reversed; its p is the exact test "
            "of no association, and with few designs only a complete agreement can reach it)."
        )
    return f"### Beside `{comparison.second}`\n\n" + table + "\n\n" + "\n".join(lines)


def label(category: str) -> str:
    return CATEGORY_LABEL.get(category, category)
