"""prefdiff's own trainers on SD-1.5-, SDXL- and SD3-medium-shaped pipelines, with each performance lever on and off.

    benchmarks/gpu.sh [--tiny] [--out FILE] [...]   (runs python -m prefdiff.perf.gpu)

Every run is what ``prefdiff fit`` would train: a pipeline folder
(:mod:`prefdiff.perf.gpu_shapes`: public configs, random weights) opened by
``AlignmentModule(base=FOLDER)``; Diffusion-DPO by :class:`~prefdiff.trainers.PairModule`,
DDPO and GRPO (Flow-GRPO on the SD3 shape) by
:class:`~prefdiff.trainers.PolicyGradientModule` with the built-in on-device
``smoothness`` reward; LoRA on the default targets (the attention projections)
and the full fine-tune; under a Lightning Trainer (bf16-mixed on a GPU) fed the
same batch every step (:func:`prefdiff.perf.gpu_measure.trainer_steps`).

A run records its median step time, samples per second, the FLOPs of a step
(``torch.utils.flop_counter``, counted once per model and batch: the levers
leave the model's FLOPs unchanged, so MFU counts model FLOPs, not recomputed
ones), MFU against a bf16 matrix product timed in the same process, peak GPU
memory, and with a profile a summary of one step (device busy and idle share,
kernel launches and aten operators per step).

A lever is a trainer option (``--model.X``; :class:`~prefdiff.trainers.base.AlignmentModule`
documents them); a run with lever L is keyed ``shape/method/mode+L`` beside its
baseline ``shape/method/mode``, so L's contribution is the ratio of the two.
With no arguments the plan below runs on a GPU within about eight minutes
(``--budget-s``: runs that would start later are skipped and listed); the JSON
is rewritten after every run, so a run cut short still leaves what it measured.
``--tiny`` runs the same plan on tiny pipelines on the CPU, without torch.compile (inductor
takes minutes per graph on a CPU) and the CUDA-only attention kernels; tests/test_perf_gpu.py
runs a few of its runs that way (``--runs``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from prefdiff.perf.gpu_measure import matmul_peak, median, trainer_steps
from prefdiff.perf.gpu_shapes import SHAPES, TINY_SHAPES, Shape, describe, write_pipeline

METHODS = ("dpo", "ddpo", "grpo")
MODES = ("lora", "full")
LORA_TARGETS = ("attention", "blocks")
# Short enough for the tiny pipelines' 32 tokens; every CLIP pads to its length anyway.
PROMPTS = ("an astronaut riding a horse", "a lighthouse at dusk", "a red fox in snow", "a tiny isometric city")


@dataclass(frozen=True)
class Lever:
    """A performance option of the trainers, measured on and off."""

    help: str
    options: Callable[[Shape], dict[str, Any]]
    """The trainer options that turn it on, for a shape."""
    methods: tuple[str, ...] = METHODS
    modes: tuple[str, ...] = MODES
    gpu_only: str = ""
    """Why --tiny leaves it out (empty: it runs there too)."""


LEVERS = {
    "channels_last": Lever("--model.channels_last: NHWC weights and latents", lambda s: {"channels_last": True}),
    "sdpa_flash": Lever("--model.sdpa_backend flash", lambda s: {"sdpa_backend": "flash"}),
    "sdpa_efficient": Lever("--model.sdpa_backend efficient", lambda s: {"sdpa_backend": "efficient"},
                            gpu_only="the memory-efficient attention kernel is CUDA's"),
    "sdpa_cudnn": Lever("--model.sdpa_backend cudnn", lambda s: {"sdpa_backend": "cudnn"},
                        gpu_only="cuDNN attention is CUDA's"),
    "sdpa_math": Lever("--model.sdpa_backend math (the unfused reference)", lambda s: {"sdpa_backend": "math"}),
    "compile": Lever("--model.compile (inductor, mode default)", lambda s: {"compile": True},
                     gpu_only="inductor takes minutes per graph on these CPUs (tests/test_levers.py checks its numbers)"),
    "cudagraphs": Lever("--model.compile --model.compile_mode reduce-overhead (CUDA graphs)",
                        lambda s: {"compile": True, "compile_mode": "reduce-overhead"},
                        gpu_only="CUDA graphs need CUDA"),
    "fused_optimizer": Lever("--model.fused_optimizer: AdamW(fused=True)", lambda s: {"fused_optimizer": True}),
    "lora_blocks": Lever("--model.lora_targets blocks: LoRA on every Linear/Conv in the UNet blocks",
                         lambda s: {"lora_targets": "blocks"}, modes=("lora",)),
    "lora_attention": Lever("--model.lora_targets attention: LoRA on the attention projections",
                            lambda s: {"lora_targets": "attention"}, modes=("lora",)),
    "gradient_checkpointing": Lever("--model.gradient_checkpointing", lambda s: {"gradient_checkpointing": True}),
    "logprob_batch": Lever("--model.logprob_batch: several steps' log-probs in one forward",
                           lambda s: {"logprob_batch": s.logprob_batch}, methods=("ddpo", "grpo")),
    "frozen_bf16": Lever("--model.frozen_dtype bfloat16: the frozen weights in bfloat16, the adapter in float32",
                         lambda s: {"frozen_dtype": "bfloat16"}, modes=("lora",),
                         gpu_only="it needs bf16-mixed autocast, and --tiny trains in 32-true"),
}
COMPILING = ("compile", "cudagraphs")
COMPILE_MARGIN_S = 120.0

# (shape, method, mode, levers, profile), most wanted first, since --budget-s cuts from the end:
# SD-1.5 baselines and the cheap levers, then the SDXL and SD3 baselines, then torch.compile
# (minutes of compilation per run), then the rest.
PLAN: tuple[tuple[str, str, str, tuple[str, ...], bool], ...] = (
    ("sd15", "dpo", "lora", (), True),
    ("sd15", "ddpo", "lora", (), True),
    ("sd15", "grpo", "lora", (), False),
    ("sd15", "ddpo", "full", (), True),
    ("sd15", "dpo", "lora", ("channels_last",), False),
    ("sd15", "ddpo", "lora", ("channels_last",), True),
    ("sd15", "dpo", "lora", ("sdpa_flash",), False),
    ("sd15", "dpo", "lora", ("sdpa_efficient",), False),
    ("sd15", "dpo", "lora", ("sdpa_cudnn",), False),
    ("sd15", "ddpo", "full", ("fused_optimizer",), False),
    ("sd15", "dpo", "lora", ("gradient_checkpointing",), False),
    ("sd15", "ddpo", "lora", ("logprob_batch",), True),
    ("sd15", "dpo", "lora", ("lora_blocks",), False),
    ("sd15", "ddpo", "lora", ("lora_blocks",), False),
    ("sd15", "dpo", "lora", ("frozen_bf16",), False),
    ("sdxl", "dpo", "lora", (), False),
    ("sdxl", "ddpo", "lora", (), True),
    ("sdxl", "ddpo", "full", (), False),
    ("sd3", "dpo", "lora", (), False),
    ("sd3", "grpo", "lora", (), True),
    ("sd3", "grpo", "full", (), False),
    ("sd3", "grpo", "lora", ("frozen_bf16",), False),
    ("sd15", "ddpo", "lora", ("compile",), True),
    ("sd15", "ddpo", "lora", ("cudagraphs",), True),
    ("sd15", "dpo", "lora", ("compile",), False),
    ("sd15", "ddpo", "lora", ("channels_last", "fused_optimizer", "logprob_batch", "compile"), True),
    ("sd15", "grpo", "full", (), False),
    ("sd15", "dpo", "lora", ("sdpa_math",), False),
    ("sd15", "ddpo", "full", ("gradient_checkpointing",), False),
    ("sdxl", "grpo", "lora", (), False),
    ("sdxl", "dpo", "lora", ("channels_last",), False),
    ("sdxl", "ddpo", "full", ("fused_optimizer",), False),
    ("sdxl", "ddpo", "full", ("gradient_checkpointing",), False),
    ("sd3", "ddpo", "lora", (), False),
    ("sd3", "grpo", "lora", ("logprob_batch",), False),
    ("sd3", "dpo", "lora", ("sdpa_flash",), False),
    ("sd3", "dpo", "lora", ("sdpa_cudnn",), False),
    ("sd3", "grpo", "full", ("fused_optimizer",), False),
)


@dataclass(frozen=True)
class Run:
    shape: str
    method: str
    mode: str
    levers: tuple[str, ...]
    profile: bool

    @property
    def key(self) -> str:
        return f"{self.shape}/{self.method}/{self.mode}" + "".join(f"+{lever}" for lever in self.levers)


#: The key of each run of :data:`PLAN` (what ``--runs`` takes).
PLAN_KEYS = tuple(Run(*entry).key for entry in PLAN)


def plan(shapes, methods, modes, levers, with_levers=(), profile_all: bool = False, tiny: bool = False,
         lora_targets: str = "attention", keys: tuple[str, ...] = ()) -> tuple[list[Run], dict[str, str]]:
    """The runs of :data:`PLAN` that the selection keeps (``keys``, when given, names them exactly), each
    with those of ``with_levers`` that apply to it added, and the ones left out with the reason (those a
    reader would look for)."""
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    for shape, method, mode, own, profile in PLAN:
        if shape not in shapes or method not in methods or mode not in modes or not set(own) <= set(levers):
            continue
        if keys and Run(shape, method, mode, own, profile).key not in keys:
            continue
        always = [n for n in with_levers if method in LEVERS[n].methods and mode in LEVERS[n].modes]
        # On the CPU a profile costs seconds and says nothing of GPU idle time: --profile only.
        run = Run(shape, method, mode, tuple(dict.fromkeys((*always, *own))), profile_all or (profile and not tiny))
        why = _left_out(run, tiny, lora_targets)
        if why:
            skipped[run.key] = why
        else:
            runs.setdefault(run.key, run)
    if "dpo" in methods and "full" in modes and not keys:
        for shape in shapes:
            skipped[f"{shape}/dpo/full"] = ("PairModule's reference is the adapter-disabled model, so "
                                            "Diffusion-DPO trains LoRA only (--model.lora_rank > 0)")
    return list(runs.values()), skipped


def _left_out(run: Run, tiny: bool, lora_targets: str) -> str:
    for name in run.levers:
        lever = LEVERS[name]
        if run.method not in lever.methods or run.mode not in lever.modes:
            return f"{name} does not apply to {run.method}/{run.mode}"
        if tiny and lever.gpu_only:
            return f"--tiny leaves {name} out: {lever.gpu_only}"
        if name == f"lora_{lora_targets}":
            return f"{name} is the baseline's target set (--lora-targets {lora_targets})"
    return ""


def options_of(run: Run, shape: Shape, folder: Path, *, lora_rank: int, lora_targets: str, guidance: float,
               num_steps: int | None) -> dict[str, Any]:
    """The trainer's keyword arguments for ``run`` (what ``--model.X`` would set)."""
    flow = run.shape == "sd3"
    options: dict[str, Any] = {"base": str(folder), "lora_rank": lora_rank if run.mode == "lora" else 0,
                               "num_steps": num_steps or shape.num_steps, "lr": 1e-5, "seed": 0,
                               "guidance_scale": guidance}
    if run.mode == "lora":
        options["lora_targets"] = lora_targets
    if run.method == "dpo":
        options.update(objective="dpo", beta=5000.0)
    else:
        # Flow-GRPO's SDE noise level a = 0.7 (Liu et al. 2025); DDIM's eta = 1 (DDPO).
        options.update(method=run.method, samples_per_condition=shape.samples_per_prompt, reward="smoothness",
                       eta=0.7 if flow else 1.0)
    for name in run.levers:
        options.update(LEVERS[name].options(shape))
    return options


