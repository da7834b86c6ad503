"""Image geometry: user inputs -> the working canvas the networks run on, and back.

* :mod:`~r2r.imaging.inputs` — images and masks of any common type -> checked tensors (the one normaliser);
* :mod:`~r2r.imaging.geometry` — the working canvas (``fit`` / ``pad`` / ``square``) and its inverse;
* :mod:`~r2r.imaging.preparation` — ``prepare()``: the model inputs (:class:`Prepared`);
* :mod:`~r2r.imaging.hint` — the controller's 7-channel hint (Canny as the official code);
* :mod:`~r2r.imaging.tiling` — banded Clear-VAE encode/decode with exact GroupNorm (big canvases);
* :mod:`~r2r.imaging.pasteback` / :mod:`~r2r.imaging.fullres` — back to the original resolution,
  background pasted back.

``prepare()`` turns user inputs (torch / numpy / PIL, any size, soft or hard masks)
into the tensors the model needs at a *working resolution* whose sides are multiples
of 64; :func:`r2r.imaging.fullres.to_original_size` brings a result back to the ORIGINAL
resolution and pastes the original background back through a feathered mask.

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

from .geometry import (
    MIN_SIDE,
    MULTIPLE,
    Geometry,
    check_max_side,
    compute_geometry,
    from_working,
    latent_mask_from,
    resize,
    to_working,
)
from .inputs import batch_repeater, broadcast_batch, fingerprint, to_image_tensor, to_mask_tensor
from .preparation import (
    CANNY_AT,
    Prepared,
    PreparedPhoto,
    prepare,
    prepare_reference_photo,
    reference_latent_mask,
)

__all__ = [
    "CANNY_AT",
    "Geometry",
    "MIN_SIDE",
    "MULTIPLE",
    "Prepared",
    "PreparedPhoto",
    "batch_repeater",
    "broadcast_batch",
    "check_max_side",
    "compute_geometry",
    "fingerprint",
    "from_working",
    "latent_mask_from",
    "prepare",
    "prepare_reference_photo",
    "reference_latent_mask",
    "resize",
    "to_image_tensor",
    "to_mask_tensor",
    "to_working",
]
