"""ComfyUI tensors <-> r2r tensors, with the input checks every node shares.

ComfyUI: IMAGE ``[B,H,W,C]`` float 0..1, MASK ``[B,H,W]`` float 0..1 (foreground = 1 for
R2R; ``LoadImage`` gives ``1 - alpha``). r2r: images ``[B,3,H,W]``, masks ``[B,1,H,W]``.

The checks match the pipeline's (r2r.imaging): an IMAGE must be a float tensor in [0, 1]
(a uint8 or 0..255 IMAGE, an IMAGE in [-1, 1], NaN/inf, wrong shapes or channel counts are
refused with a message saying how to fix it); values within 1e-3 of the range are clamped.
"""

from __future__ import annotations

import math

from ..r2r.errors import R2RUserError

LOADIMAGE_PLACEHOLDER = 64  # LoadImage returns a 64x64 zero mask for images without alpha
RANGE_TOLERANCE = 1e-3


def _range_hint(lo: float, hi: float, allow_pm1_hint: bool = True) -> str:
    if hi > 1.5:
        return " It looks like 0..255 values: divide by 255 (e.g. with a math/expression node) before this node."
    if allow_pm1_hint and lo < -0.5:
        return " It looks like [-1, 1] values: convert them with (x + 1) / 2 before this node."
    return " Clamp the values to 0..1 before this node."


def _check_float(t, name: str, what: str, node: str):
    """dtype and finiteness checks shared by IMAGE and MASK; returns a float32 CPU tensor."""
    import torch

    prefix = f"R2R {node}: " if node else "R2R: "
    if t.device.type == "meta":
        raise R2RUserError(f"{prefix}'{name}' is a tensor on the 'meta' device (a shape without data); an {what} "
                           "needs real pixels. Check the node that made it.")
    if t.dtype == torch.bool:
        if what == "MASK":
            return t.to("cpu", torch.float32)
        raise R2RUserError(f"{prefix}'{name}' is a boolean tensor; an {what} must be float 0..1. "
                           "Convert it with .float().")
    if t.dtype == torch.uint8 or not t.is_floating_point():
        raise R2RUserError(
            f"{prefix}'{name}' has dtype {str(t.dtype).replace('torch.', '')}; ComfyUI's {what} is float32 in "
            "0..1. Divide by 255 and convert to float (the node that made it does not follow ComfyUI's "
            f"{what} convention)."
        )
    t = t.detach().to("cpu", torch.float32)
    if t.numel() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise R2RUserError(f"{prefix}'{name}' contains {bad} NaN or infinite value(s). Check the node that "
                           "produced it (a division by zero, or a broken image file).")
    if t.numel():
        lo, hi = float(t.min()), float(t.max())
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise R2RUserError(
                f"{prefix}'{name}' has values in [{lo:.4g}, {hi:.4g}]; a ComfyUI {what} is in 0..1."
                + _range_hint(lo, hi, allow_pm1_hint=what == "IMAGE")
            )
    return t.clamp(0, 1)


