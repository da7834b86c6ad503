"""Atomic writer for harmonization datasets in the iHarmony4 / RPHarmony layout.

Every file is written through :func:`r2r.fileio.atomic_write_bytes` (``<name>.tmp-<pid>`` in
its final folder, renamed with ``os.replace``), so a crash or a full disk never leaves a truncated
image; the files an :meth:`~HarmonizationDatasetWriter.add` created are removed again when it fails
half-way. Index lines (``train.jsonl`` + ``train.txt``, ``test.jsonl`` + ``test.txt``, see
:mod:`.indexes`) are appended only after the item's three files exist, under a lock file; a writer
opened on an existing root first checks every index line (a malformed one stops it before anything is
written) and repairs what a crash can leave, never dropping a line. Every folder and index file the
writer uses must resolve inside ``confine_to`` (default: the root): a symbolic link leading out of it
is refused before anything is written.

    w = HarmonizationDatasetWriter("data/MyHarmony", "R-Custom")
    paths = w.add(composite, mask, real, split="train")     # numpy HxWx3 uint8, HxW mask
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import numpy as np

from ..errors import R2RUserError
from ..fileio import (
    TEMP_MARKER,
    atomic_write_bytes,
    check_inside,
    check_name_length,
    read_image,
    read_mask,
    write_error,
)
from .indexes import (
    LOCK_NAME,
    SPLITS,
    append_index,
    append_pair,
    check_indexes,
    index_line_jsonl,
    index_paths,
    locked,
    read_indexes,
    rebuild_indexes,
    repair_indexes,
)
from .layouts import IMAGE_EXTS

__all__ = ["HarmonizationDatasetWriter", "append_index", "cleanup_temp_files", "index_line_jsonl", "locked",
           "read_indexes", "rebuild_indexes"]

SUBDIRS = ("composite_images", "masks", "real_images")
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


# ----------------------------------------------------------------------------- file helpers


def check_subset_name(subset) -> str:
    """A subset is one plain folder name (``R-Custom``), never a path."""
    if not isinstance(subset, str) or not subset or any(c in subset for c in "/\\") or subset in (".", ".."):
        raise R2RUserError(f"subset name {subset!r} is not a plain folder name; use e.g. 'R-Custom' (no slashes)")
    return subset


def encode_dataset_image(img: np.ndarray, ext: str, jpeg_quality: int = 100) -> bytes:
    """Encode an RGB uint8 image (or HxW uint8 mask) as dataset files are stored: JPEG with 4:4:4
    chroma (no colour bleeding at the foreground's edge; :func:`r2r.fileio.encode_image` uses the
    encoder's default 4:2:0), PNG with compression 3."""
    import cv2

    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ext = ext.lower()
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        raise R2RUserError(f"unsupported image format {ext!r}; use 'jpg' or 'png'")
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), params)
    if not ok:  # pragma: no cover - cv2 only fails here for impossible inputs
        raise R2RUserError(f"OpenCV could not encode an image of shape {img.shape} as {ext}")
    return buf.tobytes()


