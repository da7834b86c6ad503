"""Setup shared by both Poisson backends: modes, defaults, the tolerance rule and the solve window.

The solve window is the mask's bounding box grown by ``margin`` pixels (and, when
asked, to FFT-friendly sizes); its outer ring of pixels is the Dirichlet frame and
the unknowns are its interior. A window may extend past the image: pixels there
are copies of the image's edge pixels and never part of the mask.

Tolerance rule (masked mode, both backends): the solve stops when the largest
discrete Poisson residual is at most ``tol * value_range``, where ``value_range`` is
255 for uint8 images and, for float images, the larger of 1 and the span
(max - min) of the target and the source together over the whole image (each batch
item of a torch batch is its own image). It never depends on the solve window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import R2RUserError
from .inputs import whole_number

MODES = ("box", "masked")
DEFAULT_EROSION = {"box": 3, "masked": 0}  # box: 3 = what cv2.seamlessClone erodes by


def check_mode(mode) -> str:
    if mode not in MODES:
        raise R2RUserError(
            f"Poisson mode must be one of {MODES}; got {mode!r}. Use 'box' (OpenCV seamlessClone "
            "behaviour, fastest) or 'masked' (only the mask's own border influences the result)."
        )
    return mode


def resolve_erode_margin(mode, erode, margin) -> tuple[int, int]:
    """Defaults: box erodes by 3 inside the mask's own bounding box (= OpenCV); masked: 0 and 1."""
    hint = "Leave them unset for the defaults (box: erode=3, margin=0 like OpenCV; masked: 0 and 1)."
    erode = DEFAULT_EROSION[mode] if erode is None else whole_number(erode, "erode", 0, hint)
    if margin is None:
        margin = 0 if (mode == "box" and erode > 0) else 1
    margin = whole_number(margin, "margin", 0, hint)
    return erode, margin


def check_convergence_settings(tol, max_iter) -> tuple[float, int]:
    """``tol`` a number in (0, 1), ``max_iter`` a whole number >= 1."""
    try:
        t = float(tol)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(tol, bool) or not (0.0 < t < 1.0):
        raise R2RUserError(
            f"tol must be a number between 0 and 1 (a fraction of the value range); got {tol!r}. "
            "The default 5e-4 is well below 1/255."
        )
    return t, whole_number(max_iter, "max_iter", 1, "The default is 2000.")


def value_range(target, source, is_uint8: bool) -> float:
    """The range ``tol`` is relative to (see the module docstring); works on arrays and tensors."""
    if is_uint8:
        return 255.0
    lo = min(float(target.min()), float(source.min()))
    hi = max(float(target.max()), float(source.max()))
    return max(1.0, hi - lo)


def residual_threshold(tol: float, value_range_: float) -> float:
    """The largest discrete Poisson residual a masked solve may end with."""
    return tol * value_range_


# ----------------------------------------------------------------------------- the solve window


@dataclass(frozen=True)
class SolveWindow:
    """The solve window in image coordinates ``[y0, y1) x [x0, x1)`` of an ``H x W`` image.

    The window may extend past the image; ``crop`` is the part inside it and ``pads``
    the (top, bottom, left, right) pixels outside it.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    H: int
    W: int

    @property
    def crop(self) -> tuple[int, int, int, int]:
        return max(self.y0, 0), min(self.y1, self.H), max(self.x0, 0), min(self.x1, self.W)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        return max(0, -self.y0), max(0, self.y1 - self.H), max(0, -self.x0), max(0, self.x1 - self.W)

    def inside_image(self, a):
        """The part of a window-sized array (window in its last two dims) that lies inside the image."""
        pt, pb, pl, pr = self.pads
        return a[..., pt : a.shape[-2] - pb, pl : a.shape[-1] - pr]


def fast_dst_length(n: int) -> int:
    """Smallest m >= n whose DST-I (an FFT of length 2(m+1)) is fast: m + 1 is 5-smooth."""
    m = n + 1
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m - 1
        m += 1


def make_solve_window(mask_hw: np.ndarray, margin: int, fft_friendly: bool) -> SolveWindow:
    """Bounding box of the (non-empty, bool HxW) mask grown by ``margin`` (window >= 3 px a side).

    ``fft_friendly`` grows the window further to FFT-friendly sizes (always done in masked
    mode, where the window only shapes the preconditioner, not the answer).
    """
    rows = np.flatnonzero(mask_hw.any(axis=1))
    cols = np.flatnonzero(mask_hw.any(axis=0))
    H, W = mask_hw.shape
    m = int(margin)
    y0, y1 = int(rows[0]) - m, int(rows[-1]) + 1 + m
    x0, x1 = int(cols[0]) - m, int(cols[-1]) + 1 + m
    h, w = y1 - y0 - 2, x1 - x0 - 2  # interior sizes, at least 1
    gh, gw = max(1 - h, 0), max(1 - w, 0)
    if fft_friendly:
        gh = fast_dst_length(h + gh) - h
        gw = fast_dst_length(w + gw) - w
    return SolveWindow(y0 - gh // 2, y1 + gh - gh // 2, x0 - gw // 2, x1 + gw - gw // 2, H, W)


def check_mask_not_empty(mask_hw: np.ndarray, which: str = "The mask") -> None:
    if not mask_hw.any():
        raise R2RUserError(
            f"{which} is empty (no pixel above 0.5), so there is nothing to blend. "
            "Draw the foreground in white (1.0 / 255) on black."
        )
