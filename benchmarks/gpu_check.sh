#!/usr/bin/env bash
# One-command GPU check (issues 12, 17, 21, 23): see benchmarks/gpu_check.py and benchmarks/README.md.
#
#   bash benchmarks/gpu_check.sh --wheels .whl      # GPU machine without network: install the carried wheels first
#   bash benchmarks/gpu_check.sh                    # a machine that has the pack's and ComfyUI's packages
#   bash benchmarks/gpu_check.sh --dry-run          # every part on a CPU (tiny release, 64², 1 step)
#
# --wheels DIR  installs DIR/*.whl (tools/fetch_gpu_wheels.sh) with `pip install --no-index --no-deps --target`
#               into $GPU_CHECK_SITE (default /tmp/r2r-gpu-site) and puts that folder first on PYTHONPATH;
#               when `import av` fails there, a stand-in `av` module goes in its place (ComfyUI's comfy_api
#               imports PyAV; no video node runs in the check, and the stand-in refuses any use).
# --av-stand-in use the stand-in `av` even when PyAV is installed (what the GPU machine gets; the CPU dry run
#               of the tests uses it).
# Everything else goes to benchmarks/gpu_check.py. ComfyUI's tree: $COMFYUI_DIR, else .cache/ComfyUI.
# Python: $PYTHON, else the repository's .venv, else python3. Time limit: $GPU_CHECK_TIMEOUT seconds (480);
# gpu_check.py plans its parts within $GPU_CHECK_BUDGET (the limit less what the install took, less 15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS="" STANDIN=0 ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#--wheels=}"; shift ;;
    --av-stand-in) STANDIN=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
SITE=${GPU_CHECK_SITE:-/tmp/r2r-gpu-site}
if [ -n "$WHEELS" ]; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_check: no wheels in $WHEELS (run tools/fetch_gpu_wheels.sh here, carry $WHEELS)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
if [ -n "$WHEELS" ] || [ "$STANDIN" = 1 ]; then
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$STANDIN" = 1 ] || ! "$PY" -c "import av" >/dev/null 2>&1; then
    mkdir -p "$SITE/av/subtitles"
    cat > "$SITE/av/__init__.py" <<'EOF'
"""Stand-in for PyAV (benchmarks/gpu_check.sh): ComfyUI's comfy_api imports it; no video node runs in the GPU check."""
time_base = 1000000


def _refuse(*args, **kwargs):
    raise RuntimeError("PyAV is not installed here: this `av` is the GPU check's stand-in (no video in the check).")


open = _refuse  # noqa: A001


class _Stand:
    def __init__(self, *args, **kwargs):
        _refuse()

    from_ndarray = staticmethod(_refuse)


VideoStream = AudioStream = VideoFrame = AudioFrame = _Stand
EOF
    printf 'from . import _Stand as InputContainer, _Stand as OutputContainer  # noqa: F401\n' > "$SITE/av/container.py"
    printf '' > "$SITE/av/subtitles/__init__.py"
    printf 'from .. import _Stand as SubtitleStream  # noqa: F401\n' > "$SITE/av/subtitles/stream.py"
  fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONUNBUFFERED=1
export COMFYUI_DIR=${COMFYUI_DIR:-$PWD/.cache/ComfyUI}
LIMIT=${GPU_CHECK_TIMEOUT:-480}
export GPU_CHECK_BUDGET=${GPU_CHECK_BUDGET:-$(( LIMIT - ($(date +%s) - START) - 15 ))}
exec timeout --signal=TERM --kill-after=20 "$(( LIMIT - ($(date +%s) - START) ))" "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
