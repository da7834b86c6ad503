"""A clip: its frames and its masks (one mask for every frame, or one per frame), read lazily.

Frames are ``HxWx3`` RGB (uint8, or float in [0, 1]); masks ``HxW`` float32 in [0, 1] (1 = the pasted
object). A source is read front to back, as often as the temporal mode needs (a file is decoded
again rather than kept in memory, so memory does not grow with the clip's length):

* :class:`ArrayFrames` / :class:`ArrayMasks` — a batch in memory (numpy or torch; an IMAGE / MASK
  batch of the ComfyUI nodes), or a list of frames;
* :class:`FunctionFrames` / :class:`FunctionMasks` — frame ``i`` made on demand by a function (the
  benchmark's synthetic clips);
* :class:`r2r.video.files.VideoFrames` / :class:`r2r.video.files.VideoMasks` — a video file (PyAV).

:func:`scan` reads the clip once before any model work: it counts the frames, checks their sizes and
values and the masks' count and sizes, classifies the masks the harmonizer cannot use (empty), and
measures the colour-histogram distances the shot-cut detection uses (:mod:`r2r.video.cuts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import R2RUserError
from . import cuts


class FrameSource(Protocol):
    """Frames read front to back: ``read(indices)`` yields ``(i, HxWx3 frame)`` for the sorted ``indices``
    (all frames when None). ``count`` is the number of frames when known without reading (else None)."""

    @property
    def count(self) -> int | None: ...

    def read(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]: ...


class MaskSource(Protocol):
    """Masks: ``count`` (1 = one mask for every frame; None until read for a file) and ``read`` like frames."""

    @property
    def count(self) -> int | None: ...

    def read(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]: ...


def _select(n: int | None, indices):
    if indices is None:
        return range(n) if n is not None else None
    return sorted(set(int(i) for i in indices))


def _torch_to_numpy(x):
    if type(x).__module__.startswith("torch"):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


class ArrayFrames:
    """Frames in memory: an ``[N,H,W,3]`` array (``channels_first``: ``[N,3,H,W]``), numpy or torch, uint8 or
    float in [0, 1], or a list of ``HxWx3`` arrays."""

    def __init__(self, frames, channels_first: bool = False):
        if isinstance(frames, (list, tuple)):
            self._items = list(frames)
        else:
            shape = getattr(frames, "shape", None)
            if shape is None or len(shape) != 4 or (shape[1] if channels_first else shape[3]) != 3:
                layout = "[N,3,H,W]" if channels_first else "[N,H,W,3]"
                raise R2RUserError(f"A clip's frames must be a batch {layout} of RGB frames; got "
                                   f"{tuple(shape) if shape is not None else type(frames).__name__}.")
            self._items = frames
        self.channels_first = channels_first
        self.count = len(self._items)

    def read(self, indices=None):
        for i in _select(self.count, indices):
            if not 0 <= i < self.count:
                raise R2RUserError(f"frame {i} requested from a clip of {self.count} frames.")
            frame = _torch_to_numpy(self._items[i])
            if self.channels_first and frame.ndim == 3:
                frame = np.moveaxis(frame, 0, -1)
            yield i, frame


class ArrayMasks:
    """Masks in memory: ``[M,H,W]`` or ``[M,1,H,W]`` (numpy or torch; M = 1 or one per frame), a single
    ``HxW`` mask, or a list of ``HxW`` masks. uint8 masks are divided by 255."""

    def __init__(self, masks):
        if isinstance(masks, (list, tuple)):
            self._items = list(masks)
        else:
            arr = masks
            shape = tuple(getattr(arr, "shape", ()))
            if len(shape) == 2:
                arr = arr[None]
            elif len(shape) == 4 and shape[1] == 1:
                arr = arr[:, 0]
            elif len(shape) != 3:
                raise R2RUserError(f"A clip's masks must be [M,H,W] (one per frame, or one for all); got shape "
                                   f"{shape or type(masks).__name__}.")
            self._items = arr
        self.count = len(self._items)

    def read(self, indices=None):
        for i in _select(self.count, indices):
            yield i, as_mask(_torch_to_numpy(self._items[i]))


class FunctionFrames:
    """``count`` frames made on demand by ``make(i) -> HxWx3``."""

    def __init__(self, count: int, make: Callable[[int], np.ndarray]):
        self.count, self._make = int(count), make

    def read(self, indices=None):
        for i in _select(self.count, indices):
            yield i, self._make(i)


class FunctionMasks(FunctionFrames):
    """``count`` masks (1 = one for all frames) made on demand by ``make(i) -> HxW``."""

    def read(self, indices=None):
        for i, m in super().read(indices):
            yield i, as_mask(m)


def as_mask(m) -> np.ndarray:
    """A mask as ``HxW`` float32 in [0, 1] (uint8: / 255; bool: 0/1; ``HxWx1`` squeezed)."""
    m = np.asarray(m)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise R2RUserError(f"A mask must be a single-channel HxW image; got shape {tuple(m.shape)}.")
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    if m.dtype == bool:
        return m.astype(np.float32)
    m = m.astype(np.float32)
    if not np.isfinite(m).all():
        raise R2RUserError("A mask contains NaN or infinite values.")
    return np.clip(m, 0.0, 1.0)


def as_frame(frame, i: int) -> np.ndarray:
    """An ``HxWx3`` frame checked (RGB, uint8 or finite float in [0, 1]) -> float32 in [0, 1]."""
    f = np.asarray(frame)
    if f.ndim != 3 or f.shape[2] != 3:
        raise R2RUserError(f"Frame {i} has shape {tuple(f.shape)}; expected an RGB frame HxWx3.")
    if f.dtype == np.uint8:
        return f.astype(np.float32) / 255.0
    if not np.issubdtype(f.dtype, np.floating):
        raise R2RUserError(f"Frame {i} has dtype {f.dtype}; expected uint8 or float in [0, 1].")
    f = f.astype(np.float32, copy=False)
    if not np.isfinite(f).all() or f.min(initial=0.0) < -1e-4 or f.max(initial=0.0) > 1.0 + 1e-4:
        raise R2RUserError(f"Frame {i} has values outside [0, 1] (or NaN); expected RGB in [0, 1] (or uint8).")
    return np.clip(f, 0.0, 1.0)


@dataclass
class Clip:
    """Frames, their masks (``masks.count`` 1 = the same mask for every frame) and optional reference
    regions (masks of each frame whose colours the object should take; one or one per frame)."""

    frames: FrameSource
    masks: MaskSource
    reference_masks: MaskSource | None = None

    def pairs(self, indices=None) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(i, frame float32, mask, reference mask or None)`` for the sorted ``indices`` (all when None)."""
        idx = None if indices is None else _select(None, indices)
        masks = _FollowMasks(self.masks)
        refs = None if self.reference_masks is None else _FollowMasks(self.reference_masks)
        for i, frame in self.frames.read(idx):
            yield i, as_frame(frame, i), masks.get(i), None if refs is None else refs.get(i)


