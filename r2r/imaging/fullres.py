"""Carry a working-resolution harmonization back to the original (full) resolution.

The diffusion model runs at a working resolution (1024 px on the long side by default), but
users often feed 4K or 8K photos. Two ways of producing the full-resolution result:

``mode="upsample"``
    resize the harmonized working-resolution image to the original size and paste its
    foreground over the original composite. Simple, but the foreground loses all detail finer
    than the working resolution (and any blur or texture the VAE added is magnified).

``mode="color_transform"`` (default)
    fit, at the working resolution, a *local affine colour transform* that maps the composite
    (as the model saw it) onto the harmonized result -- one 3x3 matrix + offset per pixel,
    estimated from foreground pixels in a sliding window (a masked, regularised guided-filter
    fit) -- then smooth the coefficients, upsample them bilinearly to the original size and
    apply them to the full-resolution composite. The foreground keeps every original pixel of
    high-frequency detail, only its colours change, exactly as they changed at the working
    resolution. Windows with too few foreground pixels fall back to one global affine fit of
    the whole foreground, so the coefficients are defined everywhere.

Both modes keep the background bit-exact (outside the mask the original pixels are returned)
and work band by band, so an 8K image never needs more than a few full-size float buffers.

Entry point: :func:`transfer_harmonization`. Everything here is numpy + OpenCV (torch only
when tensors are passed in).
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError
from ..params import FULLRES_MODES, check_choice

MODES = ("color_transform", "upsample")
DEFAULT_MODE = "color_transform"

# rows of the full-resolution image processed at once (bounds the temporary buffers)
_BAND_ROWS = 256


# ----------------------------------------------------------------------------- input handling
def _as_float_image(x, name: str) -> tuple[np.ndarray, bool]:
    """HxWx3 numpy (uint8 or float in [0,1]) -> float32 HxWx3 and whether the input was uint8."""
    if not isinstance(x, np.ndarray):
        raise R2RUserError(
            f"{name}: expected a numpy HxWx3 image (uint8 or float in [0,1]) or a torch tensor "
            f"[B,3,H,W]; got {type(x).__name__}. Convert it with np.asarray(image) first."
        )
    if x.ndim != 3 or x.shape[2] != 3:
        raise R2RUserError(
            f"{name}: expected an RGB image of shape HxWx3; got shape {tuple(x.shape)}. "
            "Drop the alpha channel or convert greyscale images to RGB first."
        )
    was_uint8 = x.dtype == np.uint8
    if was_uint8:
        return x.astype(np.float32) / 255.0, True
    if not np.issubdtype(x.dtype, np.floating):
        raise R2RUserError(
            f"{name}: expected dtype uint8 or float; got {x.dtype}. Use uint8 0..255 or float 0..1."
        )
    xf = np.asarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise R2RUserError(f"{name}: the image contains NaN or infinite values; clean the input first.")
    return xf, False


def _as_float_mask(m, shape_hw: tuple[int, int], name: str = "mask_full") -> np.ndarray:
    if not isinstance(m, np.ndarray):
        raise R2RUserError(f"{name}: expected a numpy HxW mask; got {type(m).__name__}.")
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise R2RUserError(
            f"{name}: expected a single-channel mask of shape HxW; got shape {tuple(m.shape)}. "
            "Pass one channel of the mask (foreground = white)."
        )
    if tuple(m.shape) != tuple(shape_hw):
        raise R2RUserError(
            f"{name}: the mask is {m.shape[1]}x{m.shape[0]} but the composite is "
            f"{shape_hw[1]}x{shape_hw[0]} (WxH); resize the mask to the composite's size."
        )
    if m.dtype == np.uint8:
        mf = m.astype(np.float32) / 255.0
    elif m.dtype == bool:
        mf = m.astype(np.float32)
    else:
        mf = np.asarray(m, dtype=np.float32)
        if not np.isfinite(mf).all():
            raise R2RUserError(f"{name}: the mask contains NaN or infinite values.")
        if mf.max(initial=0.0) > 1.0 + 1e-6:
            # 0/255 float masks are common; accept them
            mf = mf / 255.0
    return np.clip(mf, 0.0, 1.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- interpolation
def _linear_taps(n_in: int, n_out: int, start: int = 0, stop: int | None = None):
    """Half-pixel-centre bilinear taps (as cv2.resize INTER_LINEAR / align_corners=False)."""
    stop = n_out if stop is None else stop
    dst = np.arange(start, stop, dtype=np.float64)
    src = (dst + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def _upsample_rows(grid: np.ndarray, out_hw: tuple[int, int], r0: int, r1: int,
                   xtaps=None) -> np.ndarray:
    """Rows [r0, r1) of the bilinear upsampling of ``grid`` (h x w x C) to ``out_hw``."""
    h, w, _ = grid.shape
    y0, y1, wy = _linear_taps(h, out_hw[0], r0, r1)
    rows = grid[y0] * (1.0 - wy)[:, None, None] + grid[y1] * wy[:, None, None]
    x0, x1, wx = xtaps if xtaps is not None else _linear_taps(w, out_hw[1])
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def _resize_area(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    if x.shape[:2] == tuple(hw):
        return x.astype(np.float32, copy=False)
    shrinking = hw[0] <= x.shape[0] and hw[1] <= x.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(x, (hw[1], hw[0]), interpolation=interp).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- the fit
def _box(x: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    k = 2 * radius + 1
    return cv2.boxFilter(x, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def _global_affine(src: np.ndarray, dst: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    """Weighted least squares dst ~ [src, 1] @ theta (4x3), ridge-regularised toward identity."""
    x = np.concatenate([src.reshape(-1, 3), np.ones((src.shape[0] * src.shape[1], 1), np.float32)], 1)
    y = dst.reshape(-1, 3).astype(np.float64)
    wv = w.reshape(-1, 1).astype(np.float64)
    total = float(wv.sum())
    xtx = (x * wv).T.astype(np.float64) @ x / max(total, 1e-12)
    xty = (x * wv).T.astype(np.float64) @ y / max(total, 1e-12)
    reg = np.diag([ridge, ridge, ridge, 0.0])
    prior = np.zeros((4, 3))
    prior[:3, :3] = np.eye(3)
    if total < 1e-6:
        return prior.astype(np.float32)
    reg[3, 3] = 1e-9
    return np.linalg.solve(xtx + reg, xty + reg @ prior).astype(np.float32)


def fit_color_transform(composite_low: np.ndarray, harmonized_low: np.ndarray, mask_low: np.ndarray,
                        *, radius: int | None = None, eps: float = 2e-3,
                        min_fraction: float = 0.05) -> np.ndarray:
    """Fit the local affine colour transform composite_low -> harmonized_low.

    Returns an ``h x w x 12`` float32 coefficient grid: per pixel the 3x3 matrix ``X`` (row i =
    weights of input channel i for the three output channels) and the offset ``b`` such that
    ``harmonized ~= composite @ X + b``. Only pixels with mask weight contribute; ``eps``
    regularises each local fit toward the global foreground fit (flat windows take the global
    transform); windows whose foreground fraction is below ``min_fraction`` blend toward it.
    """
    h, w, _ = composite_low.shape
    if radius is None:
        radius = max(2, round(min(h, w) / 64))
    radius = int(radius)
    wgt = np.clip(mask_low.astype(np.float32), 0.0, 1.0)
    theta_g = _global_affine(composite_low, harmonized_low, wgt, ridge=eps)
    xg, bg = theta_g[:3], theta_g[3]

    ii = composite_low.astype(np.float32)
    pp = harmonized_low.astype(np.float32)
    n = _box(wgt, radius)
    safe = np.maximum(n, 1e-6)[..., None]
    mu_i = _box(ii * wgt[..., None], radius) / safe
    mu_p = _box(pp * wgt[..., None], radius) / safe
    # second moments: covariance of I (symmetric 3x3) and cross-covariance I,P (3x3)
    cov_ii = np.empty((h, w, 3, 3), np.float32)
    cov_ip = np.empty((h, w, 3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            v = _box(ii[..., a] * ii[..., b] * wgt, radius) / safe[..., 0] - mu_i[..., a] * mu_i[..., b]
            cov_ii[..., a, b] = v
            cov_ii[..., b, a] = v
        for k in range(3):
            cov_ip[..., a, k] = (_box(ii[..., a] * pp[..., k] * wgt, radius) / safe[..., 0]
                                 - mu_i[..., a] * mu_p[..., k])
    lhs = cov_ii + eps * np.eye(3, dtype=np.float32)
    rhs = cov_ip + eps * xg[None, None]
    xl = np.linalg.solve(lhs.reshape(-1, 3, 3).astype(np.float64),
                         rhs.reshape(-1, 3, 3).astype(np.float64)).reshape(h, w, 3, 3).astype(np.float32)
    bl = mu_p - np.einsum("hwi,hwik->hwk", mu_i, xl)
    # too little foreground in the window: blend toward the global fit
    alpha = np.clip(n / max(min_fraction, 1e-6), 0.0, 1.0)[..., None]
    xl = alpha[..., None] * xl + (1.0 - alpha[..., None]) * xg[None, None]
    bl = alpha * bl + (1.0 - alpha) * bg[None, None]
    coef = np.concatenate([xl.reshape(h, w, 9), bl], axis=2)
    # average the coefficients of all windows covering a pixel (guided-filter style)
    return _box(coef, radius).astype(np.float32)


def _blend_bands(composite_full: np.ndarray, mask_full: np.ndarray, band_rows: int, target) -> np.ndarray:
    """``composite + mask * (target(r0, r1, src) - composite)``, band by band (float32): never a full-size
    float copy of the target."""
    hh = composite_full.shape[0]
    out = np.empty_like(composite_full, dtype=np.float32)
    for r0 in range(0, hh, band_rows):
        r1 = min(hh, r0 + band_rows)
        src = composite_full[r0:r1]
        out[r0:r1] = src + mask_full[r0:r1, :, None] * (target(r0, r1, src) - src)
    return out


def apply_color_transform(composite_full: np.ndarray, coef: np.ndarray, mask_full: np.ndarray,
                          band_rows: int = _BAND_ROWS) -> np.ndarray:
    """Upsample the coefficient grid and apply it to the full-resolution composite (float32)."""
    hh, ww, _ = composite_full.shape
    xtaps = _linear_taps(coef.shape[1], ww)

    def transformed(r0, r1, src):
        c = _upsample_rows(coef, (hh, ww), r0, r1, xtaps)
        t = np.einsum("rwi,rwik->rwk", src, c[..., :9].reshape(r1 - r0, ww, 3, 3)) + c[..., 9:]
        return np.clip(t, 0.0, 1.0, out=t)

    return _blend_bands(composite_full, mask_full, band_rows, transformed)


def _upsample_paste(composite_full: np.ndarray, harmonized_low: np.ndarray, mask_full: np.ndarray,
                    band_rows: int = _BAND_ROWS) -> np.ndarray:
    hh, ww, _ = composite_full.shape
    xtaps = _linear_taps(harmonized_low.shape[1], ww)
    low = harmonized_low.astype(np.float32)
    return _blend_bands(composite_full, mask_full, band_rows,
                        lambda r0, r1, src: np.clip(_upsample_rows(low, (hh, ww), r0, r1, xtaps), 0.0, 1.0))


def _transfer_one(comp: np.ndarray, harm: np.ndarray, mask: np.ndarray, mode: str,
                  comp_low: np.ndarray | None, radius, eps, presmooth) -> np.ndarray:
    hl, wl = harm.shape[:2]
    if mode == "upsample":
        return _upsample_paste(comp, harm, mask)
    if comp_low is None:
        comp_low = _resize_area(comp, (hl, wl))
    mask_low = _resize_area(mask, (hl, wl))
    if presmooth > 0:
        # fit on the same low-pass of both images: the model's output is softer than the composite
        # (VAE), and a fit on sharp -> soft pairs would learn to flatten the foreground's detail
        import cv2

        comp_low = cv2.GaussianBlur(comp_low, (0, 0), presmooth)
        harm = cv2.GaussianBlur(harm, (0, 0), presmooth)
    coef = fit_color_transform(comp_low, harm, mask_low, radius=radius, eps=eps)
    return apply_color_transform(comp, coef, mask)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise R2RUserError(
            f"transfer_harmonization: mode must be one of {', '.join(MODES)}; got {mode!r}. "
            f"'color_transform' keeps the original detail (default), 'upsample' pastes the resized result."
        )


def transfer_harmonization(composite_full, harmonized_low, mask_full, mode: str = DEFAULT_MODE, *,
                           composite_low=None, radius: int | None = None, eps: float = 5e-3,
                           presmooth: float = 1.5):
    """Carry a working-resolution harmonization to the composite's full resolution.

    Args:
        composite_full: the original composite, numpy ``HxWx3`` (uint8 or float in [0,1]) or a
            torch tensor ``[B,3,H,W]`` in [0,1].
        harmonized_low: the model output covering the same field of view at the working
            resolution (any size; an aspect-ratio change from squashing is fine). Same kind
            (numpy / torch) and batch size as ``composite_full``; crop away any padding first.
        mask_full: the foreground mask at full resolution, numpy ``HxW`` (0/1, 0/255 or soft)
            or torch ``[B,1,H,W]``. Soft values blend (feathered paste-back).
        mode: ``"color_transform"`` (default) or ``"upsample"`` (see the module docstring).
        composite_low: optional, the composite exactly as the model saw it at the working
            resolution (same size as ``harmonized_low``); defaults to an area-downscale of
            ``composite_full``. Only used by ``"color_transform"``.
        radius: fitting window radius in working-resolution pixels (default ``min(h,w)/64``).
        eps: regularisation of the local fits toward the global foreground fit (larger =
            smoother, more global colour change).
        presmooth: Gaussian sigma (working-resolution pixels) applied to both working-resolution
            images before fitting, so the fit sees colour, not the detail the VAE softened
            (0 disables; without it the fit learns to flatten the foreground's texture).

    Returns:
        the full-resolution result, same kind/dtype as ``composite_full``; outside the mask it
        equals ``composite_full`` exactly.
    """
    _check_mode(mode)
    if eps <= 0:
        raise R2RUserError(f"transfer_harmonization: eps must be > 0; got {eps}. Try 5e-3.")
    if presmooth < 0:
        raise R2RUserError(f"transfer_harmonization: presmooth must be >= 0; got {presmooth}. Try 1.5.")
    if radius is not None and int(radius) < 1:
        raise R2RUserError(f"transfer_harmonization: radius must be >= 1 pixel; got {radius}.")
    if isinstance(composite_full, np.ndarray):
        comp, was_uint8 = _as_float_image(composite_full, "composite_full")
        harm, _ = _as_float_image(harmonized_low, "harmonized_low")
        mask = _as_float_mask(mask_full, comp.shape[:2])
        clow = None
        if composite_low is not None:
            clow, _ = _as_float_image(composite_low, "composite_low")
            if clow.shape != harm.shape:
                raise R2RUserError(
                    f"composite_low must have the size of harmonized_low {harm.shape[:2]}; got "
                    f"{clow.shape[:2]}. Pass the composite as the model saw it, or leave it out."
                )
        out = _transfer_one(comp, np.clip(harm, 0, 1), mask, mode, clow, radius, eps, presmooth)
        if was_uint8:
            return _to_uint8(out)
        # bit-exact background: copy untouched pixels from the input
        bg = mask <= 0
        out[bg] = comp[bg]
        return out.astype(composite_full.dtype, copy=False)
    return _transfer_torch(composite_full, harmonized_low, mask_full, mode, composite_low, radius, eps, presmooth)


def _transfer_torch(composite_full, harmonized_low, mask_full, mode, composite_low, radius, eps, presmooth):
    import torch

    def check(t, name, channels):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != channels:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise R2RUserError(
                f"{name}: expected a torch tensor [B,{channels},H,W] (or numpy images for all "
                f"inputs); got {got}."
            )
        if not torch.isfinite(t).all():
            raise R2RUserError(f"{name}: contains NaN or infinite values; clean the input first.")

    check(composite_full, "composite_full", 3)
    check(harmonized_low, "harmonized_low", 3)
    check(mask_full, "mask_full", 1)
    b, _, hh, ww = composite_full.shape
    if harmonized_low.shape[0] != b or mask_full.shape[0] != b:
        raise R2RUserError(
            f"transfer_harmonization: batch sizes differ (composite {b}, harmonized "
            f"{harmonized_low.shape[0]}, mask {mask_full.shape[0]}); pass one result per composite."
        )
    if tuple(mask_full.shape[2:]) != (hh, ww):
        raise R2RUserError(
            f"mask_full is {mask_full.shape[3]}x{mask_full.shape[2]} but composite_full is {ww}x{hh} "
            "(WxH); resize the mask to the composite's size."
        )
    if composite_low is not None:
        check(composite_low, "composite_low", 3)
    outs = []
    for i in range(b):
        comp = composite_full[i].detach().float().permute(1, 2, 0).cpu().numpy()
        harm = harmonized_low[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        mask = mask_full[i, 0].detach().float().clamp(0, 1).cpu().numpy()
        clow = None
        if composite_low is not None:
            clow = composite_low[i].detach().float().permute(1, 2, 0).cpu().numpy()
        out = _transfer_one(comp, harm, mask, mode, clow, radius, eps, presmooth)
        bg = mask <= 0
        out[bg] = comp[bg]
        outs.append(torch.from_numpy(out).permute(2, 0, 1))
    res = torch.stack(outs).to(device=composite_full.device, dtype=composite_full.dtype)
    # keep the background bit-exact in the caller's dtype too
    return torch.where(mask_full > 0, res, composite_full)


def color_transform_and_paste(result_working, prepared, mode: str = "auto", feather: int | None = None, **kwargs):
    """Like :func:`r2r.imaging.pasteback.upsample_and_paste` (paste-back on) with a choice of full-resolution mode.

    ``mode="auto"`` (default) uses ``"color_transform"`` when the original is larger than the
    working resolution (more than 5% on the long side) and ``"upsample"`` otherwise (at the
    working size itself the model's pixels are pasted directly, nothing to carry over).

    ``result_working``: the decoded ``[B,3,h,w]`` image in [0,1] on the working canvas of
    ``prepared`` (from :func:`r2r.imaging.prepare`). The padding is cropped off, the colour
    transform is fitted against the composite exactly as the model saw it, and the result is
    pasted over ``prepared.original_composite`` with the same feathered alpha as
    ``pasteback.upsample_and_paste`` (``feather=None``: one latent cell; 0: the soft mask itself).
    Extra keyword arguments go to :func:`transfer_harmonization` (``radius``, ``eps``, ``presmooth``).
    """
    from . import pasteback

    geom = prepared.geometry
    if mode == "auto":
        mode = "color_transform" if geom.scale > 1.05 else "upsample"
    elif mode not in MODES:
        raise R2RUserError(
            f"color_transform_and_paste: mode must be 'auto', {', '.join(repr(m) for m in MODES)}; got {mode!r}."
        )
    if tuple(result_working.shape[-2:]) != tuple(geom.working_size):
        raise R2RUserError(
            f"color_transform_and_paste expects a result at the working resolution {tuple(geom.working_size)}; got "
            f"{tuple(result_working.shape[-2:])}. Pass the decoded image from the same prepare() call."
        )
    top, bottom, left, right = geom.padding
    h, w = geom.working_size
    low = result_working[..., top: h - bottom, left: w - right].float().clamp(0, 1)
    comp_low = (prepared.composite_pm1.float() * 0.5 + 0.5)[..., top: h - bottom, left: w - right].clamp(0, 1)
    orig = prepared.original_composite.float()
    soft = prepared.original_mask.float()
    if soft.shape[0] != orig.shape[0]:
        soft = soft.expand(orig.shape[0], *soft.shape[1:])
    if low.shape[0] != orig.shape[0]:
        raise R2RUserError(
            f"color_transform_and_paste: {low.shape[0]} results for {orig.shape[0]} composites; pass one result per composite."
        )
    alpha = pasteback.feather_alpha(soft, pasteback.default_feather(geom) if feather is None else int(feather))
    return transfer_harmonization(orig, low.to(orig.device), alpha, mode=mode,
                                  composite_low=comp_low.to(orig.device), **kwargs)


def to_original_size(result_working, prepared, *, paste_back: bool = True, feather: int | None = None,
                     mode: str = "auto"):
    """The one way results go back to the original resolution (pipeline, CLI and nodes).

    ``mode``: ``"auto"`` (default) = ``"color_transform"`` when the original is larger than the
    working resolution, else ``"upsample"``; ``"upsample"`` = :func:`r2r.imaging.pasteback.upsample_and_paste`;
    ``"color_transform"`` = :func:`color_transform_and_paste`. Without ``paste_back`` the decoded image
    is simply resized (:func:`r2r.imaging.pasteback.upsample_and_paste`), whatever the mode.
    """
    from . import pasteback

    check_choice(mode, FULLRES_MODES, "fullres_mode")
    if mode == "auto":
        mode = "color_transform" if prepared.geometry.scale > 1.05 else "upsample"
    if mode == "color_transform" and paste_back:
        return color_transform_and_paste(result_working, prepared, mode="color_transform", feather=feather)
    return pasteback.upsample_and_paste(result_working, prepared, paste_back=paste_back, feather=feather)
