#!/usr/bin/env bash
# Builds (or brings up to date) the virtualenv the tests run in, the way a ComfyUI user's install is:
# ComfyUI's environment first (tools/host-requirements.txt + ComfyUI's requirements.txt), then the pack's
# requirements on top (requirements-dev.txt = requirements.txt + test tools).
#
#   tools/make_venv.sh VENV COMFYUI_DIR [PYTHON]
#
# An existing VENV is reused: only what is missing or changed gets installed. The torch pins also constrain
# the second step, so nothing the pack asks for can replace the host's torch.
# Installer: uv (installed into the venv with pip first) because it unpacks the ~6 GB of torch/CUDA wheels
# several times faster than pip and keeps them in its cache (~/.cache/uv) for the next build; set
# R2R_INSTALLER=pip to use pip only (also the fallback when uv cannot be installed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:?usage: make_venv.sh VENV COMFYUI_DIR [PYTHON]}"
COMFYUI_DIR="${2:?usage: make_venv.sh VENV COMFYUI_DIR [PYTHON]}"
PYTHON="${3:-python3}"
HOST_REQS="$ROOT/tools/host-requirements.txt"
INSTALLER="${R2R_INSTALLER:-uv}"

[ -f "$COMFYUI_DIR/requirements.txt" ] || { echo "make_venv: no requirements.txt in $COMFYUI_DIR" >&2; exit 1; }
case "$INSTALLER" in uv|pip) ;; *) echo "make_venv: R2R_INSTALLER must be uv or pip, got '$INSTALLER'" >&2; exit 1;; esac

# pip repeats one harmless line for every package a configured extra index folder lacks; keep the rest.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory.$" || true; }
}

install() {
    local t0=$SECONDS
    if [ "$INSTALLER" = uv ]; then
        "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" "$@"
    else
        pip_install "$@"
    fi
    echo "make_venv:   done in $((SECONDS - t0)) s"
}

start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    echo "make_venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$INSTALLER" = uv ] && ! "$VENV/bin/python" -m uv --version >/dev/null 2>&1; then
    pip_install uv || true
    if ! "$VENV/bin/python" -m uv --version >/dev/null 2>&1; then
        echo "make_venv: uv could not be installed; using pip"
        INSTALLER=pip
    fi
fi
echo "make_venv: ComfyUI's environment (torch, torchvision, $COMFYUI_DIR/requirements.txt) with $INSTALLER"
install -r "$HOST_REQS" -r "$COMFYUI_DIR/requirements.txt"
echo "make_venv: the pack's requirements on top (requirements-dev.txt)"
install -c "$HOST_REQS" -r "$ROOT/requirements-dev.txt"
"$VENV/bin/python" -c "from importlib.metadata import version as v; print(f'make_venv: torch {v(\"torch\")}, torchvision {v(\"torchvision\")}')"
echo "make_venv: environment ready in $((SECONDS - start)) s"
