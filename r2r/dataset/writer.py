"""Atomic writer for harmonization datasets in the iHarmony4 / RPHarmony layout.

Every file is written through :func:`r2r.fileio.atomic_write_bytes` (``<name>.tmp-<pid>`` in
its final folder, renamed with ``os.replace``), so a crash never leaves a truncated image. Index lines
(``train.jsonl`` + ``train.txt``, ``test.jsonl`` + ``test.txt``) are appended only after the
item's three files exist, under a lock file (``filelock``), each line in one ``write`` call; a writer
opened on an existing root first repairs the indexes (drops a half-written last line and
lines whose files are gone, makes jsonl and txt list the same names).

    w = HarmonizationDatasetWriter("data/MyHarmony", "R-Custom")
    paths = w.add(composite, mask, real, split="train")     # numpy HxWx3 uint8, HxW mask
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..errors import R2RUserError
from ..fileio import TEMP_MARKER, atomic_write_bytes, atomic_write_text, read_image, read_mask
from .layouts import IMAGE_EXTS, read_index_file, sample_from_file_name

SPLITS = ("train", "test")
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


# ----------------------------------------------------------------------------- locking


def locked(path) -> FileLock:
    """An exclusive lock on ``path`` (created if needed) across processes (``filelock``)."""
    return FileLock(str(path))


# ----------------------------------------------------------------------------- indexes


def index_line_jsonl(file_name: str) -> str:
    return json.dumps({"file_name": file_name, "text": ""}) + "\n"


def _append(path: Path, text: str) -> None:
    """Append in a single write (O_APPEND), so a line is never interleaved."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def append_index(root, file_names, split: str) -> None:
    """Append index lines (jsonl, then txt) under the root's lock; call only after the files exist."""
    if split not in SPLITS:
        raise R2RUserError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    file_names = list(file_names)
    if not file_names:
        return
    with locked(root / ".r2r-index.lock"):
        _append(root / f"{split}.jsonl", "".join(index_line_jsonl(n) for n in file_names))
        _append(root / f"{split}.txt", "".join(f"{n}\n" for n in file_names))


def _complete(root: Path, file_name: str) -> bool:
    try:
        s = sample_from_file_name(root, file_name)
    except R2RUserError:
        return False
    return s.composite.exists() and s.mask.exists() and s.real.exists()


def read_indexes(root) -> dict[str, list[str]]:
    """split -> listed file names (jsonl and txt merged, order of first appearance)."""
    root = Path(root)
    out = {}
    for split in SPLITS:
        names: dict[str, None] = {}
        for ext in (".jsonl", ".txt"):
            p = root / f"{split}{ext}"
            if p.exists():
                try:
                    for n in read_index_file(p):
                        names.setdefault(n, None)
                except R2RUserError:
                    continue
        out[split] = list(names)
    return out


def write_indexes(root, splits: dict[str, list[str]]) -> None:
    """Rewrite ``<split>.jsonl`` and ``<split>.txt`` atomically (both splits, always both files)."""
    root = Path(root)
    for split in SPLITS:
        names = splits.get(split, [])
        atomic_write_text(root / f"{split}.jsonl", "".join(index_line_jsonl(n) for n in names))
        atomic_write_text(root / f"{split}.txt", "".join(f"{n}\n" for n in names))


