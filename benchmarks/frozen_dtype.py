"""Memory and step time of `--model.init_args.frozen_dtype bfloat16` against float32 frozen weights, on the CPU.

    .venv/bin/python benchmarks/frozen_dtype.py [--repeats 2] [--out benchmarks/results/frozen_dtype.json]

An SD-1.5-shaped pipeline folder (the public configs of `prefdiff.perf.gpu_shapes`, random weights,
saved in bfloat16 as a released folder would be in fp16 or bf16) is written once under the
work folder. Each arm is a fresh process that builds `PairModule` (Diffusion-DPO, LoRA rank 8 on the
attention projections) from it, as `prefdiff fit` does, and takes three training steps under bfloat16
autocast (what `--trainer.precision bf16-mixed` runs) on two 64x64 pairs: the frozen weights in
float32 (the default) or in bfloat16. The arms alternate, so the machine's slow minutes fall on
both. A process's peak resident memory is its VmHWM; a step's time is its wall time, the first step
(which encodes the prompts and caches the VAE latents) left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("float32", "bfloat16")


def arm(folder: str, frozen: str, threads: int) -> dict:
    """One arm in this process (run by `--arm`): load, three steps, peak memory."""
    import torch

    from prefdiff.trainers import PairModule

    torch.set_num_threads(threads)
    module = PairModule(base=folder, lora_rank=8, num_steps=4, frozen_dtype=None if frozen == "float32" else frozen)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    batch = {"x_w": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, "x_l": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
             "cond": ["an astronaut riding a horse", "a red fox in snow"]}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    sizes: dict[str, int] = {}
    for p in module.parameters():
        key = f"{'trained' if p.requires_grad else 'frozen'} {str(p.dtype).removeprefix('torch.')}"
        sizes[key] = sizes.get(key, 0) + p.numel()
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"peak_rss_mb": round(peak_kb / 1024), "step_s": [round(t, 2) for t in times[1:]], "parameters": sizes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/prefdiff-frozen-dtype", help="where the pipeline folder is written")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/frozen_dtype.json"))
    parser.add_argument("--arm", nargs=2, metavar=("FOLDER", "FROZEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm[0], args.arm[1], args.threads)))
        return 0

    import torch

    from prefdiff.perf.gpu_shapes import SHAPES, write_pipeline

    folder = Path(args.work) / "sd15"
    if not (folder / "model_index.json").is_file():
        write_pipeline(SHAPES["sd15"], folder, tiny=False, device=torch.device("cpu"), dtype=torch.bfloat16)
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    for _ in range(args.repeats):
        for name in ARMS:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--arm", str(folder), name],
                                 capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    summary = {name: {"peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs[name]),
                      "step_s_median": statistics.median(t for r in runs[name] for t in r["step_s"])}
               for name in ARMS}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    clean = all((ROOT / line[3:]).resolve() == Path(args.out).resolve() for line in changed)  # but this output
    record = {"command": " ".join(["benchmarks/frozen_dtype.py", *sys.argv[1:]]), "commit": commit, "clean": clean,
              "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
              "summary": summary, "ratio_bfloat16_to_float32": {
                  key: round(summary["bfloat16"][key] / summary["float32"][key], 3) for key in summary["float32"]},
              "runs": runs}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["summary"]), record["ratio_bfloat16_to_float32"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
