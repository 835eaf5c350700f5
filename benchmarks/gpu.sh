#!/usr/bin/env bash
# prefdiff's own trainers (Diffusion-DPO, DDPO, GRPO / Flow-GRPO; LoRA and full
# fine-tune) on SD-1.5-, SDXL- and SD3-medium-shaped pipeline folders built
# from their public configs (random weights), under a Lightning Trainer in
# bf16-mixed, with each performance lever (--model.channels_last, sdpa_backend,
# compile, fused_optimizer, lora_targets, gradient_checkpointing, logprob_batch)
# on and off: step time, samples/s, FLOPs, MFU against a bf16 matmul peak
# measured in the same run, peak memory, and a torch.profiler summary of
# chosen steps. Writes JSON (default benchmarks/results/gpu/gpu.json) after
# every run. With no arguments it fits in about eight minutes on an H100/H200
# (--budget-s 420: no run starts later; the ones left are listed as skipped).
#
#   benchmarks/gpu.sh                  # on a GPU machine (the whole plan)
#   benchmarks/gpu.sh --tiny --out X   # tiny pipelines, fp32, CPU (the tests run a few --runs so)
#   benchmarks/gpu.sh --runs sd15/ddpo/lora,sd15/ddpo/lora+cudagraphs   # chosen runs of the plan
#   benchmarks/gpu.sh --help           # the selection flags and the levers
#
# Needs torch, diffusers, transformers, peft and pytorch_lightning; uses
# .venv/bin/python when there is one, else $PYTHON or python3, and the prefdiff
# sources of this checkout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$root/core${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$python" -m prefdiff.perf.gpu "$@"
