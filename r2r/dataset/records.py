"""Bookkeeping of ``make-dataset`` under ``<out>/_records/<subset>/`` and the manifest.

``params.json`` holds the settings a resume must match; ``items/<name>.json`` one record per
finished image (its composites and their diagnostics; written after the image's files and index
lines exist, so an image without a record is redone on resume); ``errors/<name>.json`` the
images that failed. ``<out>/manifest-<subset>.json`` summarises all of it after every run.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import R2RUserError
from ..fileio import atomic_write_text
from ..own_outputs import REPORT_KEY, is_own_report, report_marker


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


#: who wrote a manifest (``written_by`` / ``tool``): a later run replaces only a manifest it wrote
MANIFEST_TOOL = "python -m r2r make-dataset"


def is_own_manifest(path) -> bool:
    """``path`` is a manifest make-dataset wrote (also one from before ``written_by`` existed: ``tool``)."""
    return is_own_report(path, MANIFEST_TOOL, keys=(REPORT_KEY, "tool"))


def records_dir(out: Path, subset: str) -> Path:
    return Path(out) / "_records" / subset


def _differences(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_params(rec_dir: Path, params: dict) -> None:
    """Refuse to resume a subset made with other settings; record the settings of a new one.

    A subset without any finished image (e.g. a start that failed) takes the new settings, so a
    corrected command can run into the same folder."""
    p = rec_dir / "params.json"
    old = None
    if p.exists():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            old = None
    if isinstance(old, dict) and "min_color_shift" in (old.get("filter") or {}):
        # folders made before the option was renamed --min-color-shift-lab (same meaning: Lab Delta E)
        old["filter"]["min_color_shift_lab"] = old["filter"].pop("min_color_shift")
    if old == params:
        return
    if old is not None and any((rec_dir / "items").glob("*.json")):
        raise R2RUserError(
            f"{rec_dir.parent.parent} already holds subset {params['subset']!r} made with other settings "
            f"(different: {', '.join(_differences(old, params))}). Resume with the same settings, or use a new "
            "--out folder or --subset name"
        )
    if (rec_dir / "errors").is_dir():
        shutil.rmtree(rec_dir / "errors")  # errors of the abandoned settings
    rec_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(params, indent=1, sort_keys=True) + "\n")


def read_records(folder: Path) -> list[dict]:
    """The JSON records in ``folder`` (sorted by file name); unreadable ones are skipped."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except ValueError:
            continue  # never happens with atomic writes; tolerate hand-edited files
    return out


def all_records(out: Path) -> dict[str, list[str]]:
    """split -> composite file names of every finished item of every subset under ``out``."""
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for sub in sorted((Path(out) / "_records").glob("*/items")):
        for rec in read_records(sub):
            splits.setdefault(rec["split"], []).extend(c["file_name"] for c in rec["composites"])
    return splits


def write_record(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


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


def _stats(a: np.ndarray):
    if a.size == 0:
        return None
    return {k: round(float(f(a)), 4) for k, f in (("mean", np.mean), ("median", np.median), ("min", np.min),
                                                   ("max", np.max))}


def write_manifest(cfg, report: MakeReport, n_sources: int) -> Path:
    """``<out>/manifest-<subset>.json`` from the records of ``cfg`` (a MakeConfig) and this run."""
    out = Path(cfg.out)
    rec_dir = records_dir(out, cfg.subset)
    items = read_records(rec_dir / "items")
    errors = read_records(rec_dir / "errors")
    comps = [c for it in items for c in it["composites"]]
    params = cfg.params()
    manifest = {
        **report_marker(MANIFEST_TOOL),
        "tool": MANIFEST_TOOL,
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
        "stats": {
            "fmse": _stats(np.array([c["fmse"] for c in comps], dtype=np.float64)),
            "color_shift_lab": _stats(np.array([c["color_shift_lab"] for c in comps], dtype=np.float64)),
        },
        "errors": errors,
        "items": items,
    }
    path = out / f"manifest-{cfg.subset}.json"
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path
