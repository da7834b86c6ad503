#!/usr/bin/env bash
# Downloads the wheels benchmarks/gpu_check.sh installs on the GPU machine, where nothing can be downloaded:
# CPython 3.12, manylinux x86_64 (see benchmarks/README.md). That machine has torch, transformers, accelerate,
# huggingface_hub, safetensors, OpenCV, scipy, scikit-image, einops, aiohttp, yarl, psutil, pyyaml, tqdm and
# Pillow; what the pack and ComfyUI 0.3.64's in-process executor still need is listed here, one pinned
# version each (the versions this repository's own environment runs; `--no-deps`: each dependency is named).
# PyAV is left out (~40 MB): gpu_check.sh puts a stand-in `av` module in its place (no video node runs there).
#
#   tools/fetch_gpu_wheels.sh [DEST]          # default DEST: .whl (git-ignored)
#
# Environment: PYTHON (a Python with pip; any version: the wheels are chosen for cp312, not for it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

WHEELS=(
    diffusers==0.42.1            # the pack's networks (r2r.models, the pipeline)
    importlib-metadata==10.2.0   # diffusers
    zipp==4.1.2                  # importlib-metadata
    lazy-importer==0.1.0         # importlib-metadata
    torchsde==0.2.6              # ComfyUI's k-diffusion samplers (KSampler)
    trampoline==0.1.2            # torchsde
    pydantic==2.14.4             # ComfyUI's comfy_api (V3 node schema)
    pydantic-core==2.50.5        # pydantic (compiled: cp312 manylinux)
    annotated-types==0.8.0       # pydantic
    typing-inspection==0.4.5     # pydantic
    typing-extensions==4.16.0    # pydantic needs >= 4.16
    pydantic-settings==2.16.3    # ComfyUI
    python-dotenv==1.2.4         # pydantic-settings
    kornia==0.9.0                # ComfyUI (comfy_extras, imported by core modules)
    kornia-rs==0.2.0             # kornia (compiled: cp312 manylinux)
    spandrel==0.4.2              # ComfyUI (upscale model loading, imported by core modules)
)

mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "fetch_gpu_wheels: $DEST holds $count wheels, expected ${#WHEELS[@]} (one version of each; remove stale ones)" >&2
    exit 1
fi
echo "fetch_gpu_wheels: $count wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
