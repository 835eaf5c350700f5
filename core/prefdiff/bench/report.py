"""report.md: the human-readable table of one benchmark run, from its results."""

from __future__ import annotations

from typing import Any

from prefdiff.bench.recipe import Recipe

SMALL_EVAL = 30
"""Fewer held-out conditions than this get a warning: a bootstrap interval over so few is unreliable."""


def small_eval_warning(n_eval: int) -> str | None:
    """The warning for a held-out set of ``n_eval`` conditions, or None when it is large enough."""
    if n_eval >= SMALL_EVAL:
        return None
    return (f"only {n_eval} held-out condition{'s' if n_eval != 1 else ''}, fewer than {SMALL_EVAL}: a bootstrap "
            f"interval resampled from so few values understates the real spread, so the CI95 columns are "
            f"unreliable; evaluate on a larger test split")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:+.4f}, {value[1]:+.4f}]"
    return str(value)


def metrics_table(results: dict[str, Any]) -> list[str]:
    rows = {**({"real held-out data": results["real"]["metrics"]} if "metrics" in results.get("real", {}) else {}),
            "base": results["base"].get("metrics", {}),
            **{name: m.get("metrics", {}) for name, m in results["methods"].items()}}
    names = sorted({k for metrics in rows.values() for k in metrics})
    if not names:
        return []
    lines = ["", "Field metrics (the recipe's own measures of the same samples):", "",
             "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model, metrics in rows.items():
        lines.append(f"| {model} | " + " | ".join(_number(metrics.get(k, "")) for k in names) + " |")
    return lines


def report_markdown(results: dict[str, Any], recipe: Recipe) -> str:
    """The report of one run; every number in it is one of ``results``."""
    lines = [f"# Benchmark: {results['domain']}", "",
             f"Training reward `{results['reward']}`; held-out judge `{results['judge']}`"
             + (f" ({recipe.judge_note})" if recipe.judge_note else "") + ".",
             f"Seed {results['seed']}, {results['n_eval']} held-out conditions"
             f" x {results.get('eval_samples', 1)} samples, quick={results['quick']}. "
             "Drift: " + (recipe.drift_note or ("the recipe's own measure" if recipe.drift else
                          "sliced Wasserstein-1 distance of samples to real held-out data")) + ".", "",
             *([f"**Warning:** {small_eval_warning(results['n_eval'])}.", ""]
               if small_eval_warning(results["n_eval"]) else []),
             "| model | judge mean | judge std | improvement | CI95 | drift | reward queries | train s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    b, u = results["base"], results["untrained"]
    lines.append(f"| untrained | {u['reward_mean']:.4f} | {u['reward_std']:.4f} | | | | | | |")
    if "real" in results:
        r = results["real"]
        lines.append(f"| real held-out data | {r['reward_mean']:.4f} | {r['reward_std']:.4f} | | | | | | |")
    lines.append(f"| base | {b['reward_mean']:.4f} | {b['reward_std']:.4f} | | | {b.get('drift', float('nan')):.4f} | | | |")
    for name, m in results["methods"].items():
        lo, hi = m["improvement_ci95"]
        lines.append(f"| {name} | {m['reward_mean']:.4f} | {m['reward_std']:.4f} | {m['improvement']:+.4f} | "
                     f"[{lo:+.4f}, {hi:+.4f}] | {m.get('drift', float('nan')):.4f} | {m['reward_queries']} | "
                     f"{m['train_wall_s']:.1f} | {m['peak_rss_mb']:.0f} |")
    lines += metrics_table(results)
    if "edit" in results:
        lines += ["", "Editing: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in results["edit"].items()) + "."]
    lines += ["", "![samples](samples.png)", ""]
    return "\n".join(lines)
