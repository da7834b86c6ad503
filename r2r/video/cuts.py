"""Shot-cut detection: a colour-histogram distance between consecutive frames.

Each frame is reduced to a thumbnail (:data:`THUMB_SIDE` px on the long side) and described by its
joint RGB histogram (:data:`BINS` bins per channel, 512 cells), weighted by the *background*
(``1 - mask``), so the pasted object moving or changing does not look like a cut. The distance
between two frames is the total-variation distance of their histograms (half the L1 distance): 0 =
the same colour distribution, 1 = no colour in common. A frame whose distance to the frame before is
above the threshold (:data:`DEFAULT_CUT_THRESHOLD`, the ``cut_threshold`` parameter) starts a new shot.

Why 0.25: measured on the bundled photos at 256x256, a cut between two of them moves the histogram
by 0.36 (astronaut / motorcycle) to 0.76 (coffee / either); consecutive frames of one shot of the
benchmark's clips — camera noise, six coloured spots jumping to new places every frame, the object
moving — by 0.06–0.10. A flash or a very fast pan can still exceed it (a false cut only restarts the
smoothing / the keyframes there); two shots with nearly the same colours may be missed (their
colour transforms are then similar anyway). ``cut_threshold`` 1 turns the detection off.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from ..params import PARAMS

#: frames whose histogram distance to the previous frame exceeds this start a new shot (r2r.params)
DEFAULT_CUT_THRESHOLD = cast(float, PARAMS["cut_threshold"].default)
#: histogram bins per colour channel (joint histogram: BINS ** 3 cells)
BINS = 8
#: thumbnail long side (px) the histograms are taken on
THUMB_SIDE = 96


def frame_signature(frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The background-weighted joint RGB histogram (``BINS ** 3`` cells, summing to 1) of an ``HxWx3``
    frame (uint8 or float in [0, 1]); ``mask`` (``HxW``, 1 = the pasted object) is left out of the weights."""
    import cv2

    h, w = frame.shape[:2]
    scale = THUMB_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32, copy=False)
    thumb = cv2.resize(img, size, interpolation=cv2.INTER_AREA) if scale < 1 else img
    weights = np.ones(thumb.shape[:2], np.float32)
    if mask is not None:
        m: np.ndarray = np.clip(mask.astype(np.float32), 0.0, 1.0)
        m = cv2.resize(m, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA) if scale < 1 else m
        background = 1.0 - m
        if float(background.sum()) > 0.05 * background.size:  # else: almost no background, use the frame
            weights = background
    q = np.clip((thumb * BINS).astype(np.int64), 0, BINS - 1)
    cells = (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]
    hist = np.bincount(cells.ravel(), weights=weights.ravel(), minlength=BINS ** 3)
    return (hist / max(float(hist.sum()), 1e-12)).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of two :func:`frame_signature` s (0..1)."""
    return float(0.5 * np.abs(a.astype(np.float64) - b.astype(np.float64)).sum())


def shots_from_distances(distances, threshold: float = DEFAULT_CUT_THRESHOLD) -> list[tuple[int, int]]:
    """``distances[i]`` = distance of frame i to frame i-1 (``distances[0]`` is ignored) -> the shots as
    ``[start, end)`` frame ranges, a new one at every distance above ``threshold``."""
    n = len(distances)
    starts = [0] + [i for i in range(1, n) if distances[i] > threshold]
    return [(s, e) for s, e in zip(starts, starts[1:] + [n])] if n else []


def detect_cuts(frames, masks=None, threshold: float = DEFAULT_CUT_THRESHOLD) -> list[int]:
    """The frames that start a new shot (frame 0 excluded) of a sequence of ``HxWx3`` frames."""
    distances, previous = [], None
    for i, frame in enumerate(frames):
        sig = frame_signature(frame, None if masks is None else masks[i])
        distances.append(0.0 if previous is None else signature_distance(previous, sig))
        previous = sig
    return [s for s, _ in shots_from_distances(distances, threshold)[1:]]
