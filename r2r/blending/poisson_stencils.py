"""The discretisation and the one preconditioned-conjugate-gradient loop, for numpy and torch.

Everything here works on channels-first windows ``(C, h+2, w+2)`` (numpy arrays or
torch tensors alike: only slicing, arithmetic and in-place updates are used); the
outer ring is the Dirichlet frame, the unknown is ``u = f - target`` on the
``(C, h, w)`` interior (0 on the frame). The few operations numpy and torch spell
differently come in as a :class:`PCGOps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import R2RUserError

#: damped-Jacobi weight divided by the diagonal (4) of the 5-point Laplacian
JACOBI_WEIGHT = 0.8 / 4.0
#: PCG recomputes the residual from scratch this often (against float32 drift)
RESIDUAL_REFRESH = 50


def box_guidance_laplacian(Tb, Sb, Mb, mixed: bool):
    """Delta(u) on the window interior for ``u = f - target`` (OpenCV's box problem).

    Guidance = the source's gradient on the forward edges leaving a pixel of ``Mb`` (the
    eroded mask, bool ``(h+2, w+2)``), the target's gradient elsewhere; forward
    differences, divergence by backward differences, exactly as ``cv2.seamlessClone``.
    ``mixed``: OpenCV's MIXED_CLONE test, per pixel and channel both components come from
    the source when ``|sx - sy| > |tx - ty|``, else from the target.
    """
    D = Sb - Tb
    gx = D[:, :, 1:] - D[:, :, :-1]  # edge (i, j) -> (i, j+1)
    gy = D[:, 1:] - D[:, :-1]  # edge (i, j) -> (i+1, j)
    if mixed:
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


_NEIGHBOURS = ((slice(None), slice(None, -2), slice(1, -1)), (slice(None), slice(2, None), slice(1, -1)),
               (slice(None), slice(1, -1), slice(None, -2)), (slice(None), slice(1, -1), slice(2, None)))


def masked_guidance_system(Tb, Sb, Mb, mixed: bool):
    """Right-hand side of the Perez equations for ``u = f - target``, and the unknowns' mask.

    ``b`` = sum over the 4 edges of a mask pixel of (guidance - the target's difference);
    guidance = the source's difference (``mixed``: the larger in magnitude of the source's
    and the target's, per edge and channel). Returns ``(b, interior_mask)``, ``b`` being
    zero outside the mask.
    """
    D = Sb - Tb
    c = D[:, 1:-1, 1:-1]
    if not mixed:
        b = 4 * c - D[_NEIGHBOURS[0]] - D[_NEIGHBOURS[1]] - D[_NEIGHBOURS[2]] - D[_NEIGHBOURS[3]]
    else:
        b = 0 * c
        Sc, Tc = Sb[:, 1:-1, 1:-1], Tb[:, 1:-1, 1:-1]
        for sl in _NEIGHBOURS:
            ds = Sc - Sb[sl]
            dt = Tc - Tb[sl]
            b += (ds - dt) * (abs(ds) > abs(dt))
    interior = Mb[1:-1, 1:-1]
    b *= interior
    return b, interior


def apply_masked_laplacian(u, mask_f, out=None):
    """``-Delta u`` restricted to the mask, for ``u`` zero outside the mask (``mask_f`` float 0/1).

    ``out``: an array of u's shape to write into (numpy; saves an allocation).
    """
    if out is None:
        out = u * 4.0
    else:
        out[...] = u
        out *= 4.0
    out[:, 1:] -= u[:, :-1]
    out[:, :-1] -= u[:, 1:]
    out[:, :, 1:] -= u[:, :, :-1]
    out[:, :, :-1] -= u[:, :, 1:]
    out *= mask_f
    return out


def jacobi_box_jacobi(apply_A: Callable, solve_box: Callable, mask_f) -> Callable:
    """The symmetric preconditioner: damped Jacobi, the exact box-Laplacian solve of the remaining
    residual (restricted to the mask), damped Jacobi again.

    The Jacobi steps remove the high-frequency error the box solve leaves along the mask's
    border (about 30 % fewer iterations than the box solve alone). ``solve_box(t)`` solves
    ``-Delta x = t`` on the window interior with x = 0 on the frame and may overwrite ``t``.
    """

    def precondition(r):
        z = r * JACOBI_WEIGHT
        t = solve_box(r - apply_A(z))
        t *= mask_f
        z += t
        t = r - apply_A(z)
        t *= JACOBI_WEIGHT
        z += t
        return z

    return precondition


@dataclass(frozen=True)
class PCGOps:
    """The operations of the PCG loop that numpy and torch spell differently."""

    channel_dot: Callable  # (a, b) (C, h, w) -> per-channel dot products, shape (C, 1, 1), float64
    ratio_or_zero: Callable  # (num, den, like) -> num / den where den > 0 else 0, in like's dtype
    abs_max: Callable  # x -> float(max |x|), 0.0 for an empty x
    copy: Callable  # x -> an independent copy


def solve_pcg(b, apply_A: Callable, precondition: Callable, ops: PCGOps, threshold: float, max_iter: int):
    """Per-channel preconditioned conjugate gradients for ``A u = b`` (A symmetric positive).

    Starts from ``precondition(b)`` (exact when the mask fills the window) and iterates
    until the largest residual is <= ``threshold``. ``apply_A``'s result may be reused
    storage (it is consumed before the next call). Raises R2RUserError when ``max_iter``
    iterations do not reach the threshold. Returns ``(u, {"iterations", "residual"})``.
    """
    u = precondition(b)
    r = b - apply_A(u)
    z = precondition(r)
    p = ops.copy(z)
    rz = ops.channel_dot(r, z)
    it = 0
    res = ops.abs_max(r)
    while res > threshold and it < max_iter:
        Ap = apply_A(p)
        alpha = ops.ratio_or_zero(rz, ops.channel_dot(p, Ap), b)
        u += p * alpha
        r -= Ap * alpha
        it += 1
        res = ops.abs_max(r)
        if res <= threshold:
            break
        if it % RESIDUAL_REFRESH == 0:
            r = b - apply_A(u)
        z = precondition(r)
        rz_new = ops.channel_dot(r, z)
        beta = ops.ratio_or_zero(rz_new, rz, b)
        rz = rz_new
        p *= beta
        p += z
    res = ops.abs_max(b - apply_A(u))
    if res > threshold:
        raise R2RUserError(
            f"The masked Poisson solve did not converge: residual {res:.3g} > {threshold:.3g} after "
            f"{it} iterations. Raise max_iter (given {max_iter}) or tol, or use mode='box'."
        )
    return u, {"iterations": it, "residual": res}
