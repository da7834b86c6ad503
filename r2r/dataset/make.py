"""The ``make-dataset`` run: image+mask sources -> Random-Poisson-Blending composites in the
RPHarmony/iHarmony4 layout, with worker processes, deterministic sharding, resume and a
manifest.

Determinism: everything about an item (its output name, split, the seeds of its
composites) is derived from the global seed and the item's key (the image path relative to
the image folder), never from worker order or the shard, so ``--shard 0/2`` + ``--shard 1/2``
writes byte-identical files to a single run.

Bookkeeping lives in ``<out>/_records/<subset>/``: ``params.json`` (the settings a resume
must match), ``items/<name>.json`` (one per finished image: its composites and their
diagnostics; written after the image's files and index lines exist, so an image without a
record is redone on resume) and ``errors/<name>.json`` (images that failed). At the end the
indexes are rebuilt (sorted) from the records and ``<out>/manifest-<subset>.json`` is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import numpy as np

from ..errors import R2RUserError
from .layouts import SourceItem, find_sources
from .writer import (
    HarmonizationDatasetWriter,
    append_index,
    atomic_write_text,
    cleanup_temp_files,
    read_image_rgb,
    read_mask_array,
    rebuild_indexes,
    safe_name,
)

DEFAULT_GENERATOR = "r2r.blending:random_poisson_blend"


@dataclass
class MakeConfig:
    """Settings of a make-dataset run (everything that changes the output is in ``params()``)."""

    out: Path
    images: Path | None = None
    masks: Path | None = None
    subset: str = "R-Custom"
    per_image: int = 1
    seed: int = 0
    alpha: tuple[float, float] | None = None  # None: the generator's default
    test_fraction: float = 0.1
    min_fmse: float | None = None
    max_fmse: float | None = None
    min_color_shift: float | None = None
    max_tries: int = 5
    max_side: int | None = None
    image_format: str = "jpg"
    jpeg_quality: int = 100
    mask_type: str = "binary"  # "binary" or "labels"
    masks_per_image: int = 1  # label maps: how many regions per image
    label_min_area: float = 0.01
    label_max_area: float = 0.8
    name_prefix: str = "auto"
    reference: str = "self"  # "self": another region of the same image; "other": another source image
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    keep_going: bool = True
    progress: bool = True
    generator: object = DEFAULT_GENERATOR  # "module:function" or a picklable callable
    generator_kwargs: dict = field(default_factory=dict)

    def resolved_prefix(self) -> str:
        if self.name_prefix != "auto":
            return self.name_prefix
        low = self.subset.lower()
        # the official evaluation assigns names starting with "rd" to R-DUTS and other "r..." to R-ADE20K
        if "duts" in low:
            return "rd-"
        if "ade" in low:
            return "r-"
        return ""

    def generator_spec(self) -> str:
        g = self.generator
        if isinstance(g, str):
            return g
        return f"{getattr(g, '__module__', '?')}:{getattr(g, '__qualname__', repr(g))}"

    def params(self) -> dict:
        """The settings that determine the output files (a resume must use the same)."""
        return {
            "subset": self.subset,
            "per_image": self.per_image,
            "seed": self.seed,
            "alpha": list(self.alpha) if self.alpha is not None else None,
            "test_fraction": self.test_fraction,
            "filter": {
                "min_fmse": self.min_fmse,
                "max_fmse": self.max_fmse,
                "min_color_shift": self.min_color_shift,
                "max_tries": self.max_tries,
            },
            "max_side": self.max_side,
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality,
            "mask_type": self.mask_type,
            "masks_per_image": self.masks_per_image,
            "label_min_area": self.label_min_area,
            "label_max_area": self.label_max_area,
            "name_prefix": self.resolved_prefix(),
            "reference": self.reference,
            "generator": self.generator_spec(),
            "generator_kwargs": _jsonable(self.generator_kwargs),
        }


@dataclass
class MakeReport:
    out: Path
    subset: str
    total: int = 0  # items (images) in this shard
    skipped: int = 0  # already finished (resume)
    done: int = 0  # finished in this run
    composites: int = 0  # written in this run
    rejected: int = 0  # composites that never passed the filter (this run)
    errors: list = field(default_factory=list)  # [{"key", "image", "error"}] (this run)
    seconds: float = 0.0
    manifest: Path | None = None
    index_counts: dict = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        lines = [
            f"make-dataset {self.subset}: {self.total} image(s) in this shard, {self.skipped} already done, "
            f"{self.done} done now, {self.failed} failed; {self.composites} composite(s) written, "
            f"{self.rejected} rejected by the filter, in {self.seconds:.1f} s",
            f"indexes: train {self.index_counts.get('train', 0)}, test {self.index_counts.get('test', 0)} "
            f"composites; manifest: {self.manifest}",
        ]
        if self.errors:
            lines.append(f"{self.failed} image(s) failed (fix them and run the same command again to resume):")
            for e in self.errors[:50]:
                lines.append(f"  {e['image']}: {e['error']}")
            if self.failed > 50:
                lines.append(f"  ... and {self.failed - 50} more (all listed in {self.manifest})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- determinism


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the global seed and an item's identity (stable across processes)."""
    text = "|".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") / 2**64


