"""The weight-free harmonizer: masked colour-statistics transfer in CIE Lab.

Reinhard et al. (2001)-style mean/std matching, restricted to regions: the
foreground's per-channel Lab mean and standard deviation are moved to those of the
background (or of a user-given reference region), with a strength::

    lab_fg' = (lab_fg - mean_fg) * clamp(std_ref / std_fg) + mean_ref
    out     = lab -> RGB of  lab + strength * (lab_fg' - lab)
    image   = out * mask + composite * (1 - mask)        (soft masks blend)

Statistics are mask-weighted (soft masks weigh pixels by their value), so the
cost is a few passes over the image at any resolution. It needs no model weights:
it is the instant fallback when R2R weights are absent and the baseline in every
quality comparison. Pixels where the mask is exactly 0 are returned bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError
from ..imaging.preparation import MIN_REFERENCE_SIDE  # the R2R pipeline's rule
from .inputs import fraction, image_bchw, image_hwc, is_torch, mask_weights_b1hw, mask_weights_hw

__all__ = ["harmonize_statistics", "harmonize_statistics_torch", "statistics_params", "apply_statistics",
           "STD_RATIO_LIMITS"]

#: the std ratio is clamped to this range so a flat foreground (std ~ 0) or a flat
#: reference cannot blow the contrast up or flatten it completely.
STD_RATIO_LIMITS = (0.25, 4.0)
_EPS = 1e-6


def _check_strength(strength):
    return fraction(strength, "strength", "0 = unchanged, 1 = full statistics transfer.")


def _check_regions(fg_weight, ref_weight, reference_mask_given):
    """Refuse an empty foreground or reference region (weights summed per batch item: ``[B]``).
    ``reference_mask_given``: whether a region was given (True: reference_mask; a string: its name)."""
    if bool((fg_weight < 1e-3).any()):
        raise R2RUserError("The mask is empty, so there is no foreground to harmonize. "
                           "Draw the foreground in white on black.")
    if bool((ref_weight < 1e-3).any()):
        raise R2RUserError(
            "The reference region is empty: "
            + (f"{reference_mask_given if isinstance(reference_mask_given, str) else 'reference_mask'} has no pixel "
               "above 0. Mark the region in white." if reference_mask_given else
               "the mask covers the whole image, so there is no background. Pass reference_mask= to name a region.")
        )


def _bbox(w):
    rows = np.flatnonzero(w.any(axis=1))
    cols = np.flatnonzero(w.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _unit(x):
    """float32 [0, 1] contiguous copy of a uint8 or float image piece."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _region_stats(f, w, max_samples=1 << 18):
    """Weighted per-channel Lab mean/std of the pixels where ``w`` > 0.

    Measured on a regular sub-grid of the region's bounding box (about ``max_samples``
    pixels), so the cost does not grow with the resolution.
    """
    import cv2

    y0, y1, x0, x1 = _bbox(w > 0)
    k = max(1, int(np.sqrt((y1 - y0) * (x1 - x0) / max_samples)))
    while True:
        ws = w[y0:y1:k, x0:x1:k]
        if float(ws.sum()) >= 1e-3 or k == 1:
            break
        k = 1
    lab = cv2.cvtColor(_unit(f[y0:y1:k, x0:x1:k]), cv2.COLOR_RGB2Lab).reshape(-1, 3)
    ws = ws.reshape(-1).astype(np.float64)
    tot = ws.sum()
    mean = ws @ lab / tot
    var = ws @ (lab - mean) ** 2 / tot
    return mean, np.sqrt(np.maximum(var, 0.0))


def _transfer_params(mean_f, std_f, mean_r, std_r):
    lo, hi = STD_RATIO_LIMITS
    ratio = np.clip(std_r / np.maximum(std_f, _EPS), lo, hi)
    return ratio, mean_r - mean_f * ratio  # lab' = lab * ratio + shift


