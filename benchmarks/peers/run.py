"""prefdiff against TRL 0.23.1 and the diffusers Diffusion-DPO example, on identical work.

    .venv/bin/python benchmarks/peers/run.py --diffusers PATH [--quick]

Runs in prefdiff's venv; the peers run in benchmarks/peers/.venv (setup.sh). For each method the two
sides train at once, side by side, one torch thread each, on the same base pipeline, prompts, pairs,
reward, batch, sampling steps, LoRA rank and seed; each marks its step boundaries and copies its LoRA
weights (outside the timing). Then one evaluator scores every snapshot on held-out prompts and pairs
(evaluate.py), and the numbers land in results.json. README.md says what is compared and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS_PYTHON = HERE / ".venv" / "bin" / "python"
DPO_SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo.py"
sys.path.insert(0, str(HERE))

from harness import Settings

METHODS = {"ddpo": ("TRL DDPOTrainer", "trl"), "alignprop": ("TRL AlignPropTrainer", "trl"),
           "dpo": ("diffusers Diffusion-DPO example", "diffusers")}


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------ inputs ----


def find_dpo_script(source: str | None, work: Path) -> tuple[Path, str]:
    """The example script from a diffusers checkout, a bare git directory (the `fetch` snapshot), or the
    script itself; copied to ``work`` (git-ignored), never into the repository. Returns (path, origin)."""
    source = source or os.environ.get("DIFFUSERS")
    hint = ("the diffusers Diffusion-DPO example is not on PyPI: pass --diffusers PATH (a diffusers checkout, "
            f"its git directory, or {Path(DPO_SCRIPT).name} itself), e.g. after `git clone "
            "https://github.com/huggingface/diffusers`")
    if not source:
        raise SystemExit(f"error: {hint}")
    path = Path(source)
    target = work / Path(DPO_SCRIPT).name
    work.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        target.write_bytes(path.read_bytes())
        return target, str(path)
    if (path / DPO_SCRIPT).is_file():
        target.write_bytes((path / DPO_SCRIPT).read_bytes())
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
        return target, f"{path} at {commit.stdout.strip() or 'unknown commit'}"
    shown = subprocess.run(["git", "--git-dir", str(path), "show", f"HEAD:{DPO_SCRIPT}"], capture_output=True)
    if shown.returncode == 0:
        target.write_bytes(shown.stdout)
        commit = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
        return target, f"git directory {path} at {commit.stdout.strip()}"
    raise SystemExit(f"error: no {DPO_SCRIPT} in {path}; {hint}")


def check_rewards_agree() -> None:
    """The harness's reward formulas (what the peers score with) equal prefdiff's registered rewards."""
    import torch
    from harness import jpeg_compressibility, smoothness
    from prefdiff.plugins import get_manager

    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    images[:3] = torch.nn.functional.avg_pool2d(images[:3], 5, 1, 2)
    manager = get_manager()
    ours, _ = manager.reward("jpeg_compressibility")(images, None)
    assert torch.equal(ours, jpeg_compressibility(images)), "jpeg_compressibility differs from prefdiff's"
    ours, _ = manager.reward("smoothness")(images, None)
    assert torch.allclose(ours, smoothness(images)), "smoothness differs from prefdiff's"


def check_peers_venv() -> dict[str, str]:
    if not PEERS_PYTHON.is_file():
        raise SystemExit(f"error: no peers venv at {PEERS_PYTHON.parent.parent}; run bash {HERE / 'setup.sh'} first")
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['trl', 'transformers', 'diffusers', 'peft', 'accelerate', 'datasets', 'torch', 'torchvision']}))")
    return json.loads(subprocess.run([str(PEERS_PYTHON), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def check_same_text_encoding(settings: Settings) -> None:
    """The peers' transformers 4 reads the base's tokenizer and text encoder as prefdiff's transformers 5 does."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    prompt = Path(settings.prompts, "val.txt").read_text().splitlines()[0]
    tokenizer = CLIPTokenizer.from_pretrained(Path(settings.base, "tokenizer"))
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    ours = CLIPTextModel.from_pretrained(Path(settings.base, "text_encoder"))(ids)[0]
    code = ("import sys, json, torch; sys.path.insert(0, %r)\nfrom harness import torchvision_without_ops\n"
            "torchvision_without_ops()\nfrom transformers import CLIPTextModel, CLIPTokenizer\n"
            "t = CLIPTokenizer.from_pretrained(%r)\nids = t([%r], padding='max_length', max_length=t.model_max_length,"
            " return_tensors='pt').input_ids\nm = CLIPTextModel.from_pretrained(%r)\n"
            "print(json.dumps({'ids': ids.tolist(), 'states': m(ids)[0].flatten().tolist()}))"
            % (str(HERE), str(Path(settings.base, "tokenizer")), prompt, str(Path(settings.base, "text_encoder"))))
    out = subprocess.run([str(PEERS_PYTHON), "-c", code], check=True, capture_output=True, text=True).stdout
    theirs = json.loads(out.strip().splitlines()[-1])
    assert theirs["ids"] == ids.tolist(), f"the peers tokenize differently: {theirs['ids']} vs {ids.tolist()}"
    assert torch.allclose(torch.tensor(theirs["states"]), ours.flatten(), atol=1e-5), "text encoders differ"


