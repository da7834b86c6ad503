"""The data check that runs before training: every file of every item is decoded once.

An item is bad when its real image, mask or composite cannot be read, when the composite's size
differs from the real image's, when the mask's aspect ratio differs from the image's (the loader
resizes a mask of the same aspect ratio) or when the mask has no foreground pixel (>= 128).
The checks are exactly the loader's (:meth:`training.data.HarmonizationDataset.load`), so a
dataset that passes cannot stop training unless a file changes after the check.

Results are cached in ``<output.dir>/data_check.json`` keyed by each file's path, size and
modification time, so a resumed run re-reads only files that changed.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from r2r.errors import R2RUserError

CACHE_FILE = "data_check.json"
CACHE_FORMAT = "r2r-data-check/1"


def record_key(rec) -> str:
    """Identifies an item by its files (used in caches, logs and the resume fingerprint)."""
    return "|".join(p or "" for p in (rec.real, rec.mask, rec.composite))


def _stat_key(rec) -> str | None:
    parts = []
    for p in (rec.real, rec.mask, rec.composite):
        if p is None:
            continue
        try:
            st = os.stat(p)
        except OSError:
            return None
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _missing(rec) -> str:
    gone = [p for p in (rec.real, rec.mask, rec.composite) if p is not None and not os.path.exists(p)]
    return f"file(s) of this item do not exist (any more): {', '.join(gone) or rec.real}"


def check_record(rec) -> str | None:
    """``None`` when the item loads, else what is wrong with it (one line)."""
    from r2r.fileio import read_image, read_mask

    try:
        real = read_image(rec.real)
        mask = read_mask(rec.mask)
        comp = read_image(rec.composite) if rec.composite is not None else None
    except R2RUserError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder crash on a damaged file is a bad file, reported as one
        return f"{rec.real}: cannot be read ({type(exc).__name__}: {exc})"
    h, w = real.shape[:2]
    if comp is not None and comp.shape[:2] != (h, w):
        return f"composite {rec.composite} is {comp.shape[1]}x{comp.shape[0]} but its real image {rec.real} is {w}x{h}"
    mh, mw = mask.shape[:2]
    if abs(mw / mh - w / h) > 0.01 * (w / h):
        return f"mask {rec.mask} is {mw}x{mh}, a different shape from its image {rec.real} ({w}x{h})"
    if not (mask >= 128).any():
        return f"mask {rec.mask} is empty (no pixel >= 128, so no foreground)"
    return None


def _read_cache(output_dir: str) -> dict:
    path = os.path.join(output_dir, CACHE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("items"), dict):
        return {}
    return data["items"]


def write_cache(output_dir: str, results: dict) -> None:
    from .checkpoint import atomic_write_json

    atomic_write_json(os.path.join(output_dir, CACHE_FILE), {"format": CACHE_FORMAT, "items": results})


def scan_records(records, *, output_dir: str, workers: int = 4, log=None) -> tuple[list[tuple[object, str]], dict]:
    """Check every record (threads; cached). Returns ``(bad, cache)``: ``bad`` lists ``(record, problem)``,
    ``cache`` is the new cache content (write it with :func:`write_cache` once the output folder is ready)."""
    cache = _read_cache(output_dir)
    results: dict = {}
    todo = []
    for rec in records:
        if rec.problem:
            continue
        key = _stat_key(rec)
        if key is not None and key in cache:
            results[key] = cache[key]
        else:
            todo.append((key, rec))
    if todo and log is not None and len(todo) > 200:
        log(f"checking {len(todo)} training/validation item(s) for unreadable or empty files ...")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = list(pool.map(lambda kr: check_record(kr[1]) if kr[0] is not None else _missing(kr[1]), todo))
    for (key, _rec), problem in zip(todo, problems):
        if key is not None:
            results[key] = problem
    bad = []
    for rec in records:
        if rec.problem:
            bad.append((rec, rec.problem))
            continue
        key = _stat_key(rec)
        problem = results.get(key) if key is not None else _missing(rec)
        if problem:
            bad.append((rec, problem))
    return bad, results


def bad_files_message(bad, limit: int = 20) -> str:
    lines = [f"  {problem}" for _rec, problem in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def fingerprint(records) -> dict:
    """Item count + hash of the item list: what the resume check compares for ``data.train``."""
    import hashlib

    text = "\n".join("|".join(os.path.abspath(p) if p else "" for p in (r.real, r.mask, r.composite)) for r in records)
    h = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return {"items": len(records), "sha256": h}
