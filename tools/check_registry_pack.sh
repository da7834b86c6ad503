#!/usr/bin/env bash
# What the Comfy registry gets, checked with the registry's own tool: `comfy node validate` and
# `comfy node pack` (comfy-cli, pinned in tools/comfy-cli.txt, installed into .cache/comfy-cli), then the
# archive's file list is compared with the rule tests/test_packaging.py derives from .comfyignore.
#
#   bash tools/check_registry_pack.sh          # (make validate-packaging; .ci/run runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CLI_VENV=.cache/comfy-cli
OUT=.cache/registry
spec=$(grep -v '^#' tools/comfy-cli.txt | head -n 1)
if [ ! -x "$CLI_VENV/bin/comfy" ] || ! "$CLI_VENV/bin/python" -m pip show comfy-cli 2>/dev/null | grep -q "^Version: ${spec#comfy-cli==}$"; then
  echo "check_registry_pack: installing $spec into $CLI_VENV"
  rm -rf "$CLI_VENV"
  python3 -m venv "$CLI_VENV"
  "$CLI_VENV/bin/python" -m pip install -q --disable-pip-version-check "$spec"
fi
comfy() { "$CLI_VENV/bin/comfy" --skip-prompt --no-enable-telemetry "$@"; }
comfy node validate
rm -rf "$OUT" && mkdir -p "$OUT"
trap 'rm -f node.zip' EXIT  # comfy node pack writes ./node.zip; keep it out of the work tree
comfy node pack
mv node.zip "$OUT/node.zip"
R2R_REGISTRY_ZIP="$OUT/node.zip" "$PY" -m pytest -q -p no:cacheprovider tests/test_packaging.py -k registry_archive
echo "check_registry_pack: the archive ($(du -k "$OUT/node.zip" | cut -f1) KiB) holds exactly what .comfyignore ships"
