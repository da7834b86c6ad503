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
from .poisson import MODES, _as_bool_mask, _as_numpy_image, _field_on, _solve_checked

_WINDOW_PAD = 12  # pixels around the dilated mask's bounding box that the solve may use

__all__ = ["RPBResult", "random_poisson_blend", "random_poisson_blend_torch", "rpb_diagnostics",
           "passes_filter"]


@dataclass
class RPBResult:
    """One training triplet plus per-sample diagnostics.

    composite: the disharmonious image (same dtype/shape as ``real``).
    mask: HxW foreground mask, uint8 {0, 255} for uint8 input, float32 {0, 1} otherwise.
    real: the ground truth (the input ``real``, unchanged).
    diagnostics: see :func:`rpb_diagnostics` plus ``alpha``, ``reference`` (what was used),
    ``reference_rect`` (y0, y1, x0, x1 in the reference), ``mode``, ``mixed``, ``tries``
    and ``accepted`` (False when no draw passed the fMSE / colour-shift filter).
    """

    composite: np.ndarray
    mask: np.ndarray
    real: np.ndarray
    diagnostics: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise R2RUserError(
        f"seed must be None, an int or a numpy.random.Generator; got {type(seed).__name__}. "
        "Pass e.g. seed=1234 for a reproducible composite."
    )


def _to_float255(img):
    return img.astype(np.float32) * (1.0 if img.dtype == np.uint8 else 255.0)


def _check_rgb(img, name):
    arr = _as_numpy_image(img, name)
    if arr.shape[2] != 3:
        raise R2RUserError(
            f"{name} must be an RGB image (HxWx3); got {arr.shape[2]} channel(s). "
            "Convert it with PIL's .convert('RGB') or cv2.cvtColor first."
        )
    return arr


def _load_pool_item(item, idx):
    """A pool entry is an image, a path, or an (image-or-path, region_mask-or-None) pair."""
    region = None
    if isinstance(item, tuple):
        if len(item) != 2:
            raise R2RUserError(
                f"pool[{idx}] must be an image, a path or an (image, region_mask) pair; got a tuple of "
                f"{len(item)} items."
            )
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
    return _check_rgb(item, f"pool[{idx}]"), region


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


def _window(mask, margin):
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


def rpb_diagnostics(composite, real, mask) -> dict:
    """Per-sample diagnostics, on the 0..255 scale of the official metrics.

    fmse: mean squared error over the foreground pixels and 3 channels (ref §f.4);
    mse: over the whole image; psnr: skimage-style, data_range 255;
    color_shift: the foreground's mean composite - real per RGB channel;
    color_shift_norm: its Euclidean length; fg_ratio: foreground fraction.
    """
    c = _to_float255(np.asarray(composite))
    r = _to_float255(np.asarray(real))
    m = np.asarray(mask).astype(bool)
    n = int(m.sum())
    err = (c - r) ** 2
    fmse = float(err[m].sum() / (3 * n)) if n else 0.0
    mse = float(err.mean())
    shift = (c[m] - r[m]).mean(axis=0) if n else np.zeros(3)
    psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
    return {
        "fmse": fmse,
        "mse": mse,
        "psnr": psnr,
        "color_shift": [float(v) for v in shift],
        "color_shift_norm": float(np.linalg.norm(shift)),
        "fg_ratio": n / m.size,
    }


def _fg_diagnostics(comp_w, real_w, mask_w, n, n_pixels, scale):
    """rpb_diagnostics when only the foreground differs (what RPB guarantees), on the work window."""
    d = (comp_w - real_w) * (mask_w[:, :, None] * np.float32(scale))
    dd = d.reshape(-1, d.shape[2]).astype(np.float64)
    sq = float(np.einsum("ij,ij->", dd, dd))
    shift = dd.sum(axis=0) / max(n, 1)
    mse = sq / (3 * n_pixels)
    return {
        "fmse": sq / (3 * n) if n else 0.0,
        "mse": mse,
        "psnr": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
        "color_shift": [float(v) for v in shift],
        "color_shift_norm": float(np.linalg.norm(shift)),
        "fg_ratio": n / n_pixels,
    }


