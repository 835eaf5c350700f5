"""docs/benchmarks.md, generated from the committed benchmarks/results/*/results.json and perf.json.

    python -m prefdiff.benchdocs [RESULTS_DIR] [DOCS_PAGE]

Every number on the page is read from a results.json or from perf.json; the
sample figures are copied next to the page and the reward-against-time plots
are drawn there, so it renders on its own.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

BENCH_COMMAND = "make bench"
PERF_COMMAND = "python -m prefdiff.perf --results benchmarks/results --out benchmarks/results/perf.json"
PERF_NOTES = "PERF_NOTES.md"


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


def _field(path: Path, page: Path) -> list[str]:
    r = json.loads(path.read_text())
    env = r.get("env", {})
    lines = [f"## {r['domain']}", "",
             f"Command: `prefdiff bench {r['domain']}{' --quick' if r.get('quick') else ''} --seed {r['seed']} "
             f"--out {path.parent}`. Machine: {env.get('device', '?')}, {env.get('threads', '?')} threads, "
             f"{env.get('machine', '')}, torch {env.get('torch', '?')}. Training reward `{r['reward']}`, "
             f"held-out judge `{r.get('judge', r['reward'])}`, {r['n_eval']} held-out conditions.", "",
             "| model | judge mean | improvement | CI95 | drift | reward queries | train s | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    if "untrained" in r:
        lines.append(_row("untrained network", r["untrained"]))
    lines.append(_row("base", r["base"]))
    lines += [_row(name, m) for name, m in r["methods"].items()]
    if "edit" in r:
        lines += ["", "Editing: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in r["edit"].items())]
    notes = path.parent / "NOTES.md"
    if notes.is_file():  # what the person who ran it observed, kept beside the numbers
        lines += ["", notes.read_text().strip()]
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


def render_perf(perf_path: Path) -> list[str]:
    """The performance section from perf.json (and PERF_NOTES.md beside it)."""
    p = json.loads(perf_path.read_text())
    env = p.get("environment", {})
    lines = ["## Performance", "",
             f"Command: `{p['command']}`{' (quick settings)' if p.get('quick') else ''}, {p.get('date', '')}, "
             f"seed {p.get('seed', 0)}, {p.get('wall_s', '?')} s in all. `{BENCH_COMMAND}` runs "
             f"`{PERF_COMMAND}`. "
             f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, {env.get('threads', '?')} thread per "
             f"measurement; Python {env.get('python', '?')}, torch {env.get('torch', '?')}, diffusers "
             f"{env.get('diffusers', '?')}, peft {env.get('peft', '?')}, pytorch_lightning "
             f"{env.get('pytorch_lightning', '?')}.", "",
             "Every figure is a ratio of two things measured side by side in one run (medians of interleaved "
             "repeats, timed by the process's CPU time on one thread; DDP by the wall clock) or, for memory, "
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
    notes = perf_path.parent / PERF_NOTES
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    lines.append("")
    return lines


def render_gpu(gpu_dir: Path) -> list[str]:
    """The GPU section: one row per step of every JSON benchmarks/gpu.sh wrote there, then NOTES.md."""
    lines = ["## GPU", "",
             "Written by `benchmarks/gpu.sh` (a Stable-Diffusion-1.5-shaped UNet with random weights, 64x64x4 "
             "latents, 77x768 text states). MFU is achieved FLOP/s (forward and backward matmuls and convolutions, "
             "counted by torch's FlopCounterMode) over a bf16 matrix product timed in the same run.", "",
             "| file | card | batch | LoRA targets | step | s/step | samples/s | TFLOP/s | MFU | peak GiB | "
             "kernel-busy s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(gpu_dir.glob("*.json")):
        g = json.loads(path.read_text())
        for key, e in g["results"].items():
            if "step_s" not in e:
                continue
            busy = e.get("profile", {}).get("kernel_busy_s", "")
            lines.append(f"| {path.name} | {g['device']} ({g['dtype']}, torch {g['torch']}, peak "
                         f"{g['matmul_peak_tflops']:.0f} TFLOP/s) | {g['batch']} | {g.get('lora_targets', 'blocks')} "
                         f"| {key} | {e['step_s']:.3f} | {e['samples_per_s']:.1f} | {e['achieved_tflops']:.0f} | "
                         f"{e['mfu']:.3f} | {e.get('peak_gpu_memory_gb', '')} | {busy} |")
    notes = gpu_dir / "NOTES.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    return lines + [""]


def render(results_dir: Path, page: Path) -> str:
    """The markdown page for every results.json under ``results_dir`` and its perf.json."""
    lines = ["# Benchmarks", "",
             "Generated by `python -m prefdiff.benchdocs` from `benchmarks/results/*/results.json` and "
             f"`benchmarks/results/perf.json`; `{BENCH_COMMAND}` reruns every field benchmark and the performance "
             "suite and regenerates this page.", ""]
    for path in sorted(results_dir.glob("*/results.json")):
        lines += _field(path, page)
    perf = results_dir / "perf.json"
    if perf.is_file():
        lines += render_perf(perf)
    if any((results_dir / "gpu").glob("*.json")):
        lines += render_gpu(results_dir / "gpu")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = Path(argv[0] if argv else "benchmarks/results")
    page = Path(argv[1] if len(argv) > 1 else "docs/benchmarks.md")
    page.write_text(render(results_dir, page))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
