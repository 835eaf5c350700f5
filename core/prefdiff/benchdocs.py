"""docs/benchmarks.md, generated from the committed benchmarks/results/*/results.json and perf.json.

    python -m prefdiff.benchdocs [RESULTS_DIR] [DOCS_PAGE]

Every number on the page is read from a results.json or from perf.json; the
sample figures are copied next to the page and the reward-against-time plots
are drawn there, so it renders on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from prefdiff.bench.report import metrics_table
from prefdiff.errors import UserError

BENCH_COMMAND = "make bench"
PERF_TARGETS = ("`make bench` and `make bench-more` run its figures between them (the Makefile's "
                "`BENCH_FIGURES` and `bench-more` say which).")
PERF_NOTES = "PERF_NOTES.md"
STATUS = "STATUS.md"


def _row(name: str, m: dict) -> str:
    ci = m.get("improvement_ci95")
    improvement = f"{m['improvement']:+.4f}" if "improvement" in m else ""
    interval = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
    drift = f"{m['drift']:.4f}" if "drift" in m else ""
    queries = m.get("reward_queries", "")
    wall = f"{m['train_wall_s']:.1f}" if "train_wall_s" in m else ""
    peak = f"{m['peak_rss_mb']:.0f}" if "peak_rss_mb" in m else ""
    return (f"| {name} | {m['reward_mean']:.4f} | {improvement} | {interval} | {drift} | {queries} | "
            f"{wall} | {peak} |")


def plot_curves(results: dict[str, Any], path: Path) -> bool:
    """Held-out reward against training wall-clock, one line per method; False when there are no curves."""
    curves = {m: e["curve"] for m, e in results.get("methods", {}).items() if e.get("curve")}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for method, curve in curves.items():
        xs, ys = zip(*sorted(curve))
        ax.plot(xs, ys, marker="o", markersize=3, label=method)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(f"held-out reward ({results.get('judge', results.get('reward', ''))})")
    ax.set_title(f"{results['domain']}: held-out reward during training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _efficiency_lines(results: dict[str, Any]) -> list[str]:
    from prefdiff.perf.efficiency import field_speedup

    eff = field_speedup(results)
    if "level" not in eff:
        return []
    reach = ", ".join(f"{m} {'never' if t is None else f'{t:.1f} s'}" for m, t in eff["time_to_level_s"].items())
    line = f"Time to DDPO's final held-out reward ({eff['level']:.4f}, on the curve subset): {reach}."
    if eff.get("best"):
        line += f" Fastest: {eff['best']}, {eff['speedup']:.2f}x DDPO."
    elif "skipped" in eff:
        line += f" ({eff['skipped']}.)"
    return ["", line]


def latest_note(notes: str) -> str:
    """A NOTES.md's newest entry: the text before its second ``###`` heading (entries are newest first)."""
    lines = notes.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("### ")]
    return "\n".join(lines[:headings[1]] if len(headings) > 1 else lines).strip()


def _notes(notes: Path, page: Path) -> list[str]:
    """What the people who ran it observed: a NOTES.md's newest entry on the page, and a link to the
    rest (earlier runs and what was tried, dated), so the page stays short."""
    if not notes.is_file():
        return []
    return ["", latest_note(notes.read_text()), "", f"The whole notes, earlier runs and what was tried, dated: "
            f"[{notes.parent.name}/{notes.name}]({os.path.relpath(notes, page.parent)})."]


def _provenance(env: dict, commit: str | None = None) -> str:
    """' Commit: abc1234 (tree clean).' from a results.json's or perf.json's environment, else ""."""
    commit = commit or env.get("commit")
    if not commit:
        return ""
    tree = {True: " (tree clean)", False: " (tree not clean)"}.get(env.get("clean"), "")
    return f" Commit: {str(commit)[:7]}{tree}."