def as_rgb_uint8(img, what: str) -> np.ndarray:
    """Accept HxWx3 (or 1xHxWx3) uint8, or float in [0, 1]; return HxWx3 uint8."""
    a = np.asarray(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[2] != 3:
        raise R2RUserError(f"{what}: expected an RGB image of shape HxWx3, got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise R2RUserError(f"{what}: the image contains NaN/inf values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise R2RUserError(
                f"{what}: float images must be in [0, 1], got values in [{a.min():.3g}, {a.max():.3g}]; "
                "pass uint8 0..255 or scale to [0, 1]"
            )
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    raise R2RUserError(f"{what}: expected uint8 or float pixels, got dtype {a.dtype}")


def as_binary_mask(mask, what: str = "mask") -> np.ndarray:
    """HxW (or 1xHxW / HxWx1) bool/uint8/float mask -> HxW bool (foreground = True, threshold 0.5)."""
    m = np.asarray(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise R2RUserError(f"{what}: expected a single-channel HxW mask, got shape {tuple(np.asarray(mask).shape)}")
    if m.dtype == bool:
        return m
    if m.dtype == np.uint8:
        return m >= 128
    if np.issubdtype(m.dtype, np.floating):
        return m >= 0.5
    return m > 0


def mask_stats(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def safe_name(text: str) -> str:
    """A name usable in ``<name>_<k>_<j>``: no underscores, no path separators."""
    out = "".join(c if c in _SAFE else "-" for c in text)
    out = out.strip("-.") or "img"
    return out


def cleanup_temp_files(folder, older_than_s: float = 600.0) -> int:
    """Remove ``*.tmp-*`` files left by crashed writers (only ones older than ``older_than_s``,
    so a writer running right now on the same folder is not disturbed)."""
    n = 0
    now = time.time()
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.rglob(f"*{TEMP_MARKER}*"):
        try:
            if p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            continue
    return n


# ----------------------------------------------------------------------------- the writer


class HarmonizationDatasetWriter:
    """Append (composite, mask, real) triplets to ``<root>/<subset>/`` + the split indexes.

    ``image_format`` "jpg" (default; quality ``jpeg_quality``, 4:4:4 chroma, the names of the
    official datasets) or "png" (lossless). Masks are always PNG (0/255). ``confine_to``: the folder
    every written path must resolve inside (default ``root``; the node passes ComfyUI's output folder).
    Safe to use repeatedly and from several processes on the same root.
    """

    def __init__(self, root, subset: str, *, image_format: str = "jpg", jpeg_quality: int = 100, repair=True,
                 confine_to=None):
        check_subset_name(subset)
        fmt = image_format.lower().lstrip(".")
        if fmt == "jpeg":
            fmt = "jpg"
        if fmt not in ("jpg", "png"):
            raise R2RUserError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise R2RUserError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.root = Path(root)
        self.subset = subset
        self.ext = "." + fmt
        self.jpeg_quality = int(jpeg_quality)
        self.dir = self.root / subset
        self._lock_path = self.root / LOCK_NAME
        self.written: list[Path] = []  # files this writer created or replaced (removed again by add() on failure)
        check_name_length(self.dir / "composite_images" / "x", "dataset folder")
        confine = self.root if confine_to is None else Path(confine_to)
        for p in [self.root, self.dir, *(self.dir / d for d in SUBDIRS), *index_paths(self.root), self._lock_path]:
            check_inside(p, confine, "dataset path")
        if repair:
            check_indexes(self.root)  # a malformed line stops everything before the first write
        try:
            for d in SUBDIRS:
                (self.dir / d).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = write_error(exc, self.dir / d / ".", "dataset folder")
            if err is not exc:
                raise err from exc
            raise R2RUserError(f"cannot create the dataset folders under {self.dir} ({exc}); check the path") from exc
        if repair:
            self.repair()

    # paths -----------------------------------------------------------------
    def real_path(self, name: str) -> Path:
        return self.dir / "real_images" / f"{name}{self.ext}"

    def mask_path(self, name: str, k: int) -> Path:
        return self.dir / "masks" / f"{name}_{k}.png"

    def composite_path(self, name: str, k: int, j: int) -> Path:
        return self.dir / "composite_images" / f"{name}_{k}_{j}{self.ext}"

    def file_name(self, name: str, k: int, j: int) -> str:
        return f"{self.subset}/composite_images/{name}_{k}_{j}{self.ext}"

    # low-level writes (used by make-dataset) -------------------------------
    def _write(self, path: Path, data: bytes, what: str) -> Path:
        atomic_write_bytes(path, data, what=what)
        self.written.append(path)
        return path

    def write_real(self, name: str, real) -> Path:
        return self._write(self.real_path(name), encode_dataset_image(real, self.ext, self.jpeg_quality),
                           "real image")

    def write_mask(self, name: str, k: int, mask_bool: np.ndarray) -> Path:
        m = np.where(mask_bool, 255, 0).astype(np.uint8)
        return self._write(self.mask_path(name, k), encode_dataset_image(m, ".png"), "mask")

    def write_composite(self, name: str, k: int, j: int, composite) -> Path:
        data = encode_dataset_image(composite, self.ext, self.jpeg_quality)
        return self._write(self.composite_path(name, k, j), data, "composite")

    def discard_written(self) -> None:
        """Remove the files this writer wrote (an item that failed half-way leaves nothing behind)."""
        for p in reversed(self.written):
            with contextlib.suppress(OSError):
                p.unlink()
        self.written.clear()

    def append_index(self, file_names, split: str) -> None:
        """Append lines for items whose files already exist (jsonl, then txt)."""
        append_index(self.root, file_names, split)

    def repair(self) -> bool:
        """Undo what a crash can leave in the indexes (see :func:`.indexes.repair_indexes`); never drops a
        listed line. Returns True when something was rewritten."""
        return repair_indexes(self.root)

    # the public API ------------------------------------------------------------
    def add(self, composite, mask, real, name: str | None = None, split: str = "train") -> dict:
        """Save one triplet and list it in ``<split>.jsonl``/``.txt``.

        ``composite``/``real``: HxWx3 uint8 RGB (or float in [0, 1]); ``mask``: HxW (bool,
        uint8 0/255 or float, foreground = 1). ``name``: the real image's name (files
        ``<name>.jpg``, ``<name>_<k>.png``, ``<name>_<k>_<j>.jpg``); ``None`` names it after
        the real image's content. A new mask of the same real gets the next ``k``, a new
        composite the next ``j``; an existing file is never replaced. If a write fails (disk full),
        the files this call created are removed and nothing is listed.
        Returns ``{"composite", "mask", "real", "file_name"}``.
        """
        if split not in SPLITS:
            raise R2RUserError(f"split must be 'train' or 'test', got {split!r}")
        comp = as_rgb_uint8(composite, "composite")
        real_u8 = as_rgb_uint8(real, "real image")
        m = as_binary_mask(mask)
        if comp.shape != real_u8.shape or m.shape != comp.shape[:2]:
            raise R2RUserError(
                f"composite {comp.shape[1]}x{comp.shape[0]}, real {real_u8.shape[1]}x{real_u8.shape[0]} and mask "
                f"{m.shape[1]}x{m.shape[0]} (width x height) must have the same size; resize them to match"
            )
        if not m.any():
            raise R2RUserError("mask is empty (no foreground pixel >= 0.5); a training triplet needs a foreground")
        if m.all():
            raise R2RUserError("mask covers the whole image; a training triplet needs some background")
        if name is None:
            name = "h" + hashlib.sha1(real_u8.tobytes() + repr(real_u8.shape).encode()).hexdigest()[:12]
        else:
            clean = safe_name(str(name))
            if clean != str(name):
                raise R2RUserError(
                    f"name {name!r} may only contain letters, digits, '-' and '.' (no '_' or '/': the file "
                    f"names are <name>_<k>_<j>); e.g. use {clean!r}"
                )
        with locked(self._lock_path):
            self.written.clear()
            try:
                return self._add_locked(comp, m, real_u8, name, split)
            except BaseException:
                self.discard_written()
                raise

    def _add_locked(self, comp, m, real_u8, name: str, split: str) -> dict:
        real_p = self.real_path(name)
        if real_p.exists():
            old = read_image(real_p)
            if old.shape != real_u8.shape or np.abs(old.astype(np.int16) - real_u8).mean() > 3.0:
                raise R2RUserError(
                    f"a different real image is already saved as {real_p}; pass another name "
                    "(or leave name empty to name it after its content)"
                )
        else:
            self.write_real(name, real_u8)
        k = self._mask_k(name, m)
        j = 1
        while any(os.path.lexists(self.dir / "composite_images" / f"{name}_{k}_{j}{e}") for e in IMAGE_EXTS):
            j += 1
        comp_p = self.write_composite(name, k, j, comp)
        fn = self.file_name(name, k, j)
        append_pair(self.root, [fn], split)
        self.written.clear()
        return {"composite": comp_p, "mask": self.mask_path(name, k), "real": real_p, "file_name": fn}

    def _mask_k(self, name: str, m: np.ndarray) -> int:
        k = 1
        while True:
            p = self.mask_path(name, k)
            if not os.path.lexists(p):
                self.write_mask(name, k, m)
                return k
            if p.exists():
                old = read_mask(p)
                if old.shape == m.shape and np.array_equal(old >= 128, m):
                    return k
            k += 1