class _FollowMasks:
    """A mask source read alongside the frames: one mask for all frames, or mask ``i`` for frame ``i``."""

    def __init__(self, source: MaskSource):
        self.source = source
        self.single: np.ndarray | None = None
        self.iterator: Iterator[tuple[int, np.ndarray]] | None = None
        self.current: tuple[int, np.ndarray] = (-1, np.zeros((0, 0), np.float32))
        if source.count == 1:
            self.single = next(iter(source.read([0])))[1]

    def get(self, i: int) -> np.ndarray:
        if self.single is not None:
            return self.single
        if self.iterator is None:
            self.iterator = iter(self.source.read(None))
        while self.current[0] < i:
            try:
                self.current = next(self.iterator)
            except StopIteration:
                raise R2RUserError(f"The masks end at {self.current[0] + 1} but the clip has at least {i + 1} "
                                   "frames; give one mask per frame (or a single mask for all).") from None
        return self.current[1]


@dataclass
class ClipInfo:
    """What :func:`scan` found."""

    count: int
    size: tuple[int, int]  # (H, W)
    mask_count: int
    #: frame -> why the harmonizer cannot use its mask (empty, covers the whole frame, too small...)
    unusable: dict[int, str] = field(default_factory=dict)
    #: histogram distance of each frame to the one before (0 for frame 0)
    distances: list[float] = field(default_factory=list)

    @property
    def usable(self) -> list[bool]:
        return [i not in self.unusable for i in range(self.count)]

    def shots(self, threshold: float) -> list[tuple[int, int]]:
        return cuts.shots_from_distances(self.distances, threshold)


