"""numpy backend of the Poisson solvers (scipy.fft when installed, numpy.fft otherwise).

Images are ``HxWxC`` arrays; windows are channels-first float32 ``(C, h+2, w+2)``.
Box mode is one exact solve (a DST-I along one axis plus tridiagonal sweeps along the
other); masked mode runs the shared PCG of :mod:`.poisson_stencils` preconditioned by
that solve.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ..errors import R2RUserError
from .inputs import bool_mask_hw, image_hwc, same_kind, whole_number
from .poisson_setup import (
    SolveWindow,
    check_mask_not_empty,
    make_solve_window,
    residual_threshold,
    resolve_erode_margin,
    value_range,
)
from .poisson_stencils import (
    PCGOps,
    apply_masked_laplacian,
    box_guidance_laplacian,
    jacobi_box_jacobi,
    masked_guidance_system,
    solve_pcg,
)

__all__ = ["PoissonSolution", "blend_numpy", "paint_solution", "poisson_residual", "prepare_numpy",
           "set_num_threads", "solve_prepared"]

_NUM_THREADS = None


def set_num_threads(n: int | None) -> None:
    """Threads the numpy backend's FFTs may use (None = all cores, the default)."""
    global _NUM_THREADS
    _NUM_THREADS = None if n is None else whole_number(n, "the number of threads", 1, "Or None for all cores.")


def _workers() -> int:
    return _NUM_THREADS or max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- the exact box-Laplacian solve


def _dst1_axis(x, axis):
    """Orthonormal DST-I along one axis (its own inverse): scipy.fft if installed, else numpy.fft."""
    try:
        import scipy.fft as sfft
    except ImportError:  # scipy is optional at runtime: fall back to an FFT-based DST
        sfft = None
    if sfft is not None:
        return sfft.dst(x, type=1, axis=axis, norm="ortho", workers=_workers())
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    ext = np.zeros(x.shape[:-1] + (2 * (n + 1),), dtype=x.dtype)
    ext[..., 1 : n + 1] = x
    ext[..., n + 2 :] = -x[..., ::-1]
    y = -np.fft.rfft(ext, axis=-1).imag[..., 1 : n + 1] * np.sqrt(0.5 / (n + 1))
    return np.moveaxis(y.astype(x.dtype, copy=False), -1, axis)


def _largest_prime_factor(n):
    p, best = 2, 1
    while p * p <= n:
        while n % p == 0:
            best, n = p, n // p
        p += 1
    return max(best, n)


_THOMAS_CACHE: dict = {}


def _thomas_factors(n, m):
    """1 / pivots of the tridiagonal systems (2 + mu_k) u_i - u_{i-1} - u_{i+1} = g_i, i < n,
    one per DST-I frequency k < m of the other axis; shape (n, m), cached per size."""
    key = (n, m)
    f = _THOMAS_CACHE.get(key)
    if f is None:
        d = 4.0 - 2.0 * np.cos(np.pi * np.arange(1, m + 1) / (m + 1))
        f = np.empty((n, m))
        cp = np.zeros(m)
        for i in range(n):
            f[i] = 1.0 / (d + cp)
            cp = -f[i]
        f = f.astype(np.float32)
        if len(_THOMAS_CACHE) > 16:
            _THOMAS_CACHE.clear()
        _THOMAS_CACHE[key] = f
    return f


def solve_dirichlet_laplacian(g):
    """Exact solve of (-Delta) u = g on (C, h, w) with u = 0 outside (zero Dirichlet frame).

    Diagonalise one axis with an orthonormal DST-I and solve the remaining tridiagonal
    systems along the other axis (vectorised Thomas sweeps): exact, half the FFT work of a
    2-D DST, and no slow FFT lengths (the DST runs along the axis whose length suits the
    FFT; the sweeps along the other one).
    """
    C, h, w = g.shape
    lh, lw = _largest_prime_factor(h + 1), _largest_prime_factor(w + 1)
    # DST along the longer axis (wide vector ops, short sweep loop) unless its FFT is slow
    along_w = (lw <= 13 and (w >= h or lh > 13)) or (lh > 13 and lw <= lh)
    x = g if along_w else g.transpose(0, 2, 1)
    n, m = x.shape[1], x.shape[2]  # sweep axis, DST axis
    inv = _thomas_factors(n, m)
    G = np.ascontiguousarray(_dst1_axis(x, 2).transpose(1, 0, 2))  # (n, C, m)
    G[0] *= inv[0]
    for i in range(1, n):
        G[i] += G[i - 1]
        G[i] *= inv[i]
    for i in range(n - 2, -1, -1):
        G[i] += inv[i] * G[i + 1]
    u = _dst1_axis(G.transpose(1, 0, 2), 2)
    return np.ascontiguousarray(u if along_w else u.transpose(0, 2, 1))


