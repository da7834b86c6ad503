"""The ``make-dataset`` run: image+mask sources -> Random-Poisson-Blending composites in the
RPHarmony/iHarmony4 layout, with worker processes, deterministic sharding, resume and a
manifest.

The pieces: :mod:`.config` (settings and their checks, the typed records workers receive),
:mod:`.generator` (loading and up-front checking of the composite generator), :mod:`.naming`
(names, splits, shards and seeds from the item's key), :mod:`.composites` (one image's work),
:mod:`.pool` (worker processes that die with their parent), :mod:`.records` (resume records
and the manifest). This module runs them in order:

1. check every setting and path, load the generator and try it on a synthetic image, read every
   existing index line (a malformed one stops the run, named with its line number), check that every
   path the run writes stays inside ``--out`` and that the subset folder is not someone else's -- all
   before any file is written, so a wrong setting never leaves a half-made folder behind;
2. record the settings (``_records/<subset>/params.json``; a resume must match them);
3. make the composites of every image without a record, in this process or in workers (a full disk
   stops the run with :class:`~r2r.fileio.OutputWriteError`; the failing image's files are removed);
4. merge the recorded composites into the indexes (:func:`.indexes.rebuild_indexes`: other entries
   and captions stay as they are) and write ``manifest-<subset>.json``.

Determinism: everything about an item is derived from the global seed and the item's key
(see :mod:`.naming`), so ``--shard 0/2`` + ``--shard 1/2`` writes byte-identical files to a
single run, with any number of workers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import R2RUserError
from ..fileio import OutputWriteError, check_inside, check_name_length, check_writable_dir
from .composites import process_unit
from .config import MakeConfig, WorkerSettings, WorkUnit, validate_config
from .generator import check_generator, resolve_generator
from .indexes import LOCK_NAME, append_index, check_indexes, index_paths, rebuild_indexes
from .layouts import SourceItem, find_sources, sample_from_file_name
from .naming import assign_names, pick_references, shard_of, split_of
from .pool import run_pool
from .records import (
    MakeReport,
    all_records,
    check_params,
    is_own_manifest,
    records_dir,
    write_manifest,
    write_record,
)
from .writer import SUBDIRS, HarmonizationDatasetWriter, cleanup_temp_files

_log = logging.getLogger("r2r.dataset")


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
    check_existing_output(cfg)
    out = check_writable_dir(cfg.out, what="output folder (--out)")
    return sources, (None if isinstance(cfg.generator, str) else gen), out


def check_existing_output(cfg: MakeConfig) -> None:
    """What is already in ``--out``, before anything is written: every index line readable (a malformed
    one is named with its line number), every path the run writes inside ``--out`` (no symbolic link
    leading out of it), and the subset folder, if it holds files, made by make-dataset (its records
    exist) -- a subset folder someone else made is never written into."""
    out = Path(cfg.out)
    rec_dir = records_dir(out, cfg.subset)
    for p in (out / cfg.subset, *(out / cfg.subset / d for d in SUBDIRS), out / "_records", rec_dir,
              rec_dir / "items", rec_dir / "errors", rec_dir / "params.json", out / f"manifest-{cfg.subset}.json",
              out / LOCK_NAME, *index_paths(out)):
        check_inside(p, out, "output path")
    for p in (out / cfg.subset / "composite_images" / "x.jpg", out / f"manifest-{cfg.subset}.json", rec_dir / "items"):
        check_name_length(p, "output path")
    if not out.is_dir():
        return
    check_indexes(out, "make-dataset wrote anything")
    manifest = out / f"manifest-{cfg.subset}.json"
    if os.path.lexists(manifest) and not is_own_manifest(manifest):
        raise R2RUserError(f"{manifest} exists and was not written by make-dataset; it is never replaced. Move it "
                           "away, or use another --subset name (or another --out folder). Nothing was written.")
    subset_dir = out / cfg.subset
    if subset_dir.is_dir() and not (rec_dir / "params.json").is_file() and any(
            p.is_file() for d in SUBDIRS if (subset_dir / d).is_dir() for p in (subset_dir / d).iterdir()):
        raise R2RUserError(
            f"{subset_dir} already holds images that make-dataset did not write (there is no "
            f"{rec_dir / 'params.json'}); it never writes into a subset folder it did not make, so nothing there "
            "can be replaced. Use another --subset name (or another --out folder)."
        )


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
        if res["status"] == "fatal":  # the output cannot be written: stop, keep what is finished
            raise OutputWriteError(
                f"make-dataset stopped: {res['error']} The {report.done + report.skipped} image(s) finished before "
                f"are intact in {out}; run the same command again to resume once the problem is fixed.")
        if res["status"] != "ok":
            entry = {"key": res["key"], "image": res["image"], "error": res["error"]}
            report.errors.append(entry)
            write_record(err_path, entry)
            return
        comps = res["composites"]
        try:
            append_index(out, [c["file_name"] for c in comps], res["split"])
        except OutputWriteError as exc:  # nothing listed (the append was cut back): the item's files go too
            _discard_item(out, comps)
            raise OutputWriteError(f"make-dataset stopped: {exc} The {report.done + report.skipped} image(s) "
                                   f"finished before are intact in {out}; run the same command again to resume "
                                   "once the problem is fixed.") from exc
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
    except BaseException:  # a full disk, Ctrl-C, a bug: list what is finished; the original error is reported
        bar.close()
        _finish_quietly(cfg, out, report, len(sources), t0)
        raise
    finally:
        bar.close()
    report.index_counts = rebuild_indexes(out, all_records(out))
    report.seconds = time.perf_counter() - t0
    report.manifest = write_manifest(cfg, report, len(sources))
    if stopped:
        report.errors[-1]["error"] += " (stopped here: --stop-on-error)"
    return report


def _discard_item(out: Path, composites: list) -> None:
    """Remove the files of an item that could not be listed (its composites, masks and real image)."""
    for c in composites:
        try:
            s = sample_from_file_name(out, c["file_name"])
        except R2RUserError:
            continue
        for p in (s.composite, s.mask, s.real):
            with contextlib.suppress(OSError):
                p.unlink()


def _finish_quietly(cfg: MakeConfig, out: Path, report: MakeReport, n_sources: int, t0: float) -> None:
    """Index rebuild + manifest after the run stopped early; they may fail too (a full disk: logged, not
    raised, so the error that stopped the run is the one the user sees)."""
    try:
        report.index_counts = rebuild_indexes(out, all_records(out))
        report.seconds = time.perf_counter() - t0
        report.manifest = write_manifest(cfg, report, n_sources)
    except (OSError, R2RUserError) as exc:
        _log.warning("make-dataset: the indexes / manifest were not updated either (%s); the next run does it", exc)


__all__ = ["MakeConfig", "MakeReport", "make_dataset"]