def passes_filter(diagnostics, *, min_fmse=None, max_fmse=None, min_color_shift=None) -> bool:
    """True when the sample is neither too easy (fMSE / colour shift too small) nor broken."""
    f = diagnostics["fmse"]
    if not np.isfinite(f):
        return False
    if min_fmse is not None and f < min_fmse:
        return False
    if max_fmse is not None and f > max_fmse:
        return False
    if min_color_shift is not None and diagnostics["color_shift_norm"] < min_color_shift:
        return False
    return True


def _sample_alpha(rng, alpha):
    if isinstance(alpha, (int, float, np.floating, np.integer)):
        a = float(alpha)
        lo = hi = a
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
    return lo if lo == hi else float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------- main API


def random_poisson_blend(real, mask, seed=None, *, rng=None, reference=None, reference_mask=None,
                         pool=None, alpha=(0.5, 1.0), mode="box", mixed=False, dilate=1,
                         placement="auto", min_fmse=None, max_fmse=None, min_color_shift=None,
                         max_tries=8) -> RPBResult:
    """Make one disharmonious composite from a real image and its foreground mask.

    real: HxWx3 uint8 (0..255) or float (0..1) RGB; mask: HxW (bool, 0/255 uint8 or 0..1
    float, thresholded at 0.5). seed / rng: int, None or numpy Generator (same seed ->
    same composite). reference: an RGB image (any size, resized to ``real``) whose colours
    the foreground takes; reference_mask: a region of ``reference`` (or of ``real`` itself
    when ``reference`` is None) to take them from. pool: a sequence of images / paths /
    (image, region_mask) pairs to draw a reference from when none is given. Without
    reference, reference_mask and pool, another region of the same image is used.
    alpha: strength, a number or a (low, high) range sampled uniformly per composite.
    mode / mixed: the Poisson formulation (see r2r.blending.poisson). dilate: pixels the
    mask is dilated by for the Poisson solve (1 = the official prototype's 3x3 dilation).
    placement: "same" (the reference's pixels at the foreground's own place, as in the
    prototype), "random" (a random rectangle of the reference) or "auto" (same for
    another image, random for the image itself). min_fmse / max_fmse / min_color_shift:
    the filter; up to ``max_tries`` draws are made until one passes (diagnostics
    ``accepted`` says whether one did; the last draw is returned otherwise).
    """
    if rng is not None:
        seed = rng
    gen = _rng(seed)
    R = _check_rgb(real, "real")
    M = _as_bool_mask(mask, R.shape[:2])
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
    if mode not in MODES:
        raise R2RUserError(
            f"mode must be one of {MODES}; got {mode!r}. Use 'box' (default, like the official prototype) "
            "or 'masked'."
        )
    if placement not in ("auto", "same", "random"):
        raise R2RUserError(
            f"placement must be 'auto', 'same' or 'random'; got {placement!r}. Leave it at 'auto' unless you "
            "need one behaviour."
        )
    if int(dilate) != dilate or dilate < 0 or int(max_tries) != max_tries or max_tries < 1:
        raise R2RUserError(
            f"dilate must be a whole number >= 0 and max_tries one >= 1; got dilate={dilate!r}, "
            f"max_tries={max_tries!r}. The defaults are dilate=1, max_tries=8."
        )
    pool_list = None
    if reference is None and reference_mask is None and pool is not None:
        if isinstance(pool, (str, bytes)) or not isinstance(pool, Sequence) or len(pool) == 0:
            raise R2RUserError(
                "pool must be a non-empty list of images, image paths or (image, region_mask) pairs; "
                f"got {type(pool).__name__}."
            )
        pool_list = pool
    if reference is not None:
        reference = _check_rgb(reference, "reference")

    import cv2

    solve_mask = M
    if dilate:
        solve_mask = cv2.dilate(M.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(dilate)) > 0
    H, W = R.shape[:2]
    # the work window: the part of the canvas the solve sees, with room for the solver to
    # grow its frame to FFT-friendly sizes; everything below works on this crop only
    win = _window(solve_mask, _WINDOW_PAD)
    wh, ww = win[1] - win[0], win[3] - win[2]
    crop = (slice(win[0], win[1]), slice(win[2], win[3]))
    Mw = M[crop]
    Rw = R[crop].astype(np.float32)
    SMw = solve_mask[crop]
    n_fg = int(M.sum())
    scale = 1.0 if R.dtype == np.uint8 else 255.0

    result = None
    for attempt in range(1, int(max_tries) + 1):
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
        if region is not None:
            reg = np.asarray(region)
            reg = _as_bool_mask(reg, reg.shape[:2] if reg.ndim >= 2 else (), "reference_mask")
            if reg.shape != (H, W):
                reg = _resize_to(reg.astype(np.uint8), (H, W), nearest=True) > 0
            region = reg
            if not region.any():
                raise R2RUserError(
                    "reference_mask is empty; mark the region whose colours the foreground should take "
                    "in white, or leave reference_mask unset for a random region."
                )
            rect = _window(region, 0)
            patch = _fill_outside(ref_img[rect[0]:rect[1], rect[2]:rect[3]], region[rect[0]:rect[1],
                                                                                      rect[2]:rect[3]])
        else:
            place = placement
            if place == "auto":
                place = "random" if same_image else "same"
            if place == "same" and not same_image:
                rect = win
            else:
                rect = _random_rect(gen, (H, W), (wh, ww), avoid=M if same_image else None)
            patch = ref_img[rect[0]:rect[1], rect[2]:rect[3]]
        patch = _resize_to(np.ascontiguousarray(patch), (wh, ww)).astype(np.float32)
        if R.dtype != np.uint8 and ref_img.dtype == np.uint8:
            patch /= 255.0
        elif R.dtype == np.uint8 and ref_img.dtype != np.uint8:
            patch *= 255.0
        a = _sample_alpha(gen, alpha)

        # ---- Poisson-clone the real foreground into the canvas, mix by alpha
        comp = R.copy()
        if a == 0.0:
            diag = _fg_diagnostics(Rw, Rw, Mw, n_fg, H * W, scale)
        else:
            # the canvas is the reference patch over the whole work window; the solve only
            # writes the window's interior, which holds the (dilated) mask
            sol = _solve_checked(patch, Rw, SMw, mode, mixed, None, None, 5e-4, 2000, True)
            blended = _field_on(sol, patch)
            mixw = blended * a
            mixw += Rw * (1.0 - a)
            if R.dtype == np.uint8:
                np.rint(mixw, out=mixw)
                np.clip(mixw, 0, 255, out=mixw)
            else:
                np.clip(mixw, 0.0, 1.0, out=mixw)
            fgw = mixw.astype(R.dtype)
            np.copyto(comp[crop], fgw, where=Mw[:, :, None])
            diag = _fg_diagnostics(fgw.astype(np.float32), Rw, Mw, n_fg, H * W, scale)
        accepted = passes_filter(diag, min_fmse=min_fmse, max_fmse=max_fmse, min_color_shift=min_color_shift)
        diag.update({
            "alpha": a, "reference": kind, "reference_rect": [int(v) for v in rect], "mode": mode,
            "mixed": bool(mixed), "tries": attempt, "accepted": accepted,
        })
        result = (comp, diag)
        if accepted:
            break
        if reference is not None and reference_mask is not None and np.isscalar(alpha):
            break  # nothing random left to redraw
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
    m = mask
    if torch.is_tensor(m) and m.ndim == 4:
        m = m[:, 0]
    if not torch.is_tensor(m) or m.ndim != 3 or m.shape[0] != real.shape[0] or m.shape[1:] != real.shape[2:]:
        raise R2RUserError(
            f"mask must be [B,1,H,W] or [B,H,W] matching real {tuple(real.shape)}; "
            f"got {getattr(mask, 'shape', type(mask))}. Resize the mask to the image first."
        )
    gen = _rng(seed)
    reals = real.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    masks = m.detach().float().cpu().numpy()
    comps, outm, diags = [], [], []
    for i in range(real.shape[0]):
        res = random_poisson_blend(reals[i], masks[i], gen, **kwargs)
        comps.append(torch.from_numpy(res.composite).permute(2, 0, 1))
        outm.append(torch.from_numpy(res.mask)[None])
        diags.append(res.diagnostics)
    comp = torch.stack(comps).to(device=real.device, dtype=real.dtype)
    return comp, torch.stack(outm).to(device=real.device, dtype=real.dtype), real, diags
