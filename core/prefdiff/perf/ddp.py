"""One DDP measurement: ``python -m prefdiff.perf.ddp SPEC`` (run by figure 5).

Lightning's DDP launcher starts the other ranks by running this same module
again, so it does nothing but this measurement. Rank 0 prints the median step.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(spec: dict) -> None:
    from prefdiff.perf.common import class_conditions, images, lightning_block, median
    from prefdiff.perf.overhead import build_module

    torch.set_num_threads(1)
    module = build_module("sft", {"lora_rank": 0}, spec["quick"])
    size = module.hparams.model["sample_size"]
    batch = {"x0": images(spec["batch"], size), "cond": class_conditions(spec["batch"])}
    options = {"devices": spec["devices"]}
    if spec["devices"] > 1:
        options["strategy"] = "ddp"
    # Wall clock: a rank waiting for the other in the all-reduce is part of the step.
    times = lightning_block(module, batch, spec["steps"], clock=time.perf_counter, **options)
    if module.global_rank == 0:
        print(json.dumps({"devices": spec["devices"], "step_s": median(times), "steps": len(times)}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
