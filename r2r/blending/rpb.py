"""Random Poisson Blending (RPB): disharmonious training composites from real images.

Reconstruction of the R2R paper's RPB (ref §e): the real image's foreground keeps
its own gradients (texture, shading detail) but takes the low-frequency colour and
illumination of a *reference region*, by Poisson-cloning the foreground into a
canvas whose pixels around the foreground come from that region; the result is
mixed with the original foreground with a strength ``alpha``::

    blended   = poisson_blend(target=canvas, source=real, mask=dilated mask)
    composite = real                                   outside the mask (bit-exact)
              = alpha * blended + (1 - alpha) * real   inside the mask

The official prototype (``gen_neg_data`` in the released code) is the special case
reference = another image, same place, 3x3-dilated mask, ``mode="box"``,
``mixed=False``, ``alpha = 0.75``.

The triplet (composite, mask, real) is what a harmonization dataset stores
(composite_images / masks / real_images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import R2RUserError
from .diagnostics import check_filter, filter_rejection, passes_filter, rpb_diagnostics, window_diagnostics
from .inputs import bool_mask_hw, image_bchw, image_hwc, mask_weights_b1hw, whole_number
from .poisson_numpy import paint_solution, solve_prepared
from .poisson_setup import check_mode

_WINDOW_PAD = 12  # pixels around the dilated mask's bounding box that the solve may use
REFERENCE_PLACEMENTS = ("auto", "same", "random")

__all__ = ["REFERENCE_PLACEMENTS", "RPBResult", "passes_filter", "random_poisson_blend", "random_poisson_blend_torch",
           "rpb_diagnostics"]


@dataclass
class RPBResult:
    """One training triplet plus per-sample diagnostics.

    composite: the disharmonious image (same dtype/shape as ``real``).
    mask: HxW foreground mask, uint8 {0, 255} for uint8 input, float32 {0, 1} otherwise.
    real: the ground truth (the input ``real``, unchanged).
    diagnostics: the keys of :func:`rpb_diagnostics` (``fmse``, ``color_shift_lab``, ...;
    units in :mod:`.diagnostics`) plus ``alpha``, ``reference`` (what was used),
    ``reference_rect`` (y0, y1, x0, x1 in the reference), ``mode``, ``mixed``, ``tries``,
    ``accepted`` (False when no draw passed the filter) and ``rejection`` (why the last
    draw failed the filter, or None).
    """

    composite: np.ndarray
    mask: np.ndarray
    real: np.ndarray
    diagnostics: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- input checks


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise R2RUserError(f"seed must be >= 0; got {seed}. Pass e.g. seed=1234 for a reproducible composite.")
        return np.random.default_rng(int(seed))
    raise R2RUserError(
        f"seed must be None, an int >= 0 or a numpy.random.Generator; got {type(seed).__name__}. "
        "Pass e.g. seed=1234 for a reproducible composite."
    )


def _alpha_range(alpha) -> tuple[float, float]:
    if isinstance(alpha, (int, float, np.floating, np.integer)) and not isinstance(alpha, bool):
        lo = hi = float(alpha)
    else:
        try:
            lo, hi = (float(v) for v in alpha)
        except (TypeError, ValueError):
            raise R2RUserError(
                f"alpha must be a number or a (low, high) pair in [0, 1]; got {alpha!r}. "
                "Example: alpha=(0.5, 1.0)."
            ) from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise R2RUserError(
            f"alpha must lie in [0, 1] with low <= high; got {alpha!r}. Example: alpha=(0.5, 1.0)."
        )
    return lo, hi


def _region_mask(region, hw, name):
    """A reference region as a bool mask of the reference's size ``hw`` (non-empty)."""
    reg = bool_mask_hw(region, None, name)
    if reg.shape != tuple(hw):
        raise R2RUserError(
            f"{name} is {reg.shape[1]}x{reg.shape[0]} but the image it marks a region of is {hw[1]}x{hw[0]}; "
            "give the region at that image's size."
        )
    if not reg.any():
        raise R2RUserError(
            f"{name} is empty; mark the region whose colours the foreground should take in white, "
            "or leave it unset for a random region."
        )
    return reg


