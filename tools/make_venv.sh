#!/usr/bin/env bash
# Builds (or brings up to date) the virtualenv the tests run in, the way a ComfyUI user's install is:
# ComfyUI's environment first (tools/host-requirements.txt + ComfyUI's requirements.txt), then the pack's
# requirements on top (requirements-dev.txt = requirements.txt + test tools).
#
#   tools/make_venv.sh VENV COMFYUI_DIR [PYTHON]
#
# An existing VENV is reused: pip only installs what is missing or changed. The torch pins also constrain
# the second step, so nothing the pack asks for can replace the host's torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:?usage: make_venv.sh VENV COMFYUI_DIR [PYTHON]}"
COMFYUI_DIR="${2:?usage: make_venv.sh VENV COMFYUI_DIR [PYTHON]}"
PYTHON="${3:-python3}"
HOST_REQS="$ROOT/tools/host-requirements.txt"

[ -f "$COMFYUI_DIR/requirements.txt" ] || { echo "make_venv: no requirements.txt in $COMFYUI_DIR" >&2; exit 1; }

# pip repeats one harmless line for every package a configured extra index folder lacks; keep the rest.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory.$" || true; }
}

start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    echo "make_venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
echo "make_venv: ComfyUI's environment (torch, torchvision, $COMFYUI_DIR/requirements.txt)"
pip_install -r "$HOST_REQS" -r "$COMFYUI_DIR/requirements.txt"
echo "make_venv: the pack's requirements on top (requirements-dev.txt)"
pip_install -c "$HOST_REQS" -r "$ROOT/requirements-dev.txt"
"$VENV/bin/python" -c "import torch, torchvision; print(f'make_venv: torch {torch.__version__}, torchvision {torchvision.__version__}')"
echo "make_venv: environment ready in $((SECONDS - start)) s"
