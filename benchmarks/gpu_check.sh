#!/usr/bin/env bash
# One-command GPU check (issue 12): ours vs the official flow at 1024x1024, 10 steps, fp16 on CUDA,
# full-size random weights (built once into ~/.cache/r2r-bench, ~5.5 GB). See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh              # on a machine with one CUDA GPU; stops after 8 minutes
#   bash benchmarks/gpu_check.sh --compile    # also torch.compile the resident U-Net
#   bash benchmarks/gpu_check.sh --device cpu --dtype float32 --size 128 --steps 1   # dry run on a CPU
#
# Python: $PYTHON, else the repository's .venv, else python3. Time limit: $GPU_CHECK_TIMEOUT seconds (480).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