def check_number(value, name: str, node: str, lo=None, hi=None, integer: bool = False):
    """A widget value checked like the schema's min/max (API callers and direct calls skip those)."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise R2RUserError(f"R2R {node}: '{name}' must be {kind}; got {value!r}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise R2RUserError(f"R2R {node}: '{name}' must be {bounds}; got {value!r}.")
    return value


def image_to_nchw(image, name: str = "image", node: str = ""):
    """IMAGE ``[B,H,W,C]`` (or ``[H,W,C]``) -> float32 ``[B,3,H,W]`` in [0,1] on the CPU."""
    import torch

    prefix = f"R2R {node}: " if node else "R2R: "
    if not isinstance(image, torch.Tensor):
        raise R2RUserError(
            f"{prefix}'{name}' must be an IMAGE tensor [batch, height, width, channels]; got {type(image).__name__}. "
            "Connect an IMAGE output (e.g. Load Image) to it."
        )
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        hint = " Connect an IMAGE output, not a MASK or LATENT."
        if image.ndim == 4 and image.shape[1] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            hint = " It looks channels-first [B,C,H,W]: ComfyUI's IMAGE is channels-last; use image.permute(0, 2, 3, 1)."
        raise R2RUserError(
            f"{prefix}'{name}' must be an IMAGE [batch, height, width, 1|3|4 channels]; got shape "
            f"{list(image.shape)}.{hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise R2RUserError(f"{prefix}'{name}' is empty (shape {list(image.shape)}). Connect at least one image.")
    image = _check_float(image, name, "IMAGE", node)
    image = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:3], 3)
    return image.permute(0, 3, 1, 2).contiguous()


def nchw_to_image(x):
    """``[B,3,H,W]`` in [0,1] -> IMAGE ``[B,H,W,3]`` float32 on the CPU."""
    import torch

    return x.detach().to("cpu", torch.float32).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _mask_bhw(mask, name: str, node: str):
    import torch

    prefix = f"R2R {node}: " if node else "R2R: "
    if not isinstance(mask, torch.Tensor):
        raise R2RUserError(
            f"{prefix}'{name}' must be a MASK tensor [batch, height, width]; got {type(mask).__name__}. "
            "Connect a MASK output (e.g. the MASK of Load Image)."
        )
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    elif mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 4 and mask.shape[-1] in (3, 4):
        raise R2RUserError(
            f"{prefix}'{name}' is an IMAGE ({list(mask.shape)}), not a MASK. Use 'Convert Image to Mask' "
            "(choose the channel) or Load Image's MASK output."
        )
    if mask.ndim != 3:
        raise R2RUserError(
            f"{prefix}'{name}' must be a MASK [batch, height, width]; got shape {list(mask.shape)}. "
            "Use 'Convert Image to Mask' if you have a black-and-white IMAGE."
        )
    if 0 in mask.shape:
        raise R2RUserError(f"{prefix}'{name}' is empty (shape {list(mask.shape)}). Connect a real mask.")
    return _check_float(mask, name, "MASK", node)


def mask_to_b1hw(mask, image_hw=None, *, invert: bool = False, name: str = "mask", allow_empty: bool = False,
                 node: str = ""):
    """MASK ``[B,H,W]`` / ``[H,W]`` / ``[B,1,H,W]`` -> float32 ``[B,1,H,W]`` in [0,1].

    With ``image_hw`` the mask is brought to that size: a different size with the same aspect
    ratio is resized (nearest); LoadImage's 64x64 "no alpha" placeholder is detected and
    explained. Without it the mask keeps its own size. ``invert`` flips it (for masks from
    Load Image's alpha, which ComfyUI gives as 1 - alpha). Unless ``allow_empty``, an empty or
    full mask is refused (nothing to harmonize / no background).
    """
    import torch.nn.functional as F

    prefix = f"R2R {node}: " if node else "R2R: "
    mask = _mask_bhw(mask, name, node)
    if image_hw is not None:
        h, w = int(image_hw[0]), int(image_hw[1])
        mh, mw = mask.shape[-2:]
        if (mh, mw) == (LOADIMAGE_PLACEHOLDER, LOADIMAGE_PLACEHOLDER) and (h, w) != (mh, mw) and not mask.any():
            raise R2RUserError(
                f"{prefix}'{name}' is the empty 64x64 mask that Load Image outputs when the image file has no "
                f"alpha channel (the image is {w}x{h}). Paint the foreground in the mask editor "
                "(right-click Load Image -> Open in MaskEditor), or load a mask file with 'Load Image (as Mask)'."
            )
        if (mh, mw) != (h, w):
            if abs(mh / mw - h / w) > 0.01 * (h / w):
                raise R2RUserError(
                    f"{prefix}'{name}' is {mw}x{mh} but the image is {w}x{h} (different aspect ratio). "
                    "Use a mask made for this image, or resize/crop both the same way."
                )
            mask = F.interpolate(mask.unsqueeze(1), size=(h, w), mode="nearest-exact")[:, 0]
    if invert:
        mask = 1.0 - mask
    if not allow_empty:
        for i in range(mask.shape[0]):
            fg = (mask[i] >= 0.5).float().mean().item()
            where = f" (batch item {i})" if mask.shape[0] > 1 else ""
            if fg == 0.0:
                raise R2RUserError(
                    f"{prefix}'{name}'{where} is empty: no pixel is >= 0.5, so there is no foreground to "
                    "harmonize. The foreground must be white (1)."
                    + (" invert_mask is on: switch it off." if invert else
                       " If your mask comes from Load Image's alpha (transparent = 1), switch invert_mask on.")
                )
            if fg == 1.0:
                raise R2RUserError(
                    f"{prefix}'{name}'{where} covers the whole image, so there is no background to take the "
                    "colours from. The foreground must be white (1) and the background black (0)."
                    + (" invert_mask is on: switch it off." if invert else
                       " If your mask is inverted (background white), switch invert_mask on.")
                )
    return mask.unsqueeze(1).contiguous()


def broadcast_batch(*named, node: str = ""):
    """Broadcast ``(name, tensor)`` pairs to a common batch size (size 1 repeats), with the node's name in
    the error (the rule itself is :func:`r2r.imaging.broadcast_batch`)."""
    from ..r2r.imaging import broadcast_batch as broadcast

    try:
        tensors = broadcast(**dict(named))
    except R2RUserError as exc:
        raise R2RUserError(f"{f'R2R {node}: ' if node else 'R2R: '}{exc} Split or repeat the batch "
                           "(e.g. 'Repeat Image Batch') so they agree.") from None
    return [None if t is None else t.contiguous() for t in tensors]


def to_uint8_hwc(x_b3hw_i):
    """One ``[3,H,W]`` float image in [0,1] -> ``HxWx3`` uint8 numpy (for numpy-first r2r code)."""
    import numpy as np

    arr = x_b3hw_i.detach().cpu().permute(1, 2, 0).numpy()
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def to_float_hwc(x_b3hw_i):
    """One ``[3,H,W]`` float image -> ``HxWx3`` float32 numpy in [0,1]."""
    import numpy as np

    return np.ascontiguousarray(x_b3hw_i.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32))
