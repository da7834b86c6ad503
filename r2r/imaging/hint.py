"""The 7-channel Harmony Controller hint (ref §a.2).

Per image, with the composite as ``HxWx3 uint8`` RGB and a boolean foreground mask:

1. paint everything outside the mask white (255),
2. convert to grey with OpenCV's *BGR*->GRAY formula applied to the RGB array
   (so the weights are 0.114 R + 0.587 G + 0.299 B, exactly as the official code),
3. Canny with thresholds 100 / 200, replicated to 3 channels,
4. compose: the Canny map inside the mask, the composite outside,
5. hint = [composed map (3, [-1, 1]), composite (3, [-1, 1]), mask (1, {0, 1})].

:func:`hint_pre_image` does steps 1-4 (the "pre-image", uint8) and
:func:`make_hint` all five at one resolution. The official pipeline computes the
pre-image at the image's ORIGINAL resolution and then resizes it (bilinear,
antialiased) to the working resolution; :func:`r2r.imaging.prepare` does the same
by default (``canny_at="original"``) and can instead run Canny on the resized
composite (``canny_at="working"``, sharper one-pixel edges at the working size).
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError

CANNY_LOW = 100
CANNY_HIGH = 200


def _check(composite_uint8_rgb, mask_bool):
    comp = np.asarray(composite_uint8_rgb)
    if comp.dtype != np.uint8 or comp.ndim != 3 or comp.shape[2] != 3:
        raise R2RUserError(
            "make_hint expects the composite as an HxWx3 uint8 RGB array; "
            f"got dtype {comp.dtype} with shape {tuple(comp.shape)}. "
            "Convert with (image * 255).round().astype(np.uint8) and drop any alpha channel."
        )
    mask = np.asarray(mask_bool)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != comp.shape[:2]:
        raise R2RUserError(
            f"make_hint expects a mask of the composite's size {comp.shape[:2]}; got shape {tuple(mask.shape)}. "
            "Resize the mask to the image size first."
        )
    if mask.dtype != np.bool_:
        mask = mask >= (0.5 if mask.dtype.kind == "f" else 1)
    return np.ascontiguousarray(comp), mask


def hint_pre_image(composite_uint8_rgb, mask_bool) -> np.ndarray:
    """Steps 1-4: the Canny-inside / composite-outside map, ``HxWx3 uint8``."""
    import cv2

    comp, mask = _check(composite_uint8_rgb, mask_bool)
    white_outside = comp.copy()
    white_outside[~mask] = 255
    # The official code feeds an RGB array to BGR2GRAY: keep that (swapped luma weights).
    gray = cv2.cvtColor(white_outside, cv2.COLOR_BGR2GRAY)
    edges = cv2.Canny(gray, CANNY_LOW, CANNY_HIGH)
    edges3 = np.repeat(edges[..., None], 3, axis=2)
    return np.where(mask[..., None], edges3, comp)


def uint8_to_pm1(array_hwc_uint8):
    """``HxWxC uint8`` -> torch ``[C,H,W]`` float32 in [-1, 1], computed like ToTensor + Normalize(0.5, 0.5)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array_hwc_uint8)).permute(2, 0, 1).float().div(255.0)
    return (t - 0.5) / 0.5


def make_hint(composite_uint8_rgb, mask_bool):
    """The full 7-channel hint at the input's resolution: torch ``[7,H,W]`` float32.

    Channels 0-2: composed Canny/composite map in [-1, 1]; 3-5: composite in [-1, 1];
    6: the mask in {0, 1} (not mapped to [-1, 1]).
    """
    import torch

    comp, mask = _check(composite_uint8_rgb, mask_bool)
    pre = hint_pre_image(comp, mask)
    mask_t = torch.from_numpy(mask.astype(np.float32))[None]
    return torch.cat([uint8_to_pm1(pre), uint8_to_pm1(comp), mask_t], dim=0)


def assemble_hint(pre_pm1, composite_pm1, mask01):
    """Concatenate already-resized parts (``[B,3,h,w]``, ``[B,3,h,w]``, ``[B,1,h,w]``) into ``[B,7,h,w]``."""
    import torch

    return torch.cat([pre_pm1, composite_pm1, mask01.to(pre_pm1.dtype)], dim=1)