def rebuild_indexes(root, extra: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Deterministic rebuild: (listed names whose files exist) + ``extra``, sorted, deduplicated;
    a name listed in both splits stays in ``test`` (no train/test leak). Returns counts."""
    root = Path(root)
    with locked(root / ".r2r-index.lock"):
        listed = read_indexes(root)
        merged = {}
        for split in SPLITS:
            names = set(n for n in listed.get(split, []) if _complete(root, n))
            names.update((extra or {}).get(split, []))
            merged[split] = names
        merged["train"] -= merged["test"]
        final = {s: sorted(merged[s]) for s in SPLITS}
        write_indexes(root, final)
    return {s: len(v) for s, v in final.items()}


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
    official datasets) or "png" (lossless). Masks are always PNG (0/255).
    Safe to use repeatedly and from several processes on the same root.
    """

    def __init__(self, root, subset: str, *, image_format: str = "jpg", jpeg_quality: int = 100, repair=True):
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
        try:
            for d in SUBDIRS:
                (self.dir / d).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise R2RUserError(f"cannot create the dataset folders under {self.dir} ({exc}); check the path") from exc
        self._lock_path = self.root / ".r2r-index.lock"
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
    def write_real(self, name: str, real) -> Path:
        return atomic_write_bytes(self.real_path(name), encode_dataset_image(real, self.ext, self.jpeg_quality))

    def write_mask(self, name: str, k: int, mask_bool: np.ndarray) -> Path:
        m = np.where(mask_bool, 255, 0).astype(np.uint8)
        return atomic_write_bytes(self.mask_path(name, k), encode_dataset_image(m, ".png"))

    def write_composite(self, name: str, k: int, j: int, composite) -> Path:
        data = encode_dataset_image(composite, self.ext, self.jpeg_quality)
        return atomic_write_bytes(self.composite_path(name, k, j), data)

    def append_index(self, file_names, split: str) -> None:
        """Append lines for items whose files already exist (jsonl, then txt)."""
        append_index(self.root, file_names, split)

    def repair(self) -> bool:
        """Make the indexes consistent if they are not (partial line, missing files, jsonl != txt).
        Returns True when something was rewritten."""
        with locked(self._lock_path):
            dirty = False
            for split in SPLITS:
                per = {}
                for ext in (".jsonl", ".txt"):
                    p = self.root / f"{split}{ext}"
                    if not p.exists():
                        per[ext] = None
                        continue
                    raw = p.read_bytes()
                    if raw and not raw.endswith(b"\n"):
                        dirty = True
                    try:
                        per[ext] = read_index_file(p)
                    except R2RUserError:
                        dirty, per[ext] = True, []
                if per[".jsonl"] != per[".txt"]:
                    dirty = True
                for listed in per.values():
                    if listed and len(set(listed)) != len(listed):
                        dirty = True  # an item redone after a crash was listed twice
                names = list(dict.fromkeys((per[".jsonl"] or []) + (per[".txt"] or [])))
                if any(not _complete(self.root, n) for n in names):
                    dirty = True
            if not dirty:
                return False
            listed = read_indexes(self.root)
            fixed = {s: [n for n in listed[s] if _complete(self.root, n)] for s in SPLITS}
            write_indexes(self.root, fixed)
            return True

    # the public API ------------------------------------------------------------
    def add(self, composite, mask, real, name: str | None = None, split: str = "train") -> dict:
        """Save one triplet and list it in ``<split>.jsonl``/``.txt``.

        ``composite``/``real``: HxWx3 uint8 RGB (or float in [0, 1]); ``mask``: HxW (bool,
        uint8 0/255 or float, foreground = 1). ``name``: the real image's name (files
        ``<name>.jpg``, ``<name>_<k>.png``, ``<name>_<k>_<j>.jpg``); ``None`` names it after
        the real image's content. A new mask of the same real gets the next ``k``, a new
        composite the next ``j``. Returns ``{"composite", "mask", "real", "file_name"}``.
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
            while any(
                (self.dir / "composite_images" / f"{name}_{k}_{j}{e}").exists() for e in IMAGE_EXTS
            ):
                j += 1
            comp_p = self.write_composite(name, k, j, comp)
            fn = self.file_name(name, k, j)
            _append(self.root / f"{split}.jsonl", index_line_jsonl(fn))
            _append(self.root / f"{split}.txt", f"{fn}\n")
        return {"composite": comp_p, "mask": self.mask_path(name, k), "real": real_p, "file_name": fn}

    def _mask_k(self, name: str, m: np.ndarray) -> int:
        k = 1
        while True:
            p = self.mask_path(name, k)
            if not p.exists():
                self.write_mask(name, k, m)
                return k
            old = read_mask(p)
            if old.shape == m.shape and np.array_equal(old >= 128, m):
                return k
            k += 1
