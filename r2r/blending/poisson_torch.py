"""torch backend of the Poisson solvers (CPU and CUDA), same formulations as the numpy backend.

:func:`poisson_blend_torch` takes ``[B,C,H,W]`` / ``[C,H,W]`` float tensors and a
``[B,1,H,W]`` / ``[B,H,W]`` / ``[H,W]`` mask. Each batch item has its own solve
window, so items are solved one after another, all channels of an item at once.
With ``backend="auto"`` CPU tensors go through the numpy backend (faster on CPU) and
other devices through the solver below (FFT-based DST-I, the shared PCG on device).
"""

from __future__ import annotations

from ..devices import wide_float
from ..errors import R2RUserError
from . import poisson_stencils as stencils
from .inputs import image_bchw, mask_weights_b1hw
from .poisson_numpy import blend_numpy
from .poisson_setup import (
    SolveWindow,
    check_convergence_settings,
    check_mode,
    make_solve_window,
    residual_threshold,
    resolve_erode_margin,
    value_range,
)

__all__ = ["BACKENDS", "poisson_blend_torch", "solve_window_torch"]

BACKENDS = ("auto", "torch", "numpy")


def _dst1_lastdim(x):
    import torch

    n = x.shape[-1]
    ext = torch.zeros(x.shape[:-1] + (2 * (n + 1),), dtype=x.dtype, device=x.device)
    ext[..., 1 : n + 1] = x
    ext[..., n + 2 :] = -torch.flip(x, dims=(-1,))
    return -torch.fft.rfft(ext, dim=-1).imag[..., 1 : n + 1] * ((0.5 / (n + 1)) ** 0.5)


def _dst2(x):
    """Orthonormal 2-D DST-I over the last two dims (its own inverse)."""
    x = _dst1_lastdim(x)
    return _dst1_lastdim(x.transpose(-1, -2)).transpose(-1, -2)


def _laplacian_eigenvalues(h, w, dtype, device):
    """Eigenvalues of the positive 5-point Laplacian (-Delta) on h x w with a zero Dirichlet frame."""
    import torch

    ey = 2.0 - 2.0 * torch.cos(torch.pi * torch.arange(1, h + 1, dtype=torch.float64) / (h + 1))
    ex = 2.0 - 2.0 * torch.cos(torch.pi * torch.arange(1, w + 1, dtype=torch.float64) / (w + 1))
    return (ey[:, None] + ex[None, :]).to(device=device, dtype=dtype)


def _erode(m, iterations):
    """Erode a bool (h, w) mask with a 3x3 square ``iterations`` times, zero outside."""
    import torch.nn.functional as F

    if iterations <= 0:
        return m
    x = F.pad((~m).float()[None, None], (iterations,) * 4, value=1.0)
    return F.max_pool2d(x, 2 * int(iterations) + 1, stride=1)[0, 0] < 0.5


def _window(img_chw, win: SolveWindow):
    import torch.nn.functional as F

    cy0, cy1, cx0, cx1 = win.crop
    out = img_chw[:, cy0:cy1, cx0:cx1]
    pt, pb, pl, pr = win.pads
    if pt or pb or pl or pr:
        out = F.pad(out[None], (pl, pr, pt, pb), mode="replicate")[0]
    return out


def _window_mask(mask_hw, win: SolveWindow):
    import torch.nn.functional as F

    cy0, cy1, cx0, cx1 = win.crop
    out = mask_hw[cy0:cy1, cx0:cx1]
    pt, pb, pl, pr = win.pads
    if pt or pb or pl or pr:  # pixels past the image are never part of the mask
        out = F.pad(out[None, None].float(), (pl, pr, pt, pb), value=0.0)[0, 0] > 0.5
    return out


def _channel_dot(a, b):
    wide = wide_float(a.device)
    return (a.to(wide) * b.to(wide)).sum(dim=(1, 2), keepdim=True)


def _ratio_or_zero(num, den, like):
    import torch

    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), 0.0).to(like.dtype)


def _abs_max(x):
    return float(x.abs().max()) if x.numel() else 0.0


_OPS = stencils.PCGOps(channel_dot=_channel_dot, ratio_or_zero=_ratio_or_zero, abs_max=_abs_max,
                       copy=lambda x: x.clone())


