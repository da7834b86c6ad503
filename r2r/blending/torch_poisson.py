"""Torch path of the Poisson solvers (CPU and CUDA), same formulations as ``poisson.py``.

``poisson_blend_torch`` accepts ``[B,C,H,W]`` / ``[C,H,W]`` float tensors and a
``[B,1,H,W]`` / ``[B,H,W]`` / ``[H,W]`` mask. Each batch item has its own bounding
box, so items are solved one after another, all channels of an item at once. With
``backend="auto"`` CPU tensors go through the numpy/scipy solver (faster on CPU)
and other devices through the torch solver below (FFT-based DST-I, PCG on device).
"""

from __future__ import annotations

import numpy as np

from ..errors import R2RUserError
from .poisson import (
    _JACOBI,
    MODES,
    _apply_masked_laplacian_numpy,
    _box_rhs_numpy,
    _dst1_torch,
    _laplacian_eigs,
    _make_box,
    _masked_system_numpy,
    _resolve_erode_margin,
    poisson_blend,
)

__all__ = ["poisson_blend_torch", "solve_window_torch"]


def _as_4d(x, name):
    import torch

    if not torch.is_tensor(x):
        raise R2RUserError(
            f"{name} must be a torch tensor when the other inputs are tensors; got {type(x).__name__}. "
            "Pass all of target, source and mask as tensors (or all as numpy arrays)."
        )
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise R2RUserError(
            f"{name} must be [B,C,H,W] or [C,H,W]; got shape {tuple(x.shape)}. "
            "Permute HxWxC images with .permute(2, 0, 1)."
        )
    if not x.is_floating_point():
        raise R2RUserError(f"{name} must be a float tensor (0..1); got {x.dtype}. Use x.float() / 255.")
    return x


def _mask_4d(m, B, hw):
    import torch

    if not torch.is_tensor(m):
        m = torch.as_tensor(np.asarray(m))
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != tuple(hw) or m.shape[0] not in (1, B):
        raise R2RUserError(
            f"mask must be [B,1,H,W], [B,H,W] or [H,W] matching the image ({B} x {hw[0]}x{hw[1]}); "
            f"got shape {tuple(m.shape)}. Resize the mask to the image first."
        )
    if m.dtype == torch.bool:
        mb = m
    elif m.dtype == torch.uint8:
        mb = m > 127
    else:
        mb = m > 0.5
    return mb.expand(B, 1, *hw)


def _erode_torch(m, iterations):
    """Erode a bool (h, w) mask with a 3x3 square ``iterations`` times, zero outside."""
    import torch.nn.functional as F

    if iterations <= 0:
        return m
    k = 2 * int(iterations) + 1
    x = F.pad((~m).float()[None, None], (iterations,) * 4, value=1.0)
    return F.max_pool2d(x, k, stride=1)[0, 0] < 0.5


def _window_torch(img_chw, box):
    import torch.nn.functional as F

    cy0, cy1, cx0, cx1 = box.crop
    win = img_chw[:, cy0:cy1, cx0:cx1]
    pt, pb, pl, pr = box.pads
    if pt or pb or pl or pr:
        win = F.pad(win[None], (pl, pr, pt, pb), mode="replicate")[0]
    return win


def solve_window_torch(Tb, Sb, Mb, *, mode, mixed, erode, tol, max_iter, value_range):
    """Solve on a (C, h+2, w+2) window; returns u = f - target on the (C, h, w) interior."""
    import torch

    if mode == "box":
        Me = _erode_torch(Mb, erode)
        rhs = _box_rhs_numpy(Tb, Sb, Me, mixed)
        h, w = rhs.shape[1:]
        lam = _laplacian_eigs(h, w, torch, rhs.dtype, rhs.device)
        return _dst1_torch(_dst1_torch(rhs) / (-lam)), {"iterations": 0}
    Mm = _erode_torch(Mb, erode) if erode else Mb
    if not Mm[1:-1, 1:-1].any():
        Mm = Mb
    b, om = _masked_system_numpy(Tb, Sb, Mm, mixed)
    omf = om.to(b.dtype)
    h, w = om.shape
    inv_lam = 1.0 / _laplacian_eigs(h, w, torch, b.dtype, b.device)

    def precond(r):  # the same symmetric Jacobi / box-solve / Jacobi preconditioner as numpy
        z = r * _JACOBI
        z = z + _dst1_torch(_dst1_torch(r - _apply_masked_laplacian_numpy(z, omf)) * inv_lam) * omf
        return z + (r - _apply_masked_laplacian_numpy(z, omf)) * _JACOBI

    def cdot(a, c):
        return (a.double() * c.double()).sum(dim=(1, 2), keepdim=True)

    thresh = tol * value_range
    u = precond(b)
    r = b - _apply_masked_laplacian_numpy(u, omf)
    z = precond(r)
    p = z.clone()
    rz = cdot(r, z)
    it = 0
    res = float(r.abs().max()) if r.numel() else 0.0
    while res > thresh and it < max_iter:
        Ap = _apply_masked_laplacian_numpy(p, omf)
        pAp = cdot(p, Ap)
        alpha = torch.where(pAp > 0, rz / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), 0.0).to(b.dtype)
        u += alpha * p
        r -= alpha * Ap
        it += 1
        res = float(r.abs().max())
        if res <= thresh:
            break
        if it % 50 == 0:
            r = b - _apply_masked_laplacian_numpy(u, omf)
        z = precond(r)
        rz_new = cdot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), 0.0).to(b.dtype)
        rz = rz_new
        p = z + beta * p
    res = float((b - _apply_masked_laplacian_numpy(u, omf)).abs().max()) if b.numel() else 0.0
    if res > thresh:
        raise R2RUserError(
            f"The masked Poisson solve did not converge: residual {res:.3g} > {thresh:.3g} after "
            f"{it} iterations. Raise max_iter (given {max_iter}) or tol, or use mode='box'."
        )
    return u, {"iterations": it, "residual": res}


