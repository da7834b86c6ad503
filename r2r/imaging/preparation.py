"""``prepare()``: validated user inputs -> the model inputs at the working resolution (:class:`Prepared`);
``prepare_reference_photo()``: another photo whose colours steer MACA, on the same working grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import R2RUserError
from .geometry import Geometry, compute_geometry, latent_mask_from, to_working
from .inputs import batch_repeater, broadcast_batch, fingerprint, to_image_tensor, to_mask_tensor

#: a reference photo's smallest side (also the weight-free harmonizer's: r2r.blending.harmonizer)
MIN_REFERENCE_SIDE = 64

if TYPE_CHECKING:
    import torch

CANNY_AT = ("original", "working")


@dataclass
class Prepared:
    """Model inputs at the working resolution plus what ``restore`` needs."""

    composite_pm1: torch.Tensor  # [B,3,h,w] float32 in [-1, 1]
    mask: torch.Tensor  # [B,1,h,w] float32 in {0, 1}
    hint: torch.Tensor  # [B,7,h,w] float32
    latent_mask: torch.Tensor  # [B,1,h/8,w/8] float32 in {0, 1}
    geometry: Geometry
    original_composite: torch.Tensor = field(repr=False)  # [B,3,H,W] float32 in [0, 1]
    original_mask: torch.Tensor = field(repr=False)  # [B,1,H,W] float32 soft mask in [0, 1]
    #: content fingerprint of the composite, the mask and the working settings (keys caches)
    key: str = ""

    @property
    def batch_size(self) -> int:
        return int(self.composite_pm1.shape[0])

    @property
    def latent_size(self) -> tuple[int, int]:
        return int(self.latent_mask.shape[-2]), int(self.latent_mask.shape[-1])

    def to(self, device=None, dtype=None) -> Prepared:
        """Model-input tensors moved/cast (the originals stay float32 where they are)."""
        kw = {"device": device, "dtype": dtype}
        return dataclasses.replace(self, composite_pm1=self.composite_pm1.to(**kw), mask=self.mask.to(**kw),
                                   hint=self.hint.to(**kw), latent_mask=self.latent_mask.to(**kw))

    def expand(self, batch: int) -> Prepared:
        """The preparation of ``batch`` items: a batch-1 preparation repeated (one composite, several seeds
        or references), or a batch tiled ``batch / B`` times (several seeds of a batch, seed-major)."""
        if batch == self.batch_size:
            return self
        rep = batch_repeater(self.batch_size, batch, "prepared composites")
        return dataclasses.replace(
            self, composite_pm1=rep(self.composite_pm1), mask=rep(self.mask), hint=rep(self.hint),
            latent_mask=rep(self.latent_mask), original_composite=rep(self.original_composite),
            original_mask=rep(self.original_mask), key=f"{self.key}/x{batch}")


def _image_and_mask(image, mask, image_name: str, mask_name: str, fix: str):
    """An image and its mask (None: all ones) as tensors of one size and one batch, or a clear error."""
    import torch

    picture = to_image_tensor(image, image_name)
    soft = torch.ones_like(picture[:, :1]) if mask is None else to_mask_tensor(mask, mask_name).to(picture.device)
    if tuple(soft.shape[-2:]) != tuple(picture.shape[-2:]):
        raise R2RUserError(f"The {mask_name} size {tuple(soft.shape[-1:-3:-1])} (WxH) does not match the {image_name} "
                           f"size {tuple(picture.shape[-1:-3:-1])} (WxH); {fix}")
    named = {image_name.replace(" ", "_"): picture, mask_name.replace(" ", "_"): soft}
    return broadcast_batch(**named)


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


def prepare(composite, mask, max_side: int = 1024, resize_mode: str = "fit",
            canny_at: str = "original") -> Prepared:
    """Validate and convert inputs to the working resolution (see :mod:`r2r.imaging`).

    ``canny_at="original"`` (default, the official order and the one the controller was
    trained with): Canny on the original-resolution composite, then the pre-image is
    resized bilinearly. ``"working"``: resize the composite first, then Canny.
    """
    if canny_at not in CANNY_AT:
        raise R2RUserError(f"canny_at must be one of {CANNY_AT}; got {canny_at!r}.")
    comp, soft = _image_and_mask(composite, mask, "composite", "mask", "expected the same size. Resize the mask to "
                                 "the image (nearest-neighbour) or use the mask that belongs to this composite.")
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
    hint = _hint(comp, soft >= 0.5, comp_w, mask_w, geometry, canny_at)
    key = fingerprint(comp, soft) + f"/{geometry.working_size}/{geometry.resize_mode}/{canny_at}"
    # contiguous NCHW (as torchvision's ToTensor gives the official code): the memory layout picks the
    # conv kernels, so a channels-last view would change results in the last bits
    return Prepared(((comp_w - 0.5) / 0.5).contiguous(), mask_w.contiguous(), hint.contiguous(),
                    latent_mask.contiguous(), geometry, comp.contiguous(), soft.contiguous(), key)


def _hint(original, object_original, working, object_working, geometry: Geometry, canny_at: str = "original"):
    """The 7-channel hint ``[B,7,h,w]`` of images whose "pasted object" is ``object_*`` (bool / {0,1})."""
    import torch

    from .hint import assemble_hint, hint_pre_image

    pres = []
    for i in range(original.shape[0]):
        if canny_at == "original":
            pre = hint_pre_image(_uint8_hwc(original[i]), object_original[i, 0].bool().cpu().numpy())
        else:
            pre = hint_pre_image(_uint8_hwc(working[i]), object_working[i, 0].bool().cpu().numpy())
        pres.append(torch.from_numpy(pre).permute(2, 0, 1).float().div(255.0))
    pre_t = torch.stack(pres).to(original.device)
    if canny_at == "original":
        pre_t = to_working(pre_t, geometry).clamp(0, 1)
    return assemble_hint((pre_t - 0.5) / 0.5, (working - 0.5) / 0.5, object_working)


@dataclass
class PreparedPhoto:
    """A reference photo on a composite's working grid: what the controller runs on to take MACA's
    background statistic from it (:mod:`r2r.pipeline.reference`)."""

    hint: torch.Tensor  # [R,7,h,w]: the photo as a composite whose "object" is everything outside its region
    region: torch.Tensor  # [R,1,h/8,w/8] float32 in {0, 1}: the region whose statistics are used
    original: torch.Tensor = field(repr=False)  # [R,3,H',W'] float32 in [0, 1]
    original_region: torch.Tensor = field(repr=False)  # [R,1,H',W'] float32 in [0, 1]
    key: str = ""

    @property
    def batch_size(self) -> int:
        return int(self.hint.shape[0])


def prepare_reference_photo(image, region=None, working_size: tuple[int, int] = (1024, 1024),
                            canny_at: str = "original") -> PreparedPhoto:
    """Another photo (any size or aspect, at least 64 px a side) and its region (default: the whole
    photo) -> :class:`PreparedPhoto` on a ``working_size`` canvas.

    Rule: the photo is resized to the composite's working canvas, stretched if its aspect ratio
    differs (MACA only uses means over the region, which a stretch leaves almost unchanged, and the
    same canvas lets the photo go through the controller beside the composite). Its hint treats the
    photo as a composite whose pasted object is everything *outside* the region: with the whole photo
    as the region the controller sees the plain photo; with the composite itself as the photo and its
    background as the region it sees exactly the composite (so the result equals no reference).
    """

    photo, soft = _image_and_mask(image, region, "reference image", "reference image mask", "paint the region on "
                                  "that photo (or leave the mask out to use the whole photo).")
    h, w = int(photo.shape[-2]), int(photo.shape[-1])
    if min(h, w) < MIN_REFERENCE_SIDE:
        raise R2RUserError(f"The reference image must be at least {MIN_REFERENCE_SIDE}x{MIN_REFERENCE_SIDE} pixels; "
                           f"got {w}x{h} (WxH). Use a larger "
                           "photo (its colours are what matter; its size is not).")
    size = (int(working_size[0]), int(working_size[1]))
    geometry = Geometry((h, w), size, size, resize_mode="square")
    region_w = (to_working(soft, geometry, pad_value=0.0) >= 0.5).float()
    region_lat = latent_mask_from(region_w)
    for i in range(region_lat.shape[0]):
        if region_lat[i].sum() == 0:
            raise R2RUserError(
                f"The reference image mask of batch item {i} is empty at the latent resolution (1/8 of "
                f"{working_size[1]}x{working_size[0]}); expected a region of at least a few latent cells. Paint a "
                "larger region (white = the part of the photo whose colours the object should take), or leave "
                "the mask out to use the whole photo.")
    photo_w = to_working(photo, geometry).clamp(0, 1)
    hint = _hint(photo, soft < 0.5, photo_w, 1.0 - region_w, geometry, canny_at)
    key = "photo:" + fingerprint(photo, soft) + f"/{tuple(working_size)}/{canny_at}"
    return PreparedPhoto(hint.contiguous(), region_lat.contiguous(), photo.contiguous(), soft.contiguous(), key)


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
