"""Input validation, working resolution, mask handling and the feathered paste-back.

``prepare()`` turns user inputs (torch / numpy / PIL, any size, soft or hard masks)
into the tensors the model needs at a *working resolution* whose sides are multiples
of 64; ``restore()`` brings a result back to the ORIGINAL resolution and pastes the
original background back through a feathered mask.

Working resolution (``resize_mode``):

* ``"fit"`` (default): scale so the longer side is ``max_side`` and round each side
  to the nearest multiple of 64 (aspect ratio kept up to that rounding: at most 32 px
  per side, i.e. <= 3 % at 1024; the small stretch is undone by ``restore``).
  Chosen over padding because the model never sees artificial borders: MACA pools its
  background statistics over *all* pixels and the Clear-VAE skips carry every pixel,
  so padding would inject fake background; the official model was trained on crops
  with aspect ratios 3/4..4/3 squashed to squares, so a few percent of stretch is well
  inside what it has seen. No compute is spent on padding either.
* ``"pad"``: scale so the image fits inside ``max_side`` with the aspect ratio exact,
  then pad (edge replicate, mask 0) to multiples of 64; cropped off again by restore.
* ``"square"``: the official behaviour: squash everything to ``max_side`` x ``max_side``.

Like the official pipeline, images smaller than ``max_side`` are upscaled to it
(the model was evaluated at 1024 on iHarmony4 images of all sizes).

Masks: ``[B,1,H,W]`` / ``[B,H,W]`` / ``[H,W]`` floats in [0, 1], uint8 0/255 (or 0/1),
bool, PIL "L"/"1". Foreground = 1. The model gets the mask binarised at 0.5 (ref
pitfall 11: explicit thresholding, no dithering); the *soft* mask is kept for the
paste-back, so a matte's soft edge is composited softly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import R2RUserError

MULTIPLE = 64
MIN_SIDE = 64
RESIZE_MODES = ("fit", "pad", "square")
CANNY_AT = ("original", "working")


# --------------------------------------------------------------------------- inputs


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
        if not image:
            raise R2RUserError(f"The {name} list is empty; pass at least one image.")
        parts = [to_image_tensor(x, name) for x in image]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise R2RUserError(
                f"All images in one {name} batch must have the same size; got sizes {sorted(sizes)}. "
                "Harmonize them one call at a time or resize them to one size."
            )
        return torch.cat([p.to(parts[0].device) for p in parts], 0)
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
        if not mask:
            raise R2RUserError(f"The {name} list is empty; pass one mask per image.")
        parts = [to_mask_tensor(m, name) for m in mask]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise R2RUserError(f"All masks in one batch must have the same size; got sizes {sorted(sizes)}.")
        return torch.cat([p.to(parts[0].device) for p in parts], 0)
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


# --------------------------------------------------------------------------- geometry


@dataclass
class Geometry:
    """How the working canvas relates to the original image (shared by the whole batch)."""

    original_size: tuple[int, int]  # (H, W)
    working_size: tuple[int, int]  # (h, w): multiples of 64
    content_size: tuple[int, int]  # size of the resized image inside the canvas (== working_size unless "pad")
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (pad mode)
    resize_mode: str = "fit"

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.working_size[0] // 8, self.working_size[1] // 8

    @property
    def scale(self) -> float:
        """Original pixels per working pixel (long side)."""
        return max(self.original_size) / max(self.content_size)


def _round_to_multiple(value: float) -> int:
    return max(MULTIPLE, int(math.floor(value / MULTIPLE + 0.5)) * MULTIPLE)


def check_max_side(max_side) -> int:
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < MIN_SIDE or max_side % MULTIPLE:
        raise R2RUserError(
            f"max_side must be a multiple of 64 and at least 64 (e.g. 512, 768 or 1024); got {max_side!r}."
        )
    return int(max_side)


def compute_geometry(height: int, width: int, max_side: int = 1024, resize_mode: str = "fit") -> Geometry:
    """The working canvas for an ``height`` x ``width`` image (see the module docstring)."""
    max_side = check_max_side(max_side)
    if resize_mode not in RESIZE_MODES:
        raise R2RUserError(f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}.")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise R2RUserError(
            f"Images must be at least {MIN_SIDE}x{MIN_SIDE} pixels (the model's smallest feature map needs 8 px); "
            f"got {width}x{height} (WxH). Upscale the image first or use a larger crop."
        )
    scale = max_side / max(height, width)
    if resize_mode == "square":
        return Geometry((height, width), (max_side, max_side), (max_side, max_side), resize_mode="square")
    if resize_mode == "fit":
        size = (_round_to_multiple(height * scale), _round_to_multiple(width * scale))
        size = (min(size[0], max_side), min(size[1], max_side))
        return Geometry((height, width), size, size, resize_mode="fit")
    content = (max(1, min(max_side, round(height * scale))), max(1, min(max_side, round(width * scale))))
    canvas = tuple(int(math.ceil(c / MULTIPLE) * MULTIPLE) for c in content)
    dh, dw = canvas[0] - content[0], canvas[1] - content[1]
    padding = (dh // 2, dh - dh // 2, dw // 2, dw - dw // 2)
    return Geometry((height, width), canvas, content, padding, resize_mode="pad")


def resize(x, size, mode: str = "bilinear"):
    """Resize ``[B,C,H,W]`` float to ``size``: bilinear with antialiasing when shrinking (like PIL)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def to_working(x, geometry: Geometry, pad_value=None):
    """Bring an original-resolution ``[B,C,H,W]`` tensor onto the working canvas: resize to the content
    size, then pad (edge replicate, or ``pad_value``, e.g. 0.0 for masks)."""
    import torch.nn.functional as F

    x = resize(x, geometry.content_size)
    top, bottom, left, right = geometry.padding
    if top or bottom or left or right:
        if pad_value is None:
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
        else:
            x = F.pad(x, (left, right, top, bottom), mode="constant", value=pad_value)
    return x


