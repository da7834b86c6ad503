"""ComfyUI tensors <-> r2r tensors, with the input checks every node shares.

ComfyUI: IMAGE ``[B,H,W,C]`` float 0..1, MASK ``[B,H,W]`` float 0..1 (foreground = 1 for
R2R; ``LoadImage`` gives ``1 - alpha``). r2r: images ``[B,3,H,W]``, masks ``[B,1,H,W]``.
"""

from __future__ import annotations

from ..r2r.errors import R2RUserError

LOADIMAGE_PLACEHOLDER = 64  # LoadImage returns a 64x64 zero mask for images without alpha


def image_to_nchw(image, name: str = "image"):
    """IMAGE ``[B,H,W,C]`` (or ``[H,W,C]``) -> float32 ``[B,3,H,W]`` in [0,1] on the CPU."""
    import torch

    if not isinstance(image, torch.Tensor):
        raise R2RUserError(
            f"R2R: '{name}' must be an IMAGE tensor [batch, height, width, channels]; got {type(image).__name__}. "
            "Connect an IMAGE output (e.g. Load Image) to it."
        )
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise R2RUserError(
            f"R2R: '{name}' must be an IMAGE [batch, height, width, 1|3|4 channels]; got shape "
            f"{list(image.shape)}. Connect an IMAGE output, not a MASK or LATENT."
        )
    if image.shape[0] == 0:
        raise R2RUserError(f"R2R: '{name}' is an empty batch (0 images). Connect at least one image.")
    image = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:3], 3)
    image = image.detach().to("cpu", torch.float32)
    if not torch.isfinite(image).all():
        raise R2RUserError(f"R2R: '{name}' contains NaN or infinite values. Check the node that produced it.")
    return image.permute(0, 3, 1, 2).clamp(0, 1).contiguous()


def nchw_to_image(x):
    """``[B,3,H,W]`` in [0,1] -> IMAGE ``[B,H,W,3]`` float32 on the CPU."""
    import torch

    return x.detach().to("cpu", torch.float32).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def mask_to_b1hw(mask, image_hw, *, invert: bool = False, name: str = "mask", allow_empty: bool = False):
    """MASK ``[B,H,W]`` / ``[H,W]`` / ``[B,1,H,W]`` -> float32 ``[B,1,H,W]`` at ``image_hw``.

    ``invert`` flips it (for masks from Load Image's alpha, which ComfyUI gives as
    1 - alpha). A mask of a different size with the same aspect ratio is resized
    (nearest); LoadImage's 64x64 "no alpha" placeholder is detected and explained.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(mask, torch.Tensor):
        raise R2RUserError(
            f"R2R: '{name}' must be a MASK tensor [batch, height, width]; got {type(mask).__name__}. "
            "Connect a MASK output (e.g. the MASK of Load Image)."
        )
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 4 and mask.shape[-1] in (1, 3, 4):  # an IMAGE wired into a MASK input
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise R2RUserError(
            f"R2R: '{name}' must be a MASK [batch, height, width]; got shape {list(mask.shape)}. "
            "Use 'Convert Image to Mask' if you have a black-and-white IMAGE."
        )
    mask = mask.detach().to("cpu", torch.float32)
    if not torch.isfinite(mask).all():
        raise R2RUserError(f"R2R: '{name}' contains NaN or infinite values. Check the node that produced it.")
    h, w = int(image_hw[0]), int(image_hw[1])
    mh, mw = mask.shape[-2:]
    if (mh, mw) == (LOADIMAGE_PLACEHOLDER, LOADIMAGE_PLACEHOLDER) and (h, w) != (mh, mw) and not mask.any():
        raise R2RUserError(
            f"R2R: '{name}' is the empty 64x64 mask that Load Image outputs when the image file has no "
            f"alpha channel (the image is {w}x{h}). Paint the foreground in the mask editor "
            "(right-click Load Image -> Open in MaskEditor), or load a mask file with 'Load Image (as Mask)'."
        )
    if (mh, mw) != (h, w):
        if abs(mh / mw - h / w) > 0.01 * (h / w):
            raise R2RUserError(
                f"R2R: '{name}' is {mw}x{mh} but the image is {w}x{h} (different aspect ratio). "
                "Use a mask made for this image, or resize/crop both the same way."
            )
        mask = F.interpolate(mask.unsqueeze(1), size=(h, w), mode="nearest-exact")[:, 0]
    mask = mask.clamp(0, 1)
    if invert:
        mask = 1.0 - mask
    if not allow_empty:
        for i in range(mask.shape[0]):
            fg = (mask[i] >= 0.5).float().mean().item()
            where = f" (batch item {i})" if mask.shape[0] > 1 else ""
            if fg == 0.0:
                raise R2RUserError(
                    f"R2R: '{name}'{where} is empty: no pixel is >= 0.5, so there is no foreground to harmonize. "
                    "The foreground must be white (1)."
                    + (" invert_mask is on: switch it off." if invert else
                       " If your mask comes from Load Image's alpha (transparent = 1), switch invert_mask on.")
                )
            if fg == 1.0:
                raise R2RUserError(
                    f"R2R: '{name}'{where} covers the whole image, so there is no background to take the "
                    "colours from. The foreground must be white (1) and the background black (0)."
                    + (" invert_mask is on: switch it off." if invert else
                       " If your mask is inverted (background white), switch invert_mask on.")
                )
    return mask.unsqueeze(1).contiguous()


def broadcast_batch(*named):
    """Broadcast ``(name, tensor)`` pairs to a common batch size (size 1 repeats).

    Returns the tensors in order; raises a clear error when sizes disagree.
    """
    sizes = {name: t.shape[0] for name, t in named if t is not None}
    batch = max(sizes.values())
    bad = {n: s for n, s in sizes.items() if s not in (1, batch)}
    if bad:
        listing = ", ".join(f"{n}={s}" for n, s in sizes.items())
        raise R2RUserError(
            f"R2R: batch sizes do not match ({listing}). Each input must have the same number of items "
            "or exactly 1 (which is then used for every item). Split or repeat the batch "
            "(e.g. 'Repeat Image Batch') so they agree."
        )
    out = []
    for _, t in named:
        if t is None:
            out.append(None)
        elif t.shape[0] == batch:
            out.append(t)
        else:
            out.append(t.expand(batch, *t.shape[1:]).contiguous())
    return out


def to_uint8_hwc(x_b3hw_i):
    """One ``[3,H,W]`` float image in [0,1] -> ``HxWx3`` uint8 numpy (for numpy-first r2r code)."""
    import numpy as np

    arr = x_b3hw_i.detach().cpu().permute(1, 2, 0).numpy()
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def to_float_hwc(x_b3hw_i):
    """One ``[3,H,W]`` float image -> ``HxWx3`` float32 numpy in [0,1]."""
    import numpy as np

    return np.ascontiguousarray(x_b3hw_i.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32))
