"""The temporal modes' arithmetic on per-frame colour-transform parameters (flat float arrays that
blend linearly: the Lab gain/offset of the weight-free harmonizer, the object-relative affine grid of
the R2R path, :mod:`r2r.video.transforms`).

* :func:`smooth` — ``smoothed``: a zero-phase (symmetric, non-causal) Gaussian over the frames of each
  shot. Nothing crosses a cut: the kernel is cut at the shot's first and last frame, so a frame only
  ever uses frames of its own shot (near a cut a local linear fit instead of a plain average keeps a
  steady drift unbiased). Frames without parameters (empty mask) are left out.
* :func:`keyframe_indices` / :func:`interpolate` — ``keyframes``: the model runs on the first usable
  frame of each shot, then on the first usable frame at or after every ``interval``-th frame counted
  from the shot's start, and on the shot's last usable frame; every other frame gets the linear
  interpolation of its two neighbouring keyframes in the same shot (so a frame never takes anything
  from another shot either).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from ..params import PARAMS

#: the Gaussian's standard deviation in frames (the ``smoothing`` parameter's default, r2r.params)
DEFAULT_SMOOTHING = cast(float, PARAMS["smoothing"].default)
#: the kernel is cut at this many standard deviations
KERNEL_SIGMAS = 3.0


def shot_of(shots, n: int) -> np.ndarray:
    """``[n]`` shot number of every frame."""
    out = np.zeros(n, np.int64)
    for k, (s, e) in enumerate(shots):
        out[s:e] = k
    return out


def smooth(params: dict[int, np.ndarray], shots, sigma: float = DEFAULT_SMOOTHING) -> dict[int, np.ndarray]:
    """Zero-phase Gaussian smoothing (standard deviation ``sigma`` frames) of ``params`` (frame -> array)
    within each shot; frames missing from ``params`` are skipped (and stay missing).

    Each frame gets a Gaussian-weighted local *linear* fit of its shot's frames around it, evaluated at
    the frame: where the window is whole and symmetric this is exactly the Gaussian average; where a cut,
    the clip's end or missing frames cut it short, the linear term keeps a steady drift (an object
    walking into shadow) from being pulled toward the middle of the shot."""
    if sigma <= 0 or not params:
        return dict(params)
    radius = int(math.ceil(KERNEL_SIGMAS * sigma))
    out: dict[int, np.ndarray] = {}
    for s, e in shots:
        frames = [i for i in range(s, e) if i in params]
        if not frames:
            continue
        stack = np.stack([params[i].astype(np.float64).ravel() for i in frames])
        pos = np.asarray(frames)
        for i in frames:
            lo, hi = np.searchsorted(pos, i - radius), np.searchsorted(pos, i + radius, side="right")
            d = (pos[lo:hi] - i).astype(np.float64)
            w = np.exp(-0.5 * (d / sigma) ** 2)
            s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
            det = s0 * s2 - s1 * s1
            # the weights of the local linear fit's value at d = 0 (plain average for a single frame)
            coef = w * (s2 - s1 * d) / det if det > 1e-9 * max(s0 * s2, 1e-12) else w / s0
            out[i] = (coef @ stack[lo:hi]).reshape(params[i].shape).astype(params[i].dtype)
    return out


def keyframe_indices(shots, interval: int, usable) -> list[int]:
    """The frames the model runs on in ``keyframes`` mode (see the module docstring); ``usable[i]``:
    whether frame i can be harmonized (its mask is not empty)."""
    interval = max(1, int(interval))
    keys: list[int] = []
    for s, e in shots:
        frames = [i for i in range(s, e) if usable[i]]
        if not frames:
            continue
        chosen = {frames[0], frames[-1]}
        pos = np.asarray(frames)
        for start in range(s, e, interval):
            j = int(np.searchsorted(pos, start))
            if j < len(frames):
                chosen.add(frames[j])
        keys.extend(sorted(chosen))
    return keys


def interpolate(i: int, keys: list[int], params: dict[int, np.ndarray], shot: np.ndarray) -> np.ndarray | None:
    """The parameters of frame ``i`` in ``keyframes`` mode: its own on a keyframe, else the linear
    interpolation of the nearest keyframes before and after it in its shot (the nearest one alone when
    there is only one side). None when its shot has no keyframe."""
    if i in params:
        return params[i]
    j = int(np.searchsorted(keys, i))
    before = keys[j - 1] if j > 0 and shot[keys[j - 1]] == shot[i] else None
    after = keys[j] if j < len(keys) and shot[keys[j]] == shot[i] else None
    if before is None:
        return None if after is None else params[after]
    if after is None:
        return params[before]
    t = (i - before) / (after - before)
    a, b = params[before], params[after]
    return ((1.0 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(a.dtype)
