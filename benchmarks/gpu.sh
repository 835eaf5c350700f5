#!/usr/bin/env bash
# Diffusion-DPO and DDPO step throughput and model-FLOP utilisation of a
# Stable-Diffusion-1.5-shaped UNet (random weights, 64x64 latents, 77x768
# text states, bf16), LoRA and full fine-tune, against a bf16 matmul peak
# measured in the same run. Writes JSON (default benchmarks/results/gpu/gpu.json).
#
#   benchmarks/gpu.sh                  # on a GPU machine
#   benchmarks/gpu.sh --tiny --out X   # tiny config, fp32, CPU (what the tests run)
#
# Needs torch, diffusers and peft; uses .venv/bin/python when there is one,
# else $PYTHON or python3, and the prefdiff sources of this checkout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$root/core${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$python" -m prefdiff.perf.gpu "$@"
