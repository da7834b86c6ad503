"""Diagnostics of a (composite, real, mask) training triplet and the one sample filter.

Every figure is on the 0..255 scale of the official harmonization metrics, whatever
the images' dtype (float images in [0, 1] are multiplied by 255 first):

``fmse``
    foreground MSE: mean of (composite - real)^2 over the foreground pixels and the 3
    channels, in (0..255 units)^2, exactly as the official evaluation computes fMSE;
``mse``, ``psnr``
    the same over the whole image; PSNR in dB with peak 255 (inf for identical images);
``color_shift_rgb``
    Euclidean length of the foreground's mean colour change (composite - real), in
    0..255 RGB units; ``color_shift_rgb_channels`` is that change per channel [R, G, B];
``color_shift_lab``
    CIE76 distance (Delta E) between the CIE Lab colours (D65, OpenCV's conversion) of
    the foreground's mean RGB colour in the composite and in the real image: the
    perceptual size of the colour shift;
``fg_ratio``
    the foreground's fraction of the image.

The filter (:func:`filter_rejection` / :func:`passes_filter`) is the one used by
Random Poisson Blending, the Random Poisson Blend node and ``make-dataset``.
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError
from .inputs import bool_mask_hw, image_hwc, optional_threshold, same_kind

__all__ = ["check_filter", "filter_rejection", "passes_filter", "rpb_diagnostics",
           "window_diagnostics"]

def _lab_distance(mean_c_255, mean_r_255) -> float:
    import cv2

    pair = (np.stack([mean_c_255, mean_r_255]) / 255.0).astype(np.float32).reshape(2, 1, 3)
    lab = cv2.cvtColor(np.clip(pair, 0.0, 1.0), cv2.COLOR_RGB2Lab).reshape(2, 3).astype(np.float64)
    return float(np.linalg.norm(lab[0] - lab[1]))


def _assemble(fg_sq_sum, all_sq_sum, shift, mean_r, n, n_pixels) -> dict:
    mse = all_sq_sum / (3 * n_pixels)
    return {
        "fmse": fg_sq_sum / (3 * n) if n else 0.0,
        "mse": mse,
        "psnr": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
        "color_shift_rgb": float(np.linalg.norm(shift)),
        "color_shift_rgb_channels": [float(v) for v in shift],
        "color_shift_lab": _lab_distance(mean_r + shift, mean_r) if n else 0.0,
        "fg_ratio": n / n_pixels,
    }


def window_diagnostics(comp_w, real_w, mask_w, n_pixels: int, scale: float) -> dict:
    """The diagnostics when composite and real differ only inside ``mask_w`` (what RPB guarantees).

    ``comp_w`` / ``real_w``: HxWx3 float32 windows containing the whole foreground,
    ``mask_w`` its bool HxW window, ``n_pixels`` the full image's pixel count and
    ``scale`` the factor to 0..255 (255 for [0, 1] data, 1 for 0..255 data).
    """
    sq, shift, mean_r, n, _ = _masked_sums(comp_w, real_w, mask_w, scale)
    return _assemble(sq, sq, shift, mean_r, n, n_pixels)


def _masked_sums(comp, real, mask, scale):
    """(foreground squared-error sum, mean change, mean real colour, n, whole-image squared-error sum),
    on the 0..255 scale; OpenCV accumulates in float64."""
    import cv2

    work = np.float64 if np.float64 in (comp.dtype, real.dtype) else np.float32
    m8 = mask.astype(np.uint8)
    n = cv2.countNonZero(m8)
    diff = np.subtract(comp, real, dtype=work)
    fg_sq = cv2.norm(diff, cv2.NORM_L2SQR, mask=m8) * scale**2
    all_sq = cv2.norm(diff, cv2.NORM_L2SQR) * scale**2
    shift = np.array(cv2.mean(diff, mask=m8)[:3]) * scale
    mean_r = np.array(cv2.mean(np.ascontiguousarray(real, dtype=work), mask=m8)[:3]) * scale
    return fg_sq, shift, mean_r, n, all_sq


def rpb_diagnostics(composite, real, mask) -> dict:
    """Diagnostics of any triplet (see the module docstring for the keys and their units).

    composite, real: HxWx3 RGB of the same shape, both uint8 (0..255) or both float (0..1);
    mask: HxW foreground (bool, 0..255 uint8 or 0..1 float, thresholded at 0.5).
    """
    c = image_hwc(composite, "composite", rgb=True, unit_range=True)
    r = image_hwc(real, "real", rgb=True, unit_range=True)
    if c.shape != r.shape:
        raise R2RUserError(
            f"composite {c.shape} and real {r.shape} must have the same shape; pass the triplet as generated."
        )
    same_kind(c, r, ("composite", "real"))
    m = bool_mask_hw(mask, r.shape[:2])
    scale = 1.0 if r.dtype == np.uint8 else 255.0
    fg_sq, shift, mean_r, n, all_sq = _masked_sums(c, r, m, scale)
    return _assemble(fg_sq, all_sq, shift, mean_r, n, m.size)


def check_filter(min_fmse=None, max_fmse=None, min_color_shift_lab=None) -> tuple:
    """Validated filter thresholds ``(min_fmse, max_fmse, min_color_shift_lab)`` (None = off).

    fMSE bounds are in (0..255 units)^2 like ``fmse``; ``min_color_shift_lab`` is a CIE76
    Delta E like ``color_shift_lab``. Raises R2RUserError for negative / NaN values or
    ``min_fmse > max_fmse``.
    """
    lo = optional_threshold(min_fmse, "min_fmse", "It is an fMSE on the 0..255 scale, e.g. 100.")
    hi = optional_threshold(max_fmse, "max_fmse", "It is an fMSE on the 0..255 scale, e.g. 20000.")
    cs = optional_threshold(min_color_shift_lab, "min_color_shift_lab",
                            "It is a CIE Lab Delta E between mean colours, e.g. 5.")
    if lo is not None and hi is not None and lo > hi:
        raise R2RUserError(f"min_fmse ({lo:g}) is larger than max_fmse ({hi:g}); no sample could pass. "
                           "Swap them or widen the range.")
    return lo, hi, cs


def filter_rejection(diagnostics: dict, *, min_fmse=None, max_fmse=None, min_color_shift_lab=None) -> str | None:
    """Why the sample fails the filter (a sentence), or None when it passes.

    A sample fails when its fMSE is not finite, below ``min_fmse`` (too easy) or above
    ``max_fmse`` (broken), or its ``color_shift_lab`` is below ``min_color_shift_lab``.
    ``diagnostics``: a dict from :func:`rpb_diagnostics` (or with the same keys).
    """
    lo, hi, cs = check_filter(min_fmse, max_fmse, min_color_shift_lab)
    try:
        f = float(diagnostics["fmse"])
        shift = float(diagnostics["color_shift_lab"]) if cs is not None else None
    except (KeyError, TypeError, ValueError):
        raise R2RUserError(
            "diagnostics must be a dict with a numeric 'fmse' (and 'color_shift_lab' when min_color_shift_lab "
            f"is set); got {type(diagnostics).__name__} {diagnostics!r:.200}. Compute them with "
            "r2r.blending.rpb_diagnostics."
        ) from None
    if not np.isfinite(f):
        return f"fMSE is {f} (not a finite number)"
    if lo is not None and f < lo:
        return f"fMSE {f:.2f} < min_fmse {lo:g}"
    if hi is not None and f > hi:
        return f"fMSE {f:.2f} > max_fmse {hi:g}"
    if cs is not None and shift < cs:
        return f"colour shift {shift:.2f} (Lab Delta E) < min_color_shift_lab {cs:g}"
    return None


def passes_filter(diagnostics: dict, *, min_fmse=None, max_fmse=None, min_color_shift_lab=None) -> bool:
    """True when the sample is neither too easy (fMSE / Lab colour shift too small) nor broken."""
    return filter_rejection(diagnostics, min_fmse=min_fmse, max_fmse=max_fmse,
                            min_color_shift_lab=min_color_shift_lab) is None
