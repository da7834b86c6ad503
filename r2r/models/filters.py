"""AdaptiveFilters: the fixed-kernel filter bank applied to every Clear-VAE encoder skip (ref §b.3).

Per module (C channels) there are eight fixed depthwise 3x3 kernels, stored exactly as the
official release stores them (float16 parameters, values x1e-3 rounded in float16, same kernel
for every channel, ``requires_grad=False``), plus the learned mixing weights ``alpha`` (9) and
``beta`` (1):

    y = sum_k alpha[k] * dwconv3x3(x, K_k) + alpha[8] * (x - gaussian15x15_sigma5(x)) + beta * x

The eight 3x3 convolutions are linear in the kernel, so they are evaluated as one depthwise
convolution with the alpha-weighted kernel sum, and the 15x15 Gaussian (reflect padding 7) is
evaluated separably; both are mathematically identical to the per-kernel formula.

Precision: everything runs in the input's dtype (fp16 on a GPU, as the official release), except the
kernel sum, which is formed in float32 and handed to the half-precision convolution multiplied by
:data:`KERNEL_SCALE` (a power of two, so exact): ``alpha[k] x 1e-3`` is below float16's normal range
(6.1e-5) for ``|alpha[k]| < 0.06`` and would lose its digits there; the convolution's output is scaled
back. On a CPU, half-precision inputs are computed in float32 (half-precision depthwise convolutions
are extremely slow there) and rounded back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import R2RUserError

# name -> 3x3 kernel before the x1e-3 scaling; order = mixing weight index alpha[k]
KERNELS: dict[str, list[list[float]]] = {
    "Sobel_x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "Sobel_y": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    "Laplation": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "Edge": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "Sobel_xy": [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
    "Sobel_yx": [[-2, -1, 0], [-1, 0, 1], [0, 1, 2]],
    "Roberts_x": [[1, 0, 0], [0, -1, 0], [0, 0, 0]],
    "Roberts_y": [[0, 1, 0], [-1, 0, 0], [0, 0, 0]],
}
KERNEL_ORDER = tuple(KERNELS)  # alpha index order
# state_dict registration order of the official module (names are what matter for loading)
_REGISTRATION_ORDER = ("Sobel_x", "Laplation", "Edge", "Roberts_x", "Roberts_y", "Sobel_xy", "Sobel_yx")

#: the half-precision kernel sum is carried as ``kernel x KERNEL_SCALE`` (exact: a power of two)
KERNEL_SCALE = 1024.0
GAUSS_SIZE = 15
GAUSS_SIGMA = 5.0
GAUSS_PAD = GAUSS_SIZE // 2


def fixed_kernel(name: str, channels: int) -> torch.Tensor:
    """The official float16 kernel ``name`` as a ``[channels, 1, 3, 3]`` tensor (x1e-3 in float16)."""
    k = torch.tensor(KERNELS[name], dtype=torch.float16) * 1e-3
    return k.reshape(1, 1, 3, 3).repeat(channels, 1, 1, 1)


def gaussian_kernel1d(dtype=torch.float32, device=None) -> torch.Tensor:
    """torchvision's GaussianBlur 1-D kernel: exp(-t^2 / (2 sigma^2)) on t = -7..7, normalised."""
    t = torch.linspace(-GAUSS_PAD, GAUSS_PAD, GAUSS_SIZE, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / GAUSS_SIGMA) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """15x15 Gaussian blur, sigma 5, reflect padding 7, per channel (separable, plain torch)."""
    c = x.shape[1]
    k = gaussian_kernel1d(x.dtype, x.device)
    x = F.pad(x, (GAUSS_PAD, GAUSS_PAD, GAUSS_PAD, GAUSS_PAD), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, GAUSS_SIZE).expand(c, 1, 1, GAUSS_SIZE), groups=c)
    return F.conv2d(x, k.view(1, 1, GAUSS_SIZE, 1).expand(c, 1, GAUSS_SIZE, 1), groups=c)


class AdaptiveFilters(ModelMixin, ConfigMixin):
    """Fixed high-frequency filter bank with learned mixing weights for one encoder skip."""

    #: on a CPU, compute half-precision inputs in float32 (speed; see the module docstring)
    cpu_float32 = True

    @register_to_config
    def __init__(self, channels: int = 128):
        super().__init__()
        self.channels = channels
        for name in _REGISTRATION_ORDER:
            self.register_parameter(name, nn.Parameter(fixed_kernel(name, channels), requires_grad=False))
        self.alpha = nn.Parameter(torch.ones(9))
        self.beta = nn.Parameter(torch.zeros(1))
        self.register_parameter("Sobel_y", nn.Parameter(fixed_kernel("Sobel_y", channels), requires_grad=False))

    def combined_kernel(self, dtype: torch.dtype) -> torch.Tensor:
        """sum_k alpha[k] * K_k as one depthwise ``[C,1,3,3]`` kernel (accumulated in >= float32)."""
        acc = torch.promote_types(dtype, torch.float32)
        total = None
        for k, name in enumerate(KERNEL_ORDER):
            term = self.alpha[k].to(acc) * getattr(self, name).to(acc)
            total = term if total is None else total + term
        return total.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise R2RUserError(
                f"AdaptiveFilters expected a [B,{self.channels},H,W] feature map, got shape {tuple(x.shape)}; "
                "pass the Clear-VAE encoder skip that belongs to this filter (same index)."
            )
        if min(x.shape[-2:]) <= GAUSS_PAD:
            raise R2RUserError(
                f"The Clear-VAE skip filters need feature maps of at least {GAUSS_PAD + 1} px (reflect padding "
                f"{GAUSS_PAD}), got {tuple(x.shape[-2:])}; the input image must be at least 64x64 pixels "
                "(and a multiple of 64): resize or pad the image."
            )
        out_dtype = x.dtype
        if x.device.type == "cpu" and out_dtype in (torch.float16, torch.bfloat16) and self.cpu_float32:
            # half-precision depthwise convolutions are extremely slow on CPUs (minutes for a small
            # image): compute in float32 there and round the result back to the model dtype
            x = x.float()
        if x.dtype in (torch.float16, torch.bfloat16):  # see the module docstring: no kernel underflow
            kernel = (self.combined_kernel(torch.float32) * KERNEL_SCALE).to(x.dtype)
            y = F.conv2d(x, kernel, padding=1, groups=self.channels) * (1.0 / KERNEL_SCALE)
        else:
            y = F.conv2d(x, self.combined_kernel(x.dtype), padding=1, groups=self.channels)
        a8 = self.alpha[8].to(x.dtype)
        b = self.beta[0].to(x.dtype)
        return (y + a8 * (x - gaussian_blur(x)) + b * x).to(out_dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


__all__ = ["AdaptiveFilters", "KERNELS", "fixed_kernel", "gaussian_blur"]
