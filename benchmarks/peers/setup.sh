#!/usr/bin/env bash
# Create benchmarks/peers/.venv: TRL 0.23.1 and the Diffusion-DPO example's stack beside, never
# inside, prefdiff's own .venv. Idempotent: a second run with the same requirements does nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed-$(sha1sum "$here/requirements.txt" "$0" | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
    exit 0
fi
test -x "$venv/bin/python" || python3 -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check -q"
# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
$pip install torch==2.13.0
$pip install torch==2.13.0 -r "$here/requirements.txt"
rm -f "$venv"/.installed-*
touch "$stamp"
echo "peers venv ready: $venv"
