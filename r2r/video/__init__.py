"""Harmonize a pasted object through a whole clip without flicker (docs/video.md).

    from r2r.video import ArrayFrames, ArrayMasks, Clip, R2REngine, StatisticsEngine, harmonize_clip
    job = harmonize_clip(Clip(ArrayFrames(frames), ArrayMasks(masks)), StatisticsEngine(), temporal="smoothed")
    for i, frame in job: ...

* :mod:`~r2r.video.clip` — a clip's frames and masks (in memory, made on demand, or a file) and the
  scan that checks it before any work;
* :mod:`~r2r.video.cuts` — shot-cut detection (colour-histogram distance between consecutive frames);
* :mod:`~r2r.video.temporal` — zero-phase smoothing within shots, keyframes and their interpolation;
* :mod:`~r2r.video.transforms` — the R2R path's object-relative colour transform;
* :mod:`~r2r.video.engines` — the weight-free and the R2R harmonizer as the modes use them;
* :mod:`~r2r.video.run` — :func:`harmonize_clip`: the modes, streamed in chunks;
* :mod:`~r2r.video.files` — video files (PyAV): frames, mask videos, writing with the audio kept.
"""

from __future__ import annotations

from .clip import ArrayFrames, ArrayMasks, Clip, ClipInfo, FunctionFrames, FunctionMasks, scan
from .cuts import DEFAULT_CUT_THRESHOLD, detect_cuts
from .engines import R2REngine, StatisticsEngine
from .run import ClipJob, ClipReport, harmonize_clip, harmonize_frames
from .temporal import DEFAULT_SMOOTHING

__all__ = [
    "DEFAULT_CUT_THRESHOLD",
    "DEFAULT_SMOOTHING",
    "ArrayFrames",
    "ArrayMasks",
    "Clip",
    "ClipInfo",
    "ClipJob",
    "ClipReport",
    "FunctionFrames",
    "FunctionMasks",
    "R2REngine",
    "StatisticsEngine",
    "detect_cuts",
    "harmonize_clip",
    "harmonize_frames",
    "scan",
]
