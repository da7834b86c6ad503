"""User inputs -> tensors: images (torch / numpy / PIL, uint8 or float 0..1) and masks (soft or hard,
any common layout) -> ``[B,3,H,W]`` / ``[B,1,H,W]`` float32 in [0, 1], checked; batch broadcasting.

This is the one mask and image normaliser of the core; the nodes convert ComfyUI's IMAGE/MASK
layouts and then call it (nodes/_convert.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError


def _is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "mode") and hasattr(x, "size")


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"{type(x).__name__} with shape {tuple(shape)} and dtype {dtype}"
    if _is_pil(x):
        return f"PIL image of mode {x.mode!r} and size {x.size}"
    return f"{type(x).__name__}"


def _concat(items, convert, name: str, fix: str):
    """A list of images (or masks) -> one batch tensor; they must have one size."""
    import torch

    if not items:
        raise R2RUserError(f"The {name} list is empty; pass at least one image.")
    parts = [convert(x, name) for x in items]
    sizes = {tuple(p.shape[-2:]) for p in parts}
    if len(sizes) > 1:
        raise R2RUserError(f"All items of one {name} batch must have the same size; got sizes {sorted(sizes)}. {fix}")
    return torch.cat([p.to(parts[0].device) for p in parts], 0)


def _check_tensor(t, name):
    """A real, non-empty tensor: no 'meta' tensors (no data), no empty batch."""
    if t.device.type == "meta":
        raise R2RUserError(f"The {name} is a tensor on the 'meta' device (a shape without data); give a real tensor "
                           "(on the CPU or the GPU).")
    if t.numel() == 0:
        raise R2RUserError(f"The {name} is empty (shape {tuple(t.shape)}); expected at least one image with pixels.")


def _check_finite(t, name):
    import torch

    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise R2RUserError(
            f"The {name} contains {bad} NaN/Inf values; expected finite numbers in [0, 1]. "
            "Check the node or code that produced it (e.g. a division by zero) and clamp/replace NaNs."
        )


def to_image_tensor(image, name: str = "composite"):
    """Any supported image input -> torch ``[B,3,H,W]`` float32 in [0, 1] (on its device).

    Accepts torch ``[B,3,H,W]`` / ``[3,H,W]`` (float 0..1 or uint8), numpy ``HxWx3`` /
    ``BxHxWx3`` (uint8 or float 0..1), PIL images, or a list of same-size images.
    """
    import torch

    if isinstance(image, (list, tuple)):
        return _concat(image, to_image_tensor, name, "Harmonize them one call at a time or resize them to one size.")
    if _is_pil(image):
        if image.mode not in ("RGB", "RGBA", "L", "P", "I;16", "I", "F", "CMYK", "YCbCr", "LA"):
            raise R2RUserError(f"Unsupported PIL mode {image.mode!r} for the {name}; convert it with .convert('RGB').")
        if image.mode != "RGB":
            if image.mode in ("RGBA", "LA"):
                raise R2RUserError(
                    f"The {name} is a PIL image with an alpha channel (mode {image.mode!r}); expected RGB. "
                    "Drop the alpha with image.convert('RGB') (and pass the alpha as the mask if it is the foreground)."
                )
            image = image.convert("RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            channels = arr.shape[-1] if arr.ndim >= 3 else 1
            raise R2RUserError(
                f"Expected the {name} as an HxWx3 RGB numpy array (or BxHxWx3); got {_describe(image)} "
                f"({channels} channel(s)). Convert greyscale with np.repeat(x[..., None], 3, -1) and drop alpha with x[..., :3]."
            )
        t = torch.from_numpy(np.array(arr, copy=True, order="C")).permute(0, 3, 1, 2)
    elif isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            hint = ""
            if t.ndim == 4 and t.shape[-1] in (3, 4) and t.shape[1] not in (3, 4):
                hint = " It looks channels-last (ComfyUI IMAGE layout [B,H,W,C]): use image.permute(0, 3, 1, 2)."
            elif t.ndim == 4 and t.shape[1] == 4:
                hint = " Drop the alpha channel with image[:, :3]."
            elif t.ndim == 4 and t.shape[1] == 1:
                hint = " Repeat a greyscale image to 3 channels with image.repeat(1, 3, 1, 1)."
            raise R2RUserError(f"Expected the {name} as a [B,3,H,W] tensor; got {_describe(image)}.{hint}")
    else:
        raise R2RUserError(
            f"Unsupported {name} type {_describe(image)}; expected a torch tensor [B,3,H,W] in [0, 1], "
            "an HxWx3 uint8 numpy array or a PIL image."
        )
    _check_tensor(t, name)
    if t.dtype == torch.uint8:
        return t.float().div(255.0)
    if t.dtype == torch.bool or not (t.is_floating_point()):
        raise R2RUserError(f"Expected the {name} as float in [0, 1] or uint8 0..255; got dtype {t.dtype}.")
    t = t.float()
    _check_finite(t, name)
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        extra = " It looks like 0..255 values: divide by 255." if hi > 1.5 else ""
        extra = " It looks like [-1, 1] values: use (x + 1) / 2." if lo < -0.5 and hi <= 1.0 + 1e-3 else extra
        raise R2RUserError(f"Expected the {name} in [0, 1]; got values in [{lo:.4g}, {hi:.4g}].{extra}")
    return t.clamp(0.0, 1.0)


def to_mask_tensor(mask, name: str = "mask"):
    """Any supported mask -> torch ``[B,1,H,W]`` float32 in [0, 1] (foreground = 1)."""
    import torch

    if isinstance(mask, (list, tuple)):
        return _concat(mask, to_mask_tensor, name, "Give one mask per image, each at its image's size.")
    if _is_pil(mask):
        if mask.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
            raise R2RUserError(
                f"Expected the {name} as a single-channel image; got a PIL image of mode {mask.mode!r}. "
                "Convert it with mask.convert('L') (white = foreground)."
            )
        if mask.mode == "1":
            mask = mask.convert("L")
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        arr = mask
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
            raise R2RUserError(
                f"Expected the {name} as an HxW single-channel numpy array; got {_describe(mask)} "
                "(several channels). Take one channel (mask[..., 0]) or load the file as greyscale."
            )
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise R2RUserError(
                f"Expected the {name} as an HxW single-channel numpy array; got {_describe(mask)}. "
                "For an RGB mask image take one channel (mask[..., 0]) or load it as greyscale."
            )
        t = torch.from_numpy(np.array(arr, copy=True, order="C"))[:, None]
    elif isinstance(mask, torch.Tensor):
        t = mask
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4 or t.shape[1] != 1:
            raise R2RUserError(
                f"Expected the {name} as [B,1,H,W], [B,H,W] or [H,W]; got {_describe(mask)}. "
                "Masks have one channel: take mask[:, :1] (or the alpha channel) if it has several."
            )
    else:
        raise R2RUserError(
            f"Unsupported {name} type {_describe(mask)}; expected a torch tensor, a numpy array or a PIL image."
        )
    _check_tensor(t, name)
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype == torch.uint8:
        # 0/255 masks (files) or 0/1 masks (label maps).
        return t.float().div(255.0) if int(t.max()) > 1 else t.float()
    if not t.is_floating_point():
        tmax = int(t.max()) if t.numel() else 0
        if int(t.min()) < 0 or tmax > 255:
            raise R2RUserError(f"Expected integer {name} values 0/1 or 0..255; got values up to {tmax}.")
        return t.float().div(255.0) if tmax > 1 else t.float()
    t = t.float()
    _check_finite(t, name)
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        extra = " It looks like 0..255 values: divide by 255." if hi > 1.5 else ""
        raise R2RUserError(f"Expected the {name} in [0, 1] (foreground = 1); got values in [{lo:.4g}, {hi:.4g}].{extra}")
    return t.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- batches


def broadcast_batch(**named):
    """Bring ``name=tensor`` arguments (``None`` passes through) to one batch size: equal sizes, or
    size 1 expanded to the others'. Returns the tensors in argument order."""
    sizes = {name: t.shape[0] for name, t in named.items() if t is not None}
    batch = max(sizes.values())
    bad = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if bad:
        listing = ", ".join(f"{name} {n}" for name, n in sizes.items())
        raise R2RUserError(
            f"Batch sizes do not match ({listing}); expected the same number of items in each "
            "(or 1, which is then used for every item)."
        )
    return tuple(None if t is None else (t if t.shape[0] == batch else t.expand(batch, *t.shape[1:]))
                 for t in named.values())




def batch_repeater(have: int, want: int, what: str):
    """``t -> t`` brought from batch ``have`` to ``want``: expanded from 1, tiled from a divisor."""
    if have == 1:
        return lambda t: t.expand(want, *t.shape[1:])
    if want % have == 0:
        return lambda t: t.repeat(want // have, *([1] * (t.ndim - 1)))
    raise R2RUserError(f"Cannot use {have} {what} for a batch of {want}; expected one, or one per batch item.")


def fingerprint(*tensors) -> str:
    """A content hash of tensors (shape + values): keys caches and tells two inputs apart."""
    import hashlib

    import torch

    digest = hashlib.blake2b(digest_size=16)
    for x in tensors:
        if x is None:
            digest.update(b"none")
            continue
        data = x.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()