def from_working(x, geometry: Geometry):
    """Inverse of :func:`to_working`: crop the padding off and resize to the original size."""
    top, bottom, left, right = geometry.padding
    h, w = x.shape[-2:]
    x = x[..., top : h - bottom, left : w - right]
    return resize(x, geometry.original_size)


def latent_mask_from(mask_working):
    """Latent mask: ``F.interpolate`` nearest (top-left sampling) to 1/8 size, as the official pipeline."""
    import torch.nn.functional as F

    h, w = mask_working.shape[-2:]
    return F.interpolate(mask_working, size=(h // 8, w // 8))


# --------------------------------------------------------------------------- prepare


@dataclass
class Prepared:
    """Model inputs at the working resolution plus what ``restore`` needs."""

    composite_pm1: object  # [B,3,h,w] float32 in [-1, 1]
    mask: object  # [B,1,h,w] float32 in {0, 1}
    hint: object  # [B,7,h,w] float32
    latent_mask: object  # [B,1,h/8,w/8] float32 in {0, 1}
    geometry: Geometry
    original_composite: object = field(repr=False, default=None)  # [B,3,H,W] float32 in [0, 1]
    original_mask: object = field(repr=False, default=None)  # [B,1,H,W] float32 soft mask in [0, 1]
    #: [B,1,h/8,w/8] float32 in {0, 1}: the region whose statistics steer MACA (None: the background)
    reference_latent_mask: object = None

    @property
    def batch_size(self) -> int:
        return int(self.composite_pm1.shape[0])

    def to(self, device=None, dtype=None) -> Prepared:
        """Model-input tensors moved/cast (the originals stay float32 on their device)."""
        kw = {"device": device, "dtype": dtype}
        ref = None if self.reference_latent_mask is None else self.reference_latent_mask.to(**kw)
        return Prepared(
            self.composite_pm1.to(**kw), self.mask.to(**kw), self.hint.to(**kw), self.latent_mask.to(**kw),
            self.geometry, self.original_composite, self.original_mask, ref,
        )


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


def _check_mask_coverage(mask_bin, where: str, fix: str):
    flat = mask_bin.flatten(1)
    fg = flat.sum(1)
    for i in range(flat.shape[0]):
        if fg[i] == 0:
            raise R2RUserError(
                f"The mask of batch item {i} is empty {where} (no pixel >= 0.5); expected a foreground region "
                f"(white = the object to harmonize). {fix}"
            )
        if fg[i] == flat.shape[1]:
            raise R2RUserError(
                f"The mask of batch item {i} covers the whole image {where}; R2R needs background to harmonize "
                "the foreground against. Check that the mask is not inverted (foreground = white/1)."
            )


def _uint8_hwc(t):
    """[3,H,W] float 0..1 -> HxWx3 uint8 (rounded)."""
    import torch

    return (t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def prepare(composite, mask, max_side: int = 1024, resize_mode: str = "fit", canny_at: str = "original",
            reference_mask=None) -> Prepared:
    """Validate and convert inputs to the working resolution (see the module docstring).

    ``reference_mask`` (optional, same size as the composite, 1 = the region whose colours should
    steer the foreground) is brought to the latent grid like the mask (working canvas, >= 0.5,
    nearest) as ``Prepared.reference_latent_mask``.

    ``canny_at="original"`` (default, the official order and the one the controller was
    trained with): Canny on the original-resolution composite, then the pre-image is
    resized bilinearly. ``"working"``: resize the composite first, then Canny.
    """
    import torch

    from .hint import assemble_hint, hint_pre_image

    if canny_at not in CANNY_AT:
        raise R2RUserError(f"canny_at must be one of {CANNY_AT}; got {canny_at!r}.")
    comp = to_image_tensor(composite, "composite")
    soft = to_mask_tensor(mask, "mask").to(comp.device)
    if tuple(soft.shape[-2:]) != tuple(comp.shape[-2:]):
        raise R2RUserError(
            f"The mask size {tuple(soft.shape[-1:-3:-1])} (WxH) does not match the composite size "
            f"{tuple(comp.shape[-1:-3:-1])} (WxH); expected the same size. Resize the mask to the image "
            "(nearest-neighbour) or use the mask that belongs to this composite."
        )
    ref = None
    if reference_mask is not None:
        ref = to_mask_tensor(reference_mask, "reference_mask").to(comp.device)
        if tuple(ref.shape[-2:]) != tuple(comp.shape[-2:]):
            raise R2RUserError(
                f"The reference_mask size {tuple(ref.shape[-1:-3:-1])} (WxH) does not match the composite size "
                f"{tuple(comp.shape[-1:-3:-1])} (WxH); paint the reference region on this composite."
            )
    comp, soft, ref = broadcast_batch(composite=comp, mask=soft, reference_mask=ref)
    geometry = compute_geometry(int(comp.shape[-2]), int(comp.shape[-1]), max_side, resize_mode)
    _check_mask_coverage(soft >= 0.5, "", "Draw or load a mask that marks the pasted object.")

    comp_w = to_working(comp, geometry).clamp(0, 1)
    mask_w = (to_working(soft, geometry, pad_value=0.0) >= 0.5).float()
    _check_mask_coverage(
        mask_w, f"at the working resolution {geometry.working_size[1]}x{geometry.working_size[0]}",
        "The object is too small for this max_side: increase max_side or enlarge the mask.",
    )
    latent_mask = latent_mask_from(mask_w)
    if (latent_mask.flatten(1).sum(1) == 0).any():
        raise R2RUserError(
            "The mask is too thin/small for the model: at the latent resolution (1/8 of "
            f"{geometry.working_size[1]}x{geometry.working_size[0]}) no foreground remains. "
            "Increase max_side or enlarge (dilate) the mask."
        )

    pres = []
    for i in range(comp.shape[0]):
        if canny_at == "original":
            pre = hint_pre_image(_uint8_hwc(comp[i]), (soft[i, 0] >= 0.5).cpu().numpy())
        else:
            pre = hint_pre_image(_uint8_hwc(comp_w[i]), mask_w[i, 0].bool().cpu().numpy())
        pres.append(torch.from_numpy(pre).permute(2, 0, 1).float().div(255.0))
    pre = torch.stack(pres).to(comp.device)
    if canny_at == "original":
        pre = to_working(pre, geometry).clamp(0, 1)
    comp_pm1 = (comp_w - 0.5) / 0.5
    hint = assemble_hint((pre - 0.5) / 0.5, comp_pm1, mask_w)
    ref_latent = None if ref is None else reference_latent_mask(ref, geometry)
    # contiguous NCHW (as torchvision's ToTensor gives the official code): the memory layout picks the
    # conv kernels, so a channels-last view would change results in the last bits
    return Prepared(comp_pm1.contiguous(), mask_w.contiguous(), hint.contiguous(), latent_mask.contiguous(),
                    geometry, comp.contiguous(), soft.contiguous(), ref_latent)


def reference_latent_mask(reference, geometry: Geometry):
    """A reference region ``[B,1,H,W]`` at the original size -> its latent mask (working canvas, >= 0.5, nearest)."""
    ref_latent = latent_mask_from((to_working(reference, geometry, pad_value=0.0) >= 0.5).float())
    empty = [i for i in range(ref_latent.shape[0]) if ref_latent[i].sum() == 0]
    if empty:
        raise R2RUserError(
            f"The reference_mask of batch item {empty[0]} is empty at the latent resolution (1/8 of the working "
            f"size {geometry.working_size[1]}x{geometry.working_size[0]}); expected a region of at least a few "
            "latent cells. Paint a larger reference region (white = the region whose colours the object should "
            "take), or leave reference_mask out to use the whole background."
        )
    return ref_latent.contiguous()