def _reference_photo(reference_image, reference_image_mask, reference_mask):
    """Another photo (HxWx3) and its region (default: the whole photo) -> (image, weights), checked."""
    if reference_image_mask is not None and reference_image is None:
        raise R2RUserError("reference_image_mask needs the photo it belongs to: pass reference_image= too.")
    if reference_image is None:
        return None, None
    if reference_mask is not None:
        raise R2RUserError("Give either reference_mask (a region of the composite) or reference_image (another "
                           "photo), not both.")
    ref = image_hwc(reference_image, "reference_image", rgb=True, unit_range=True)
    _check_photo_size(ref.shape[1], ref.shape[0])
    w = np.ones(ref.shape[:2], np.float32) if reference_image_mask is None else \
        mask_weights_hw(reference_image_mask, ref.shape[:2], "reference_image_mask")
    return ref, w


def _numpy_inputs(composite, mask, strength, reference_mask, reference_image, reference_image_mask):
    """Checked numpy inputs -> (strength, image, mask weights, reference image, reference weights)."""
    s = _check_strength(strength)
    img = image_hwc(composite, "composite", rgb=True, unit_range=True)
    m = mask_weights_hw(mask, img.shape[:2], "mask")
    photo, photo_w = _reference_photo(reference_image, reference_image_mask, reference_mask)
    if photo is not None:
        ref_img, ref_w = photo, photo_w
    else:
        ref_img = img
        ref_w = (1.0 - m) if reference_mask is None else mask_weights_hw(reference_mask, img.shape[:2],
                                                                         "reference_mask")
    _check_regions(np.array([m.sum()]), np.array([ref_w.sum()]),
                   "reference_image_mask" if photo is not None else reference_mask is not None)
    return s, img, m, ref_img, ref_w


def _check_photo_size(width: int, height: int) -> None:
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise R2RUserError(f"The reference_image must be at least {MIN_REFERENCE_SIDE}x{MIN_REFERENCE_SIDE} pixels; "
                           f"got {width}x{height} (WxH). Use a larger photo (its colours are what matter; its size "
                           "is not).")


def statistics_params(composite, mask, strength=1.0, reference_mask=None, reference_image=None,
                      reference_image_mask=None):
    """The Lab transfer :func:`harmonize_statistics` applies, as numbers: ``(gain, offset)``, two float32
    arrays of 3 (L, a, b) with ``lab' = lab * gain + offset`` inside the mask (``strength`` included).

    Parameters of several images can be blended linearly (e.g. smoothed over the frames of a clip,
    :mod:`r2r.video`) and applied with :func:`apply_statistics`. Same inputs and checks as
    :func:`harmonize_statistics` (numpy images)."""
    s, img, m, ref_img, ref_w = _numpy_inputs(composite, mask, strength, reference_mask, reference_image,
                                              reference_image_mask)
    if s == 0.0:
        return np.ones(3, np.float32), np.zeros(3, np.float32)
    mean_f, std_f = _region_stats(img, m)
    mean_r, std_r = _region_stats(ref_img, ref_w)
    ratio, shift = _transfer_params(mean_f, std_f, mean_r, std_r)
    return (1.0 + s * (ratio - 1.0)).astype(np.float32), (s * shift).astype(np.float32)


def apply_statistics(composite, mask, gain, offset):
    """``lab * gain + offset`` inside ``mask`` (soft values blend; pixels where the mask is 0 are
    returned bit for bit). ``composite``: HxWx3 uint8 or float in [0, 1] (returned in the same dtype)."""
    import cv2

    img = image_hwc(composite, "composite", rgb=True, unit_range=True)
    m = mask_weights_hw(mask, img.shape[:2], "mask")
    out = img.copy()
    if not (m > 0).any():
        return out
    gain = np.asarray(gain, np.float32).reshape(3)
    offset = np.asarray(offset, np.float32).reshape(3)
    # applied on the foreground's bounding box only
    y0, y1, x0, x1 = _bbox(m > 0)
    crop = _unit(img[y0:y1, x0:x1])
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2Lab)
    lab *= gain
    lab += offset
    rgb = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)
    mc = m[y0:y1, x0:x1, None]
    res = crop + (rgb - crop) * mc
    region = out[y0:y1, x0:x1]
    if img.dtype == np.uint8:
        res = np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
    else:
        res = res.astype(img.dtype)
    np.copyto(region, res, where=mc > 0)
    return out