def _check_pool_item(item, idx):
    """Validate a pool entry (an image, a path, or an (image-or-path, region_mask-or-None) pair)."""
    region = None
    if isinstance(item, tuple):
        if len(item) != 2:
            raise R2RUserError(
                f"pool[{idx}] must be an image, a path or an (image, region_mask) pair; got a tuple of "
                f"{len(item)} items."
            )
        item, region = item
    if isinstance(item, (str, os.PathLike)):
        if not os.path.isfile(item):
            raise R2RUserError(
                f"pool[{idx}]: cannot read the image file {os.fspath(item)!r}: it does not exist or is not a "
                "file. Check the path."
            )
        return
    arr = image_hwc(item, f"pool[{idx}]", rgb=True, unit_range=True)
    if region is not None:
        _region_mask(region, arr.shape[:2], f"pool[{idx}] region_mask")


def _load_pool_item(item, idx):
    """A pool entry as (RGB image, bool region mask or None)."""
    region = None
    if isinstance(item, tuple):
        item, region = item
    if isinstance(item, (str, os.PathLike)):
        import cv2

        bgr = cv2.imread(os.fspath(item), cv2.IMREAD_COLOR)
        if bgr is None:
            raise R2RUserError(
                f"pool[{idx}]: cannot read the image file {os.fspath(item)!r}. Check that the file exists "
                "and is a PNG/JPEG/WebP image."
            )
        item = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    img = image_hwc(item, f"pool[{idx}]", rgb=True, unit_range=True)
    if region is not None:
        region = _region_mask(region, img.shape[:2], f"pool[{idx}] region_mask")
    return img, region


# ----------------------------------------------------------------------------- helpers


