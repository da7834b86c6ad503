"""``prepare()``: validated user inputs -> the model inputs at the working resolution (:class:`Prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import R2RUserError
from .geometry import Geometry, compute_geometry, latent_mask_from, to_working
from .inputs import broadcast_batch, to_image_tensor, to_mask_tensor

CANNY_AT = ("original", "working")


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
