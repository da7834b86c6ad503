"""The objects of a mask, the crop around each, and how a run's result goes back into the picture (the
geometry of :mod:`r2r.pipeline.objects`, where the rules are written out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import R2RUserError

if TYPE_CHECKING:
    import torch

#: the most objects one picture may have with objects=each or crop=per_object
MAX_OBJECTS = 64
#: working pixels of background kept around an object inside its crop (one latent cell)
CROP_MARGIN = 8


@dataclass(frozen=True)
class Box:
    """A crop ``[y0:y1, x0:x1]`` of the picture (the whole picture with ``crop="none"``)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def of(self, t):
        return t[..., self.y0:self.y1, self.x0:self.x1]

    def describe(self) -> str:
        return f"{self.width}x{self.height} px at x={self.x0}, y={self.y0}"


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class ObjectMask:
    """One object: the box of its pixels (mask > 0) and its soft mask there (``[1,1,h,w]``), so a picture's
    objects cost no full-size mask each."""

    box: Box
    soft: torch.Tensor

    def within(self, box: Box):
        """The object's soft mask in ``box`` (``[1,1,box.h,box.w]``, 0 outside the object)."""
        import torch

        out = torch.zeros((1, 1, box.height, box.width), dtype=torch.float32, device=self.soft.device)
        y0, y1 = max(box.y0, self.box.y0), min(box.y1, self.box.y1)
        x0, x1 = max(box.x0, self.box.x0), min(box.x1, self.box.x1)
        if y0 < y1 and x0 < x1:
            out[..., y0 - box.y0:y1 - box.y0, x0 - box.x0:x1 - box.x0] = \
                self.soft[..., y0 - self.box.y0:y1 - self.box.y0, x0 - self.box.x0:x1 - self.box.x0]
        return out


def object_mask(soft_1hw) -> ObjectMask | None:
    """A mask ``[1,H,W]`` as one :class:`ObjectMask` (None when it has no pixel > 0)."""
    box = pixel_box(soft_1hw)
    return None if box is None else ObjectMask(box, box.of(soft_1hw)[None].float().clone())


def components(mask_1hw, where: str = "") -> list:
    """The connected components of one mask ``[1,H,W]`` -> :class:`ObjectMask` list (the module docstring's
    rule); more than :data:`MAX_OBJECTS` is refused before any of them is cut out."""
    import cv2
    import torch
    from scipy import ndimage

    soft = mask_1hw[0].detach().to("cpu", torch.float32).numpy()
    binary = (soft >= 0.5).astype(np.uint8)
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    faint = (soft > 0) & (binary == 0)
    if n <= 2 and not (n == 2 and faint.any()):
        found = object_mask(mask_1hw)
        return [] if found is None else [found]
    if n - 1 > MAX_OBJECTS:
        raise R2RUserError(
            f"The mask{where} has {n - 1} separate objects; at most {MAX_OBJECTS} are harmonized one by one. Clean "
            "stray specks off the mask (or close its gaps), or use objects=together.")
    if faint.any():  # soft edge pixels below 0.5 belong to the nearest component
        _, nearest = cv2.distanceTransformWithLabels(1 - binary, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        lut = np.zeros(int(nearest.max()) + 1, np.int32)
        lut[nearest[binary > 0]] = labels[binary > 0]
        labels = np.where(faint, lut[nearest], labels)
    out = []
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):  # one pass: every label's box
        box = Box(rows.start, rows.stop, cols.start, cols.stop)
        keep = torch.from_numpy(box.of(labels) == k).to(mask_1hw.device)
        out.append(ObjectMask(box, torch.where(keep, box.of(mask_1hw[0]).float(), 0.0)[None, None]))
    return out