# ----------------------------------------------------------------------------- windows and solvers


def _window(img_hwc, win: SolveWindow):
    """(C, h, w) float32 window of an HxWxC image, edge-padded past the image."""
    cy0, cy1, cx0, cx1 = win.crop
    out = np.ascontiguousarray(np.moveaxis(img_hwc[cy0:cy1, cx0:cx1], 2, 0), dtype=np.float32)
    pt, pb, pl, pr = win.pads
    if pt or pb or pl or pr:
        out = np.pad(out, ((0, 0), (pt, pb), (pl, pr)), mode="edge")
    return out


def _window_mask(mask_hw, win: SolveWindow):
    """(h, w) bool window of the mask, False past the image."""
    cy0, cy1, cx0, cx1 = win.crop
    out = mask_hw[cy0:cy1, cx0:cx1]
    pt, pb, pl, pr = win.pads
    if pt or pb or pl or pr:
        out = np.pad(out, ((pt, pb), (pl, pr)), mode="constant", constant_values=False)
    return out


def erode_mask(m, iterations):
    """Erode a bool (h, w) mask with a 3x3 square ``iterations`` times, zero outside."""
    if iterations <= 0:
        return m
    import cv2

    out = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(iterations),
                    borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def masked_unknowns(Mb, erode):
    """The mask of the unknowns in masked mode: ``Mb`` eroded, or ``Mb`` if erosion empties it."""
    Mm = erode_mask(Mb, erode) if erode else Mb
    return Mm if Mm[1:-1, 1:-1].any() else Mb


def _channel_dot(a, b):
    C = a.shape[0]
    af, bf = a.reshape(C, -1), b.reshape(C, -1)
    return np.array([float(np.dot(af[c], bf[c])) for c in range(C)])[:, None, None]


def _ratio_or_zero(num, den, like):
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0).astype(like.dtype)


def _abs_max(x):
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


_OPS = PCGOps(channel_dot=_channel_dot, ratio_or_zero=_ratio_or_zero, abs_max=_abs_max, copy=np.copy)


def _solve_masked(Tb, Sb, Mm, mixed, threshold, max_iter):
    b, interior = masked_guidance_system(Tb, Sb, Mm, mixed)
    mask_f = interior.astype(b.dtype)
    pcg_buf, precond_buf = np.empty_like(b), np.empty_like(b)
    precondition = jacobi_box_jacobi(lambda x: apply_masked_laplacian(x, mask_f, precond_buf),
                                     solve_dirichlet_laplacian, mask_f)
    return solve_pcg(b, lambda x: apply_masked_laplacian(x, mask_f, pcg_buf), precondition, _OPS, threshold,
                     max_iter)


@dataclass
class PoissonSolution:
    """The unclipped solution on the solve window plus bookkeeping (for tests/diagnostics)."""

    field: np.ndarray  # (C, h+2, w+2) float32 solution f on the window, border = target
    target: np.ndarray  # (C, h+2, w+2) target window
    source: np.ndarray  # (C, h+2, w+2) source window
    mask: np.ndarray  # (h+2, w+2) bool mask window (not eroded)
    window: SolveWindow
    mode: str
    mixed: bool
    erode: int
    info: dict = dataclasses.field(default_factory=dict)