def batch_of(run: Run, shape: Shape) -> tuple[dict[str, Any], int]:
    """The batch every step of ``run`` is fed, and the samples one step trains on."""
    if run.method == "dpo":
        n = shape.dpo_pairs
        g = torch.Generator().manual_seed(0)
        images = torch.rand((2 * n, 3, shape.image_size, shape.image_size), generator=g) * 2 - 1
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        return {"x_w": images[:n], "x_l": images[n:], "cond": prompts}, 2 * n  # winners and losers
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(shape.prompts)]
    return {"cond": prompts}, shape.prompts * shape.samples_per_prompt


def build_module(run: Run, options: dict[str, Any]):
    from prefdiff.trainers import PairModule, PolicyGradientModule

    return PairModule(**options) if run.method == "dpo" else PolicyGradientModule(**options)


class Benchmark:
    """The plan's runs, one after another, each written to the JSON as soon as it ends."""

    def __init__(self, args: argparse.Namespace, runs: list[Run], skipped: dict[str, str]) -> None:
        self.args, self.runs = args, runs
        self.tiny = args.tiny
        self.device = torch.device("cuda" if torch.cuda.is_available() and not self.tiny else "cpu")
        self.precision = args.precision or ("bf16-mixed" if self.device.type == "cuda" else "32-true")
        self.shapes = TINY_SHAPES if self.tiny else SHAPES
        self.folders: dict[str, Path] = {}
        self.flops: dict[tuple, tuple[int, str]] = {}
        self.start = time.perf_counter()
        self.out = Path(args.out)
        peak_dtype = torch.float32 if self.tiny or self.device.type == "cpu" else torch.bfloat16
        self.peak = matmul_peak(self.device, peak_dtype, 256 if self.device.type == "cpu" else 8192)
        self.record: dict[str, Any] = {
            **_environment(self.device), "precision": self.precision, "dtype": _dtype_name(self.precision),
            "tiny": self.tiny, "matmul_peak_tflops": round(self.peak / 1e12, 4),
            "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."), "lora_rank": args.lora_rank,
            "lora_targets": args.lora_targets, "guidance_scale": args.guidance, "budget_s": args.budget_s,
            "levers": {name: lever.help for name, lever in LEVERS.items()},
            "plan": [run.key for run in runs], "shapes": {}, "results": {}, "failed": {}, "skipped": dict(skipped),
            "notes": "s/step is the median of the timed steps of a Lightning fit (warm-up, FLOP-counting and "
                     "profiled steps untimed). DPO's samples count winners and losers. FLOPs are counted once per "
                     "model and batch, in eager mode; a lever's run reuses its baseline's count (MFU of model FLOPs). "
                     "The reward is the built-in on-device 'smoothness'."}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run_all(self, workdir: Path) -> dict[str, Any]:
        for run in self.runs:
            # A compiling run costs minutes of compilation: it needs COMPILE_MARGIN_S of the budget left.
            margin = COMPILE_MARGIN_S if any(name in COMPILING for name in run.levers) else 0.0
            if self.args.budget_s and self.elapsed() + margin > self.args.budget_s:
                self.record["skipped"][run.key] = f"over the time budget ({self.args.budget_s:.0f} s, --budget-s)"
                continue
            try:
                entry = self.measure(run, workdir)
            except Exception as exc:  # one failing lever must not cost the others' numbers
                message = " ".join(f"{type(exc).__name__}: {exc}".split())[:600]
                self.record["failed"][run.key] = message
                print(f"{run.key}: FAILED {message}", flush=True)
                traceback.print_exc(file=sys.stderr)
            else:
                self.record["results"][run.key] = entry
                print(f"{run.key}: {_line(entry)}", flush=True)
            finally:
                self.cleanup(run)
            self.write()
        self.write()
        return self.record

    def folder(self, name: str, workdir: Path) -> Path:
        if name not in self.folders:
            start = time.perf_counter()
            shape = self.shapes[name]
            self.folders[name] = write_pipeline(shape, workdir / name, tiny=self.tiny, device=self.device,
                                                dtype=torch.float32 if self.tiny else torch.bfloat16)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.record["shapes"][name] = {**describe(shape, self.folders[name]),
                                           "build_s": round(time.perf_counter() - start, 1)}
        return self.folders[name]

    def measure(self, run: Run, workdir: Path) -> dict[str, Any]:
        shape = self.shapes[run.shape]
        folder = self.folder(run.shape, workdir)
        options = options_of(run, shape, folder, lora_rank=self.args.lora_rank, lora_targets=self.args.lora_targets,
                             guidance=self.args.guidance, num_steps=self.args.num_steps)
        batch, samples = batch_of(run, shape)
        group = (run.shape, run.method, run.mode, options.get("lora_targets"), options["num_steps"])
        compiled = any(name in COMPILING for name in run.levers)
        count = group not in self.flops and not compiled
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        module = build_module(run, options)
        load_s = time.perf_counter() - started
        trainable = sum(p.numel() for p in module.denoiser.net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.denoiser.net.parameters())
        warmup = 3 if "cudagraphs" in run.levers else 2 if compiled else 1
        timed = self.args.repeats or (1 if self.tiny else 3 if run.method == "dpo" else 2)
        steps = trainer_steps(module, batch, device=self.device, warmup=warmup, timed=timed, count_flops=count,
                              profile=run.profile, precision=self.precision)
        if steps.flops is not None:
            self.flops[group] = (steps.flops, run.key)
        seconds = median(steps.times)
        flops, flops_from = self.flops.get(group, (None, None))
        entry: dict[str, Any] = {
            "shape": run.shape, "method": run.method, "mode": run.mode, "levers": list(run.levers),
            "options": {k: v for k, v in options.items() if k != "base"}, "batch": samples,
            "lora_targets": options.get("lora_targets"), "step_s": round(seconds, 5), "steps_s": [round(t, 5) for t in steps.times],
            "samples_per_s": round(samples / seconds, 3), "flops_per_step": flops, "flops_from": flops_from,
            "achieved_tflops": None if flops is None else round(flops / seconds / 1e12, 4),
            "mfu": None if flops is None else round(flops / seconds / self.peak, 4),
            "trainable": trainable, "total": total, "load_s": round(load_s, 2),
            "fit_s": round(time.perf_counter() - started - load_s, 2)}
        if self.device.type == "cuda":
            entry["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        if steps.profile is not None:
            entry["profile"] = steps.profile
        del module
        return entry

    def cleanup(self, run: Run) -> None:
        gc.collect()
        if any(name in COMPILING for name in run.levers):
            torch._dynamo.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.out.with_name(f".{self.out.name}.tmp")
        scratch.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(scratch, self.out)


def _line(entry: dict[str, Any]) -> str:
    parts = [f"{entry['step_s']:.4f} s/step", f"{entry['samples_per_s']:.2f} samples/s"]
    if entry["mfu"] is not None:
        parts.append(f"MFU {entry['mfu']:.3f}")
    if "peak_gpu_memory_gb" in entry:
        parts.append(f"{entry['peak_gpu_memory_gb']} GiB")
    profile = entry.get("profile")
    if profile:
        parts.append(f"{profile['kernel_launches'] or profile['aten_ops']} launches/ops per step")
        if "idle_share" in profile:
            parts.append(f"idle {profile['idle_share']:.0%}")
    return ", ".join(parts)


def _dtype_name(precision: str) -> str:
    return {"bf16-mixed": "bfloat16 (mixed)", "bf16-true": "bfloat16", "16-mixed": "float16 (mixed)"}.get(
        precision, "float32")


def _environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import peft
    import pytorch_lightning
    import transformers

    env = {"device_type": device.type, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__,
           "pytorch_lightning": pytorch_lightning.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["nvidia_smi"] = _nvidia_smi()
    else:
        env["device"] = platform.processor() or platform.machine() or "cpu"
    return env


def _nvidia_smi() -> str | None:
    """The card as nvidia-smi names it (name, memory, driver), kept with the numbers."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _names(text: str, allowed, flag: str, p: argparse.ArgumentParser) -> tuple[str, ...]:
    if text in ("all", ""):
        return tuple(allowed) if text == "all" else ()
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        p.error(f"{flag} takes a comma-separated list of {', '.join(allowed)} (or all/none), got {text!r}")
    return names


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="levers:\n" + "\n".join(f"  {n:24} {lever.help}" for n, lever in LEVERS.items()))
    p.add_argument("--tiny", action="store_true", help="tiny pipelines, fp32, on the CPU (the test's setting)")
    p.add_argument("--out", default="benchmarks/results/gpu/gpu.json")
    p.add_argument("--shapes", default="all", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--methods", default="all", help=f"comma-separated: {', '.join(METHODS)}")
    p.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    p.add_argument("--levers", default="all",
                   help="levers measured on and off (each run of the plan whose levers are all listed); none: "
                        "baselines only")
    p.add_argument("--runs", default="", help="comma-separated run keys of the plan (as printed, e.g. "
                   "sd15/ddpo/lora+logprob_batch): exactly those runs")
    p.add_argument("--with", dest="with_levers", default="none", help="levers turned on in every run")
    p.add_argument("--lora-targets", choices=LORA_TARGETS, default="attention",
                   help="LoRA runs' targets: attention (prefdiff's default for pipelines) or blocks (every "
                        "Linear/Conv in the UNet blocks)")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--profile", action="store_true", help="profile one step of every run (else the plan's picks)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per run")
    p.add_argument("--num-steps", type=int, default=None, help="sampling steps of a policy-gradient step")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed on a GPU, else 32-true)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no run after this many seconds, no compiling run after this less "
                        f"{COMPILE_MARGIN_S:.0f} s (default 420 on a GPU, none with --tiny)")
    args = p.parse_args(argv)
    args.shapes = _names(args.shapes, SHAPES, "--shapes", p)
    args.methods = _names(args.methods, METHODS, "--methods", p)
    args.modes = _names(args.modes, MODES, "--modes", p)
    args.levers = _names(args.levers, LEVERS, "--levers", p)
    args.with_levers = _names(args.with_levers, LEVERS, "--with", p)
    if not args.shapes or not args.methods or not args.modes:
        p.error("--shapes, --methods and --modes each need at least one name")
    args.runs = _names(args.runs, PLAN_KEYS, "--runs", p)
    if args.budget_s is None and not args.tiny:
        args.budget_s = 420.0
    return args, p


def main(argv: list[str] | None = None) -> int:
    args, p = parse(argv)
    if args.tiny:
        torch.set_num_threads(1)
    runs, skipped = plan(args.shapes, args.methods, args.modes, args.levers, args.with_levers,
                         profile_all=args.profile, tiny=args.tiny, lora_targets=args.lora_targets, keys=args.runs)
    if not runs:
        p.error("the selection leaves no run of the plan; see --help for the levers")
    from prefdiff.quiet import lightning_chatter_to

    logging.getLogger("prefdiff").setLevel(logging.WARNING)
    bench = Benchmark(args, runs, skipped)
    print(f"{len(runs)} runs on {bench.record['device']} ({bench.precision}); {bench.record['matmul_peak_dtype']} "
          f"matmul peak {bench.record['matmul_peak_tflops']} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefdiff-gpu-") as workdir, lightning_chatter_to(None):
        record = bench.run_all(Path(workdir))
    print(f"wrote {args.out}: {len(record['results'])} runs, {len(record['failed'])} failed, "
          f"{len(record['skipped'])} skipped, {record['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
