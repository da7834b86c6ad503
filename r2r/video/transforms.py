"""The R2R path's per-frame colour transform, in the object's own coordinates.

:func:`r2r.imaging.fullres.fit_color_transform` fits, at the working resolution, a local affine colour
transform (a 3x3 matrix + offset per pixel) that maps the composite onto the model's result. For a
clip that grid is re-sampled over the object's bounding box onto a fixed ``GRID x GRID`` grid
(:func:`fit_object_transform`): grid cell (0, 0) is always the object's top-left part, whatever
frame and position, so the transforms of two frames can be averaged (``smoothed``) or interpolated
(``keyframes``) while the object moves or changes size. :func:`apply_object_transform` stretches a
grid over a frame's object box (edge values continue outside it, for the feathered border) and
applies it to the full-resolution frame inside the paste-back alpha: the object keeps every
original pixel of detail, only its colours change. ``GRID`` 1 is one affine transform for the
whole object.
"""

from __future__ import annotations

import numpy as np

from ..imaging.fullres import fit_color_transform

#: cells per side of the object-relative grid (a frame's transform: GRID * GRID * 12 floats)
GRID = 8
#: Gaussian sigma (working pixels) both working images get before fitting (as r2r.imaging.fullres does)
PRESMOOTH = 1.5
#: regularisation of the local fits toward the object's global fit (as r2r.imaging.fullres does)
EPS = 5e-3
#: rows of the full-resolution frame transformed at once
BAND_ROWS = 256


def object_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the pixels where ``mask >= 0.5`` (None when there is none)."""
    fg = mask >= 0.5
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize_to(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``hxwxC`` float32 resized to ``hw`` (area when shrinking, bilinear when growing), any C."""
    import cv2

    if x.shape[:2] == tuple(hw):
        return x.astype(np.float32, copy=False)
    shrink = hw[0] <= x.shape[0] and hw[1] <= x.shape[1]
    how = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    parts = []
    for c in range(0, x.shape[2], 4):  # OpenCV's area resize takes at most 4 channels
        part = cv2.resize(np.ascontiguousarray(x[..., c:c + 4], np.float32), (hw[1], hw[0]), interpolation=how)
        parts.append(part if part.ndim == 3 else part[..., None])
    return np.concatenate(parts, axis=2)


def fit_object_transform(composite_low: np.ndarray, harmonized_low: np.ndarray, mask_low: np.ndarray,
                         grid: int = GRID) -> np.ndarray:
    """``composite_low`` (as the model saw it) -> ``harmonized_low`` (the model's result), both ``hxwx3``
    float in [0, 1], fitted inside ``mask_low`` (``hxw``): -> ``[grid, grid, 12]`` float32 (per cell the
    3x3 matrix, row i = the weights of input channel i, then the offset)."""
    import cv2

    comp = cv2.GaussianBlur(composite_low.astype(np.float32), (0, 0), PRESMOOTH)
    harm = cv2.GaussianBlur(np.clip(harmonized_low, 0, 1).astype(np.float32), (0, 0), PRESMOOTH)
    coef = fit_color_transform(comp, harm, mask_low.astype(np.float32), eps=EPS)
    box = object_box(mask_low)
    if box is None:
        box = (0, coef.shape[0], 0, coef.shape[1])
    y0, y1, x0, x1 = box
    return resize_to(coef[y0:y1, x0:x1], (grid, grid)).astype(np.float32)


def _taps(n_grid: int, start: int, length: int, lo: int, hi: int):
    """Bilinear taps of pixels ``lo..hi-1`` into a grid stretched over ``[start, start + length)`` (cell
    centres at half-pixel positions; outside the box the edge cells continue)."""
    pos = (np.arange(lo, hi, dtype=np.float64) - start + 0.5) * (n_grid / max(length, 1)) - 0.5
    pos = np.clip(pos, 0.0, n_grid - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_grid - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def apply_object_transform(frame: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int],
                           params: np.ndarray) -> np.ndarray:
    """Apply ``params`` (``[G, G, 12]``, stretched over ``box`` = the object's ``(y0, y1, x0, x1)`` in this
    frame) to ``frame`` (``HxWx3`` float32 in [0, 1]) inside ``alpha`` (``HxW`` paste-back alpha):
    ``out = frame + alpha * (T(frame) - frame)``; pixels where ``alpha`` is 0 are returned unchanged."""
    out = frame.astype(np.float32, copy=True)
    region = object_box(np.where(alpha > 0, 1.0, 0.0))
    if region is None:
        return out
    g = params.shape[0]
    y0, y1, x0, x1 = box
    ry0, ry1, rx0, rx1 = region
    xi0, xi1, wx = _taps(params.shape[1], x0, x1 - x0, rx0, rx1)
    for r0 in range(ry0, ry1, BAND_ROWS):
        r1 = min(ry1, r0 + BAND_ROWS)
        yi0, yi1, wy = _taps(g, y0, y1 - y0, r0, r1)
        rows = params[yi0] * (1.0 - wy)[:, None, None] + params[yi1] * wy[:, None, None]
        coef = rows[:, xi0] * (1.0 - wx)[None, :, None] + rows[:, xi1] * wx[None, :, None]
        src = out[r0:r1, rx0:rx1]
        x = coef[..., :9].reshape(r1 - r0, rx1 - rx0, 3, 3)
        t = np.einsum("rwi,rwik->rwk", src, x) + coef[..., 9:]
        np.clip(t, 0.0, 1.0, out=t)
        a = alpha[r0:r1, rx0:rx1, None]
        out[r0:r1, rx0:rx1] = np.where(a > 0, src + a * (t - src), src)
    return out