def _resize_to(img, hw, nearest=False):
    import cv2

    H, W = hw
    if img.shape[:2] == (H, W):
        return img
    if nearest:
        return cv2.resize(img.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(img.dtype)
    shrink = img.shape[0] > H and img.shape[1] > W
    out = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[:, :, None]


def _fill_outside(patch, region):
    """Replace the patch's pixels outside ``region`` by the nearest pixel inside it."""
    import cv2

    if region.all() or not region.any():
        return patch
    _, labels = cv2.distanceTransformWithLabels((~region).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(region)
    # labels of zero pixels (inside the region) are numbered in row-major scan order
    lut_y = np.zeros(labels.max() + 1, np.int64)
    lut_x = np.zeros(labels.max() + 1, np.int64)
    lut_y[labels[ys, xs]] = ys
    lut_x[labels[ys, xs]] = xs
    return patch[lut_y[labels], lut_x[labels]]


def _bbox(mask, margin):
    """(y0, y1, x0, x1) of the mask's bounding box grown by ``margin``, clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    H, W = mask.shape
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, H),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, W))


def _random_rect(rng, hw_img, hw_rect, avoid=None, tries=8):
    """A random rectangle of size hw_rect inside the image; with ``avoid``, the draw that
    overlaps that mask least (several draws)."""
    H, W = hw_img
    h, w = min(hw_rect[0], H), min(hw_rect[1], W)
    best, best_ov = None, None
    for _ in range(tries if avoid is not None else 1):
        y0 = int(rng.integers(0, H - h + 1))
        x0 = int(rng.integers(0, W - w + 1))
        rect = (y0, y0 + h, x0, x0 + w)
        if avoid is None:
            return rect
        ov = float(avoid[rect[0]:rect[1], rect[2]:rect[3]].mean())
        if best is None or ov < best_ov:
            best, best_ov = rect, ov
    return best


# ----------------------------------------------------------------------------- main API


def random_poisson_blend(real, mask, seed=None, *, rng=None, reference=None, reference_mask=None,
                         pool=None, alpha=(0.5, 1.0), mode="box", mixed=False, dilate=1,
                         placement="auto", min_fmse=None, max_fmse=None, min_color_shift_lab=None,
                         max_tries=8) -> RPBResult:
    """Make one disharmonious composite from a real image and its foreground mask.

    real: HxWx3 uint8 (0..255) or float (0..1) RGB; mask: HxW (bool, 0/255 uint8 or 0..1
    float, thresholded at 0.5; neither empty nor the whole image). seed / rng: int >= 0,
    None or numpy Generator (same seed -> same composite). reference: an RGB image (any
    size, resized to ``real``) whose colours the foreground takes; reference_mask: a
    region of ``reference`` (or of ``real`` itself when ``reference`` is None), at that
    image's size, to take them from. pool: a sequence of images / paths /
    (image, region_mask) pairs to draw a reference from when none is given. Without
    reference, reference_mask and pool, another region of the same image is used.
    alpha: strength, a number or a (low, high) range in [0, 1] sampled uniformly per
    composite. mode / mixed: the Poisson formulation (see r2r.blending.poisson). dilate:
    pixels the mask is dilated by for the Poisson solve (1 = the official prototype's 3x3
    dilation). placement: "same" (the reference's pixels at the foreground's own place, as
    in the prototype), "random" (a random rectangle of the reference) or "auto" (same for
    another image, random for the image itself). min_fmse / max_fmse (0..255-scale fMSE)
    / min_color_shift_lab (CIE Lab Delta E): the filter of :func:`.diagnostics.passes_filter`;
    up to ``max_tries`` draws are made until one passes (diagnostics ``accepted`` says
    whether one did; the last draw is returned otherwise). Every input is checked before
    any work and none is modified.
    """
    if rng is not None:
        seed = rng
    gen = _rng(seed)
    R = image_hwc(real, "real", rgb=True, unit_range=True)
    M = bool_mask_hw(mask, R.shape[:2])
    if not M.any():
        raise R2RUserError(
            "The foreground mask is empty (no pixel above 0.5); RPB needs a foreground to recolour. "
            "Check that the mask is white on black and matches the image."
        )
    if M.all():
        raise R2RUserError(
            "The foreground mask covers the whole image, so there is no background to harmonize "
            "against. Use a mask that leaves part of the image out."
        )
    check_mode(mode)
    if placement not in REFERENCE_PLACEMENTS:
        raise R2RUserError(
            f"placement must be one of {REFERENCE_PLACEMENTS}; got {placement!r}. Leave it at 'auto' unless you "
            "need one behaviour."
        )
    dilate = whole_number(dilate, "dilate", 0, "The default is 1 (the prototype's 3x3 dilation).")
    max_tries = whole_number(max_tries, "max_tries", 1, "The default is 8.")
    alpha_lo, alpha_hi = _alpha_range(alpha)
    filt = dict(zip(("min_fmse", "max_fmse", "min_color_shift_lab"),
                    check_filter(min_fmse, max_fmse, min_color_shift_lab), strict=True))
    H, W = R.shape[:2]
    if reference is not None:
        reference = image_hwc(reference, "reference", rgb=True, unit_range=True)
    if reference_mask is not None:
        region_hw = reference.shape[:2] if reference is not None else (H, W)
        reference_mask = _region_mask(reference_mask, region_hw, "reference_mask")
    pool_list = None
    if reference is None and reference_mask is None and pool is not None:
        if isinstance(pool, (str, bytes)) or not isinstance(pool, Sequence) or len(pool) == 0:
            raise R2RUserError(
                "pool must be a non-empty list of images, image paths or (image, region_mask) pairs; "
                f"got {type(pool).__name__}."
            )
        for k, item in enumerate(pool):
            _check_pool_item(item, k)
        pool_list = pool

    import cv2

    solve_mask = M
    if dilate:
        solve_mask = cv2.dilate(M.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=dilate) > 0
    # the work window: the part of the canvas the solve sees, with room for the solver to
    # grow its frame to FFT-friendly sizes; everything below works on this crop only
    win = _bbox(solve_mask, _WINDOW_PAD)
    wh, ww = win[1] - win[0], win[3] - win[2]
    crop = (slice(win[0], win[1]), slice(win[2], win[3]))
    Mw = M[crop]
    Rw = R[crop].astype(np.float32)
    SMw = solve_mask[crop]
    value_range = 255.0 if R.dtype == np.uint8 else 1.0  # the solve's tolerance is relative to it
    scale = 255.0 / value_range  # to the diagnostics' 0..255 scale

    result: tuple | None = None
    for attempt in range(1, max_tries + 1):
        # ---- choose the reference image and region
        if reference is not None:
            ref_img, region, kind = reference, reference_mask, "image"
        elif reference_mask is not None:
            ref_img, region, kind = R, reference_mask, "self-region"
        elif pool_list is not None:
            k = int(gen.integers(len(pool_list)))
            ref_img, region = _load_pool_item(pool_list[k], k)
            kind = f"pool[{k}]"
        else:
            ref_img, region, kind = R, None, "self"
        same_image = ref_img is R
        ref_img = _resize_to(ref_img, (H, W))
        place = "region"
        if region is not None:
            if region.shape != (H, W):
                region = _resize_to(region.astype(np.uint8), (H, W), nearest=True) > 0
            rect = _bbox(region, 0)
            patch = _fill_outside(ref_img[rect[0]:rect[1], rect[2]:rect[3]],
                                  region[rect[0]:rect[1], rect[2]:rect[3]])
        else:
            place = placement
            if place == "auto":
                place = "random" if same_image else "same"
            if place == "same" and not same_image:
                rect = win
            else:
                place = "random"
                rect = _random_rect(gen, (H, W), (wh, ww), avoid=M if same_image else None)
            patch = ref_img[rect[0]:rect[1], rect[2]:rect[3]]
        patch = _resize_to(np.ascontiguousarray(patch), (wh, ww)).astype(np.float32)
        if R.dtype != np.uint8 and ref_img.dtype == np.uint8:
            patch /= 255.0
        elif R.dtype == np.uint8 and ref_img.dtype != np.uint8:
            patch *= 255.0
        a = alpha_lo if alpha_lo == alpha_hi else float(gen.uniform(alpha_lo, alpha_hi))

        # ---- Poisson-clone the real foreground into the canvas, mix by alpha
        comp = R.copy()
        if a == 0.0:
            diag = window_diagnostics(Rw, Rw, Mw, H * W, scale)
        else:
            # the canvas is the reference patch over the whole work window; the solve only
            # writes the window's interior, which holds the (dilated) mask
            sol = solve_prepared(patch, Rw, SMw, mode=mode, mixed=mixed, erode=None, margin=None, tol=5e-4,
                                 max_iter=2000, fft_friendly=True, value_range_=value_range)
            mixw = paint_solution(sol, patch)
            mixw *= a
            mixw += Rw * (1.0 - a)
            if R.dtype == np.uint8:
                np.rint(mixw, out=mixw)
                np.clip(mixw, 0, 255, out=mixw)
            else:
                np.clip(mixw, 0.0, 1.0, out=mixw)
            fgw = mixw.astype(R.dtype)
            np.copyto(comp[crop], fgw, where=Mw[:, :, None])
            diag = window_diagnostics(fgw.astype(np.float32), Rw, Mw, H * W, scale)
        rejection = filter_rejection(diag, **filt)
        diag.update({
            "alpha": a, "reference": kind, "reference_rect": [int(v) for v in rect], "mode": mode,
            "mixed": bool(mixed), "tries": attempt, "accepted": rejection is None, "rejection": rejection,
        })
        result = (comp, diag)
        if rejection is None:
            break
        if pool_list is None and place != "random" and alpha_lo == alpha_hi:
            break  # nothing random left to redraw
    assert result is not None  # the loop runs at least once (tries >= 1 is checked up front)
    comp, diag = result
    out_mask = (M.astype(np.uint8) * 255) if R.dtype == np.uint8 else M.astype(np.float32)
    return RPBResult(comp, out_mask, R, diag)


def random_poisson_blend_torch(real, mask, seed=None, **kwargs):
    """Batched wrapper for torch: real ``[B,3,H,W]`` float in [0,1], mask ``[B,1,H,W]``/``[B,H,W]``.

    Returns ``(composite [B,3,H,W], mask [B,1,H,W], real, diagnostics list)`` on the input's
    device/dtype. One generator drives the whole batch, so a seed reproduces it.
    """
    import torch

    if not torch.is_tensor(real) or real.ndim != 4 or real.shape[1] != 3:
        raise R2RUserError(
            f"real must be a [B,3,H,W] float tensor in [0,1]; got {getattr(real, 'shape', type(real))}. "
            "Permute HxWx3 images with .permute(2, 0, 1)[None]."
        )
    if not torch.is_tensor(mask) or mask.ndim not in (3, 4) or mask.shape[0] != real.shape[0]:
        raise R2RUserError(
            f"mask must be a [B,1,H,W] or [B,H,W] tensor matching real {tuple(real.shape)}; "
            f"got {getattr(mask, 'shape', type(mask))}. Resize the mask to the image first."
        )
    gen = _rng(seed)
    reals = image_bchw(real, "real", channels=3, unit_range=True).detach().float().permute(0, 2, 3, 1).cpu().numpy()
    masks = mask_weights_b1hw(mask, real.shape[0], real.shape[-2:])[:, 0].detach().cpu().numpy()
    comps, outm, diags = [], [], []
    for i in range(real.shape[0]):
        res = random_poisson_blend(reals[i], masks[i], gen, **kwargs)
        comps.append(torch.from_numpy(res.composite).permute(2, 0, 1))
        outm.append(torch.from_numpy(res.mask)[None])
        diags.append(res.diagnostics)
    comp = torch.stack(comps).to(device=real.device, dtype=real.dtype)
    return comp, torch.stack(outm).to(device=real.device, dtype=real.dtype), real, diags
