"""One DDP measurement: ``python -m prefdiff.perf.ddp SPEC`` (run by figure 5 and by
:mod:`prefdiff.perf.ddp_modes`).

Lightning's DDP launcher starts the other ranks by running this same module
again, so it does nothing but this measurement. Rank 0 prints the median step;
with ``"every_rank": true`` in SPEC every rank prints its own line, with where
its main thread ran (the CPUs seen at each step boundary), its process's thread
count, and the context switches the kernel forced on it during the timed steps.
With ``"pin": true`` each rank is bound to one core (``local rank % cores``)
before torch starts any thread.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

CORES = "PREFDIFF_DDP_CORES"


def _cpu_now() -> int:
    """The CPU this thread is running on (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def main(spec: dict) -> None:
    from prefdiff.perf.common import class_conditions, images, lightning_block, median
    from prefdiff.perf.overhead import build_module

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec.get("pin"):
        # Rank 0 launches the others after pinning itself, so they would inherit its one core:
        # the cores allowed before any pinning travel to them in the environment.
        allowed = os.environ.setdefault(CORES, ",".join(map(str, sorted(os.sched_getaffinity(0)))))
        cores = [int(c) for c in allowed.split(",")]
        os.sched_setaffinity(0, {cores[local_rank % len(cores)]})
    torch.set_num_threads(1)
    module = build_module("sft", {"lora_rank": 0}, spec["quick"])
    size = module.hparams.model["sample_size"]
    batch = {"x0": images(spec["batch"], size), "cond": class_conditions(spec["batch"])}
    options = {"devices": spec["devices"]}
    if spec["devices"] > 1:
        options["strategy"] = "ddp"
    cpus: list[int] = []

    def clock() -> float:  # wall clock: a rank waiting for the other in the all-reduce is part of the step
        cpus.append(_cpu_now())
        return time.perf_counter()

    before = resource.getrusage(resource.RUSAGE_SELF)
    times = lightning_block(module, batch, spec["steps"], clock=clock, **options)
    after = resource.getrusage(resource.RUSAGE_SELF)
    line = {"devices": spec["devices"], "step_s": median(times), "steps": len(times)}
    if spec.get("every_rank"):
        line.update(rank=module.global_rank, pinned=bool(spec.get("pin")), cpus=cpus,
                    threads=len(os.listdir("/proc/self/task")),
                    involuntary_switches=after.ru_nivcsw - before.ru_nivcsw,
                    voluntary_switches=after.ru_nvcsw - before.ru_nvcsw)
    if module.global_rank == 0 or spec.get("every_rank"):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
