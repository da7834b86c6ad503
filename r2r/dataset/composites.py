"""The work of one source image in ``make-dataset`` (runs in a worker process): read the image
and its masks, draw composites until they pass the filter, write them, and report.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from ..blending.diagnostics import filter_rejection, rpb_diagnostics
from ..errors import R2RUserError
from ..fileio import OutputWriteError, check_input_file, read_image, read_input_bytes, read_mask
from .config import FilterSettings, WorkerSettings, WorkUnit, jsonable
from .generator import resolve_generator, unpack_result
from .naming import derive_seed
from .writer import HarmonizationDatasetWriter


def read_label_map(path) -> np.ndarray:
    """A label-map file -> HxW integer labels (grey values as they are; RGB packed per pixel as
    ``R * 65536 + G * 256 + B``)."""
    import cv2

    path = Path(path)
    if stat.S_ISREG(check_input_file(path, "label map").st_mode):
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    else:  # a pipe: read once (never blocks forever)
        raw = read_input_bytes(path, "label map")
        arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
    if arr is None or arr.dtype.kind not in "ui":
        raise R2RUserError(f"Could not read {path} as a label map; expected an 8/16-bit PNG (grey or RGB).")
    if arr.ndim == 3:
        a = arr[..., :3].astype(np.int64)
        return a[..., 2] * 65536 + a[..., 1] * 256 + a[..., 0]
    return arr


#: the diagnostics of r2r.blending.rpb_diagnostics recorded per composite in the manifest
RECORDED_DIAGNOSTICS = ("fmse", "color_shift_rgb", "color_shift_lab", "fg_ratio")


def composite_diagnostics(composite: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict:
    """The recorded diagnostics of one composite (units: :mod:`r2r.blending.diagnostics`), rounded
    to 4 decimals (``fg_ratio`` 6) as they are written to the records and the manifest."""
    d = rpb_diagnostics(composite, real, mask)
    return {k: round(float(d[k]), 6 if k == "fg_ratio" else 4) for k in RECORDED_DIAGNOSTICS}


def rejection_reason(diag: dict, filt: FilterSettings) -> str | None:
    """Why a composite fails the filter (the one filter of r2r.blending), or None when it passes."""
    return filter_rejection(diag, min_fmse=filt.min_fmse, max_fmse=filt.max_fmse,
                            min_color_shift_lab=filt.min_color_shift_lab)


def load_masks(unit: WorkUnit, ws: WorkerSettings, size_hw: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
    """[(k, HxW bool at the image's original size)] for a unit; R2RUserError on bad masks."""
    h, w = size_hw
    out = []
    for k, path in unit.masks:
        labels = ws.mask_type == "labels"
        arr = read_label_map(path) if labels else read_mask(path)
        if arr.shape[:2] != (h, w):
            raise R2RUserError(
                f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but image {unit.image} is {w}x{h} (width x "
                "height); masks must have exactly the image's size"
            )
        if labels:
            values, counts = np.unique(arr, return_counts=True)
            frac = counts / arr.size
            keep = sorted(
                (-c, int(lab))
                for lab, c, f in zip(values, counts, frac)
                if lab != 0 and ws.label_min_area <= f <= ws.label_max_area
            )
            if not keep:
                raise R2RUserError(
                    f"label map {path} has no region covering {ws.label_min_area:.1%}..{ws.label_max_area:.1%}"
                    " of the image; lower --label-min-area / raise --label-max-area or drop the image"
                )
            for idx, (_, lab) in enumerate(keep[: ws.masks_per_image], 1):
                out.append((idx, arr == lab))
        else:
            m = arr >= 128
            if not m.any():
                raise R2RUserError(f"mask {path} is empty (no pixel >= 128); the foreground must be white on black")
            if m.all():
                raise R2RUserError(f"mask {path} covers the whole image; a composite needs some background")
            out.append((int(k), m))
    return out


def _downscale(real, masks, unit: WorkUnit, max_side: int):
    import cv2

    h, w = real.shape[:2]
    s = max_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    real = cv2.resize(real, (nw, nh), interpolation=cv2.INTER_AREA)
    masks = [(k, cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0) for k, m in masks]
    masks = [(k, m) for k, m in masks if m.any() and not m.all()]
    if not masks:
        raise R2RUserError(
            f"the mask(s) of {unit.image} vanish when the image is downscaled to --max-side {max_side}; "
            "raise --max-side"
        )
    return real, masks


def _make_composites(unit: WorkUnit, ws: WorkerSettings, gen) -> tuple[list, list]:
    spec = ws.generator if isinstance(ws.generator, str) else getattr(gen, "__qualname__", repr(gen))
    real = read_image(unit.image)
    h, w = real.shape[:2]
    masks = load_masks(unit, ws, (h, w))
    if ws.max_side and max(h, w) > ws.max_side:
        real, masks = _downscale(real, masks, unit, ws.max_side)
    writer = HarmonizationDatasetWriter(
        ws.out, ws.subset, image_format=ws.image_format, jpeg_quality=ws.jpeg_quality, repair=False
    )
    try:
        return _draw_and_write(unit, ws, gen, spec, real, masks, writer)
    except BaseException:
        writer.discard_written()  # an item that failed half-way leaves no file behind
        raise


def _draw_and_write(unit: WorkUnit, ws: WorkerSettings, gen, spec: str, real, masks, writer) -> tuple[list, list]:
    references = dict(unit.references)
    ref_cache: dict[str, np.ndarray] = {}
    composites, rejected = [], []
    real_written = False
    for k, m in masks:
        mask_written = None
        for j in range(1, ws.per_image + 1):
            kwargs = ws.generator_call_kwargs()
            if j in references:
                path = references[j]
                if path not in ref_cache:
                    try:
                        ref_cache[path] = read_image(path)
                    except R2RUserError as exc:
                        raise R2RUserError(f"the reference image for this item is unreadable: {exc}") from exc
                kwargs["reference"] = ref_cache[path]
            reason = None
            for t in range(ws.filter.max_tries):
                seed = derive_seed(ws.seed, unit.key, k, j, t)
                comp, used_mask, gen_diag = unpack_result(gen(real, m, seed=seed, **kwargs), real, m, spec)
                diag = composite_diagnostics(comp, real, used_mask)
                reason = rejection_reason(diag, ws.filter)
                if reason is None:
                    break
            if reason is not None:
                rejected.append({"k": k, "j": j, "tries": ws.filter.max_tries, "reason": reason})
                continue
            if not real_written:
                writer.write_real(unit.name, real)
                real_written = True
            if mask_written is None:
                writer.write_mask(unit.name, k, used_mask)
                mask_written = used_mask
            elif not np.array_equal(mask_written, used_mask):
                raise R2RUserError(
                    f"the generator {spec} changed the mask between composites of {unit.image} (mask {k}); all "
                    "composites of one mask must share it"
                )
            writer.write_composite(unit.name, k, j, comp)
            composites.append({
                "file_name": writer.file_name(unit.name, k, j), "k": k, "j": j, "seed": seed, "tries": t + 1,
                **diag, "generator": jsonable(gen_diag),
            })
    return composites, rejected


def process_unit(unit: WorkUnit, ws: WorkerSettings, generator=None) -> dict:
    """Make every composite of one source image (runs in a worker). Never raises for bad
    inputs: returns ``{"status": "error", "error": message}`` instead, or ``"fatal"`` when the output
    cannot be written (disk full, ...), which stops the run."""
    res: dict[str, object] = {"key": unit.key, "name": unit.name, "image": unit.image, "split": unit.split}
    try:
        gen = generator or resolve_generator(ws.generator)
        composites, rejected = _make_composites(unit, ws, gen)
        res.update(status="ok", composites=composites, rejected=rejected)
    except OutputWriteError as exc:  # disk full, read-only...: every later item would fail the same way
        res.update(status="fatal", error=str(exc))
    except R2RUserError as exc:
        res.update(status="error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop a long run; it is reported
        res.update(status="error", error=f"unexpected {type(exc).__name__}: {exc} (please report this as a bug)")
    return res