# ------------------------------------------------------------- sides ----


def prefdiff_config(settings: Settings, method: str, out: Path, snapshot_every: int) -> Path:
    """The `prefdiff fit` config of a method: the same work as the peer's."""
    import yaml

    common = dict(base=settings.base, lora_rank=settings.lora_rank, num_steps=settings.num_steps, eta=settings.eta,
                  guidance_scale=settings.guidance_scale, seed=settings.seed, lora_init=settings.prefdiff_lora_init)
    if method == "ddpo":
        o = settings.ddpo
        model = {"class_path": "prefdiff.trainers.PolicyGradientModule", "init_args": dict(
            common, method="ddpo", reward="jpeg_compressibility", lr=o["lr"], samples_per_condition=o["samples_per_prompt"],
            clip_range=o["clip_range"], adv_clip_max=o["adv_clip_max"], timestep_fraction=1.0, inner_epochs=1)}
        data = {"dataset": "prompts", "dataset_options": {"root": settings.prompts},
                "batch_size": o["prompts_per_batch"], "val_size": 0}
        steps = o["epochs"]
    elif method == "alignprop":
        o = settings.alignprop
        model = {"class_path": "prefdiff.trainers.RewardBackpropModule", "init_args": dict(
            common, method="alignprop", reward="smoothness", lr=o["lr"], k=settings.num_steps, checkpoint=True,
            truncation=settings.prefdiff_truncation)}
        data = {"dataset": "prompts", "dataset_options": {"root": settings.prompts}, "batch_size": o["batch"],
                "val_size": 0}
        steps = o["epochs"]
    else:
        o = settings.dpo
        model = {"class_path": "prefdiff.trainers.PairModule", "init_args": dict(
            common, objective="dpo", beta=o["beta"], lr=o["lr"])}
        data = {"pairs": settings.pairs, "pairs_options": {"resolution": settings.image_size,
                                                           "cache_dir": str(out / "hf-cache")},
                "batch_size": o["batch"], "val_size": 0}
        steps = o["steps"]
    # Explicit, as the model's seed is: before 836cc8a `prefdiff fit` left --data.seed at 0 whatever
    # seed_everything was, and every seed of the comparison trained on seed 0's prompt (or pair) order
    # while the peers' order followed their seed.
    data["seed"] = settings.seed
    config = {"seed_everything": settings.seed, "model": model, "data": data, "trainer": {
        "max_steps": steps, "accelerator": "cpu", "devices": 1, "default_root_dir": str(out / "run"),
        "enable_progress_bar": False, "enable_model_summary": False,
        "callbacks": [{"class_path": "prefdiff_side.PeerRecorder",
                       "init_args": {"out": str(out), "method": method, "snapshot_every": snapshot_every}}]}}
    path = out / "config.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def launch(command: list[str], log_path: Path, threads: int, snapshot_every: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PEERS_SNAPSHOT_EVERY=str(snapshot_every), TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "w")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent)


