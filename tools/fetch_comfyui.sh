#!/usr/bin/env bash
# Puts the ComfyUI source tree the tests run against at DEST (default .cache/ComfyUI).
#
#   tools/fetch_comfyui.sh [DEST]
#
# From the archive ../shared/comfyui/ComfyUI-<version>.tar.gz when it exists (its sha256 is checked first;
# a mismatch is an error, never a silent fallback), otherwise a shallow clone of the release tag.
# Extraction goes to a temporary folder beside DEST and is renamed into place only when complete, so an
# interrupted run never leaves a half tree that looks usable. An existing non-empty DEST is never touched.
# Environment: COMFYUI_VERSION (0.3.64), COMFYUI_ARCHIVE (the archive path), COMFYUI_SHA256 (its sha256),
# COMFYUI_GIT_URL (the repository cloned when there is no archive).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${COMFYUI_VERSION:-0.3.64}"
DEST="${1:-$ROOT/.cache/ComfyUI}"
ARCHIVE="${COMFYUI_ARCHIVE:-$ROOT/../shared/comfyui/ComfyUI-$VERSION.tar.gz}"
SHA256="${COMFYUI_SHA256:-25692800c23d1353e047478eb4e64f1e6084740e0768445c794b20b4c022b5a1}"
GIT_URL="${COMFYUI_GIT_URL:-https://github.com/comfyanonymous/ComfyUI}"

die() { echo "fetch_comfyui: $*" >&2; exit 1; }

if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
    [ -f "$DEST/main.py" ] && [ -f "$DEST/requirements.txt" ] \
        || die "$DEST exists but is not a ComfyUI source tree (no main.py/requirements.txt); remove it or set COMFYUI_DIR to a ComfyUI folder"
    echo "fetch_comfyui: using the existing tree at $DEST"
    exit 0
fi

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

parent="$(dirname "$DEST")"
mkdir -p "$parent"
staging="$(mktemp -d "$parent/.comfyui-staging.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

if [ -f "$ARCHIVE" ]; then
    actual="$(sha256_of "$ARCHIVE")"
    [ "$actual" = "$SHA256" ] || die "sha256 of $ARCHIVE is $actual, expected $SHA256 (ComfyUI $VERSION); the archive is damaged or another version"
    echo "fetch_comfyui: extracting $ARCHIVE (sha256 ok) -> $DEST"
    tar -xzf "$ARCHIVE" -C "$staging"
    [ -d "$staging/ComfyUI" ] || die "$ARCHIVE has no top-level ComfyUI/ folder"
    tree="$staging/ComfyUI"
else
    command -v git >/dev/null 2>&1 || die "no archive at $ARCHIVE and git is not installed to clone ComfyUI v$VERSION"
    echo "fetch_comfyui: no archive at $ARCHIVE; cloning $GIT_URL tag v$VERSION -> $DEST"
    git clone --quiet --depth 1 --branch "v$VERSION" "$GIT_URL" "$staging/ComfyUI" \
        || die "could not clone $GIT_URL at v$VERSION; put ComfyUI-$VERSION.tar.gz at $ARCHIVE or set COMFYUI_DIR to a ComfyUI $VERSION tree"
    tree="$staging/ComfyUI"
fi

found="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$tree/comfyui_version.py" 2>/dev/null || true)"
[ "$found" = "$VERSION" ] || die "the fetched tree says ComfyUI version '${found:-unknown}', expected $VERSION"
rmdir "$DEST" 2>/dev/null || true
mv "$tree" "$DEST"
echo "fetch_comfyui: ComfyUI $found ready at $DEST"
