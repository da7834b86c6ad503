"""The working canvas: how an image of any size becomes a canvas whose sides are multiples of 64
(``fit`` / ``pad`` / ``square``, see :mod:`r2r.imaging`), and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import R2RUserError
from ..params import PARAMS, RESIZE_MODES

MULTIPLE = 64
MIN_SIDE = 64


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
    """A resolved working size (``0`` = automatic is resolved before: r2r.devices.resolve_max_side), within the
    parameter table's range."""
    top = int(PARAMS["max_side"].maximum or 0)
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or not MIN_SIDE <= max_side <= top \
            or max_side % MULTIPLE:
        raise R2RUserError(
            f"max_side must be a multiple of 64 from 64 to {top} (e.g. 512, 768 or 1024); got {max_side!r}."
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
    canvas = (int(math.ceil(content[0] / MULTIPLE) * MULTIPLE), int(math.ceil(content[1] / MULTIPLE) * MULTIPLE))
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