def run_method(settings: Settings, settings_path: Path, method: str, work: Path, script: Path,
               snapshot_every: int) -> dict[str, dict]:
    """Both sides of one method at once; returns each side's record and its process's rusage."""
    import torch

    out = work / "runs" / method
    peer = METHODS[method][1]
    config = prefdiff_config(settings, method, out / "prefdiff", snapshot_every)
    commands = {
        "prefdiff": [str(ROOT / ".venv" / "bin" / "prefdiff"), "fit", "--config", str(config)],
        peer: ([str(PEERS_PYTHON), str(HERE / "trl_side.py"), str(settings_path), method, str(out / peer)]
               if peer == "trl" else
               [str(PEERS_PYTHON), str(HERE / "dpo_side.py"), str(settings_path), str(out / peer), str(script)]),
    }
    for side in commands:  # a fresh start: no record, checkpoints or logs of an earlier run to resume or rotate
        (out / side / "record.pt").unlink(missing_ok=True)
        for folder in ("run", "save", "logs"):
            shutil.rmtree(out / side / folder, ignore_errors=True)
    started = time.perf_counter()
    processes = {side: launch(cmd, out / side / "train.log", settings.threads, snapshot_every)
                 for side, cmd in commands.items()}
    usage = {}
    for side, process in processes.items():
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss here includes run.py's own pre-exec peak (inherited through fork): recorded, not reported;
        # the table's peak memory is the side's VmHWM (harness.peak_rss_mb), read in the side at its end.
        usage[side] = {"exit": process.returncode, "ru_maxrss_mb": rusage.ru_maxrss / 1024.0,
                       "cpu_s": rusage.ru_utime + rusage.ru_stime, "ended_after_s": time.perf_counter() - started}
        if process.returncode != 0:
            tail = (out / side / "train.log").read_text().splitlines()[-25:]
            raise SystemExit(f"error: the {side} side of {method} failed (exit {process.returncode}); "
                             f"{out / side / 'train.log'} ends:\n" + "\n".join(tail))
    records = {}
    for side in commands:
        record = torch.load(out / side / "record.pt", weights_only=False)
        record["process"] = usage[side]
        torch.save(record, out / side / "record.pt")  # with the process's usage, for --score-only
        records[side] = record
    return records


def load_records(method: str, work: Path) -> dict[str, dict]:
    """The records a finished run_method left under ``work`` (--score-only)."""
    import torch

    out = work / "runs" / method
    records = {}
    for side in ("prefdiff", METHODS[method][1]):
        record = torch.load(out / side / "record.pt", weights_only=False)
        record.setdefault("process", {"cpu_s": sum(record["cpu"])})
        records[side] = record
    return records


# ---------------------------------------------------------- analysis ----


