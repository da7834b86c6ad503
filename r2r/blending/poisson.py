"""Poisson image blending: an OpenCV-compatible box solver and an exact masked solver.

Two formulations of "paste the source's gradients into the target", both solved
exactly (a direct DST solve, or preconditioned conjugate gradients run until the
discrete Poisson residual is below ``tol`` of the value range):

``mode="box"`` (default)
    What ``cv2.seamlessClone`` solves. The unknowns are every pixel of the mask's
    bounding box grown by ``margin`` pixels; the target's pixels on the box border
    are the Dirichlet boundary. The guidance field is the source's gradient on the
    edges leaving a pixel of the mask eroded by ``erode`` pixels (OpenCV erodes by
    3 with a 3x3 kernel) and the target's gradient everywhere else; forward
    differences, divergence by backward differences, exactly as OpenCV. With
    ``mixed=True`` a pixel of the eroded mask keeps the source's gradients only where
    OpenCV's MIXED_CLONE test picks them (``|sx - sy| > |tx - ty|`` per channel).
    We solve for ``u = f - target``, which is 0 on the box border, in one exact solve.

``mode="masked"``
    The textbook Perez et al. (2003) problem: unknowns only inside the mask,
    Dirichlet boundary = the target on the mask's own outer border, so nothing
    outside the mask influences the solution. Guidance on every edge touching the
    mask is the source's difference (``mixed=True``: the larger in magnitude of the
    source's and the target's difference, per edge and channel). Solved by
    conjugate gradients preconditioned with the exact inverse of the Laplacian on the
    bounding box, to a residual below ``tol`` x the value range (the rule is in
    :mod:`.poisson_setup`: 255 for uint8, else max(1, the images' span)).

In both modes only pixels inside the mask are written back; everything else is the
target, bit for bit. Pixels outside the image are treated as copies of the
target's edge pixels, so masks touching the border work; several components,
one-pixel masks and masks covering nearly all of the image work too.

This module is the public entry point; the work is done by

- :mod:`.poisson_setup` (modes, defaults, tolerance rule, solve window),
- :mod:`.poisson_stencils` (the discretisation and the one PCG loop),
- :mod:`.poisson_numpy` (numpy/scipy backend) and :mod:`.poisson_torch` (torch backend).
"""

from __future__ import annotations

import numpy as np

from .inputs import is_torch
from .poisson_numpy import (
    PoissonSolution,
    blend_numpy,
    poisson_residual,
    prepare_numpy,
    set_num_threads,
    solve_prepared,
)
from .poisson_setup import MODES, check_convergence_settings, check_mode, resolve_erode_margin

__all__ = [
    "MODES",
    "PoissonSolution",
    "poisson_blend",
    "poisson_residual",
    "set_num_threads",
    "solve_poisson",
]


def solve_poisson(target, source, mask, *, mode="box", mixed=False, erode=None, margin=None, tol=5e-4,
                  max_iter=2000, fft_friendly=False) -> PoissonSolution:
    """Solve the blending problem on numpy images; returns the raw float solution window.

    Values are in the input's units (0..255 for uint8, as given for float; no clipping).
    ``tol`` is the largest allowed discrete Poisson residual as a fraction of the value
    range (masked mode; box mode is a direct solve). ``fft_friendly`` (box mode) lets the
    frame grow by a few pixels to sizes the FFT handles fastest (the answer then differs
    slightly from OpenCV's; masked mode always does this, its answer does not depend on
    the frame). Raises R2RUserError for bad input, before any work.
    """
    check_mode(mode)
    tol, max_iter = check_convergence_settings(tol, max_iter)
    erode, margin = resolve_erode_margin(mode, erode, margin)
    T, S, M = prepare_numpy(target, source, mask)
    return solve_prepared(T, S, M, mode=mode, mixed=mixed, erode=erode, margin=margin, tol=tol,
                          max_iter=max_iter, fft_friendly=fft_friendly)


def poisson_blend(target, source, mask, mode="box", mixed=False, *, erode=None, margin=None, tol=5e-4,
                  max_iter=2000, clip=True, fft_friendly=False):
    """Blend ``source``'s gradients into ``target`` inside ``mask``; returns a new image.

    numpy: ``HxWxC``/``HxW`` uint8 or float, target and source of the same shape and kind
    (result has the target's dtype; uint8 is rounded, float is clipped to [0, 1] when
    ``clip``, and then float inputs must lie in [0, 1]). torch: ``[B,C,H,W]`` or
    ``[C,H,W]`` float tensors with a ``[B,1,H,W]``/``[B,H,W]``/``[H,W]`` mask (any device;
    see :func:`.poisson_torch.poisson_blend_torch`). Masks: bool, uint8 0..255 or float
    0..1, thresholded at 0.5.

    mode: "box" (default, OpenCV seamlessClone's problem) or "masked" (Perez, unknowns
    only in the mask). mixed: mixed-gradient cloning. erode: pixels the mask is eroded
    by before choosing the guidance (default 3 for box = OpenCV, 0 for masked).
    margin: pixels added around the mask's bounding box (box mode's Dirichlet frame;
    default 0 = OpenCV's frame when eroding, else 1). fft_friendly: let box mode's frame
    grow to FFT-fast sizes (faster, no longer OpenCV-identical). tol / max_iter: masked
    mode's convergence (residual <= tol x value range). Only pixels inside the
    (uneroded) mask differ from the target; the inputs are never modified.
    """
    if is_torch(target) or is_torch(source) or is_torch(mask):
        from .poisson_torch import poisson_blend_torch

        return poisson_blend_torch(target, source, mask, mode=mode, mixed=mixed, erode=erode, margin=margin,
                                   tol=tol, max_iter=max_iter, clip=clip, fft_friendly=fft_friendly)
    check_mode(mode)
    tol, max_iter = check_convergence_settings(tol, max_iter)
    erode, margin = resolve_erode_margin(mode, erode, margin)
    T, S, M = prepare_numpy(target, source, mask, unit_range=bool(clip))
    out = blend_numpy(T, S, M, mode=mode, mixed=mixed, erode=erode, margin=margin, tol=tol, max_iter=max_iter,
                      clip=clip, fft_friendly=fft_friendly)
    return out[:, :, 0] if np.ndim(target) == 2 else out
