"""Table 1 for other tools, in the study folder's ``results/``: ``table1.csv`` (one row per design and category
with every number behind a cell) and ``table1.tex`` (the report's layout as a booktabs ``tabular``)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import write_text_atomic
from .conclusions import Learning
from .results import CATEGORY_LABEL, StudyResults, Table1Entry, Tables

#: The study folder's sub-folder of exported tables.
EXPORT_DIR = "results"
CSV_COLUMNS = (
    "design",
    "attention",
    "pooling",
    "trained",
    "learning",
    "category",
    "n_datasets",
    "score",
    "delta",
    "marks",
    "wilcoxon_p",
    "permutation_p",
    "permutation_p_holm",
    "ci_low",
    "ci_high",
    "mde",
)


def table1_records(results: StudyResults, tables: Tables, learning: Mapping[str, Learning]) -> list[dict[str, Any]]:
    """One record per design and category: the numbers behind each Table 1 cell (NaN where not computed)."""
    records = []
    for name in tables.designs:
        spec = results.designs[name].spec
        for category in tables.categories:
            entry = tables.table1[name][category]
            within = entry.within or {}
            records.append(
                {
                    "design": name,
                    "attention": spec["attention"],
                    "pooling": spec["pooling"],
                    "trained": bool(spec.get("train", True)),
                    "learning": learning[name].status,
                    "category": category,
                    "n_datasets": entry.n_datasets,
                    "score": entry.score,
                    "delta": math.nan if entry.delta is None else entry.delta,
                    "marks": entry.marks,
                    "wilcoxon_p": (entry.wilcoxon or {}).get("pvalue", math.nan),
                    "permutation_p": within.get("pvalue", math.nan),
                    "permutation_p_holm": within.get("pvalue_holm", math.nan),
                    "ci_low": within.get("ci_low", math.nan),
                    "ci_high": within.get("ci_high", math.nan),
                    "mde": within.get("mde", math.nan),
                }
            )
    return records


def table1_csv(records: list[dict[str, Any]]) -> str:
    """The records as CSV (floats with full precision, NaN as an empty cell)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: csv_value(v) for k, v in record.items()})
    return out.getvalue()


def csv_value(value: Any) -> Any:
    """Floats at full precision (``repr``), NaN as an empty cell; anything else as it is."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip
    return "".join(special.get(c, c) for c in text)


def latex_marks(entry: Table1Entry) -> str:
    return "*" * entry.wilcoxon_significant + r"\dagger" * entry.significant


def table1_latex(results: StudyResults, tables: Tables, learning: Mapping[str, Learning]) -> str:
    """Table 1 as a booktabs ``tabular``: the reference absolute (bold), the others as Δ with the report's marks;
    a design that did not learn carries a circle and its Δ is in parentheses."""
    columns = "l" + "r" * len(tables.categories)
    header = " & ".join(["", *(latex_escape(CATEGORY_LABEL.get(c, c)) for c in tables.categories)])
    lines = [
        f"% poolattn study {latex_escape(results.config['name'])}: Table 1 (needs \\usepackage{{booktabs}})",
        f"\\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        header + r" \\",
        r"\midrule",
    ]
    for name in tables.designs:
        flagged = learning[name].flagged
        label = latex_escape(name) + (r"$^{\circ}$" if flagged else "")
        cells = []
        for category in tables.categories:
            entry = tables.table1[name][category]
            if name == tables.reference:
                cells.append(rf"\textbf{{{entry.score:.4f}}}")
                continue
            marks = latex_marks(entry)
            value = f"{entry.delta:+.4f}" + (f"^{{{marks}}}" if marks else "")
            cells.append(f"(${value}$)" if flagged else f"${value}$")
        lines.append(" & ".join([rf"\textbf{{{label}}}" if name == tables.reference else label, *cells]) + r" \\")
    alpha = tables.settings["alpha"]
    note = (
        f"{latex_escape(tables.reference)}: absolute score; others: $\\Delta$ vs {latex_escape(tables.reference)}. "
        f"$^{{*}}$ Wilcoxon signed-rank over datasets, $p<{alpha:g}$; $^{{\\dagger}}$ paired permutation test within "
        f"datasets, Holm-corrected, $p<{alpha:g}$; $^{{\\circ}}$ did not learn (its $\\Delta$ is not a design effect)."
    )
    width = len(tables.categories) + 1
    lines += [r"\bottomrule", f"\\multicolumn{{{width}}}{{p{{0.9\\linewidth}}}}{{\\footnotesize {note}}}"]
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def write_table1(
    folder: Path, results: StudyResults, tables: Tables, learning: Mapping[str, Learning]
) -> tuple[Path, Path]:
    """Write ``results/table1.csv`` and ``results/table1.tex`` (each atomically); returns their paths."""
    csv_path, tex_path = folder / EXPORT_DIR / "table1.csv", folder / EXPORT_DIR / "table1.tex"
    write_text_atomic(csv_path, table1_csv(table1_records(results, tables, learning)))
    write_text_atomic(tex_path, table1_latex(results, tables, learning))
    return csv_path, tex_path