def cumulative(times: list[float]) -> list[float]:
    total, out = 0.0, [0.0]
    for t in times:
        total += t
        out.append(total)
    return out


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve through ``points`` (sorted by x) at ``x`` (clamped to its ends)."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def summarise(method: str, records: dict[str, dict], scores: dict[str, dict[int, dict]], metric: str) -> dict:
    """Per-epoch times, memory, and the held-out metric at equal CPU time and at the end, for both sides.

    "At equal CPU time" is each side's held-out curve (metric against cumulative CPU seconds, one point a
    snapshot) read, linearly interpolated, at the CPU time the faster-finishing side ended at; the last
    snapshot at or before it is recorded beside it."""
    sides = list(records)
    clocks = {s: cumulative(records[s]["cpu"]) for s in sides}
    walls = {s: cumulative(records[s]["wall"]) for s in sides}
    equal_cpu = min(clocks[s][-1] for s in sides)
    summary = {"metric": metric, "equal_cpu_s": equal_cpu, "sides": {}}
    for s in sides:
        epochs = sorted(scores[s])
        base = scores[s][0][metric]
        at_equal = max(e for e in epochs if clocks[s][e] <= equal_cpu + 1e-9)
        at_equal_value = interpolate([(clocks[s][e], scores[s][e][metric]) for e in epochs], equal_cpu)
        curve = [{"epoch": e, "cpu_s": clocks[s][e], "wall_s": walls[s][e], **scores[s][e]} for e in epochs]
        summary["sides"][s] = {
            "epochs": len(records[s]["cpu"]),
            "cpu_s_per_epoch_median": statistics.median(records[s]["cpu"][1:] or records[s]["cpu"]),
            "wall_s_per_epoch_median": statistics.median(records[s]["wall"][1:] or records[s]["wall"]),
            "cpu_s_per_epoch_mean": clocks[s][-1] / len(records[s]["cpu"]),
            "cpu_s_total": clocks[s][-1], "wall_s_total": walls[s][-1], "cpu_s_per_epoch": records[s]["cpu"],
            "first_epoch_cpu_s": records[s]["cpu"][0],
            "peak_rss_mb": records[s]["peak_rss_mb"], "process_cpu_s": records[s]["process"]["cpu_s"],
            "base": base, "at_equal_cpu": {"cpu_s": equal_cpu, metric: at_equal_value, "gain": at_equal_value - base,
                                           "last_snapshot_epoch": at_equal,
                                           "last_snapshot_gain": scores[s][at_equal][metric] - base},
            "final": {"epoch": epochs[-1], metric: scores[s][epochs[-1]][metric],
                      "gain": scores[s][epochs[-1]][metric] - base},
            "curve": curve, "threads": records[s]["torch_threads"], "lora_tensors": records[s].get("lora_tensors"),
        }
    ours, peer = summary["sides"]["prefdiff"], summary["sides"][sides[1]]
    target_gain = peer["final"]["gain"]
    reached = next((p for p in ours["curve"] if p["epoch"] > 0 and p[metric] - ours["base"] >= target_gain), None)
    # The first snapshot at or past the peer's final gain (an upper bound: snapshots are some epochs apart).
    summary["time_to_peer_final_gain"] = {
        "peer_final_gain": target_gain, "peer_cpu_s": peer["cpu_s_total"],
        "prefdiff_epoch": None if reached is None else reached["epoch"],
        "prefdiff_cpu_s": None if reached is None else reached["cpu_s"],
        "ratio": None if reached is None else reached["cpu_s"] / peer["cpu_s_total"]}
    summary["per_epoch_ratio"] = ours["cpu_s_per_epoch_median"] / peer["cpu_s_per_epoch_median"]
    summary["per_epoch_cost"] = epoch_cost_ratio(records["prefdiff"]["cpu"], records[sides[1]]["cpu"])
    return summary


def epoch_cost_ratio(ours: list[float], peer: list[float]) -> dict:
    """prefdiff's CPU time over the peer's for the same epochs, with a 95% interval.

    Epoch i of both sides ran at the same time on neighbouring cores, so the epochs are resampled as
    pairs (``paired_ratio_ci``) and the machine's drift, shared by both, cancels. In DDPO and DPO the
    sides also do the same work in epoch i; in AlignProp each side draws its own truncation, so an epoch
    costs 1-10 steps of backpropagation on prefdiff's side (K uniform) against a sum of Bernoulli draws on
    TRL's: the same mean, a wider spread, and an interval that holds that spread too."""
    import torch
    from prefdiff.bench.stats import paired_ratio_ci

    ratio, ci = paired_ratio_ci(torch.tensor(ours, dtype=torch.float64), torch.tensor(peer, dtype=torch.float64))
    return {"ratio_of_means": ratio, "ci95": ci}


