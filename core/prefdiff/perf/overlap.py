"""Figure 8: how much of a CPU-bound reward's cost hides behind sampling.

A DDPO step as `prefdiff bench` builds it from a field's recipe, timed by the
wall clock under the Lightning Trainer in arms side by side (blocks
interleaved): *serial* (the reward scored in this process after the whole
batch is sampled) and *overlapped* (the batch sampled in ``CHUNKS`` chunks,
each scored in one worker process while the next chunk samples:
``--model.reward_workers 1 --model.sample_chunks 4``). The reward's own time
on one step's samples is measured in this process beside them.

A third arm samples in the same chunks but scores them in this process, so
the figure isolates what the worker hides from what chunking costs: the share
of the reward's time hidden, ``(chunked - overlapped) / reward``, for the
field whose share is lowest: 1 means the reward costs nothing any more, 0
that nothing was gained, below 0 that the worker costs more than it hides.
The whole-batch serial step is reported beside it. The fields are the ones
with CPU-bound rewards (the MuJoCo execution and the lattice planner) unless
``--domain`` names others.

The share cannot exceed ``1 - 1/CHUNKS`` (0.75 at 4 chunks): the last chunk's
reward has no sampling left to hide behind, since the DDPO loss needs every
score of the batch before the training pass. The details report that ceiling.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from prefdiff.data import condition_count, select
from prefdiff.perf.common import Figure, check, interleaved, lightning_block, median, timed_block
from prefdiff.perf.reward_cost import _recipe_inputs, _samples_per_step, _step_module

TARGET = ">= 0.8"
CHUNKS = 4
DOMAINS = ("robotics", "driving")


def _hidden_share(domain: str, quick: bool, log) -> dict[str, Any]:
    bench, cond, samples = _recipe_inputs(domain, quick)
    b = min(bench.recipe.align_batch, condition_count(cond))
    batch = {"cond": select(cond, slice(0, b))}
    steps, rounds = (1, 1) if quick else (3, 2)

    def arm(workers: int, chunks: int):
        def block() -> list[float]:
            module = _step_module(bench, "ddpo", reward_workers=workers, sample_chunks=chunks)
            return lightning_block(module, batch, steps, clock=time.perf_counter)
        return block

    times = interleaved({"serial": arm(0, 1), "chunked": arm(0, CHUNKS), "overlapped": arm(1, CHUNKS)}, rounds)
    module = _step_module(bench, "ddpo")
    m = _samples_per_step(module, b)
    n = min(m, samples.shape[0])
    step_samples = samples[:n].repeat(-(-m // n), *([1] * (samples.ndim - 1)))[:m]
    step_cond = select(cond, torch.arange(m) % condition_count(cond))
    reward = module.require_reward()
    with torch.no_grad():
        reward_s = median(timed_block(lambda i: reward(step_samples, step_cond), steps, warmup=1))
    serial, chunked, overlapped = (median(times[k]) for k in ("serial", "chunked", "overlapped"))
    entry = {"method": "ddpo", "samples_per_step": m, "chunks": CHUNKS, "serial_step_s": round(serial, 4),
             "chunked_step_s": round(chunked, 4), "overlapped_step_s": round(overlapped, 4),
             "reward_s": round(reward_s, 4), "reward_share_of_serial": round(reward_s / serial, 4),
             "overlapped_over_serial": round(overlapped / serial, 4),
             # against the same chunked sampling scored in this process: what the worker itself hides
             "hidden_share": round((chunked - overlapped) / reward_s, 4) if reward_s > 0 else None,
             "ceiling": round(1 - 1 / CHUNKS, 4)}
    log(f"  figure 8 {domain}: {entry}")
    return entry


def run(quick: bool = False, domains: list[str] | None = None, log=print) -> Figure:
    from prefdiff.plugins import get_manager

    registered = get_manager().names("benchmarks")
    domains = domains if domains is not None else [d for d in DOMAINS if d in registered]
    details = {domain: _hidden_share(domain, quick, log) for domain in domains}
    shares = [e["hidden_share"] for e in details.values() if e["hidden_share"] is not None]
    worst = min(shares) if shares else None
    return Figure(8, "share of a CPU-bound reward's time hidden behind sampling (worst field)", worst, TARGET,
                  check(worst, TARGET), unit="share", details=details,
                  note=f"DDPO step, wall clock, blocks interleaved: the batch sampled in {CHUNKS} chunks and each "
                       "scored in one worker process while the next samples, against the same chunks scored in "
                       "this process; (chunked - overlapped) / reward time. The whole-batch serial step and "
                       "overlapped / serial are in the details")
