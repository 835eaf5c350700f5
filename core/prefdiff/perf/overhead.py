"""Figure 1: framework overhead of each trainer family over a bare PyTorch loop.

Arm A steps prefdiff's LightningModule under a Lightning Trainer (hooks,
logging, the checked reward call, the optimizer through Lightning). Arm B is
the loop a user would write by hand: the same model, batch, random draws,
forward, loss, backward, clipping and AdamW step, with the plugin's raw reward
function. Both arms update the same model; they alternate step by step inside one
Lightning run (the bare step runs from a callback, outside the timed
Lightning step).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from prefdiff.data import concat, condition_count, repeat_condition, select
from prefdiff.losses import (d3po_loss, diffusion_dpo_loss, per_condition_advantages, per_sample_mse,
                             ppo_clip_loss, reward_backprop_loss, sft_loss)
from prefdiff.models import reference_mode
from prefdiff.perf.common import Figure, check, class_conditions, images, lightning_block, median, unet_preset
from prefdiff.sampling import sample, step_log_prob

TARGET = "<= 1.05"


def _generator(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + i)


def _noise(shape, g):
    return torch.randn(shape, generator=g)


# ---------------------------------------------------------- bare steps ----
# Each mirrors the family's training_step with nothing but torch around it.


def bare_sft(m, opt, batch, i):
    g, x0, cond = _generator(i), batch["x0"], batch["cond"]
    t = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    loss, _ = sft_loss(m.denoiser(m.noise_scheduler.add_noise(x0, eps, t), t, cond), eps)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bare_dpo(m, opt, batch, i):
    g, x_w, x_l, cond = _generator(i), batch["x_w"], batch["x_l"], batch["cond"]
    n = x_w.shape[0]
    t = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (n,), generator=g)
    eps = torch.randn(x_w.shape, generator=g)
    t2, eps2 = torch.cat([t, t]), torch.cat([eps, eps])
    x_t = m.noise_scheduler.add_noise(torch.cat([x_w, x_l]), eps2, t2)
    cond2 = concat(cond, cond)
    err = per_sample_mse(m.denoiser(x_t, t2, cond2), eps2)
    with torch.no_grad(), reference_mode(m.denoiser):
        ref = per_sample_mse(m.denoiser(x_t, t2, cond2), eps2)
    loss, _ = diffusion_dpo_loss(err[:n], err[n:], ref[:n], ref[n:], m.hparams.beta)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sample(m, cond, n, g, **kw):
    hp = m.hparams
    noise = torch.randn((n, *m.sample_shape()), generator=g)
    return sample(m.denoiser, m.noise_scheduler, noise, cond, num_steps=hp.num_steps, eta=hp.eta,
                  generator=g, **kw)


def _clip_step(m, opt):
    torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), m.hparams.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bare_d3po(m, opt, batch, i):
    hp, g = m.hparams, _generator(i)
    cond = repeat_condition(batch["cond"], 2)
    n = 2 * condition_count(batch["cond"])
    with torch.no_grad():
        out = _sample(m, cond, n, g, return_trajectory=True)
    scores, _ = m.reward_fn.fn(out.samples, cond)
    pairs = scores.view(-1, 2)
    first = pairs[:, 0] >= pairs[:, 1]
    idx = torch.arange(0, n, 2)
    order = torch.cat([torch.where(first, idx, idx + 1), torch.where(first, idx + 1, idx)])
    latents, cond_wl = out.latents[order], select(cond, order)
    steps = len(out.timesteps)
    chosen = torch.randperm(steps, generator=g)[:max(1, int(steps * hp.timestep_fraction))]
    half = n // 2
    for j in chosen.tolist():
        t = out.timesteps[j]
        lp, _, _ = step_log_prob(m.denoiser, m.noise_scheduler, latents[:, j], t, latents[:, j + 1], cond_wl,
                                 eta=hp.eta)
        with torch.no_grad(), reference_mode(m.denoiser):
            ref, _, _ = step_log_prob(m.denoiser, m.noise_scheduler, latents[:, j], t, latents[:, j + 1],
                                      cond_wl, eta=hp.eta)
        loss, _ = d3po_loss(lp[:half], lp[half:], ref[:half], ref[half:], hp.beta)
        (loss / len(chosen)).backward()
    _clip_step(m, opt)


def bare_ddpo(m, opt, batch, i):
    hp, g = m.hparams, _generator(i)
    k = hp.samples_per_condition
    cond = repeat_condition(batch["cond"], k)
    n = k * condition_count(batch["cond"])
    with torch.no_grad():
        out = _sample(m, cond, n, g, return_trajectory=True)
    rewards, _ = m.reward_fn.fn(out.samples, cond)
    adv = per_condition_advantages(rewards.float(), torch.arange(n) // k).clamp(-hp.adv_clip_max, hp.adv_clip_max)
    steps = len(out.timesteps)
    chosen = torch.randperm(steps, generator=g)[:max(1, int(steps * hp.timestep_fraction))]
    for j in chosen.tolist():
        lp, _, _ = step_log_prob(m.denoiser, m.noise_scheduler, out.latents[:, j], out.timesteps[j],
                                 out.latents[:, j + 1], cond, eta=hp.eta)
        loss, _ = ppo_clip_loss(lp, out.log_probs[:, j], adv, hp.clip_range)
        (loss / len(chosen)).backward()
    _clip_step(m, opt)


def bare_draft(m, opt, batch, i):
    hp, g, cond = m.hparams, _generator(i), batch["cond"]
    out = _sample(m, cond, condition_count(cond), g, grad_last_k=hp.k, checkpoint=hp.checkpoint)
    scores, _ = m.reward_fn.fn(out.samples, cond)
    loss, _ = reward_backprop_loss(scores)
    loss.backward()
    _clip_step(m, opt)


# ------------------------------------------------------------ families ----


def families(quick: bool) -> dict[str, tuple[str, dict, Callable[[int], dict], Callable]]:
    """family -> (method, module options, batch builder(size), bare step)."""
    size = 16 if quick else 32
    steps = 4 if quick else 10

    def x0_batch(n):
        return {"x0": images(n, size), "cond": class_conditions(n)}

    def pair_batch(n):
        return {"x_w": images(n, size, 1), "x_l": images(n, size, 2), "cond": class_conditions(n)}

    def cond_batch(n):
        return {"cond": class_conditions(n)}

    online = dict(num_steps=steps, reward="jpeg_compressibility", timestep_fraction=0.5)
    return {
        "sft": ("sft", dict(lora_rank=0), lambda: x0_batch(16), bare_sft),
        "pairs (dpo)": ("dpo", dict(lora_rank=8), lambda: pair_batch(8), bare_dpo),
        "online pairs (d3po)": ("d3po", dict(lora_rank=8, **online), lambda: cond_batch(4), bare_d3po),
        "policy gradient (ddpo)": ("ddpo", dict(lora_rank=8, samples_per_condition=4, **online),
                                   lambda: cond_batch(2), bare_ddpo),
        "reward backprop (draft)": ("draft", dict(lora_rank=8, num_steps=steps, reward="smoothness", k=2),
                                    lambda: cond_batch(8), bare_draft),
    }


def build_module(method: str, options: dict, quick: bool, **preset: Any):
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    torch.manual_seed(0)
    return cls(model=unet_preset(quick, **preset), conditioner="class_label", **fixed, **options)


def measure_family(method: str, options: dict, make_batch, bare, quick: bool, rounds: int,
                   steps: int) -> dict[str, Any]:
    """Median step times of the two arms, alternating step by step, and their ratio."""
    module = build_module(method, options, quick)
    batch = make_batch()
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=module.hparams.lr, weight_decay=0.0)
    ours, theirs = [], []
    for r in range(rounds):
        a, b = lightning_block(module, batch, steps, between=lambda i: bare(module, opt, batch, 100 * r + i))
        ours += a
        theirs += b
    a, b = median(ours), median(theirs)
    # Each Lightning step and the bare step just before it ran within a second of each
    # other: the median of these paired ratios cancels slow swings of a shared machine.
    pairs = sorted(x / y for x, y in zip(ours, theirs))
    quartiles = [round(pairs[len(pairs) // 4], 4), round(pairs[(3 * len(pairs)) // 4], 4)]
    return {"prefdiff_ms": round(a * 1e3, 2), "bare_ms": round(b * 1e3, 2), "ratio": round(median(pairs), 4),
            "ratio_of_medians": round(a / b, 4), "paired_ratio_quartiles": quartiles, "steps_each": len(theirs)}


def run(quick: bool = False, log=print) -> Figure:
    details = {}
    for family, (method, options, make_batch, bare) in families(quick).items():
        # Online families sample a trajectory per step: seconds each on the CPU, so fewer.
        rounds, steps = (1, 3) if quick else ((2, 8) if family in ("sft", "pairs (dpo)") else (2, 5))
        details[family] = measure_family(method, options, make_batch, bare, quick, rounds, steps)
        log(f"  figure 1 {family}: {details[family]}")
    worst = max(d["ratio"] for d in details.values())
    return Figure(1, "framework overhead: prefdiff step / bare PyTorch step (worst family)", worst, TARGET,
                  check(worst, TARGET), details=details,
                  note="CPU time; Lightning Trainer configured as `prefdiff bench` does; the arms alternate "
                       "step by step; ratio = median of the paired step ratios")
