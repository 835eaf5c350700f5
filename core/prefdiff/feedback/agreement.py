"""Agreement between labelers on the pairs they both answered.

For each two labelers: how many pairs they share, the fraction where their
answers (a, b or tie) match, and Cohen's kappa (Cohen 1960), which discounts
the agreement their answer frequencies would reach by chance.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from prefdiff.data import WINNERS


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two equally long answer lists; None when chance agreement is 1."""
    n = len(x)
    observed = sum(u == v for u, v in zip(x, y)) / n
    chance = sum((x.count(c) / n) * (y.count(c) / n) for c in WINNERS)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def agreement(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement report of pair records (each with id, labeler, winner).

    Returns ``{"labelers": {name: answers}, "shared_pairs": n, "agreement": overall
    fraction or None, "by_pair_of_labelers": [{labelers, shared, agreement, kappa}]}``.
    """
    answers: dict[str, dict[str, str]] = {}
    for rec in records:
        answers.setdefault(rec.get("labeler", "?"), {})[rec.get("id", "")] = rec["winner"]
    rows, matched, compared = [], 0, 0
    for first, second in combinations(sorted(answers), 2):
        shared = sorted(set(answers[first]) & set(answers[second]))
        if not shared:
            continue
        x = [answers[first][p] for p in shared]
        y = [answers[second][p] for p in shared]
        same = sum(u == v for u, v in zip(x, y))
        matched, compared = matched + same, compared + len(shared)
        kappa = cohen_kappa(x, y)
        rows.append({"labelers": [first, second], "shared": len(shared), "agreement": same / len(shared),
                     "kappa": None if kappa is None else round(kappa, 4)})
    shared_pairs = {p for name in answers for p in answers[name]
                    if sum(p in other for other in answers.values()) > 1}
    return {"labelers": {name: len(a) for name, a in sorted(answers.items())},
            "shared_pairs": len(shared_pairs),
            "agreement": matched / compared if compared else None,
            "by_pair_of_labelers": rows}


def format_agreement(report: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    lines = ["labelers: " + ", ".join(f"{n} ({k} answers)" for n, k in report["labelers"].items()),
             f"pairs answered by two or more labelers: {report['shared_pairs']}"]
    if report["agreement"] is None:
        lines.append("agreement: no pair was answered by two labelers (serve with --labels-per-pair 2)")
        return "\n".join(lines)
    lines.append(f"agreement over all labeler pairs: {report['agreement']:.3f}")
    for row in report["by_pair_of_labelers"]:
        kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.3f}"
        lines.append(f"  {row['labelers'][0]} vs {row['labelers'][1]}: {row['shared']} shared, "
                     f"agreement {row['agreement']:.3f}, Cohen's kappa {kappa}")
    return "\n".join(lines)