def poisson_blend_torch(target, source, mask, *, mode="box", mixed=False, erode=None, margin=None, tol=5e-4,
                        max_iter=2000, clip=True, fft_friendly=False, backend="auto"):
    """Torch front end of :func:`r2r.blending.poisson_blend` (see there for the parameters).

    backend: "auto" (numpy/scipy for CPU tensors, torch otherwise), "torch" or "numpy".
    Returns a tensor shaped, typed and placed like ``target``.
    """
    import torch

    if mode not in MODES:
        raise R2RUserError(
            f"Poisson mode must be one of {MODES}; got {mode!r}. Use 'box' (OpenCV seamlessClone "
            "behaviour, fastest) or 'masked' (only the mask's own border influences the result)."
        )
    if backend not in ("auto", "torch", "numpy"):
        raise R2RUserError(
            f"backend must be 'auto', 'torch' or 'numpy'; got {backend!r}. Leave it at 'auto' (numpy on "
            "CPU, torch on GPU)."
        )
    squeeze = torch.is_tensor(target) and target.ndim == 3
    T = _as_4d(target, "target")
    S = _as_4d(source, "source").to(device=T.device)
    if S.shape[1:] != T.shape[1:] or S.shape[0] not in (1, T.shape[0]):
        raise R2RUserError(
            f"source {tuple(S.shape)} and target {tuple(T.shape)} must have the same channels and size "
            "(and the same batch size, or a batch of 1). Resize or repeat the source to match."
        )
    S = S.expand_as(T)
    B, C, H, W = T.shape
    M = _mask_4d(mask, B, (H, W)).to(T.device)
    if not torch.isfinite(T).all() or not torch.isfinite(S).all():
        raise R2RUserError("target/source contain NaN or infinite values; clean the images before blending.")
    erode_, margin_ = _resolve_erode_margin(mode, erode, margin)
    use_numpy = backend == "numpy" or (backend == "auto" and T.device.type == "cpu")
    out = T.clone()
    for i in range(B):
        mi = M[i, 0]
        if not bool(mi.any()):
            raise R2RUserError(
                f"The mask of batch item {i} is empty (no pixel above 0.5), so there is nothing to blend. "
                "Draw the foreground in white on black."
            )
        if use_numpy:
            res = poisson_blend(
                T[i].detach().float().permute(1, 2, 0).cpu().numpy(),
                S[i].detach().float().permute(1, 2, 0).cpu().numpy(),
                mi.cpu().numpy(), mode=mode, mixed=mixed, erode=erode_, margin=margin_, tol=tol,
                max_iter=max_iter, clip=clip, fft_friendly=fft_friendly,
            )
            out[i] = torch.from_numpy(res).permute(2, 0, 1).to(device=T.device, dtype=T.dtype)
            continue
        mnp = mi.cpu().numpy()
        box = _make_box(mnp, margin_, fast=(mode == "masked" or bool(fft_friendly)))
        Tb = _window_torch(T[i].float(), box)
        Sb = _window_torch(S[i].float(), box)
        Mb = _window_torch(mi[None].float(), box)[0] > 0.5
        pt, pb, pl, pr = box.pads
        if pt or pb or pl or pr:  # padded pixels are never part of the mask
            keep = torch.zeros_like(Mb)
            keep[pt:Mb.shape[0] - pb, pl:Mb.shape[1] - pr] = True
            Mb &= keep
        lo = float(torch.minimum(Tb.min(), Sb.min()))
        hi = float(torch.maximum(Tb.max(), Sb.max()))
        u, _ = solve_window_torch(Tb, Sb, Mb, mode=mode, mixed=mixed, erode=erode_, tol=tol, max_iter=max_iter,
                                  value_range=max(1.0, hi - lo))
        Fw = Tb.clone()
        Fw[:, 1:-1, 1:-1] += u
        if clip:
            Fw = Fw.clamp(0.0, 1.0)
        cy0, cy1, cx0, cx1 = box.crop
        Fc = Fw[:, pt:Fw.shape[1] - pb, pl:Fw.shape[2] - pr]
        Mc = Mb[pt:Mb.shape[0] - pb, pl:Mb.shape[1] - pr]
        region = out[i, :, cy0:cy1, cx0:cx1]
        region[:, Mc] = Fc[:, Mc].to(out.dtype)
    return out[0] if squeeze else out
