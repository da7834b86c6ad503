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
    The solve is one 2-D DST-I of all channels at once with the boundary folded
    into the right-hand side (we solve for ``u = f - target``, which is 0 on the box
    border).

``mode="masked"``
    The textbook Perez et al. (2003) problem: unknowns only inside the mask,
    Dirichlet boundary = the target on the mask's own outer border, so nothing
    outside the mask influences the solution. Guidance on every edge touching the
    mask is the source's difference (``mixed=True``: the larger in magnitude of the
    source's and the target's difference, per edge and channel). Solved by
    conjugate gradients preconditioned with the exact DST inverse of the Laplacian
    on the bounding box, to a residual below ``tol``.

In both modes only pixels inside the mask are written back; everything else is the
target, bit for bit. Pixels outside the image are treated as copies of the
target's edge pixels, so masks touching the border work; several components,
one-pixel masks and masks covering nearly all of the image work too.

numpy images are ``HxWxC`` (or ``HxW``) uint8 or float; torch tensors are
``[B,C,H,W]`` / ``[C,H,W]`` (any device; batches are solved item by item).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import R2RUserError

__all__ = [
    "poisson_blend",
    "solve_poisson",
    "poisson_residual",
    "PoissonSolution",
    "MODES",
    "set_num_threads",
]

MODES = ("box", "masked")
_DEFAULT_EROSION = {"box": 3, "masked": 0}


_NUM_THREADS = None


def set_num_threads(n: int | None) -> None:
    """Threads the numpy path's FFTs may use (None = all cores, the default)."""
    global _NUM_THREADS
    if n is not None and (int(n) != n or n < 1):
        raise R2RUserError(f"the number of threads must be a whole number >= 1 or None; got {n!r}.")
    _NUM_THREADS = None if n is None else int(n)


def _workers() -> int:
    return _NUM_THREADS or max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- validation


def _check_mode(mode):
    if mode not in MODES:
        raise R2RUserError(
            f"Poisson mode must be one of {MODES}; got {mode!r}. Use 'box' (OpenCV seamlessClone "
            "behaviour, fastest) or 'masked' (only the mask's own border influences the result)."
        )