def shard_of(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(f"shard|{key}".encode()).digest()[:8], "little") % n


def split_of(key: str, test_fraction: float) -> str:
    """Split by the source image (all composites of one real image share a split)."""
    return "test" if _unit_hash(f"split|{key}") < test_fraction else "train"


def assign_names(keys, prefix: str) -> dict[str, str]:
    """key -> output name (no '_' so the naming rule holds); colliding names get a key hash."""
    base = {k: safe_name(prefix + k) for k in keys}
    counts: dict[str, int] = {}
    for n in base.values():
        counts[n] = counts.get(n, 0) + 1
    return {
        k: (n if counts[n] == 1 else f"{n}-{hashlib.sha1(k.encode()).hexdigest()[:6]}") for k, n in base.items()
    }


# ----------------------------------------------------------------------------- helpers


def _jsonable(obj, depth=0):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), depth + 1) if obj.size <= 16 else f"<array {tuple(obj.shape)}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)


def composite_diagnostics(composite: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict:
    """fMSE (0..255 scale, as the evaluation computes it) and colour shifts of the foreground."""
    import cv2

    m = mask.astype(bool)
    c = composite[m].astype(np.float64)  # index first: only the foreground is converted
    r = real[m].astype(np.float64)
    fmse = float(((c - r) ** 2).mean()) if c.size else 0.0
    mean_c, mean_r = c.mean(0), r.mean(0)
    lab_c = cv2.cvtColor((mean_c / 255.0).astype(np.float32).reshape(1, 1, 3), cv2.COLOR_RGB2Lab).reshape(3)
    lab_r = cv2.cvtColor((mean_r / 255.0).astype(np.float32).reshape(1, 1, 3), cv2.COLOR_RGB2Lab).reshape(3)
    return {
        "fmse": round(fmse, 4),
        "color_shift_rgb": round(float(np.linalg.norm(mean_c - mean_r)), 4),
        "color_shift_lab": round(float(np.linalg.norm(lab_c - lab_r)), 4),
        "fg_ratio": round(float(m.mean()), 6),
    }


def _passes(diag: dict, cfg: dict) -> str | None:
    f = cfg["filter"]
    if f["min_fmse"] is not None and diag["fmse"] < f["min_fmse"]:
        return f"fMSE {diag['fmse']:.2f} < --min-fmse {f['min_fmse']}"
    if f["max_fmse"] is not None and diag["fmse"] > f["max_fmse"]:
        return f"fMSE {diag['fmse']:.2f} > --max-fmse {f['max_fmse']}"
    if f["min_color_shift"] is not None and diag["color_shift_lab"] < f["min_color_shift"]:
        return f"colour shift {diag['color_shift_lab']:.2f} < --min-color-shift {f['min_color_shift']}"
    return None


def _resolve_generator(spec):
    if callable(spec):
        return spec
    mod, _, attr = str(spec).partition(":")
    try:
        obj = import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise R2RUserError(
            f"cannot load the composite generator {spec!r} ({exc}); expected 'module:function'"
        ) from exc
    return obj


def _load_masks(unit: dict, cfg: dict, size_hw: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
    """[(k, HxW bool at the image's original size)] for a unit; R2RUserError on bad masks."""
    h, w = size_hw
    out = []
    for k, path in unit["masks"]:
        arr = read_mask_array(path, labels=cfg["mask_type"] == "labels")
        if arr.shape[:2] != (h, w):
            raise R2RUserError(
                f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but image {unit['image']} is {w}x{h} (width x "
                "height); masks must have exactly the image's size"
            )
        if cfg["mask_type"] == "labels":
            labels, counts = np.unique(arr, return_counts=True)
            frac = counts / arr.size
            keep = [
                (-c, int(lab))
                for lab, c, f in zip(labels, counts, frac)
                if lab != 0 and cfg["label_min_area"] <= f <= cfg["label_max_area"]
            ]
            keep.sort()
            if not keep:
                raise R2RUserError(
                    f"label map {path} has no region covering {cfg['label_min_area']:.1%}..{cfg['label_max_area']:.1%}"
                    " of the image; lower --label-min-area / raise --label-max-area or drop the image"
                )
            for idx, (_, lab) in enumerate(keep[: cfg["masks_per_image"]], 1):
                out.append((idx, arr == lab))
        else:
            m = arr >= 128 if arr.dtype == np.uint8 else arr > 0
            if not m.any():
                raise R2RUserError(
                    f"mask {path} is empty (no pixel >= 128); the foreground must be white on black"
                )
            if m.all():
                raise R2RUserError(f"mask {path} covers the whole image; a composite needs some background")
            out.append((int(k), m))
    return out


def _load_reference(path: str, cache: dict, hw) -> np.ndarray:
    if path not in cache:
        try:
            cache[path] = read_image_rgb(path)
        except R2RUserError as exc:
            raise R2RUserError(f"the reference image for this item is unreadable: {exc}") from exc
    return cache[path]


def process_unit(unit: dict, cfg: dict, generator=None) -> dict:
    """Make every composite of one source image (runs in a worker). Never raises for bad
    inputs: returns ``{"status": "error", "error": message}`` instead."""
    import cv2

    res = {"key": unit["key"], "name": unit["name"], "image": unit["image"], "split": unit["split"]}
    try:
        gen = generator or _resolve_generator(cfg["generator"])
        real = read_image_rgb(unit["image"])
        h, w = real.shape[:2]
        masks = _load_masks(unit, cfg, (h, w))
        if cfg["max_side"] and max(h, w) > cfg["max_side"]:
            s = cfg["max_side"] / max(h, w)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            real = cv2.resize(real, (nw, nh), interpolation=cv2.INTER_AREA)
            masks = [(k, cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0) for k, m in masks]
            masks = [(k, m) for k, m in masks if m.any() and not m.all()]
            if not masks:
                raise R2RUserError(
                    f"the mask(s) of {unit['image']} vanish when the image is downscaled to --max-side "
                    f"{cfg['max_side']}; raise --max-side"
                )
        writer = HarmonizationDatasetWriter(
            cfg["out"], cfg["subset"], image_format=cfg["image_format"], jpeg_quality=cfg["jpeg_quality"], repair=False
        )
        composites, rejected = [], []
        refs_cache: dict = {}
        real_written = False
        for k, m in masks:
            mask_written = None
            for j in range(1, cfg["per_image"] + 1):
                reason = None
                for t in range(cfg["filter"]["max_tries"]):
                    seed = derive_seed(cfg["seed"], unit["key"], k, j, t)
                    kwargs = dict(cfg["generator_kwargs"])
                    if cfg["alpha"] is not None:
                        kwargs["alpha"] = tuple(cfg["alpha"])
                    ref_path = unit.get("refs", {}).get(str(j))
                    if ref_path is not None:
                        kwargs["reference"] = _load_reference(ref_path, refs_cache, real.shape[:2])
                    out = gen(real, m, seed=seed, **kwargs)
                    comp = np.asarray(getattr(out, "composite", out))
                    out_mask = getattr(out, "mask", None)
                    used_mask = m if out_mask is None else np.asarray(out_mask).astype(bool)
                    if comp.shape != real.shape or comp.dtype != np.uint8 or used_mask.shape != m.shape:
                        raise RuntimeError(
                            f"the generator returned a composite {comp.shape} {comp.dtype} / mask {used_mask.shape} "
                            f"for an image {real.shape}; expected HxWx3 uint8 of the same size"
                        )
                    diag = composite_diagnostics(comp, real, used_mask)
                    reason = _passes(diag, cfg)
                    if reason is None:
                        break
                if reason is not None:
                    rejected.append({"k": k, "j": j, "tries": cfg["filter"]["max_tries"], "reason": reason})
                    continue
                if not real_written:
                    writer.write_real(unit["name"], real)
                    real_written = True
                if mask_written is None:
                    writer.write_mask(unit["name"], k, used_mask)
                    mask_written = used_mask
                elif not np.array_equal(mask_written, used_mask):
                    raise RuntimeError(
                        f"the generator changed the mask between composites of {unit['image']} (mask {k}); "
                        "all composites of one mask must share it"
                    )
                writer.write_composite(unit["name"], k, j, comp)
                gd = getattr(out, "diagnostics", None) or {}
                composites.append(
                    {
                        "file_name": writer.file_name(unit["name"], k, j),
                        "k": k,
                        "j": j,
                        "seed": seed,
                        "tries": t + 1,
                        **diag,
                        "generator": _jsonable(gd),
                    }
                )
        res.update(status="ok", composites=composites, rejected=rejected)
    except R2RUserError as exc:
        res.update(status="error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop a long run; it is reported
        res.update(status="error", error=f"unexpected {type(exc).__name__}: {exc} (please report this as a bug)")
    return res


def _worker_init():
    """One thread per worker process (the processes are the parallelism)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 - only a speed setting
        pass
    try:
        from ..blending import poisson

        poisson.set_num_threads(1)
    except (ImportError, AttributeError):
        pass


# ----------------------------------------------------------------------------- the run


def _validate(cfg: MakeConfig) -> None:
    def bad(msg):
        raise R2RUserError(msg)

    if cfg.per_image < 1:
        bad(f"--per-image must be >= 1, got {cfg.per_image}")
    if cfg.alpha is not None:
        lo, hi = cfg.alpha
        if not (0.0 <= lo <= hi <= 1.0):
            bad(f"--alpha LO HI must satisfy 0 <= LO <= HI <= 1, got {lo} {hi}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        bad(f"--test-fraction must be in [0, 1], got {cfg.test_fraction}")
    i, n = cfg.shard
    if n < 1 or not 0 <= i < n:
        bad(f"--shard i/n needs 0 <= i < n, got {i}/{n}; e.g. --shard 0/4 ... --shard 3/4")
    if cfg.max_tries < 1:
        bad(f"--max-tries must be >= 1, got {cfg.max_tries}")
    if cfg.mask_type not in ("binary", "labels"):
        bad(f"--mask-type must be 'binary' or 'labels', got {cfg.mask_type!r}")
    if cfg.max_side is not None and cfg.max_side < 64:
        bad(f"--max-side must be >= 64, got {cfg.max_side}")
    if cfg.min_fmse is not None and cfg.max_fmse is not None and cfg.min_fmse > cfg.max_fmse:
        bad(f"--min-fmse {cfg.min_fmse} is larger than --max-fmse {cfg.max_fmse}")
    if cfg.reference not in ("self", "other"):
        bad(f"--reference must be 'self' or 'other', got {cfg.reference!r}")
    if cfg.masks_per_image < 1:
        bad(f"--masks-per-image must be >= 1, got {cfg.masks_per_image}")
    if cfg.images is None or cfg.masks is None:
        bad("pass the source folders with --images DIR --masks DIR (or --source DIR with a known layout)")
    out = Path(cfg.out).resolve()
    for d in (cfg.images, cfg.masks):
        d = Path(d).resolve()
        if out == d or d in out.parents:
            bad(
                f"--out {cfg.out} is inside the source folder {d}; the generated images would be read as sources "
                "on the next run. Choose an output folder outside it"
            )


def _pick_references(key: str, usable: list, cfg: MakeConfig) -> dict:
    """composite index j -> path of another usable source image (derived from seed and key)."""
    if len(usable) < 2:
        return {}
    out = {}
    for j in range(1, cfg.per_image + 1):
        idx = derive_seed(cfg.seed, key, "reference", j) % len(usable)
        if usable[idx].key == key:
            idx = (idx + 1) % len(usable)
        out[str(j)] = str(usable[idx].image)
    return out


def _records_dir(out: Path, subset: str) -> Path:
    return out / "_records" / subset


def _check_params(rec_dir: Path, params: dict) -> None:
    p = rec_dir / "params.json"
    if p.exists():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old is not None and old != params:
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise R2RUserError(
                f"{rec_dir.parent.parent} already holds subset {params['subset']!r} made with other settings "
                f"(different: {', '.join(diff)}). Resume with the same settings, or use a new --out folder or "
                "--subset name"
            )
    else:
        rec_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(params, indent=1, sort_keys=True) + "\n")


def _all_records(out: Path) -> dict[str, list[str]]:
    """split -> composite file names of every finished item of every subset under ``out``."""
    splits = {"train": [], "test": []}
    for p in sorted((out / "_records").glob("*/items/*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            continue  # never happens with atomic writes; tolerate hand-edited files
        splits.setdefault(rec["split"], []).extend(c["file_name"] for c in rec["composites"])
    return splits


def _versions() -> dict:
    import cv2

    from .. import __version__

    return {
        "r2r": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
    }


def write_manifest(cfg: MakeConfig, report: MakeReport, n_sources: int) -> Path:
    out = Path(cfg.out)
    rec_dir = _records_dir(out, cfg.subset)
    items, errors = [], []
    for p in sorted((rec_dir / "items").glob("*.json")):
        items.append(json.loads(p.read_text(encoding="utf-8")))
    for p in sorted((rec_dir / "errors").glob("*.json")):
        errors.append(json.loads(p.read_text(encoding="utf-8")))
    comps = [c for it in items for c in it["composites"]]
    fm = np.array([c["fmse"] for c in comps], dtype=np.float64)
    cs = np.array([c["color_shift_lab"] for c in comps], dtype=np.float64)

    def stats(a):
        if a.size == 0:
            return None
        return {k: round(float(f(a)), 4) for k, f in (("mean", np.mean), ("median", np.median), ("min", np.min), ("max", np.max))}

    params = cfg.params()
    manifest = {
        "tool": "python -m r2r make-dataset",
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "parameters": params,
        "filter": params["filter"],
        "seed": cfg.seed,
        "seed_rule": "sha256(seed|key|k|j|try) -> 63-bit seed per composite; key = image path relative to --images",
        "sources": {"images": str(cfg.images), "masks": str(cfg.masks), "count": n_sources},
        "last_run": {
            "shard": f"{cfg.shard[0]}/{cfg.shard[1]}",
            "workers": cfg.workers,
            "seconds": round(report.seconds, 2),
            "done": report.done,
            "skipped": report.skipped,
            "failed": report.failed,
        },
        "counts": {
            "images_done": len(items),
            "images_failed": len(errors),
            "composites": len(comps),
            "train": sum(len(it["composites"]) for it in items if it["split"] == "train"),
            "test": sum(len(it["composites"]) for it in items if it["split"] == "test"),
            "rejected": sum(len(it["rejected"]) for it in items),
        },
        "stats": {"fmse": stats(fm), "color_shift_lab": stats(cs)},
        "errors": errors,
        "items": items,
    }
    path = out / f"manifest-{cfg.subset}.json"
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def make_dataset(cfg: MakeConfig) -> MakeReport:
    """Run the generator over ``cfg.images``/``cfg.masks`` into ``cfg.out``; see the module doc."""
    t0 = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise R2RUserError(f"cannot create the output folder {out} ({exc})") from exc
    sources: list[SourceItem] = find_sources(cfg.images, cfg.masks)
    names = assign_names([s.key for s in sources], cfg.resolved_prefix())
    i, n = cfg.shard
    mine = [s for s in sources if shard_of(s.key, n) == i]
    params = cfg.params()
    rec_dir = _records_dir(out, cfg.subset)
    _check_params(rec_dir, params)
    (rec_dir / "items").mkdir(parents=True, exist_ok=True)
    (rec_dir / "errors").mkdir(parents=True, exist_ok=True)
    # make the subset folders (and repair indexes left by an interrupted run)
    HarmonizationDatasetWriter(out, cfg.subset, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality)
    cleanup_temp_files(out / cfg.subset)
    gen = None if isinstance(cfg.generator, str) else cfg.generator
    if gen is None:
        _resolve_generator(cfg.generator)  # fail early with a clear message

    report = MakeReport(out=out, subset=cfg.subset, total=len(mine))
    wcfg = dict(params, out=str(out))
    todo = []
    usable = [s for s in sources if not s.problem]
    for s in mine:
        name = names[s.key]
        if (rec_dir / "items" / f"{name}.json").exists():
            report.skipped += 1
            continue
        unit = {
            "key": s.key,
            "name": name,
            "image": str(s.image),
            "masks": [(m.k, str(m.path)) for m in s.masks],
            "split": split_of(s.key, cfg.test_fraction),
            "problem": s.problem,
        }
        if cfg.reference == "other":
            unit["refs"] = _pick_references(s.key, usable, cfg)
        todo.append(unit)

    def finish(res: dict) -> None:
        name = res["name"]
        err_path = rec_dir / "errors" / f"{name}.json"
        if res["status"] != "ok":
            entry = {"key": res["key"], "image": res["image"], "error": res["error"]}
            report.errors.append(entry)
            atomic_write_text(err_path, json.dumps(entry, indent=1) + "\n")
            return
        comps = res["composites"]
        append_index(out, [c["file_name"] for c in comps], res["split"])
        rec = {k: res[k] for k in ("key", "name", "split", "composites", "rejected")}
        atomic_write_text(rec_dir / "items" / f"{name}.json", json.dumps(rec, indent=1) + "\n")
        if err_path.exists():
            err_path.unlink()
        report.done += 1
        report.composites += len(comps)
        report.rejected += len(res["rejected"])

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"make-dataset {cfg.subset}", unit="img", disable=not cfg.progress, file=sys.stderr)
    ready = [u for u in todo if not u["problem"]]
    stopped = False
    for u in todo:
        if u["problem"]:
            finish({**u, "status": "error", "error": u["problem"]})
            bar.update(1)
            stopped = stopped or not cfg.keep_going
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    try:
        if stopped:
            pass
        elif workers == 1 or len(ready) <= 1:
            for u in ready:
                res = process_unit(u, wcfg, gen)
                finish(res)
                bar.update(1)
                if res["status"] != "ok" and not cfg.keep_going:
                    stopped = True
                    break
        else:
            stopped = _run_pool(ready, wcfg, cfg, workers, finish, bar)
    finally:
        bar.close()
        report.index_counts = rebuild_indexes(out, _all_records(out))
        report.seconds = time.perf_counter() - t0
        report.manifest = write_manifest(cfg, report, len(sources))
    if stopped:
        report.errors[-1]["error"] += " (stopped here: --stop-on-error)"
    return report


def _run_pool(ready, wcfg, cfg, workers, finish, bar) -> bool:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    gen = cfg.generator  # a string spec or a picklable callable
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    pending = set()
    it = iter(ready)
    stopped = False
    try:
        for u in it:
            pending.add(pool.submit(process_unit, u, wcfg, None if isinstance(gen, str) else gen))
            if len(pending) >= workers * 3:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                res = fut.result()
                finish(res)
                bar.update(1)
                if res["status"] != "ok" and not cfg.keep_going:
                    stopped = True
            if stopped:
                for f in pending:
                    f.cancel()
                for f in pending:
                    if not f.cancelled():
                        finish(f.result())
                        bar.update(1)
                break
            for u in it:
                pending.add(pool.submit(process_unit, u, wcfg, None if isinstance(gen, str) else gen))
                if len(pending) >= workers * 3:
                    break
    except BrokenProcessPool as exc:
        raise R2RUserError(
            "a make-dataset worker process died (out of memory, killed, or started from a script without an "
            "`if __name__ == '__main__':` guard, which worker processes need). Run with --workers 1 to see the "
            "failing image, lower --workers, or guard the script's entry point"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stopped


__all__ = ["MakeConfig", "MakeReport", "make_dataset", "process_unit", "derive_seed", "shard_of", "split_of"]
