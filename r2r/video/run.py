"""A clip through a harmonizer in one of the temporal modes, streamed frame by frame.

    job = harmonize_clip(clip, engine, temporal="smoothed")   # reads + checks the clip: errors before any work
    for i, frame in job:                                       # HxWx3 float32 in [0, 1], in frame order
        write(frame)
    job.report                                                 # shots, skipped frames, model time...

Modes (``temporal``, :data:`r2r.params.TEMPORAL_MODES`):

* ``independent`` — every frame harmonized on its own (R2R: frame ``i`` with seed ``seed + i``);
* ``shared_noise`` — R2R: every frame starts from the same noise and posterior draw, so identical
  frames give identical results (the weight-free harmonizer has no noise: as ``independent``);
* ``smoothed`` — shared noise, and the colour transform applied to the object is smoothed over time
  by a zero-phase Gaussian within each shot (:mod:`r2r.video.temporal`, cuts: :mod:`r2r.video.cuts`);
* ``keyframes`` — the harmonizer runs on keyframes only (every ``keyframe_interval`` frames from each
  shot's start, and each shot's first and last frame); the other frames get the colour transform
  interpolated from their neighbouring keyframes.

Memory: the frames go through the harmonizer in chunks (:meth:`engine.chunk_frames`); the transform
modes keep only the per-frame transform parameters (a few KB a frame) between their two passes and
read the frames again for the second. Frames whose mask cannot be used (empty) are passed through
unchanged with a warning (``empty_frames="skip"``) or refuse the clip before any work (``"stop"``).
``progress(done, total, phase)`` is called after every chunk and every output frame (``phase``:
``"model"`` = frames through the harmonizer, ``"output"`` = frames finished); raise from it to stop
between chunks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import R2RUserError
from ..params import check
from . import temporal as tm
from .clip import Clip, describe_frames, scan
from .cuts import DEFAULT_CUT_THRESHOLD

log = logging.getLogger(__name__)


@dataclass
class ClipReport:
    """What a run did (filled while the job runs)."""

    frames: int
    size: tuple[int, int]
    temporal: str
    shots: list[tuple[int, int]]
    skipped: dict[int, str]
    chunk_frames: int = 0
    model_frames: int = 0
    keyframes: list[int] = field(default_factory=list)
    model_seconds: float = 0.0
    model_cpu_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def cuts(self) -> list[int]:
        return [s for s, _ in self.shots[1:]]


class ClipJob:
    """See the module docstring; made by :func:`harmonize_clip`."""

    def __init__(self, clip: Clip, engine, temporal: str = "independent", keyframe_interval: int = 8,
                 empty_frames: str = "skip", smoothing: float = tm.DEFAULT_SMOOTHING,
                 cut_threshold: float = DEFAULT_CUT_THRESHOLD, progress: Callable | None = None):
        self.temporal = check("temporal", temporal, "temporal")
        self.interval = check("keyframe_interval", keyframe_interval, "keyframe_interval")
        self.empty_frames = check("empty_frames", empty_frames, "empty_frames")
        self.sigma = check("smoothing", smoothing, "smoothing")
        self.threshold = check("cut_threshold", cut_threshold, "cut_threshold")
        if progress is not None and not callable(progress):
            raise R2RUserError(f"progress must be a function (done, total, phase) or None; got {progress!r}.")
        if self.transformed and getattr(engine, "paste_back", True) is False:
            raise R2RUserError(f"temporal {self.temporal} changes the object's colours inside the (feathered) mask, "
                               "so it always pastes the background back; switch paste_back on, or use temporal "
                               "independent / shared_noise.")
        self.clip, self.engine, self.progress = clip, engine, progress
        self._chunk_keys: set = set()
        self.info = scan(clip, engine.mask_problem)
        info = self.info
        if info.unusable and self.empty_frames == "stop":
            first = min(info.unusable)
            raise R2RUserError(
                f"{len(info.unusable)} of {info.count} frames cannot be harmonized (frames "
                f"{describe_frames(info.unusable)}; frame {first}: {info.unusable[first]}) and empty_frames is "
                "'stop'. Fix those masks, or set empty_frames to 'skip' to pass those frames through unchanged.")
        if len(info.unusable) == info.count:
            raise R2RUserError(f"None of the {info.count} frames can be harmonized (frame 0: {info.unusable[0]}); "
                               "give masks that mark the pasted object (white = object).")
        if info.unusable:
            log.warning("%d frame(s) passed through unchanged (frames %s): %s", len(info.unusable),
                        describe_frames(info.unusable), info.unusable[min(info.unusable)])
        shots = info.shots(self.threshold)
        if len(shots) > 1:
            log.info("shot cuts at frames %s (colour-histogram distance > %.2f)",
                     ", ".join(str(s) for s, _ in shots[1:]), self.threshold)
        self.report = ClipReport(info.count, info.size, self.temporal, shots, dict(info.unusable))
        if self.temporal == "keyframes":
            self.report.keyframes = tm.keyframe_indices(shots, self.interval, info.usable)
            log.info("keyframes: %d of %d frames (every %d and at cuts)", len(self.report.keyframes), info.count,
                     self.interval)

    @property
    def transformed(self) -> bool:
        return self.temporal in ("smoothed", "keyframes")

    def __len__(self) -> int:
        return self.info.count

    def _tell(self, done: int, total: int, phase: str) -> None:
        if self.progress is not None:
            self.progress(done, total, phase)

    def __iter__(self):
        start, model0, cpu0 = time.perf_counter(), self.engine.model_seconds, self.engine.model_cpu_seconds
        self.report.chunk_frames = max(1, int(self.engine.chunk_frames(self.info.size)))
        try:
            yield from (self._transform_modes() if self.transformed else self._direct())
        finally:
            self.report.model_seconds = self.engine.model_seconds - model0
            self.report.model_cpu_seconds = self.engine.model_cpu_seconds - cpu0
            self.report.seconds = time.perf_counter() - start

    def _run(self, batch, method, memo: dict):
        """``method`` (the engine's outputs / params) over a chunk. Outside ``independent`` the result is
        a function of the frame alone, so a frame identical (pixels and masks) to one already done in
        ``memo`` is not run again: it shares that result, bit for bit (duplicated frames of a frame-rate
        conversion, freeze frames)."""
        if not batch:
            return []
        shared = self.temporal != "independent"
        keys = [_content_key(f, m, r) if shared else None for _, f, m, r in batch]
        todo, todo_keys = [], []
        for key, item in zip(keys, batch):
            if key is None or (key not in memo and key not in todo_keys):
                todo.append(item)
                todo_keys.append(key)
        self._chunk_keys = set(keys)
        results = []
        if todo:
            idx, frames, masks, refs = (list(x) for x in zip(*todo))
            results = method(frames, masks, refs, idx, shared)
            self.report.model_frames += len(todo)
        if not shared:
            return results
        memo.update(zip(todo_keys, results))
        return [memo[k] for k in keys]

    def _direct(self):
        """independent / shared_noise: the harmonizer's finished frames, a chunk at a time."""
        chunk, n, unusable = self.report.chunk_frames, self.info.count, self.info.unusable
        pending: list = []
        memo: dict = {}
        done = 0
        for item in self.clip.pairs():
            pending.append(item)
            usable = [p for p in pending if p[0] not in unusable]
            # flush a full chunk, a run of pass-through frames at once, and at the end
            if usable and len(pending) < chunk and item[0] != n - 1:
                continue
            outs = iter(self._run(usable, self.engine.outputs, memo))
            memo = {k: v for k, v in memo.items() if k in self._chunk_keys}  # keep this chunk's results only
            for i, f, _, _ in pending:
                yield i, (f if i in unusable else next(outs))
            done += len(pending)
            pending = []
            self._tell(done, n, "output")

    def _transform_modes(self):
        """smoothed / keyframes: parameters of the model frames, then every frame with its transform."""
        info, chunk = self.info, self.report.chunk_frames
        targets = self.report.keyframes if self.temporal == "keyframes" else \
            [i for i in range(info.count) if i not in info.unusable]
        params: dict[int, np.ndarray] = {}
        memo: dict = {}
        batch: list = []
        for item in self.clip.pairs(targets):
            batch.append(item)
            if len(batch) == chunk or item[0] == targets[-1]:
                params.update(zip((b[0] for b in batch), self._run(batch, self.engine.params, memo)))
                batch = []
                self._tell(len(params), len(targets), "model")
        shots = self.report.shots
        shot = tm.shot_of(shots, info.count)
        final = tm.smooth(params, shots, self.sigma) if self.temporal == "smoothed" else params
        for i, frame, mask, _ in self.clip.pairs():
            p = final.get(i) if self.temporal == "smoothed" else \
                tm.interpolate(i, self.report.keyframes, params, shot)
            yield i, (frame if i in info.unusable or p is None else self.engine.apply(frame, mask, p))
            self._tell(i + 1, info.count, "output")


def _content_key(frame: np.ndarray, mask: np.ndarray, ref) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for x in (frame, mask, ref):
        if x is None:
            digest.update(b"-")
            continue
        digest.update(str((x.shape, x.dtype.str)).encode())
        digest.update(np.ascontiguousarray(x).data)
    return digest.hexdigest()


def harmonize_clip(clip: Clip, engine, temporal: str = "independent", keyframe_interval: int = 8,
                   empty_frames: str = "skip", smoothing: float = tm.DEFAULT_SMOOTHING,
                   cut_threshold: float = DEFAULT_CUT_THRESHOLD, progress: Callable | None = None) -> ClipJob:
    """Check ``clip`` (reading it once, no model work) and return the job that harmonizes it when iterated
    (see the module docstring). ``engine``: :class:`~r2r.video.engines.R2REngine` or
    :class:`~r2r.video.engines.StatisticsEngine`."""
    return ClipJob(clip, engine, temporal, keyframe_interval, empty_frames, smoothing, cut_threshold, progress)


def harmonize_frames(clip: Clip, engine, **kwargs) -> np.ndarray:
    """All frames of :func:`harmonize_clip` in memory, ``[N,H,W,3]`` float32 (for clips held in memory
    anyway, e.g. an IMAGE batch)."""
    job = harmonize_clip(clip, engine, **kwargs)
    out = np.empty((job.info.count, *job.info.size, 3), np.float32)
    for i, frame in job:
        out[i] = frame
    return out


def restore_clip(working, prepared, temporal: str, keyframe_interval: int = 8, feather: int | None = None,
                 smoothing: float = tm.DEFAULT_SMOOTHING, cut_threshold: float = DEFAULT_CUT_THRESHOLD,
                 progress: Callable | None = None):
    """``restore`` for a clip whose frames were decoded together (the four-node chain): ``smoothed`` /
    ``keyframes`` act on the colour transforms fitted from ``working`` (``[N,3,h,w]`` on ``prepared``'s
    canvas), cuts found on the original frames -> ``[N,3,H,W]`` float32 at the original size."""
    import torch

    from .clip import ArrayFrames, ArrayMasks
    from .engines import DecodedEngine

    if temporal not in ("smoothed", "keyframes"):
        raise R2RUserError(f"restore_clip is for temporal smoothed or keyframes; got {temporal!r} (the other modes "
                           "restore each frame with the pipeline's restore).")
    n = int(working.shape[0])
    prepared = prepared.expand(n)
    clip = Clip(ArrayFrames(prepared.original_composite, channels_first=True),
                ArrayMasks(prepared.original_mask))
    out = harmonize_frames(clip, DecodedEngine(working, prepared, feather), temporal=temporal,
                           keyframe_interval=keyframe_interval, empty_frames="stop", smoothing=smoothing,
                           cut_threshold=cut_threshold, progress=progress)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