def solve_window_torch(Tb, Sb, Mb, *, mode, mixed, erode, threshold, max_iter):
    """Solve on a (C, h+2, w+2) window; returns ``(u, info)``, u = f - target on the (C, h, w) interior.

    ``threshold``: masked mode's largest allowed residual (see poisson_setup.residual_threshold).
    """
    if mode == "box":
        rhs = stencils.box_guidance_laplacian(Tb, Sb, _erode(Mb, erode), mixed)
        lam = _laplacian_eigenvalues(*rhs.shape[1:], rhs.dtype, rhs.device)
        return _dst2(_dst2(rhs) / (-lam)), {"iterations": 0}
    Mm = _erode(Mb, erode) if erode else Mb
    if not Mm[1:-1, 1:-1].any():
        Mm = Mb
    b, interior = stencils.masked_guidance_system(Tb, Sb, Mm, mixed)
    mask_f = interior.to(b.dtype)
    inv_lam = 1.0 / _laplacian_eigenvalues(*interior.shape, b.dtype, b.device)

    def apply_A(x):
        return stencils.apply_masked_laplacian(x, mask_f)

    precondition = stencils.jacobi_box_jacobi(apply_A, lambda t: _dst2(_dst2(t) * inv_lam), mask_f)
    return stencils.solve_pcg(b, apply_A, precondition, _OPS, threshold, max_iter)


def poisson_blend_torch(target, source, mask, *, mode="box", mixed=False, erode=None, margin=None, tol=5e-4,
                        max_iter=2000, clip=True, fft_friendly=False, backend="auto"):
    """Torch front end of :func:`r2r.blending.poisson_blend` (see there for the parameters).

    backend: "auto" (the numpy backend for CPU tensors, torch otherwise), "torch" or "numpy".
    Returns a new tensor shaped, typed and placed like ``target`` (the inputs are not modified).
    """
    import torch

    check_mode(mode)
    if backend not in BACKENDS:
        raise R2RUserError(
            f"backend must be one of {BACKENDS}; got {backend!r}. Leave it at 'auto' (numpy on CPU, torch on GPU)."
        )
    tol, max_iter = check_convergence_settings(tol, max_iter)
    erode_, margin_ = resolve_erode_margin(mode, erode, margin)
    squeeze = torch.is_tensor(target) and target.ndim == 3
    T = image_bchw(target, "target", unit_range=bool(clip))
    S = image_bchw(source, "source", unit_range=bool(clip)).to(device=T.device)
    if S.shape[1:] != T.shape[1:] or S.shape[0] not in (1, T.shape[0]):
        raise R2RUserError(
            f"source {tuple(S.shape)} and target {tuple(T.shape)} must have the same channels and size "
            "(and the same batch size, or a batch of 1). Resize or repeat the source to match."
        )
    S = S.expand_as(T)
    B, C, H, W = T.shape
    M = mask_weights_b1hw(mask, B, (H, W), device=T.device) > 0.5
    for i in range(B):
        if not bool(M[i].any()):
            raise R2RUserError(
                f"The mask of batch item {i} is empty (no pixel above 0.5), so there is nothing to blend. "
                "Draw the foreground in white on black."
            )
    use_numpy = backend == "numpy" or (backend == "auto" and T.device.type == "cpu")
    out = T.clone()
    for i in range(B):
        mi = M[i, 0]
        Ti, Si = T[i].detach().float(), S[i].detach().float()
        if use_numpy:
            res = blend_numpy(Ti.permute(1, 2, 0).cpu().numpy(), Si.permute(1, 2, 0).cpu().numpy(),
                              mi.cpu().numpy(), mode=mode, mixed=mixed, erode=erode_, margin=margin_, tol=tol,
                              max_iter=max_iter, clip=clip, fft_friendly=fft_friendly)
            out[i] = torch.from_numpy(res).permute(2, 0, 1).to(device=T.device, dtype=T.dtype)
            continue
        win = make_solve_window(mi.cpu().numpy(), margin_, fft_friendly=(mode == "masked" or bool(fft_friendly)))
        Tb, Sb, Mb = _window(Ti, win), _window(Si, win), _window_mask(mi, win)
        threshold = residual_threshold(tol, value_range(Ti, Si, is_uint8=False))
        u, _ = solve_window_torch(Tb, Sb, Mb, mode=mode, mixed=mixed, erode=erode_, threshold=threshold,
                                  max_iter=max_iter)
        Fw = Tb.clone()
        Fw[:, 1:-1, 1:-1] += u
        if clip:
            Fw = Fw.clamp(0.0, 1.0)
        cy0, cy1, cx0, cx1 = win.crop
        Mc = win.inside_image(Mb)
        region = out[i, :, cy0:cy1, cx0:cx1]
        region[:, Mc] = win.inside_image(Fw)[:, Mc].to(out.dtype)
    return out[0] if squeeze else out
