"""Step throughput and model-FLOP utilisation on a Stable-Diffusion-1.5-shaped UNet.

    benchmarks/gpu.sh [--tiny] [--out FILE]   (runs python -m prefdiff.perf.gpu)

The UNet is ``UNet2DConditionModel`` built from SD-1.5's UNet config (random
weights: throughput does not depend on them), 64x64x4 latents and 77x768 text
states, in bf16. For LoRA (r=4, the adapter-disabled reference) and the full
fine-tune (Diffusion-DPO's reference is then a frozen second copy), it times
a Diffusion-DPO step and a DDPO step (sample with per-step log-probs, score,
recompute every step's log-prob with gradient, PPO-clip) with prefdiff's
own sampler, losses and LoRA. The FLOPs of a step are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
forward and backward); utilisation is achieved FLOP/s over the peak of a
bf16 matrix product timed in the same run. ``--tiny`` is a tiny config in
fp32 on the CPU, which the tests run.

``--lora-targets blocks`` is prefdiff's default (every Linear and Conv inside
the UNet blocks); ``attention`` is the attention projections alone (to_q, to_k,
to_v, to_out.0), the set diffusers' Diffusion-DPO example trains
(examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py).
``--profile`` runs one DDPO step of each mode under torch.profiler and reports
the kernels' busy time and share of that (profiled) step and the top kernels,
which tells a launch-bound step from a compute-bound one.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matrix product (2 n^3 FLOPs) over ``repeats`` timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


LORA_TARGETS = ("blocks", "attention")


def attention_targets(net: torch.nn.Module) -> list[str]:
    """The attention projections, diffusers' usual LoRA target set for a UNet."""
    return [name for name, _ in net.named_modules() if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]


def build(config: dict, device: torch.device, dtype: torch.dtype, lora_rank: int, targets: str = "blocks"):
    from diffusers import UNet2DConditionModel

    from prefdiff.models import Denoiser, LoraOptions, ModelPreset, add_lora

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    preset = ModelPreset(kind="unet2d_condition", sample_size=config["sample_size"],
                         channels=config["in_channels"], conditioning="cross_attention",
                         cross_attention_dim=config["cross_attention_dim"],
                         block_out_channels=config["block_out_channels"],
                         layers_per_block=config["layers_per_block"], norm_num_groups=config["norm_num_groups"])
    model = Denoiser(unet, preset)
    if lora_rank > 0:
        names = attention_targets(unet) if targets == "attention" else []
        add_lora(model, LoraOptions(r=lora_rank, alpha=float(lora_rank), target_modules=names))
    return model.to(device=device, dtype=dtype).train()