def _field(path: Path, page: Path) -> list[str]:
    r = json.loads(path.read_text())
    env = r.get("env", {})
    lines = [f"## {r['domain']}", "",
             f"Command: `prefdiff bench {r['domain']}{' --quick' if r.get('quick') else ''} --seed {r['seed']} "
             f"--out {path.parent}`. Machine: {env.get('device', '?')}, {env.get('threads', '?')} threads, "
             f"{env.get('machine', '')}, torch {env.get('torch', '?')}.{_provenance(env)} "
             f"Training reward `{r['reward']}`, "
             f"held-out judge `{r.get('judge', r['reward'])}`, {r['n_eval']} held-out conditions.", "",
             "| model | judge mean | improvement | CI95 | drift | reward queries | train s | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    if "untrained" in r:
        lines.append(_row("untrained network", r["untrained"]))
    if "real" in r:
        lines.append(_row("real held-out data", r["real"]))
    lines.append(_row("base", r["base"]))
    lines += [_row(name, m) for name, m in r["methods"].items()]
    lines += metrics_table(r)
    if "edit" in r:
        lines += ["", "Editing: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in r["edit"].items())]
    lines += _notes(path.parent / "NOTES.md", page)
    curves = page.parent / "figures" / f"{r['domain']}-curves.png"
    if plot_curves(r, curves):
        lines += ["", f"![{r['domain']}: held-out reward against training wall-clock](figures/{curves.name})"]
        lines += _efficiency_lines(r)
    figure = path.parent / "samples.png"
    if figure.is_file():
        target = page.parent / "figures" / f"{r['domain']}-samples.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, target)
        lines += ["", f"![{r['domain']} samples, base then each method](figures/{target.name})"]
    lines.append("")
    return lines


LEGEND = ("Judge means on held-out conditions; improvement over the base with its 95% bootstrap interval, and a "
          "method is above zero when the interval's low end is. Gap to real closed: (best - base) / (real - base) on "
          "the judge, past 100% when the best method outscores real data.")

AGAINST_REAL_LEGEND = ("Against real data: the field's own measure of what its samples are worth, for real data, "
                       "the base and the best method on the judge ({}).")


def against_real(domain: str):
    """The ``against_real`` of the benchmark recipe registered as ``domain`` (a
    :class:`prefdiff.bench.recipe.AgainstReal`); None where the recipe has none or no installed plugin
    registers the domain."""
    from prefdiff.plugins import get_manager

    manager = get_manager()
    if domain not in manager.names("benchmarks"):
        return None
    try:
        return manager.benchmark(domain).against_real
    except UserError as exc:  # the recipe reads the environment (a user's task folder) and refused it
        print(f"benchdocs: {domain}'s recipe did not build ({exc}); its against-real-data cell is left out",
              file=sys.stderr)
        return None


def _against_real_cell(r: dict[str, Any], best: str, spec) -> str:
    """The summary table's against-real-data cell: the field's measure (``spec``) for real data, the base
    and the best method on the judge, with that method's interval."""
    base, method = r["base"].get("metrics", {}), r["methods"][best].get("metrics", {})
    if spec is None or spec.metric not in base or spec.metric not in method:
        return "-"
    key = spec.metric
    real = r.get("real", {}).get("metrics", {}).get(key)
    cell = (f"{spec.label}: " + (f"real {real:.3f}, " if real is not None else "")
            + f"base {base[key]:.3f}, {best} {method[key]:.3f}")
    if spec.interval in method and f"{spec.interval}_ci95" in method:
        lo, hi = method[f"{spec.interval}_ci95"]
        cell += " (" + spec.reads.format(v=method[spec.interval], lo=lo, hi=hi) + ")"
    return cell


def _legend(specs: dict[str, Any]) -> str:
    """The summary table's legend, saying what each field's against-real-data cell measures (fields that
    share a measure are named together)."""
    fields: dict[str, list[str]] = {}
    for domain, spec in specs.items():
        if spec is not None:
            fields.setdefault(spec.legend, []).append(domain)
    if not fields:
        return LEGEND
    parts = "; ".join(f"{' and '.join(names)}: {legend}" for legend, names in fields.items())
    return f"{LEGEND} {AGAINST_REAL_LEGEND.format(parts)}"


def _gap_closed(r: dict[str, Any], best: dict[str, Any]) -> str:
    """The share of the judge's gap from the base up to real held-out data that ``best`` closes:
    (best - base) / (real - base); none where real data does not score above the base."""
    if "real" not in r or r["real"]["reward_mean"] - r["base"]["reward_mean"] < 1e-9:
        return "-"
    base = r["base"]["reward_mean"]
    return f"{100 * (best['reward_mean'] - base) / (r['real']['reward_mean'] - base):.0f}%"


def summary_table(paths: list[Path]) -> list[str]:
    """The page's opening table: per field, the real-data reference, the base, the best method on the
    judge, how much of the gap to real data it closes, and the field's downstream figure."""
    lines = ["| field | judge | real held-out data | base | best method | its judge mean | improvement [CI95] | "
             "gap to real closed | against real data | methods above zero |", "|---" * 10 + "|"]
    specs = {}
    for path in paths:
        r = json.loads(path.read_text())
        spec = specs[r["domain"]] = against_real(r["domain"])
        methods = r["methods"]
        best = max(methods, key=lambda m: methods[m]["improvement"], default=None)
        real = f"{r['real']['reward_mean']:.4f}" if "real" in r else "-"
        above = [m for m, e in methods.items() if e.get("improvement_ci95", [0])[0] > 0]
        row = f"| {r['domain']} | `{r.get('judge', r['reward'])}` | {real} | {r['base']['reward_mean']:.4f} | "
        if best is None:
            lines.append(row + "- | - | - | - | - | - |")
            continue
        b = methods[best]
        lo, hi = b["improvement_ci95"]
        lines.append(row + f"{best} | {b['reward_mean']:.4f} | {b['improvement']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                     f"{_gap_closed(r, b)} | {_against_real_cell(r, best, spec)} | "
                     f"{', '.join(above) or 'none'} ({len(above)} of {len(methods)}) |")
    return lines + ["", _legend(specs), ""]


def _value(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _figure_details(f: dict[str, Any]) -> list[str]:
    """A compact table of what stands behind one figure."""
    d = f.get("details", {})
    if f["id"] == 1:
        rows = [f"| {fam} | {v['prefdiff_ms']} | {v['bare_ms']} | {v['ratio']:.3f} | "
                f"{' to '.join(f'{q:.3f}' for q in v.get('paired_ratio_quartiles', []))} |" for fam, v in d.items()]
        return ["| family | prefdiff ms/step | bare ms/step | ratio (median of pairs) | quartiles |",
                "|---|---|---|---|---|", *rows]
    if f["id"] == 4:
        rows = []
        for name, v in d.items():
            if "samples_per_s" not in v:
                continue
            share = f"{v['share']:.2%} of a {v['method']} step ({v['samples_per_step']} samples)" \
                if "share" in v else v.get("role", "")
            rows.append(f"| {name} | {v['domain']} | {v['samples_per_s']} | {share} |")
        return ["| reward | samples from | samples/s | share of a training step |", "|---|---|---|---|", *rows]
    if f["id"] == 6:
        rows = [f"| {k} | {v['peak_mb']:.0f} | {v['above_baseline_mb']:.0f} |" for k, v in d.get("by_k", {}).items()]
        return ["| gradient steps | peak RSS MB | above import baseline MB |", "|---|---|---|", *rows]
    if f["id"] == 5 and "step_ms" in d:
        return ["Step ms: " + ", ".join(f"{k} {v}" for k, v in d["step_ms"].items()) + "."]
    if f["id"] == 7:
        return ["Per field: " + "; ".join(f"{k}: {v.get('best')} {v.get('speedup', v.get('skipped', ''))}"
                                          for k, v in d.get("fields", {}).items()) + "."]
    return []


def _figure_commits(perf: dict) -> str:
    """' Commits: figures 1, 2 on abc; figure 3 on def.' where --update reruns left several commits,
    ' Commit: abc (tree clean).' where every figure ran on one, else ""."""
    by_commit: dict[str, list[str]] = {}
    for figure, commit in perf.get("figure_commits", {}).items():
        by_commit.setdefault(str(commit)[:7], []).append(figure)
    if len(by_commit) < 2:
        return _provenance(perf.get("environment", {}), next(iter(by_commit), None))
    parts = [f"{'figures' if len(ids) > 1 else 'figure'} {', '.join(sorted(ids, key=int))} on {commit}"
             for commit, ids in sorted(by_commit.items(), key=lambda kv: -len(kv[1]))]
    return " Commits: " + "; ".join(parts) + "."


def _figure_commands(perf: dict) -> str:
    """'Command: `c`' when one run made every figure; after ``--update`` reruns, each figure's last command,
    grouped: 'Commands (...): figures 1, 2: `a`; figure 3: `b`'. A run's ``--only N`` names the figures it
    made; a run without ``--only`` made them all."""
    commands = perf.get("commands") or [perf["command"]]
    figures = list(dict.fromkeys(str(f["id"]) for f in perf.get("figures", [])))  # a figure may have several rows
    last: dict[str, str] = {}
    for command in commands:
        words = command.split()
        only = {w.split("=", 1)[1] for w in words if w.startswith("--only=")}
        only |= {words[i + 1] for i, w in enumerate(words[:-1]) if w == "--only"}
        last.update({figure: command for figure in figures if not only or figure in only})
    groups: dict[str, list[str]] = {}
    for figure in figures:
        groups.setdefault(last.get(figure, commands[-1]), []).append(figure)
    if len(groups) < 2:
        return f"Command: `{next(iter(groups), commands[-1])}`"
    parts = [f"{'figures' if len(ids) > 1 else 'figure'} {', '.join(ids)}: `{command}`" for command, ids in groups.items()]
    return f"Commands, each figure's last run (perf.json's `commands` lists all {len(commands)} in order): " + "; ".join(parts)


def render_perf(perf_path: Path, page: Path) -> list[str]:
    """The performance section from perf.json (and PERF_NOTES.md beside it)."""
    p = json.loads(perf_path.read_text())
    env = p.get("environment", {})
    lines = ["## Performance", "",
             f"{_figure_commands(p)}{' (quick settings)' if p.get('quick') else ''}, {p.get('date', '')}, "
             f"seed {p.get('seed', 0)}; the figures' own times add up to "
             f"{round(sum(p.get('figure_wall_s', {}).values()), 1)} s. {PERF_TARGETS} "
             f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, {env.get('threads', '?')} thread per "
             f"measurement; Python {env.get('python', '?')}, torch {env.get('torch', '?')}, diffusers "
             f"{env.get('diffusers', '?')}, peft {env.get('peft', '?')}, pytorch_lightning "
             f"{env.get('pytorch_lightning', '?')}.{_figure_commits(p)}", "",
             "Every figure is a ratio of two things measured side by side in one run (medians of interleaved "
             "repeats, timed by the process's CPU time on one thread; DDP and the reward overlap by the wall clock) or, "
             "for memory, "
             "in processes of their own. Targets marked *issue* are the issue's; *suite* targets are set by "
             "the suite where the issue names none.", "",
             "| figure | what | value | target | met |", "|---|---|---|---|---|"]
    for f in p["figures"]:
        source = "issue" if f.get("source") == "issue" else "suite"
        lines.append(f"| {f['id']} | {f['name']} | {_value(f['value'])} | {f['target']} ({source}) | "
                     f"{'yes' if f['met'] else '**no**'} |")
    for f in p["figures"]:
        details = _figure_details(f)
        if details or f.get("note"):
            lines += ["", f"**Figure {f['id']}, {f['name']}.** {f.get('note', '')}".rstrip()]
            if details:
                lines += ["", *details]
    lines += _notes(perf_path.parent / PERF_NOTES, page)
    lines.append("")
    return lines


def render_gpu(gpu_dir: Path, page: Path) -> list[str]:
    """The GPU section: one row per run of every JSON benchmarks/gpu.sh wrote there, the runs that
    failed or were left out, then NOTES.md."""
    lines = ["## GPU", "",
             "Written by `benchmarks/gpu.sh`: prefdiff's trainers under a Lightning Trainer on pipeline folders "
             "shaped like SD-1.5, SDXL and SD3-medium (public configs, random weights; the oldest files time a "
             "separate harness on the SD-1.5 UNet alone). A step key is shape/method/mode, then +lever for each "
             "performance option turned on. MFU is achieved FLOP/s (forward and backward matmuls and convolutions, "
             "counted by torch's FlopCounterMode) over a bf16 matrix product timed in the same run; GPU idle is "
             "the share of a step the device ran no kernel, from one profiled step.", "",
             "| file | card | step | batch | LoRA targets | s/step | samples/s | TFLOP/s | MFU | peak GiB | GPU idle | "
             "kernels/step |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for path in sorted(gpu_dir.glob("*.json")):
        g = json.loads(path.read_text())
        card = (f"{g['device']} ({g.get('precision', g['dtype'])}, torch {g['torch']}, peak "
                f"{g['matmul_peak_tflops']:.0f} TFLOP/s)")
        for key, e in g["results"].items():
            if "step_s" not in e:
                continue
            profile = e.get("profile", {})
            idle = profile.get("idle_share")
            if idle is None and profile.get("kernel_busy_s"):  # the first runs kept the busy time only
                idle = max(0.0, 1 - profile["kernel_busy_s"] / e["step_s"])
            targets = e["lora_targets"] if "lora_targets" in e else g.get("lora_targets", "blocks")
            tflops, mfu = e.get("achieved_tflops"), e.get("mfu")
            lines.append(f"| {path.name} | {card} | {key} | {e.get('batch', g.get('batch', ''))} | {targets or '-'} "
                         f"| {e['step_s']:.3f} | {e['samples_per_s']:.1f} | "
                         f"{'' if tflops is None else f'{tflops:.0f}'} | {'' if mfu is None else f'{mfu:.3f}'} | "
                         f"{e.get('peak_gpu_memory_gb', '')} | {'' if idle is None else f'{idle:.0%}'} | "
                         f"{profile.get('kernel_launches', '')} |")
        for kind in ("failed", "skipped"):
            for key, why in g.get(kind, {}).items():
                notes.append(f"- {path.name}, {key}: {kind}: {why}")
    if notes:
        lines += [""] + notes
    lines += _notes(gpu_dir / "NOTES.md", page)
    return lines + [""]


def render(results_dir: Path, page: Path) -> str:
    """The markdown page for every results.json under ``results_dir`` and its perf.json."""
    lines = ["# Benchmarks", "",
             "Generated by `python -m prefdiff.benchdocs` from `benchmarks/results/*/results.json` and "
             f"`benchmarks/results/perf.json`; `{BENCH_COMMAND}` and `make bench-more` rerun the field benchmarks and "
             "the performance suite between them (the Makefile says which) and regenerate this page.", ""]
    fields = sorted(results_dir.glob("*/results.json"))
    if fields:  # what a reader wants in a minute, first
        lines += summary_table(fields)
    status = results_dir / STATUS
    if status.is_file():  # which commits and runs the numbers are from, and what they show
        lines += [status.read_text().strip(), ""]
    for path in fields:
        lines += _field(path, page)
    from prefdiff.bench.seeds import render_seeds, seeds_summary

    lines += render_seeds(seeds_summary(results_dir))
    perf = results_dir / "perf.json"
    if perf.is_file():
        lines += render_perf(perf, page)
    if any((results_dir / "gpu").glob("*.json")):
        lines += render_gpu(results_dir / "gpu", page)
    return "\n".join(lines)


README_BEGIN = "<!-- results table: written by python -m prefdiff.benchdocs; do not edit -->"
README_END = "<!-- end of results table -->"


def readme_with_table(readme: str, results_dir: Path) -> str:
    """``readme`` with the text between its results-table markers replaced by :func:`summary_table`."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    table = summary_table(sorted(results_dir.glob("*/results.json")))
    return readme[:start] + "\n" + "\n".join(table) + readme[end:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = Path(argv[0] if argv else "benchmarks/results")
    page = Path(argv[1] if len(argv) > 1 else "docs/benchmarks.md")
    page.write_text(render(results_dir, page))
    print(f"wrote {page}")
    if len(argv) > 2:  # the README's table, from the same results
        readme = Path(argv[2])
        readme.write_text(readme_with_table(readme.read_text(), results_dir))
        print(f"wrote the results table of {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
