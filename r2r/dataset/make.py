"""The ``make-dataset`` run: image+mask sources -> Random-Poisson-Blending composites in the
RPHarmony/iHarmony4 layout, with worker processes, deterministic sharding, resume and a
manifest.

The pieces: :mod:`.config` (settings and their checks, the typed records workers receive),
:mod:`.generator` (loading and up-front checking of the composite generator), :mod:`.naming`
(names, splits, shards and seeds from the item's key), :mod:`.composites` (one image's work),
:mod:`.pool` (worker processes that die with their parent), :mod:`.records` (resume records
and the manifest). This module runs them in order:

1. check every setting and path, load the generator and try it on a synthetic image -- all
   before any file is written, so a wrong setting never leaves a half-made folder behind;
2. record the settings (``_records/<subset>/params.json``; a resume must match them);
3. make the composites of every image without a record, in this process or in workers;
4. rebuild the indexes from the records and write ``manifest-<subset>.json``.

Determinism: everything about an item is derived from the global seed and the item's key
(see :mod:`.naming`), so ``--shard 0/2`` + ``--shard 1/2`` writes byte-identical files to a
single run, with any number of workers.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from ..fileio import check_writable_dir
from .composites import process_unit
from .config import MakeConfig, WorkerSettings, WorkUnit, validate_config
from .generator import check_generator, resolve_generator
from .layouts import SourceItem, find_sources
from .naming import assign_names, pick_references, shard_of, split_of
from .pool import run_pool
from .records import MakeReport, all_records, check_params, records_dir, write_manifest, write_record
from .writer import HarmonizationDatasetWriter, append_index, cleanup_temp_files, rebuild_indexes


def _units(cfg: MakeConfig, sources: list[SourceItem], rec_dir: Path, report: MakeReport) -> list[WorkUnit]:
    """The work units of this shard that have no record yet (counting the others as skipped)."""
    names = assign_names([s.key for s in sources], cfg.resolved_prefix())
    i, n = cfg.shard
    usable = [s for s in sources if not s.problem]
    todo = []
    for s in sources:
        if shard_of(s.key, n) != i:
            continue
        report.total += 1
        name = names[s.key]
        if (rec_dir / "items" / f"{name}.json").exists():
            report.skipped += 1
            continue
        todo.append(WorkUnit(
            key=s.key, name=name, image=str(s.image), masks=tuple((m.k, str(m.path)) for m in s.masks),
            split=split_of(s.key, cfg.test_fraction), problem=s.problem,
            references=pick_references(s.key, usable, cfg.seed, cfg.per_image) if cfg.reference == "other" else (),
        ))
    return todo


def _prepare(cfg: MakeConfig):
    """Everything that can fail on the user's input, before any file is written:
    ``(sources, generator or None, out)``."""
    validate_config(cfg)
    sources = find_sources(cfg.images, cfg.masks)
    gen = resolve_generator(cfg.generator)
    check_generator(gen, cfg.generator_spec(), WorkerSettings.from_config(cfg, Path(cfg.out)).generator_call_kwargs(),
                    with_reference=cfg.reference == "other")
    out = check_writable_dir(cfg.out, what="output folder (--out)")
    return sources, (None if isinstance(cfg.generator, str) else gen), out


def make_dataset(cfg: MakeConfig) -> MakeReport:
    """Run the generator over ``cfg.images``/``cfg.masks`` into ``cfg.out``; see the module doc."""
    t0 = time.perf_counter()
    sources, gen, out = _prepare(cfg)
    rec_dir = records_dir(out, cfg.subset)
    check_params(rec_dir, cfg.params())
    (rec_dir / "items").mkdir(parents=True, exist_ok=True)
    (rec_dir / "errors").mkdir(parents=True, exist_ok=True)
    # make the subset folders (and repair indexes left by an interrupted run)
    HarmonizationDatasetWriter(out, cfg.subset, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality)
    cleanup_temp_files(out / cfg.subset)

    report = MakeReport(out=out, subset=cfg.subset)
    todo = _units(cfg, sources, rec_dir, report)
    ws = WorkerSettings.from_config(cfg, out)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"make-dataset {cfg.subset}", unit="img", disable=not cfg.progress,
               file=sys.stderr)

    def finish(res: dict) -> None:
        name = res["name"]
        err_path = rec_dir / "errors" / f"{name}.json"
        bar.update(1)
        if res["status"] != "ok":
            entry = {"key": res["key"], "image": res["image"], "error": res["error"]}
            report.errors.append(entry)
            write_record(err_path, entry)
            return
        comps = res["composites"]
        append_index(out, [c["file_name"] for c in comps], res["split"])
        write_record(rec_dir / "items" / f"{name}.json", {k: res[k] for k in ("key", "name", "split", "composites",
                                                                              "rejected")})
        if err_path.exists():
            err_path.unlink()
        report.done += 1
        report.composites += len(comps)
        report.rejected += len(res["rejected"])

    ready = [u for u in todo if not u.problem]
    stopped = False
    for u in todo:
        if u.problem:
            finish({"key": u.key, "name": u.name, "image": u.image, "status": "error", "error": u.problem})
            stopped = stopped or not cfg.keep_going
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    work = functools.partial(process_unit, ws=ws, generator=gen)
    try:
        if stopped:
            pass
        elif workers == 1 or len(ready) <= 1:
            for u in ready:
                res = work(u)
                finish(res)
                if res["status"] != "ok" and not cfg.keep_going:
                    stopped = True
                    break
        else:
            stopped = run_pool(ready, work, workers, finish, cfg.keep_going)
    finally:
        bar.close()
        report.index_counts = rebuild_indexes(out, all_records(out))
        report.seconds = time.perf_counter() - t0
        report.manifest = write_manifest(cfg, report, len(sources))
    if stopped:
        report.errors[-1]["error"] += " (stopped here: --stop-on-error)"
    return report


__all__ = ["MakeConfig", "MakeReport", "make_dataset"]