def table(results: dict) -> str:
    lines = ["| method | side | s/epoch CPU (median) | s/epoch wall (median) | peak RSS MB | held-out metric | "
             "base | at equal CPU time (s) | final (epochs) | prefdiff CPU s to peer's final gain / peer's |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, summary in results["methods"].items():
        for side, s in summary["sides"].items():
            eq = s["at_equal_cpu"]
            reach = summary["time_to_peer_final_gain"]
            if side == "prefdiff":
                reached = ("not reached" if reach["ratio"] is None else
                           f"{reach['prefdiff_cpu_s']:.0f} / {reach['peer_cpu_s']:.0f} = {reach['ratio']:.2f}")
            else:
                reached = ""
            lines.append(f"| {method} | {side} | {s['cpu_s_per_epoch_median']:.3f} | {s['wall_s_per_epoch_median']:.3f} "
                         f"| {s['peak_rss_mb']:.0f} | {summary['metric']} | {s['base']:.4f} | "
                         f"{eq[summary['metric']]:.4f} ({eq['gain']:+.4f}, at {eq['cpu_s']:.0f}) | "
                         f"{s['final'][summary['metric']]:.4f} ({s['final']['gain']:+.4f}, {s['epochs']}) | {reached} |")
    costs = [f"{method} {c['ratio_of_means']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"
             for method, summary in results["methods"].items() if (c := summary.get("per_epoch_cost"))]
    if costs:
        lines.append("\nCPU per epoch, prefdiff / peer (mean over the same epochs, 95% paired interval): "
                     + "; ".join(costs))
    return "\n".join(lines)


# -------------------------------------------------------------- main ----


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--diffusers", help="diffusers checkout, its git directory, or the DPO example script "
                                            "(default: $DIFFUSERS)")
    parser.add_argument("--work", default=str(HERE / "work"), help="scratch folder (git-ignored)")
    parser.add_argument("--out", default=None, help="results file (default: results.json here; "
                                                    "with --quick or --epochs, results-trial.json under --work)")
    parser.add_argument("--methods", default="ddpo,alignprop,dpo")
    parser.add_argument("--score-only", action="store_true",
                        help="train nothing: score the records the last run left under --work")
    parser.add_argument("--fresh", action="store_true", help="drop the other methods' results already in --out")
    parser.add_argument("--quick", action="store_true", help="a few epochs each: checks the harness, measures nothing")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (DDPO, AlignProp) or steps (DPO)")
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="epochs between LoRA snapshots (default: each method's snapshot_every in harness.Settings)")
    parser.add_argument("--lora-init", choices=("gaussian", "kaiming"), default=None,
                        help="prefdiff's LoRA start: its default for pipelines (gaussian, std 1/rank, the peers' "
                             "start) or peft's Kaiming-uniform (prefdiff's start before 2026-12-03)")
    parser.add_argument("--seed", type=int, default=0,
                        help="every side's training seed; the base pipeline, the data and the held-out noise stay seed 0")
    parser.add_argument("--truncation", choices=("per_step",), default=None,
                        help="prefdiff's AlignProp truncation: its own contiguous last K (default) or TRL's per_step")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out or HERE / "results.json").read_text())))
        return 0

    work = Path(args.work).resolve()
    if args.out is None:
        args.out = str(work / "results-trial.json" if args.quick or args.epochs else HERE / "results.json")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: --methods takes {', '.join(METHODS)}, got {', '.join(unknown)}")
    versions = check_peers_venv()
    script, script_origin = find_dpo_script(args.diffusers, work) if "dpo" in methods else (None, None)
    import make_data
    import torch
    from evaluate import Evaluator

    # One thread: with two, every OpenMP barrier of the scoring waits for the second thread to be
    # scheduled, which on a machine shared with other jobs made scoring ten times slower.
    torch.set_num_threads(1)
    log(f"inputs under {work}")
    paths = make_data.make_all(work, image_size=64, seed=0, log=log)
    settings = Settings(**paths, prefdiff_lora_init=args.lora_init, prefdiff_truncation=args.truncation,
                        seed=args.seed)
    if args.quick or args.epochs:
        n = 2 if args.quick else args.epochs
        settings.ddpo["epochs"] = settings.alignprop["epochs"] = n
        settings.dpo["steps"] = n
        for options in (settings.ddpo, settings.alignprop, settings.dpo):
            options["snapshot_every"] = min(options["snapshot_every"], n)
    settings_path = work / "settings.json"
    settings.save(settings_path)
    check_rewards_agree()
    check_same_text_encoding(settings)
    log("rewards and text encoding agree across the two venvs")

    evaluator = Evaluator(settings)
    out_path = Path(args.out)
    # Methods run by an earlier invocation (same file) are kept unless this one reruns them or --fresh;
    # each method records the run (commit, tree state, load, date) it came from.
    old = json.loads(out_path.read_text()) if out_path.is_file() and not args.fresh else {}
    results = {"methods": {m: v for m, v in old.get("methods", {}).items() if m not in methods}}
    environment = describe_environment(versions, script_origin)
    environment["base_recipe"] = json.loads(Path(paths["base"], "TRAINED.json").read_text())
    for method in methods:
        log(f"{method}: prefdiff and {METHODS[method][0]} side by side ... (load average {load()})")
        load_before, date = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M:%S %z")
        t0 = time.perf_counter()
        every = args.snapshot_every or getattr(settings, method)["snapshot_every"]
        records = (load_records(method, work) if args.score_only else
                   run_method(settings, settings_path, method, work, script, every))
        trained_s, load_after = time.perf_counter() - t0, os.getloadavg()
        log(f"  trained in {trained_s:.0f} s (load average {load()}); scoring snapshots on held-out data ...")

        def score(state):
            evaluator.load(state)
            return (evaluator.sample_rewards() if method != "dpo" else
                    {"implicit_accuracy": evaluator.implicit_accuracy(), **evaluator.sample_rewards()})

        # Epoch 0 is the base on both sides (a fresh LoRA adds zero): scored once, after checking that.
        starts = [record["snapshots"][0] for record in records.values()]
        assert all(torch.equal(v, torch.zeros_like(v)) for s in starts for k, v in s.items() if "lora_B" in k)
        base = score(starts[0])
        scores = {side: {e: (base if e == 0 else score(state)) for e, state in sorted(record["snapshots"].items())}
                  for side, record in records.items()}
        metric = {"ddpo": "jpeg_compressibility", "alignprop": "smoothness", "dpo": "implicit_accuracy"}[method]
        summary = summarise(method, records, scores, metric)
        summary["settings"] = {**{k: v for k, v in asdict(settings).items() if k not in METHODS},
                               method: getattr(settings, method), "snapshot_every": every}
        summary["run"] = {**environment, "date": date, "quick": args.quick, "score_only": args.score_only,
                          "trained_wall_s": None if args.score_only else trained_s,
                          "load_average_before": load_before, "load_average_after": load_after}
        results["methods"][method] = summary
        out_path.write_text(json.dumps(results, indent=2, default=float))
        log(table({"methods": {method: summary}}))

    log(table(results))
    log(f"results: {args.out}")
    return 0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe_environment(versions: dict[str, str], script_origin: str | None) -> dict:
    """prefdiff's commit and whether (and where) the working tree differs from it, the machine, the versions."""
    import hashlib

    import diffusers
    import prefdiff
    import pytorch_lightning
    import torch
    import transformers

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "commit": git("rev-parse", "HEAD").strip(), "worktree_dirty": bool(changed),
        "worktree_changed_paths": changed,
        # What of prefdiff's own code ran differs from the commit: a digest of the tracked changes under core/.
        "core_diff_sha1": hashlib.sha1(git("diff", "HEAD", "--", "core").encode()).hexdigest(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), {platform.platform()}",
        "dpo_script": script_origin,
        "versions": {"prefdiff_venv": {"prefdiff": getattr(prefdiff, "__version__", "?"), "torch": torch.__version__,
                                       "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                                       "pytorch_lightning": pytorch_lightning.__version__},
                     "peers_venv": versions},
        "timing": "process CPU time (all threads of the training process) per epoch, both sides running at once "
                  "with one torch thread each; wall time alongside",
    }


if __name__ == "__main__":
    sys.exit(main())