def dpo_step(model, reference, scheduler, batch: dict, opt) -> None:
    """One Diffusion-DPO step (Wallace et al. 2023) as prefdiff's PairModule takes it."""
    from prefdiff.losses import diffusion_dpo_loss, per_sample_mse
    from prefdiff.models import reference_mode

    x_w, x_l, ctx = batch["x_w"], batch["x_l"], batch["context"]
    n = x_w.shape[0]
    t = torch.randint(0, 1000, (n,), device=x_w.device)
    eps = torch.randn_like(x_w)
    t2, eps2, ctx2 = torch.cat([t, t]), torch.cat([eps, eps]), torch.cat([ctx, ctx])
    x_t = scheduler.add_noise(torch.cat([x_w, x_l]), eps2, t2)
    err = per_sample_mse(model(x_t, t2, ctx2), eps2)
    with torch.no_grad():
        if reference is None:
            with reference_mode(model):
                ref = per_sample_mse(model(x_t, t2, ctx2), eps2)
        else:
            ref = per_sample_mse(reference(x_t, t2, ctx2), eps2)
    loss, _ = diffusion_dpo_loss(err[:n], err[n:], ref[:n], ref[n:], 5000.0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def ddpo_step(model, scheduler, batch: dict, opt, num_steps: int) -> None:
    """One DDPO step (Black et al. 2023): sample, score, PPO-clip on every step."""
    from prefdiff.losses import ppo_clip_loss
    from prefdiff.sampling import sample, step_log_prob

    ctx, noise = batch["context"], batch["noise"]
    with torch.no_grad():
        out = sample(model, scheduler, noise, ctx, num_steps=num_steps, eta=1.0, return_trajectory=True)
    # A stand-in reward computed on the device (the field's reward is timed by figure 4).
    rewards = -out.samples.float().flatten(1).abs().mean(1)
    adv = (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-6)
    for j in range(len(out.timesteps)):
        lp, _, _ = step_log_prob(model, scheduler, out.latents[:, j], out.timesteps[j], out.latents[:, j + 1],
                                 ctx, eta=1.0)
        loss, _ = ppo_clip_loss(lp.float(), out.log_probs[:, j].float(), adv, 1e-4)
        (loss / len(out.timesteps)).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def count_flops(step: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def time_step(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``step``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def profile_step(step: Callable[[], None], device: torch.device, top: int = 8) -> dict[str, Any]:
    """One step under torch.profiler: device-kernel busy time over the step's wall time, top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    _sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in events) / 1e6
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {"profiled_step_s": round(wall, 4), "kernel_launches": sum(e.count for e in events),
            "kernel_busy_s": round(busy, 4), "kernel_busy_share": round(busy / wall, 3),
            "top_kernels": [{"name": e.key[:80], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2)}
                            for e in events[:top]]}


def run(tiny: bool = False, batch: int | None = None, num_steps: int | None = None,
        repeats: int | None = None, lora_rank: int = 4, targets: str = "blocks",
        modes: tuple[str, ...] = ("lora", "full"), profile: bool = False) -> dict[str, Any]:
    from prefdiff.schedulers import build_scheduler

    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    config = TINY_UNET if tiny else SD15_UNET
    batch = batch or (1 if tiny else 8)
    num_steps = num_steps or (2 if tiny else 10)
    repeats = repeats or (1 if tiny else 5)
    tokens, width = 8 if tiny else 77, config["cross_attention_dim"]
    size, channels = config["sample_size"], config["in_channels"]
    peak = matmul_peak(device, dtype, 256 if tiny else 8192)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    data = {"x_w": rand(batch, channels, size, size), "x_l": rand(batch, channels, size, size),
            "context": rand(batch, tokens, width), "noise": rand(batch, channels, size, size)}
    scheduler = build_scheduler()
    results: dict[str, Any] = {}
    for mode, rank in (("lora", lora_rank), ("full", 0)):
        if mode not in modes:
            continue
        model = build(config, device, dtype, rank, targets)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
        reference = copy.deepcopy(model).requires_grad_(False).eval() if rank == 0 else None
        steps = {"dpo": lambda: dpo_step(model, reference, scheduler, data, opt),
                 "ddpo": lambda: ddpo_step(model, scheduler, data, opt, num_steps)}
        for method, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = time_step(step, device, warmup=1, repeats=repeats)
            flops = count_flops(step)
            samples = 2 * batch if method == "dpo" else batch
            entry = {"step_s": round(seconds, 5), "samples_per_s": round(samples / seconds, 3),
                     "flops_per_step": flops, "achieved_tflops": round(flops / seconds / 1e12, 4),
                     "mfu": round(flops / seconds / peak, 4)}
            if device.type == "cuda":
                entry["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if profile and method == "ddpo":
                entry["profile"] = profile_step(step, device)
            results[f"{method}/{mode}"] = entry
            print(f"{method}/{mode}: {entry}", flush=True)
        results[f"parameters/{mode}"] = {"total": sum(p.numel() for p in model.parameters()),
                                         "trainable": sum(p.numel() for p in params)}
        del model, reference, opt, params, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "device_type": device.type, "dtype": str(dtype).removeprefix("torch."),
            "tiny": tiny, "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "latents": [channels, size, size], "text_states": [tokens, width], "batch": batch,
            "ddpo_num_steps": num_steps, "lora_rank": lora_rank, "lora_targets": targets, "repeats": repeats,
            "matmul_peak_tflops": round(peak / 1e12, 4), "torch": torch.__version__, "results": results,
            "notes": "DPO samples/s counts winner and loser; DDPO's reward is an on-device stand-in; "
                     "weights, activations and optimizer state all in the dtype shown (no autocast)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config, fp32, CPU (the test's setting)")
    p.add_argument("--out", default="benchmarks/results/gpu/gpu.json")
    p.add_argument("--batch", type=int, default=None, help="images (DPO: pairs) per step")
    p.add_argument("--num-steps", type=int, default=None, help="DDIM steps of a DDPO step")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per configuration")
    p.add_argument("--lora-targets", choices=LORA_TARGETS, default="blocks",
                   help="blocks: every Linear/Conv in the UNet blocks (prefdiff's default); attention: q/k/v/out")
    p.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    p.add_argument("--profile", action="store_true", help="also profile one DDPO step per mode")
    args = p.parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or set(modes) - {"lora", "full"}:
        p.error(f"--modes takes lora and/or full, got {args.modes!r}")
    result = run(args.tiny, args.batch, args.num_steps, args.repeats, targets=args.lora_targets,
                 modes=modes, profile=args.profile)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