def split_objects(mask, batch: int) -> list:
    """``mask`` ``[M,1,H,W]`` for ``batch`` composites -> per composite its objects (:class:`ObjectMask` lists)."""
    m = int(mask.shape[0])
    if batch == 1 and m > 1:
        groups = [[object_mask(mask[i]) for i in range(m)]]
    elif m in (1, batch):
        groups = [components(mask[min(b, m - 1)], f" of composite {b + 1}" if batch > 1 else "")
                  for b in range(batch)]
    else:
        raise R2RUserError(
            f"Got {m} masks for {batch} composites. With objects=each or crop=per_object give one mask per composite "
            "(its separate parts are its objects), or a batch of masks for ONE composite (one object per mask).")
    for b, group in enumerate(groups):
        where = f" of composite {b + 1}" if batch > 1 else ""
        if len(group) > MAX_OBJECTS:
            raise R2RUserError(
                f"The mask{where} has {len(group)} separate objects; at most {MAX_OBJECTS} are harmonized one by "
                "one. Clean stray specks off the mask (or close its gaps), or use objects=together.")
        for i, obj in enumerate(group or [None]):
            if obj is None or not bool((obj.soft >= 0.5).any()):
                raise R2RUserError(
                    f"The mask of object {i + 1}{where} is empty (no pixel >= 0.5); expected the object in white. "
                    "Remove that mask from the batch or paint the object.")
    return groups


def pixel_box(soft_1hw) -> Box | None:
    """The box of the pixels > 0 of ``[1,H,W]`` (None: no such pixel)."""
    inside = soft_1hw[0] > 0
    rows = np.flatnonzero(inside.any(dim=1).cpu().numpy())
    cols = np.flatnonzero(inside.any(dim=0).cpu().numpy())
    if not len(rows):
        return None
    return Box(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def crop_box(object_box: Box, image_hw, context: float, max_side: int, resize_mode: str = "fit",
             feather: int | None = None) -> Box:
    """The crop for an object whose pixels fill ``object_box`` (the rule in the module docstring)."""
    from ..imaging import MIN_SIDE, compute_geometry

    height, width = int(image_hw[0]), int(image_hw[1])
    h, w = object_box.height * context, object_box.width * context
    scale = max(1.0, max(h, w) / max_side)  # original pixels per working pixel
    margin = CROP_MARGIN * scale + (CROP_MARGIN * scale if feather is None or feather < 0 else feather)
    h, w = min(height, max(MIN_SIDE, h + 2 * margin)), min(width, max(MIN_SIDE, w + 2 * margin))
    content = compute_geometry(round(h), round(w), max_side, resize_mode).content_size
    aspect = content[0] / content[1]
    if h / w < aspect:
        h = w * aspect
    else:
        w = h / aspect
    h, w = min(height, max(object_box.height, round(h))), min(width, max(object_box.width, round(w)))
    y0 = _place((object_box.y0 + object_box.y1) / 2, h, object_box.y0, object_box.y1, height)
    x0 = _place((object_box.x0 + object_box.x1) / 2, w, object_box.x0, object_box.x1, width)
    return Box(y0, y0 + h, x0, x0 + w)


def _place(centre: float, size: int, lo: int, hi: int, limit: int) -> int:
    """The start of a ``size`` span centred on ``centre`` that holds ``[lo, hi)``, shifted inside ``[0, limit)``."""
    start = math.floor(centre - size / 2)
    start = max(min(start, lo), hi - size)
    return max(0, min(start, limit - size))


# ----------------------------------------------------------------------------- composing


def target_alpha(target, others, feather: int):
    """The alpha a run pastes its object with: its soft mask plus its feather band, the band kept out of
    the other objects' masks."""
    import torch

    from ..imaging.pasteback import feather_alpha

    alpha = feather_alpha(target, feather) if feather > 0 else target
    return torch.where(others & (target < 0.5), target, alpha)


def compose(out, original, result, run_alpha, alpha):
    """Paste a run's object into ``out`` (all in the run's box). ``result`` = ``original + run_alpha *
    (harmonized - original)`` (what ``restore`` returns with paste-back); the object goes in with ``alpha``
    (<= ``run_alpha``): ``out + alpha * (harmonized - out)``; ``out`` is kept bit for bit where ``alpha`` is 0."""
    import torch

    alpha = torch.minimum(alpha, run_alpha)
    same = alpha == run_alpha
    exact = result + (1.0 - run_alpha) * (out - original)
    ratio = torch.where(run_alpha > 0, alpha / run_alpha.clamp_min(1e-12), torch.zeros_like(alpha))
    general = out + alpha * (original - out) + ratio * (result - original)
    return torch.where(alpha > 0, torch.where(same, exact, general), out).clamp(0, 1)