def _as_numpy_image(x, name):
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] < 1 or arr.shape[2] > 4:
        raise R2RUserError(
            f"{name} must be an HxW or HxWxC image (C = 1..4); got shape {tuple(np.shape(x))}. "
            "Pass an RGB array such as the one PIL/cv2 returns."
        )
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise R2RUserError(
            f"{name} must be uint8 (0..255) or float (0..1); got dtype {arr.dtype}. "
            "Convert it with .astype(np.uint8) or .astype(np.float32) / 255."
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise R2RUserError(f"{name} contains NaN or infinite values; clean the image before blending.")
    return arr


def _as_bool_mask(mask, shape_hw, name="mask"):
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise R2RUserError(
            f"{name} must be a single-channel HxW array; got shape {tuple(np.shape(mask))}. "
            "Pass one channel of the mask (e.g. mask[..., 0])."
        )
    if tuple(m.shape) != tuple(shape_hw):
        raise R2RUserError(
            f"{name} size {tuple(m.shape)} does not match the image size {tuple(shape_hw)}; "
            "resize the mask to the image (nearest-neighbour) first."
        )
    if m.dtype == bool:
        return m
    if m.dtype == np.uint8:
        return m > 127
    if np.issubdtype(m.dtype, np.floating) and not np.isfinite(m).all():
        raise R2RUserError(f"{name} contains NaN or infinite values; use a 0..1 float or 0/255 uint8 mask.")
    return m > 0.5 if np.issubdtype(m.dtype, np.floating) else m > 0


# ----------------------------------------------------------------------------- DST-I


def _dst1_numpy(x, axes):
    """Orthonormal 2-D DST-I (its own inverse). scipy.fft if available, else numpy.fft."""
    try:
        import scipy.fft as sfft
    except ImportError:  # scipy is optional at runtime: fall back to an FFT-based DST
        sfft = None
    if sfft is not None:
        return sfft.dstn(x, type=1, axes=axes, norm="ortho", workers=_workers())
    for ax in axes:
        x = _dst1_numpy_axis(x, ax)
    return x


def _dst1_numpy_axis(x, axis):
    """Orthonormal DST-I along one axis (scipy.fft if available, else numpy.fft)."""
    try:
        import scipy.fft as sfft
    except ImportError:
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


def _solve_laplace_numpy(g):
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
    G = np.ascontiguousarray(_dst1_numpy_axis(x, 2).transpose(1, 0, 2))  # (n, C, m)
    G[0] *= inv[0]
    for i in range(1, n):
        G[i] += G[i - 1]
        G[i] *= inv[i]
    for i in range(n - 2, -1, -1):
        G[i] += inv[i] * G[i + 1]
    u = _dst1_numpy_axis(G.transpose(1, 0, 2), 2)
    return np.ascontiguousarray(u if along_w else u.transpose(0, 2, 1))


def _laplacian_eigs(h, w, xp_mod, dtype, device=None):
    """Eigenvalues of the positive 5-point Laplacian (-Delta) with zero Dirichlet border."""
    if xp_mod is np:
        ey = 2.0 - 2.0 * np.cos(np.pi * np.arange(1, h + 1) / (h + 1))
        ex = 2.0 - 2.0 * np.cos(np.pi * np.arange(1, w + 1) / (w + 1))
        return (ey[:, None] + ex[None, :]).astype(dtype)
    import torch

    ey = 2.0 - 2.0 * torch.cos(torch.pi * torch.arange(1, h + 1, dtype=torch.float64) / (h + 1))
    ex = 2.0 - 2.0 * torch.cos(torch.pi * torch.arange(1, w + 1, dtype=torch.float64) / (w + 1))
    return (ey[:, None] + ex[None, :]).to(device=device, dtype=dtype)


def _dst1_torch_lastdim(x):
    import torch

    n = x.shape[-1]
    ext = torch.zeros(x.shape[:-1] + (2 * (n + 1),), dtype=x.dtype, device=x.device)
    ext[..., 1 : n + 1] = x
    ext[..., n + 2 :] = -torch.flip(x, dims=(-1,))
    return -torch.fft.rfft(ext, dim=-1).imag[..., 1 : n + 1] * ((0.5 / (n + 1)) ** 0.5)


def _dst1_torch(x):
    """Orthonormal 2-D DST-I over the last two dims of a torch tensor."""
    x = _dst1_torch_lastdim(x)
    return _dst1_torch_lastdim(x.transpose(-1, -2)).transpose(-1, -2)


# ----------------------------------------------------------------------------- box geometry


@dataclass
class _Box:
    """The solve window: bbox of the mask + margin, padded past the image edges."""

    y0: int  # window in image coordinates (may extend past the image)
    y1: int
    x0: int
    x1: int
    H: int
    W: int

    @property
    def crop(self):
        return max(self.y0, 0), min(self.y1, self.H), max(self.x0, 0), min(self.x1, self.W)

    @property
    def pads(self):
        return (
            max(0, -self.y0),
            max(0, self.y1 - self.H),
            max(0, -self.x0),
            max(0, self.x1 - self.W),
        )


def _fast_len(n):
    """Smallest m >= n whose DST-I (an FFT of length 2(m+1)) is fast: m + 1 is 5-smooth."""
    m = n + 1
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m - 1
        m += 1


def _make_box(mask_hw_bool, margin, fast):
    """Bounding box of the mask grown by ``margin`` (window >= 3 px a side).

    ``fast`` grows the window further to FFT-friendly sizes (masked mode, where the
    window only shapes the preconditioner, not the answer).
    """
    rows = np.flatnonzero(mask_hw_bool.any(axis=1))
    cols = np.flatnonzero(mask_hw_bool.any(axis=0))
    H, W = mask_hw_bool.shape
    m = int(margin)
    y0, y1 = int(rows[0]) - m, int(rows[-1]) + 1 + m
    x0, x1 = int(cols[0]) - m, int(cols[-1]) + 1 + m
    # interior sizes h = y1 - y0 - 2, w = x1 - x0 - 2 (at least 1)
    h, w = y1 - y0 - 2, x1 - x0 - 2
    gh = max(1 - h, 0)
    gw = max(1 - w, 0)
    if fast:
        gh = _fast_len(h + gh) - h
        gw = _fast_len(w + gw) - w
    y0 -= gh // 2
    y1 += gh - gh // 2
    x0 -= gw // 2
    x1 += gw - gw // 2
    return _Box(y0, y1, x0, x1, H, W)


def _window_numpy(img_hwc, box):
    """(C, h, w) float32 window of an HxWxC image, edge-padded past the image."""
    cy0, cy1, cx0, cx1 = box.crop
    win = np.ascontiguousarray(np.moveaxis(img_hwc[cy0:cy1, cx0:cx1], 2, 0), dtype=np.float32)
    pt, pb, pl, pr = box.pads
    if pt or pb or pl or pr:
        win = np.pad(win, ((0, 0), (pt, pb), (pl, pr)), mode="edge")
    return win


def _window_mask_numpy(mask_hw, box):
    cy0, cy1, cx0, cx1 = box.crop
    win = mask_hw[cy0:cy1, cx0:cx1]
    pt, pb, pl, pr = box.pads
    if pt or pb or pl or pr:
        win = np.pad(win, ((pt, pb), (pl, pr)), mode="constant", constant_values=False)
    return win


# ----------------------------------------------------------------------------- numpy solvers
# Windows are channels-first (C, h+2, w+2) float32; the outer ring is the Dirichlet frame.


def _erode_numpy(m, iterations):
    if iterations <= 0:
        return m
    import cv2

    k = np.ones((3, 3), np.uint8)
    out = cv2.erode(m.astype(np.uint8), k, iterations=int(iterations), borderType=cv2.BORDER_CONSTANT,
                    borderValue=0)
    return out.astype(bool)


def _box_rhs_numpy(Tb, Sb, Mb, mixed):
    """Delta(u) on the window interior for u = f - target (u = 0 on the window border).

    Guidance = source gradient on the forward edges leaving a pixel of ``Mb`` (the
    eroded mask), target gradient elsewhere; OpenCV's discretisation.
    """
    D = Sb - Tb
    gx = D[:, :, 1:] - D[:, :, :-1]  # edge (i, j) -> (i, j+1)
    gy = D[:, 1:] - D[:, :-1]  # edge (i, j) -> (i+1, j)
    if mixed:
        # OpenCV MIXED_CLONE: per pixel and channel, both components from the source
        # when |sx - sy| > |tx - ty|, else both from the target.
        sgx = Sb[:, :-1, 1:] - Sb[:, :-1, :-1]
        sgy = Sb[:, 1:, :-1] - Sb[:, :-1, :-1]
        tgx = Tb[:, :-1, 1:] - Tb[:, :-1, :-1]
        tgy = Tb[:, 1:, :-1] - Tb[:, :-1, :-1]
        use = abs(sgx - sgy) > abs(tgx - tgy)  # pixels [:-1, :-1]
        gx[:, :-1] *= use
        gy[:, :, :-1] *= use
    gx *= Mb[None, :, :-1]
    gy *= Mb[None, :-1, :]
    return (gx[:, 1:-1, 1:] - gx[:, 1:-1, :-1]) + (gy[:, 1:, 1:-1] - gy[:, :-1, 1:-1])


def _solve_box_numpy(Tb, Sb, Mb, mixed, erode):
    Me = _erode_numpy(Mb, erode)
    rhs = _box_rhs_numpy(Tb, Sb, Me, mixed)  # Delta u
    rhs *= -1.0
    u = _solve_laplace_numpy(rhs)
    return u, {"iterations": 0}


def _masked_system_numpy(Tb, Sb, Mb, mixed):
    """b = sum over the 4 edges of (guidance - target difference), for u = f - target.

    Works on numpy arrays and torch tensors alike (so does _box_rhs_numpy)."""
    D = Sb - Tb
    c = D[:, 1:-1, 1:-1]
    sls = ((slice(None), slice(None, -2), slice(1, -1)), (slice(None), slice(2, None), slice(1, -1)),
           (slice(None), slice(1, -1), slice(None, -2)), (slice(None), slice(1, -1), slice(2, None)))
    if not mixed:
        b = 4 * c - D[sls[0]] - D[sls[1]] - D[sls[2]] - D[sls[3]]
    else:
        b = 0 * c
        Sc, Tc = Sb[:, 1:-1, 1:-1], Tb[:, 1:-1, 1:-1]
        for sl in sls:
            ds = Sc - Sb[sl]
            dt = Tc - Tb[sl]
            b += (ds - dt) * (abs(ds) > abs(dt))
    om = Mb[1:-1, 1:-1]
    b *= om
    return b, om


def _apply_masked_laplacian_numpy(u, omf, out=None):
    """(-Delta u) restricted to the mask, u = 0 outside the mask (u is already masked).

    Works on numpy arrays and torch tensors alike."""
    if out is None:
        out = u * 4.0
    else:
        out[...] = u
        out *= 4.0
    out[:, 1:] -= u[:, :-1]
    out[:, :-1] -= u[:, 1:]
    out[:, :, 1:] -= u[:, :, :-1]
    out[:, :, :-1] -= u[:, :, 1:]
    out *= omf
    return out


def _cdot(a, b):
    """Per-channel dot products of (C, h, w) arrays, shape (C, 1, 1) float64."""
    C = a.shape[0]
    af, bf = a.reshape(C, -1), b.reshape(C, -1)
    return np.array([float(np.dot(af[c], bf[c])) for c in range(C)])[:, None, None]


def _absmax(x):
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


_JACOBI = 0.8 / 4.0  # damped Jacobi weight / diagonal of the 5-point Laplacian


def _solve_masked_numpy(Tb, Sb, Mb, mixed, tol, max_iter, value_range):
    b, om = _masked_system_numpy(Tb, Sb, Mb, mixed)
    omf = om.astype(b.dtype)

    buf = np.empty_like(b)

    def precond(r):
        # symmetric two-step preconditioner: damped Jacobi, exact box-Laplacian solve of the
        # remaining residual (restricted to the mask), damped Jacobi again. The Jacobi steps
        # remove the high-frequency error the box solve leaves along the mask's border
        # (about 30 % fewer iterations than the box solve alone).
        z = r * _JACOBI
        t = np.subtract(r, _apply_masked_laplacian_numpy(z, omf, buf), out=buf)
        t = _solve_laplace_numpy(t)
        t *= omf
        z += t
        t = np.subtract(r, _apply_masked_laplacian_numpy(z, omf, buf), out=buf)
        t *= _JACOBI
        z += t
        return z

    thresh = tol * value_range
    # start from the preconditioner's answer (exact when the mask fills the window)
    u = precond(b)
    Ap = np.empty_like(u)
    r = b - _apply_masked_laplacian_numpy(u, omf, Ap)
    z = precond(r)
    p = z.copy()
    rz = _cdot(r, z)
    it = 0
    res = _absmax(r)
    tmp = np.empty_like(u)
    while res > thresh and it < max_iter:
        _apply_masked_laplacian_numpy(p, omf, Ap)
        pAp = _cdot(p, Ap)
        alpha = np.divide(rz, pAp, out=np.zeros_like(rz), where=pAp > 0).astype(b.dtype)
        u += np.multiply(p, alpha, out=tmp)
        r -= np.multiply(Ap, alpha, out=tmp)
        it += 1
        res = _absmax(r)
        if res <= thresh:
            break
        if it % 50 == 0:  # refresh the recursive residual against float32 drift
            r = b - _apply_masked_laplacian_numpy(u, omf)
        z = precond(r)
        rz_new = _cdot(r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0).astype(b.dtype)
        rz = rz_new
        p *= beta
        p += z
    res = _absmax(b - _apply_masked_laplacian_numpy(u, omf))
    if res > thresh:
        raise R2RUserError(
            f"The masked Poisson solve did not converge: residual {res:.3g} > {thresh:.3g} after "
            f"{it} iterations. Raise max_iter (given {max_iter}) or tol, or use mode='box'."
        )
    return u, {"iterations": it, "residual": res}


# ----------------------------------------------------------------------------- public API


@dataclass
class PoissonSolution:
    """The unclipped solution on the solve window plus bookkeeping (for tests/diagnostics)."""

    field: np.ndarray  # (C, h+2, w+2) float32 solution f on the window, border = target
    target: np.ndarray  # (C, h+2, w+2) target window
    source: np.ndarray  # (C, h+2, w+2) source window
    mask: np.ndarray  # (h+2, w+2) bool mask window (not eroded)
    box: _Box
    mode: str
    mixed: bool
    erode: int
    info: dict = field(default_factory=dict)


def _float_range(T, S):
    """The value range float images live in: 1 for [0, 1] data, else their actual span."""
    lo = min(float(T.min()), float(S.min()))
    hi = max(float(T.max()), float(S.max()))
    return max(1.0, hi - lo)


def _resolve_erode_margin(mode, erode, margin):
    """Defaults: box erodes by 3 inside the mask's own bounding box (= OpenCV); masked: 0 and 1."""
    erode = _DEFAULT_EROSION[mode] if erode is None else erode
    if margin is None:
        margin = 0 if (mode == "box" and erode > 0) else 1
    if int(erode) != erode or int(margin) != margin or erode < 0 or margin < 0:
        raise R2RUserError(
            f"erode and margin must be whole numbers >= 0; got erode={erode!r}, margin={margin!r}. "
            "Leave them unset for the defaults (box: erode=3, margin=0 like OpenCV; masked: 0 and 1)."
        )
    return int(erode), int(margin)


def _prepare_numpy(target, source, mask):
    T = _as_numpy_image(target, "target")
    S = _as_numpy_image(source, "source")
    if T.shape != S.shape:
        raise R2RUserError(
            f"source and target must have the same shape; got source {S.shape} and target {T.shape}. "
            "Resize or crop the source to the target first."
        )
    M = _as_bool_mask(mask, T.shape[:2])
    return T, S, M


def solve_poisson(target, source, mask, *, mode="box", mixed=False, erode=None, margin=None, tol=5e-4,
                  max_iter=2000, fft_friendly=False) -> PoissonSolution:
    """Solve the blending problem on numpy images; returns the raw float solution window.

    Values are in the input's units (0..255 for uint8, as given for float). ``tol`` is
    the largest allowed discrete Poisson residual as a fraction of the value range
    (masked mode; box mode is a direct solve). ``fft_friendly`` (box mode) lets the
    frame grow by a few pixels to sizes the FFT handles fastest (the answer then differs
    slightly from OpenCV's; masked mode always does this, its answer does not depend on
    the frame). Raises R2RUserError for bad input.
    """
    _check_mode(mode)
    T, S, M = _prepare_numpy(target, source, mask)
    return _solve_checked(T, S, M, mode, mixed, erode, margin, tol, max_iter, fft_friendly)


def _solve_checked(T, S, M, mode, mixed, erode, margin, tol, max_iter, fft_friendly):
    if not M.any():
        raise R2RUserError(
            "The mask is empty (no pixel above 0.5), so there is nothing to blend. "
            "Draw the foreground in white (1.0 / 255) on black."
        )
    erode, margin = _resolve_erode_margin(mode, erode, margin)
    value_range = 255.0 if T.dtype == np.uint8 else _float_range(T, S)
    box = _make_box(M, margin, fast=(mode == "masked" or bool(fft_friendly)))
    Tb = _window_numpy(T, box)
    Sb = _window_numpy(S, box)
    Mb = _window_mask_numpy(M, box)
    if mode == "box":
        u, info = _solve_box_numpy(Tb, Sb, Mb, mixed, erode)
    else:
        Mm = _masked_unknowns(Mb, erode)
        u, info = _solve_masked_numpy(Tb, Sb, Mm, mixed, tol, max_iter, value_range)
    F = Tb.copy()
    F[:, 1:-1, 1:-1] += u
    return PoissonSolution(F, Tb, Sb, Mb, box, mode, bool(mixed), erode, info)


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
        Me = _erode_numpy(sol.mask, sol.erode)
        r = lap(F) - lap(T) - _box_rhs_numpy(T, S, Me, sol.mixed)
        return float(np.abs(r).max())
    Mm = _masked_unknowns(sol.mask, sol.erode)
    b, om = _masked_system_numpy(T, S, Mm, sol.mixed)
    r = (-lap(F - T) - b)[:, om]
    return float(np.abs(r).max()) if r.size else 0.0


def _masked_unknowns(Mb, erode):
    Mm = _erode_numpy(Mb, erode) if erode else Mb
    return Mm if Mm[1:-1, 1:-1].any() else Mb


def _field_on(sol, base_hwc):
    """``base`` (HxWxC float32) with the solution written over the whole solve window interior."""
    out = base_hwc.astype(np.float32, copy=True)
    cy0, cy1, cx0, cx1 = sol.box.crop
    pt, pb, pl, pr = sol.box.pads
    Fc = sol.field[:, pt : sol.field.shape[1] - pb, pl : sol.field.shape[2] - pr]
    out[cy0:cy1, cx0:cx1] = Fc.transpose(1, 2, 0)
    return out


def poisson_blend(target, source, mask, mode="box", mixed=False, *, erode=None, margin=None, tol=5e-4,
                  max_iter=2000, clip=True, fft_friendly=False):
    """Blend ``source``'s gradients into ``target`` inside ``mask``; returns a new image.

    numpy: ``HxWxC``/``HxW`` uint8 or float (result has the target's dtype; uint8 is
    rounded, float is clipped to [0, 1] when ``clip``). torch: ``[B,C,H,W]`` or
    ``[C,H,W]`` float tensors with a ``[B,1,H,W]``/``[B,H,W]``/``[H,W]`` mask (any device).

    mode: "box" (default, OpenCV seamlessClone's problem) or "masked" (Perez, unknowns
    only in the mask). mixed: mixed-gradient cloning. erode: pixels the mask is eroded
    by before choosing the guidance (default 3 for box = OpenCV, 0 for masked).
    margin: pixels added around the mask's bounding box (box mode's Dirichlet frame;
    default 0 = OpenCV's frame when eroding, else 1). fft_friendly: let box mode's frame
    grow to FFT-fast sizes (faster, no longer OpenCV-identical). tol / max_iter: masked
    mode's convergence (residual <= tol x value range). Only pixels inside the
    (uneroded) mask differ from the target.
    """
    if _is_torch(target) or _is_torch(source) or _is_torch(mask):
        from .torch_poisson import poisson_blend_torch

        return poisson_blend_torch(target, source, mask, mode=mode, mixed=mixed, erode=erode,
                                   margin=margin, tol=tol, max_iter=max_iter, clip=clip,
                                   fft_friendly=fft_friendly)
    _check_mode(mode)
    T, S, M = _prepare_numpy(target, source, mask)
    squeeze = np.asarray(target).ndim == 2
    sol = _solve_checked(T, S, M, mode, mixed, erode, margin, tol, max_iter, fft_friendly)
    out = T.copy()
    box = sol.box
    cy0, cy1, cx0, cx1 = box.crop
    pt, pb, pl, pr = box.pads
    Fc = sol.field[:, pt : sol.field.shape[1] - pb, pl : sol.field.shape[2] - pr]
    Mc = sol.mask[pt : sol.mask.shape[0] - pb, pl : sol.mask.shape[1] - pr]
    vals = Fc[:, Mc].T
    if T.dtype == np.uint8:
        vals = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
    else:
        if clip:
            vals = np.clip(vals, 0.0, 1.0)
        vals = vals.astype(T.dtype)
    region = out[cy0:cy1, cx0:cx1]
    region[Mc] = vals
    return out[:, :, 0] if squeeze else out


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")