def _count_masks(source: MaskSource) -> int:
    """The number of masks (a file is read once: its source remembers the count)."""
    if source.count is not None:
        return int(source.count)
    return sum(1 for _ in source.read(None))


def scan(clip: Clip, mask_problem: Callable[[np.ndarray], str | None] | None = None) -> ClipInfo:
    """Read the clip once (no model work): frame count and sizes, mask count and sizes, the masks the
    harmonizer cannot use (``mask_problem(mask) -> reason or None``; default: empty masks) and the
    histogram distances between consecutive frames. Raises :class:`R2RUserError` on a bad clip."""
    mask_count = _count_masks(clip.masks)
    if mask_count == 0:
        raise R2RUserError("The clip has no mask; give one mask for all frames or one per frame (white = object).")
    ref_count = None if clip.reference_masks is None else _count_masks(clip.reference_masks)
    problem = mask_problem or empty_mask_problem
    size, n, previous = None, 0, None
    unusable: dict[int, str] = {}
    distances: list[float] = []
    masks = _FollowMasks(clip.masks)
    refs = None if clip.reference_masks is None else _FollowMasks(clip.reference_masks)
    for i, frame in clip.frames.read(None):
        f = np.asarray(frame)
        if size is None:
            size = tuple(f.shape[:2])
        if f.ndim != 3 or tuple(f.shape[:2]) != size:
            raise R2RUserError(f"Frame {i} is {f.shape[1] if f.ndim > 1 else '?'}x{f.shape[0]} (WxH) but frame 0 is "
                               f"{size[1]}x{size[0]}; every frame of a clip must have the same size. Resize the "
                               "frames first (or split the clip where the size changes).")
        if i < mask_count or mask_count == 1:
            m = masks.get(i)
            if tuple(m.shape) != size:
                raise R2RUserError(f"The mask of frame {i} is {m.shape[1]}x{m.shape[0]} (WxH) but the frames are "
                                   f"{size[1]}x{size[0]}; give masks of the frames' size.")
        else:
            m = None
        if refs is not None and (i < (ref_count or 0) or ref_count == 1):
            r = refs.get(i)
            if tuple(r.shape) != size:
                raise R2RUserError(f"The reference mask of frame {i} is {r.shape[1]}x{r.shape[0]} (WxH) but the "
                                   f"frames are {size[1]}x{size[0]}; give reference masks of the frames' size.")
            if not (r > 0).any():
                raise R2RUserError(f"The reference mask of frame {i} is empty; mark the region whose colours the "
                                   "object should take in white (or leave the reference masks out).")
        as_frame(f, i)
        if m is not None:
            why = problem(m)
            if why:
                unusable[i] = why
        sig = cuts.frame_signature(f, m)
        distances.append(0.0 if previous is None else cuts.signature_distance(previous, sig))
        previous = sig
        n = i + 1
    if n == 0 or size is None:
        raise R2RUserError("The clip has no frames; give a video (or an image batch) with at least one frame.")
    if mask_count not in (1, n):
        raise R2RUserError(f"The clip has {n} frames but {mask_count} masks; give one mask per frame ({n}) or a "
                           "single mask for every frame.")
    if ref_count is not None and ref_count not in (1, n):
        raise R2RUserError(f"The clip has {n} frames but {ref_count} reference masks; give one per frame or one "
                           "for every frame.")
    return ClipInfo(count=n, size=size, mask_count=mask_count, unusable=unusable, distances=distances)


def empty_mask_problem(mask: np.ndarray) -> str | None:
    """The weight-free rule: a mask with no pixel >= 0.5 is empty; one that covers every pixel leaves no
    background to take the colours from."""
    fg = mask >= 0.5
    if not fg.any():
        return "empty mask"
    if fg.all():
        return "the mask covers the whole frame (no background)"
    return None


def describe_frames(indices) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (long lists shortened)."""
    idx = sorted(indices)
    runs: list[str] = []
    start = 0
    for k, i in enumerate(idx):
        if k == 0 or i != idx[k - 1] + 1:
            start = i
        if k == len(idx) - 1 or idx[k + 1] != i + 1:
            runs.append(str(start) if start == i else f"{start}-{i}")
    text = ", ".join(runs[:8])
    return text + (f" and {len(runs) - 8} more ranges" if len(runs) > 8 else "")
