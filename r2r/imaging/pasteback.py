"""The feathered paste-back: results at the working resolution back onto the original image.

``upsample_and_paste`` resizes a working-resolution result to the original size and keeps the
original background outside a feathered band around the mask (bit-exact where alpha is 0).
:func:`r2r.imaging.fullres.to_original_size` is the one entry point that chooses between this and the
colour-transform mode.
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError
from .geometry import Geometry, from_working
from .inputs import broadcast_batch, to_image_tensor, to_mask_tensor
from .preparation import Prepared


def default_feather(geometry: Geometry) -> int:
    """One latent cell (8 working pixels) in original pixels, at least 1."""
    return max(1, int(round(8 * geometry.scale)))


def feather_alpha(mask_soft, feather: int):
    """Paste-back alpha ``[B,1,H,W]``: the soft mask, plus a linear ramp over ``feather`` px
    OUTSIDE the binarised mask (``1 - d / (feather + 1)`` at Euclidean distance ``d``).
    Pixels farther than ``feather`` px from the mask get alpha exactly 0, so they keep the
    original background bit for bit."""
    import cv2
    import torch

    if not isinstance(mask_soft, torch.Tensor) or mask_soft.ndim != 4:
        mask_soft = to_mask_tensor(mask_soft, "mask")
    if feather is None or feather <= 0:
        return mask_soft
    binary = (mask_soft >= 0.5).cpu().numpy()
    ramps = []
    for i in range(binary.shape[0]):
        background = (~binary[i, 0]).astype(np.uint8)
        dist = cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        ramp = np.where(dist <= feather, 1.0 - dist / (feather + 1.0), 0.0).astype(np.float32)
        ramp[binary[i, 0]] = 0.0
        ramps.append(torch.from_numpy(ramp))
    return torch.maximum(mask_soft, torch.stack(ramps)[:, None].to(mask_soft.device))


def upsample_and_paste(result_working, prepared: Prepared, original_composite=None, original_mask=None,
                       paste_back: bool = True, feather: int | None = None):
    """Bring a working-resolution result ``[B,3,h,w]`` in [0, 1] back to the original size.

    With ``paste_back`` (default) the original composite is kept outside the feathered
    mask: ``out = alpha * result + (1 - alpha) * original`` where alpha is
    :func:`feather_alpha` (``feather=None`` -> :func:`default_feather`, ``0`` -> the soft
    mask itself, i.e. the official hard paste for binary masks). Pixels with alpha 0 are
    the original values bit for bit.
    """
    import torch

    geometry = prepared.geometry
    if tuple(result_working.shape[-2:]) != tuple(geometry.working_size):
        raise R2RUserError(
            f"restore expects a result at the working resolution {geometry.working_size}; got "
            f"{tuple(result_working.shape[-2:])}. Pass the decoded image from the same prepare() call."
        )
    out = from_working(result_working.float(), geometry).clamp(0, 1)
    if not paste_back:
        return out
    orig = prepared.original_composite if original_composite is None else to_image_tensor(original_composite)
    soft = prepared.original_mask if original_mask is None else to_mask_tensor(original_mask)
    orig, soft = orig.to(out.device), soft.to(out.device)
    orig, soft = broadcast_batch(composite=orig, mask=soft)
    if tuple(orig.shape) != tuple(out.shape):
        raise R2RUserError(
            f"restore: the original composite {tuple(orig.shape)} does not match the result {tuple(out.shape)}; "
            "pass the composite and mask given to prepare()."
        )
    alpha = feather_alpha(soft, default_feather(geometry) if feather is None else int(feather))
    blended = out * alpha + orig * (1.0 - alpha)
    return torch.where(alpha > 0, blended, orig)
