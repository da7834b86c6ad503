"""Synthetic clips whose truth is known, made from the bundled example photos (r2r/assets/examples):
the tests, ``benchmarks/video.py`` and the bundled example clip (r2r/assets/make_clip.py) use them.

A static background photo (one per shot; a second photo after a hard cut) with a pasted object — a
textured ellipse cut from another photo — that moves along a known integer path, so the warp between
two frames is exact (no optical flow). The object's *true* colours are its texture with the Lab
statistics of the shot's background (the lighting of that scene); the composite shows it with a known
Lab colour change (:data:`CAST`). Every frame also has what makes per-frame harmonization flicker in
real footage: camera noise (``noise``) and background activity that changes from frame to frame
(``spots`` small coloured discs at random places: passers-by, confetti), which move the background's
colour statistics. ``truth(i)`` is frame ``i`` with the object in its true colours (same noise, same
spots). Everything is deterministic: frame ``i`` is the same array every time it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clip import Clip, FunctionFrames, FunctionMasks

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
#: the bundled example clips (made by r2r/assets/make_clip.py)
CLIPS_DIR = Path(__file__).resolve().parents[1] / "assets" / "clips"
#: the known colour change of the pasted object: Lab gain and offset (brighter, magenta-blue cast)
CAST = (np.array([0.9, 1.3, 1.3], np.float32), np.array([8.0, 10.0, -22.0], np.float32))


def example_photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A bundled example composite (``<name>_composite.png``) scaled and centre-cropped to ``size``
    (H, W) -> float32 ``HxWx3`` in [0, 1]."""
    import cv2

    from ..fileio import read_image

    img = read_image(EXAMPLES_DIR / f"{name}_composite.png").astype(np.float32) / 255.0
    h, w = img.shape[:2]
    scale = max(size[0] / h, size[1] / w)
    img = cv2.resize(img, (max(size[1], round(w * scale)), max(size[0], round(h * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y0, x0 = (img.shape[0] - size[0]) // 2, (img.shape[1] - size[1]) // 2
    return np.ascontiguousarray(img[y0:y0 + size[0], x0:x0 + size[1]])


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2) <= 0.25).astype(np.float32)


@dataclass
class SyntheticClip:
    """See the module docstring. ``positions[i]`` = the object's (top, left) in frame ``i``."""

    count: int
    size: tuple[int, int]
    backgrounds: list
    shot_starts: list
    positions: np.ndarray
    objects_true: list  # per shot: the object in the shot's lighting
    objects_cast: list  # per shot: the same with CAST applied (what the composite shows)
    alpha: np.ndarray
    noise: float
    spots: int
    seed: int

    def shot(self, i: int) -> int:
        return int(np.searchsorted(self.shot_starts, i, side="right") - 1)

    def _compose(self, i: int, objects) -> np.ndarray:
        import cv2

        rng = np.random.default_rng([self.seed, i])
        frame = self.backgrounds[self.shot(i)].copy()
        h, w = self.size
        radius = max(2, round(0.05 * min(h, w)))
        for _ in range(self.spots):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            colour = tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))
            cv2.circle(frame, centre, radius, colour, -1)
        top, left = (int(v) for v in self.positions[i])
        oh, ow = self.alpha.shape
        a = self.alpha[..., None]
        region = frame[top:top + oh, left:left + ow]
        region[:] = region * (1 - a) + objects[self.shot(i)] * a
        if self.noise > 0:
            frame += rng.normal(0.0, self.noise, frame.shape).astype(np.float32)
        return np.clip(frame, 0.0, 1.0)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` of the composite clip (``HxWx3`` float32)."""
        return self._compose(i, self.objects_cast)

    def truth(self, i: int) -> np.ndarray:
        """Frame ``i`` with the object in its true colours (same noise and background activity)."""
        return self._compose(i, self.objects_true)

    def mask(self, i: int) -> np.ndarray:
        out = np.zeros(self.size, np.float32)
        top, left = (int(v) for v in self.positions[i])
        oh, ow = self.alpha.shape
        out[top:top + oh, left:left + ow] = self.alpha
        return out

    def clip(self) -> Clip:
        """The composite frames with one mask per frame, made on demand."""
        return Clip(FunctionFrames(self.count, self.frame), FunctionMasks(self.count, self.mask))


def moving_object_clip(count: int = 48, size: tuple[int, int] = (256, 256), cut_at: int | None = None,
                       seed: int = 0, noise: float = 0.01, spots: int = 6, backgrounds=("coffee", "astronaut"),
                       texture: str = "motorcycle", object_scale: float = 0.38) -> SyntheticClip:
    """A clip of ``count`` frames of ``size`` (H, W): background photo ``backgrounds[0]`` (and
    ``backgrounds[1]`` from frame ``cut_at`` on, a hard cut), the object (an ellipse of ``texture``'s
    photo, ``object_scale`` of the shorter side) moving left to right along a sine wave."""
    from ..blending.harmonizer import apply_statistics, harmonize_statistics

    h, w = size
    oh = ow = max(8, round(object_scale * min(h, w)))
    starts = [0] if cut_at is None else [0, int(cut_at)]
    bgs = [example_photo(backgrounds[k], size) for k in range(len(starts))]
    patch = example_photo(texture, (oh, ow))
    alpha = _ellipse(oh, ow)
    ones = np.ones((oh, ow), np.float32)
    true = [harmonize_statistics(patch, ones, reference_image=bg) for bg in bgs]
    cast = [apply_statistics(t, ones, *CAST) for t in true]
    t = np.arange(count, dtype=np.float64) / max(1, count - 1)
    left = np.round(0.05 * w + t * (0.9 * w - ow)).astype(np.int64)
    top = np.round((h - oh) / 2 + 0.12 * h * np.sin(2 * np.pi * 1.5 * t)).astype(np.int64)
    positions = np.stack([np.clip(top, 0, h - oh), np.clip(left, 0, w - ow)], axis=1)
    return SyntheticClip(count, (h, w), bgs, starts, positions, true, cast, alpha, float(noise), int(spots),
                         int(seed))


def warp_error(a: np.ndarray, b: np.ndarray, clip: SyntheticClip, i: int, j: int, erode: int = 3):
    """Masked warping error between frame ``i``'s image ``a`` and frame ``j``'s image ``b``: ``a``'s object
    moved by the known displacement onto frame ``j``, compared on the object's pixels (eroded by
    ``erode`` px) -> (sum of squared differences on the 0..255 scale, pixel count)."""
    import cv2

    di, dj = clip.positions[i], clip.positions[j]
    oh, ow = clip.alpha.shape
    kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    inner = cv2.erode((clip.alpha >= 0.5).astype(np.uint8), kernel).astype(bool)
    pa = a[di[0]:di[0] + oh, di[1]:di[1] + ow][inner]
    pb = b[dj[0]:dj[0] + oh, dj[1]:dj[1] + ow][inner]
    diff = (pa.astype(np.float64) - pb.astype(np.float64)) * 255.0
    return float((diff ** 2).sum()), int(pa.size)


def foreground_error(out: np.ndarray, clip: SyntheticClip, i: int, erode: int = 3):
    """Squared error (0..255 scale) of ``out`` against ``clip.truth(i)`` on the object's pixels (eroded)
    -> (sum, count)."""
    import cv2

    kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    inner = cv2.erode((clip.mask(i) >= 0.5).astype(np.uint8), kernel).astype(bool)
    diff = (out[inner].astype(np.float64) - clip.truth(i)[inner].astype(np.float64)) * 255.0
    return float((diff ** 2).sum()), int(diff.size)


def example_clip_names() -> list[str]:
    """The bundled example clips (``<name>.json`` with its frame and mask sheets beside it)."""
    if not CLIPS_DIR.is_dir():
        return []
    return sorted(p.stem for p in CLIPS_DIR.glob("*.json")
                  if (CLIPS_DIR / f"{p.stem}_frames.jpg").is_file() and (CLIPS_DIR / f"{p.stem}_masks.png").is_file())


def read_example_clip(name: str):
    """A bundled example clip -> ``(frames [N,H,W,3] uint8, masks [N,H,W] uint8 (255 = object), fps)``."""
    import json

    from ..errors import R2RUserError
    from ..fileio import read_image, read_mask

    if name not in example_clip_names():
        raise R2RUserError(f"No bundled example clip {name!r} in {CLIPS_DIR}; the bundled clips are "
                           f"{', '.join(example_clip_names()) or 'missing (reinstall the pack)'}.")
    meta = json.loads((CLIPS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    sheet = read_image(CLIPS_DIR / f"{name}_frames.jpg")
    mask_sheet = read_mask(CLIPS_DIR / f"{name}_masks.png")
    (h, w), cols, n = meta["size"], int(meta["columns"]), int(meta["frames"])
    cells = [divmod(i, cols) for i in range(n)]
    frames = np.stack([sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] for r, c in cells])
    masks = np.stack([mask_sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] for r, c in cells])
    return frames, masks, float(meta["fps"])