def harmonize_statistics(composite, mask, strength=1.0, reference_mask=None, reference_image=None,
                         reference_image_mask=None):
    """Match the foreground's Lab statistics to the background's (or ``reference_mask``'s, or another
    photo's).

    composite: HxWx3 RGB, uint8 or float in [0, 1] (returned in the same dtype).
    mask: HxW foreground (bool, 0..255 uint8 or 0..1 float; soft values blend).
    strength: 0 = unchanged .. 1 = full transfer. reference_mask: HxW region whose
    statistics the foreground takes (default: the background, 1 - mask). reference_image:
    another photo (any size) whose statistics the foreground takes, over ``reference_image_mask``
    (its region; default the whole photo).
    Torch ``[B,3,H,W]`` tensors are routed to :func:`harmonize_statistics_torch`.
    The transfer is :func:`statistics_params` applied by :func:`apply_statistics`.
    """
    if is_torch(composite):
        return harmonize_statistics_torch(composite, mask, strength, reference_mask, reference_image,
                                          reference_image_mask)
    s, img, m, _, _ = _numpy_inputs(composite, mask, strength, reference_mask, reference_image,
                                    reference_image_mask)
    if s == 0.0:
        return img.copy()
    gain, offset = statistics_params(img, m, s, reference_mask, reference_image, reference_image_mask)
    return apply_statistics(img, m, gain, offset)


# ----------------------------------------------------------------------------- torch


def _srgb_to_lab_torch(x):
    """[B,3,H,W] sRGB in [0,1] -> CIE Lab (D65), same formulas as OpenCV's float path."""
    import torch

    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    M = x.new_tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                      [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,bjhw->bihw", M, lin)
    xyz = xyz / x.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    d = 6.0 / 29.0
    f = torch.where(xyz > d**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * d * d) + 4.0 / 29.0)
    L = 116.0 * f[:, 1:2] - 16.0
    a = 500.0 * (f[:, 0:1] - f[:, 1:2])
    b = 200.0 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([L, a, b], dim=1)


_XYZ_TO_RGB = np.linalg.inv(np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                                      [0.019334, 0.119193, 0.950227]], np.float64)).astype(np.float32)


def _lab_to_srgb_torch(lab):
    import torch

    fy = (lab[:, 0:1] + 16.0) / 116.0
    fx = fy + lab[:, 1:2] / 500.0
    fz = fy - lab[:, 2:3] / 200.0
    f = torch.cat([fx, fy, fz], dim=1)
    d = 6.0 / 29.0
    xyz = torch.where(f > d, f**3, 3 * d * d * (f - 4.0 / 29.0))
    xyz = xyz * lab.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    Minv = lab.new_tensor(_XYZ_TO_RGB)  # inverted on the host (no float64 on the device: MPS has none)
    lin = torch.einsum("ij,bjhw->bihw", Minv, xyz).clamp(0.0, 1.0)
    return torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def harmonize_statistics_torch(composite, mask, strength=1.0, reference_mask=None, reference_image=None,
                               reference_image_mask=None):
    """Torch variant: composite ``[B,3,H,W]`` float in [0,1], mask ``[B,1,H,W]`` / ``[B,H,W]``
    (soft), optional reference_mask of the same shape, or a reference photo ``[R,3,H',W']`` (R = 1 or B;
    one composite with R photos gives R results) with its optional region; statistics per batch item."""
    import torch

    if reference_image is not None or reference_image_mask is not None:
        return _torch_with_photo(composite, mask, strength, reference_mask, reference_image, reference_image_mask)

    s = _check_strength(strength)
    if not torch.is_tensor(composite) or composite.ndim != 4:
        raise R2RUserError(
            f"composite must be a [B,3,H,W] float tensor in [0,1]; got {getattr(composite, 'shape', type(composite))}."
        )
    image_bchw(composite, "composite", channels=3, unit_range=True)
    B, hw = composite.shape[0], composite.shape[-2:]
    m = mask_weights_b1hw(mask, B, hw, "mask", device=composite.device)
    w = (1.0 - m) if reference_mask is None else mask_weights_b1hw(reference_mask, B, hw, "reference_mask",
                                                                   device=composite.device)
    _check_regions(m.sum(dim=(1, 2, 3)), w.sum(dim=(1, 2, 3)), reference_mask is not None)
    if s == 0.0:
        return composite.clone()
    x = composite.float().clamp(0.0, 1.0)
    lab = _srgb_to_lab_torch(x)
    mean_f, std_f = _stats_torch(lab, m)
    mean_r, std_r = _stats_torch(lab, w)
    return _apply_torch(composite, x, lab, m, s, mean_f, std_f, mean_r, std_r)


