"""Where MACA's colour statistics come from: the :class:`Reference` value the residual stage takes.

R2R's MACA modulates the pasted object with statistics of "appropriate regions" (ref §c.3). By
default that is the composite's whole background (the official behaviour). A :class:`Reference`
chooses another source:

* ``Reference(mask=M)`` — a region of the composite (``M`` at the composite's size, 1 = use);
* ``Reference(image=P)`` — another photo ``P`` (any size or aspect), the whole photo;
* ``Reference(image=P, image_mask=R)`` — the region ``R`` of that photo.

The statistic keeps the official magnitude by the area rule of :class:`r2r.models.MACA`. The
controller never sees the noisy latent, so a reference changes only the controller residuals,
which are computed once per timestep (and cached by :class:`~r2r.pipeline.residuals.ResidualCache`):
a new seed costs nothing more. How a photo enters the controller: see
:func:`r2r.imaging.prepare_reference_photo` and :class:`r2r.models.HarmonyController`.

Batches: the composite batch ``B`` and the reference batch ``R`` must be equal, or one of them 1
(one reference for every composite, or one composite harmonized toward each of ``R`` references:
one output per reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import R2RUserError

if TYPE_CHECKING:
    import torch

    from ..imaging import Geometry, Prepared, PreparedPhoto


@dataclass(frozen=True, eq=False)
class Reference:
    """A region of the composite (``mask``), or another photo (``image``, optional ``image_mask``)."""

    mask: object = None
    image: object = None
    image_mask: object = None

    def __post_init__(self):
        if self.mask is not None and self.image is not None:
            raise R2RUserError("A Reference is either a region of the composite (mask=) or another photo (image=, "
                               "image_mask=), not both; to use a region of another photo pass image_mask=.")
        if self.image_mask is not None and self.image is None:
            raise R2RUserError("Reference(image_mask=...) needs the photo it belongs to: Reference(image=photo, "
                               "image_mask=region). For a region of the composite use Reference(mask=region).")

    @property
    def is_default(self) -> bool:
        return self.mask is None and self.image is None


@dataclass(eq=False)
class PreparedReference:
    """A :class:`Reference` on the composite's working grid (what the controller takes)."""

    #: [R,1,h/8,w/8]: the region of the composite, or of the photo when ``photo`` is set
    region: torch.Tensor
    photo: PreparedPhoto | None
    key: str

    @property
    def batch_size(self) -> int:
        return int(self.region.shape[0])

    def controller_inputs(self, device, dtype):
        """``(reference_mask, reference_hint)`` for :class:`r2r.models.HarmonyController`."""
        hint = None if self.photo is None else self.photo.hint.to(device, dtype)
        return self.region.to(device, dtype), hint


def as_reference(reference=None, reference_mask=None) -> Reference | None:
    """``reference=`` (a :class:`Reference`) and the older ``reference_mask=`` -> one Reference or None."""
    if reference is not None and not isinstance(reference, Reference):
        raise R2RUserError(f"reference must be an r2r.pipeline.Reference (Reference(mask=...) or "
                           f"Reference(image=..., image_mask=...)); got {type(reference).__name__}.")
    if reference_mask is not None:
        if reference is not None:
            raise R2RUserError("Give either reference= or reference_mask=, not both.")
        reference = Reference(mask=reference_mask)
    return None if reference is None or reference.is_default else reference


def prepare_reference(reference: Reference | None, prepared: Prepared) -> PreparedReference | None:
    """``reference`` brought to ``prepared``'s working grid, checked (None: the whole background)."""
    return _prepare(reference, prepared.batch_size, prepared.geometry, prepared.original_composite.device)


def check_reference(reference: Reference | None, batch: int, geometry: Geometry) -> None:
    """The checks of :func:`prepare_reference` for ``batch`` composites on ``geometry``'s working canvas,
    for callers that check every input before any work (the photo's size, its region's size and
    emptiness on the latent grid, the batch sizes)."""
    _prepare(reference, batch, geometry, None)


def _prepare(reference, batch: int, geometry: Geometry, device) -> PreparedReference | None:
    from ..imaging import fingerprint, prepare_reference_photo, reference_latent_mask, to_mask_tensor

    if reference is None or reference.is_default:
        return None
    if reference.image is not None:
        photo = prepare_reference_photo(reference.image, reference.image_mask, geometry.working_size)
        check_batches(batch, photo.batch_size, "reference images")
        return PreparedReference(photo.region, photo, photo.key)
    region = to_mask_tensor(reference.mask, "reference_mask")
    size = tuple(geometry.original_size)
    if tuple(region.shape[-2:]) != size:
        raise R2RUserError(
            f"The reference_mask size {tuple(region.shape[-1:-3:-1])} (WxH) does not match the composite size "
            f"{size[::-1]} (WxH); paint the reference region on this composite.")
    check_batches(batch, region.shape[0], "reference masks")
    latent = reference_latent_mask(region if device is None else region.to(device), geometry)
    return PreparedReference(latent, None, "region:" + fingerprint(region))


def check_batches(composites: int, references: int, what: str) -> None:
    """References for ``composites`` composites: one for all, one per composite, or several for one composite."""
    if references not in (1, composites) and composites != 1:
        raise R2RUserError(f"Got {references} {what} for {composites} composites; give one reference for all, one "
                           "per composite, or one composite with several references (one result per reference).")


def output_batch(prepared_batch: int, reference: PreparedReference | None) -> int:
    """The number of results: the composite batch, or the reference batch for one composite."""
    return prepared_batch if reference is None else max(prepared_batch, reference.batch_size)