def prepare_numpy(target, source, mask, *, unit_range=False):
    """Validated ``(target HxWxC, source HxWxC, mask HxW bool)`` views of the inputs."""
    T = image_hwc(target, "target", unit_range=unit_range)
    S = image_hwc(source, "source", unit_range=unit_range)
    if T.shape != S.shape:
        raise R2RUserError(
            f"source and target must have the same shape; got source {S.shape} and target {T.shape}. "
            "Resize or crop the source to the target first."
        )
    same_kind(T, S, ("target", "source"))
    M = bool_mask_hw(mask, T.shape[:2])
    check_mask_not_empty(M)
    return T, S, M


def solve_prepared(T, S, M, *, mode, mixed, erode, margin, tol, max_iter, fft_friendly, value_range_=None):
    """Solve on validated inputs (see :func:`prepare_numpy`; mode / tol / max_iter already checked).

    ``value_range_``: what ``tol`` is relative to; default the rule of
    :mod:`.poisson_setup` applied to ``T`` and ``S``.
    """
    erode, margin = resolve_erode_margin(mode, erode, margin)
    win = make_solve_window(M, margin, fft_friendly=(mode == "masked" or bool(fft_friendly)))
    Tb, Sb, Mb = _window(T, win), _window(S, win), _window_mask(M, win)
    if mode == "box":
        rhs = box_guidance_laplacian(Tb, Sb, erode_mask(Mb, erode), mixed)  # Delta u
        rhs *= -1.0
        u, info = solve_dirichlet_laplacian(rhs), {"iterations": 0}
    else:
        if value_range_ is None:
            value_range_ = value_range(T, S, T.dtype == np.uint8)
        u, info = _solve_masked(Tb, Sb, masked_unknowns(Mb, erode), mixed,
                                residual_threshold(tol, value_range_), max_iter)
        info["value_range"] = value_range_
    F = Tb.copy()
    F[:, 1:-1, 1:-1] += u
    return PoissonSolution(F, Tb, Sb, Mb, win, mode, bool(mixed), erode, info)


def poisson_residual(sol: PoissonSolution) -> float:
    """Largest discrete Poisson residual of ``sol`` (in the image's units), recomputed in float64.

    box: ``|Delta f - div v|`` over the whole window interior; masked: the residual of
    the Perez equations over the mask pixels.
    """
    F = sol.field.astype(np.float64)
    T = sol.target.astype(np.float64)
    S = sol.source.astype(np.float64)

    def lap(X):
        return X[:, :-2, 1:-1] + X[:, 2:, 1:-1] + X[:, 1:-1, :-2] + X[:, 1:-1, 2:] - 4 * X[:, 1:-1, 1:-1]

    if sol.mode == "box":
        r = lap(F) - lap(T) - box_guidance_laplacian(T, S, erode_mask(sol.mask, sol.erode), sol.mixed)
        return float(np.abs(r).max())
    b, interior = masked_guidance_system(T, S, masked_unknowns(sol.mask, sol.erode), sol.mixed)
    r = (-lap(F - T) - b)[:, interior]
    return float(np.abs(r).max()) if r.size else 0.0


def paint_solution(sol: PoissonSolution, base_hwc) -> np.ndarray:
    """A float32 copy of ``base`` (HxWxC) with the solution written over the whole window (inside the image)."""
    out = base_hwc.astype(np.float32, copy=True)
    cy0, cy1, cx0, cx1 = sol.window.crop
    out[cy0:cy1, cx0:cx1] = sol.window.inside_image(sol.field).transpose(1, 2, 0)
    return out


def blend_numpy(T, S, M, *, mode, mixed, erode, margin, tol, max_iter, clip, fft_friendly):
    """poisson_blend on validated HxWxC inputs: a copy of ``T`` with the mask's pixels solved."""
    sol = solve_prepared(T, S, M, mode=mode, mixed=mixed, erode=erode, margin=margin, tol=tol,
                         max_iter=max_iter, fft_friendly=fft_friendly)
    out = T.copy()
    cy0, cy1, cx0, cx1 = sol.window.crop
    Mc = sol.window.inside_image(sol.mask)
    vals = sol.window.inside_image(sol.field)[:, Mc].T
    if T.dtype == np.uint8:
        vals = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
    else:
        if clip:
            vals = np.clip(vals, 0.0, 1.0)
        vals = vals.astype(T.dtype)
    out[cy0:cy1, cx0:cx1][Mc] = vals
    return out