def _stats_torch(lab, weight):
    tot = weight.sum(dim=(2, 3), keepdim=True)
    mean = (lab * weight).sum(dim=(2, 3), keepdim=True) / tot
    var = (((lab - mean) ** 2) * weight).sum(dim=(2, 3), keepdim=True) / tot
    return mean, var.clamp_min(0).sqrt()


def _torch_with_photo(composite, mask, strength, reference_mask, reference_image, reference_image_mask):
    import torch

    s = _check_strength(strength)
    if reference_mask is not None:
        raise R2RUserError("Give either reference_mask (a region of the composite) or reference_image (another "
                           "photo), not both.")
    if reference_image is None:
        raise R2RUserError("reference_image_mask needs the photo it belongs to: pass reference_image= too.")
    image_bchw(composite, "composite", channels=3, unit_range=True)
    image_bchw(reference_image, "reference_image", channels=3, unit_range=True)
    _check_photo_size(int(reference_image.shape[-1]), int(reference_image.shape[-2]))
    B, R = composite.shape[0], reference_image.shape[0]
    if R not in (1, B) and B != 1:
        raise R2RUserError(f"Got {R} reference images for {B} composites; give one, one per composite, or one "
                           "composite with several references.")
    n = max(B, R)
    photo = reference_image.to(composite.device).float().clamp(0.0, 1.0)
    pw = torch.ones_like(photo[:, :1]) if reference_image_mask is None else mask_weights_b1hw(
        reference_image_mask, R, photo.shape[-2:], "reference_image_mask", device=composite.device)
    comp = composite.expand(n, *composite.shape[1:]) if B == 1 else composite
    m = mask_weights_b1hw(mask, B, composite.shape[-2:], "mask", device=composite.device).expand(n, -1, -1, -1)
    _check_regions(m.sum(dim=(1, 2, 3)), pw.sum(dim=(1, 2, 3)), "reference_image_mask")
    if s == 0.0:
        return comp.clone()
    x = comp.float().clamp(0.0, 1.0)
    lab = _srgb_to_lab_torch(x)
    mean_f, std_f = _stats_torch(lab, m)
    mean_r, std_r = _stats_torch(_srgb_to_lab_torch(photo), pw)
    return _apply_torch(comp, x, lab, m, s, mean_f, std_f, mean_r.expand_as(mean_f), std_r.expand_as(std_f))


def _apply_torch(composite, x, lab, m, s, mean_f, std_f, mean_r, std_r):
    import torch

    lo, hi = STD_RATIO_LIMITS
    ratio = (std_r / std_f.clamp_min(_EPS)).clamp(lo, hi)
    new = lab + s * (lab * ratio + (mean_r - mean_f * ratio) - lab)
    rgb = _lab_to_srgb_torch(new)
    out = x * (1.0 - m) + rgb * m
    out = torch.where(m > 0, out, composite.float())
    return out.to(composite.dtype)
