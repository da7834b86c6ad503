"""MACA: mask-aware foreground/background channel modulation (ref §c.3).

Given X ``[B,C,h,w]`` and the region mask m ``[B,1,h,w]`` (foreground = 1):

    F = m * X,  G = (1 - m) * X
    a = mean_hw conv1(F),  b = mean_hw conv2(G)            (plain global average, not a masked mean)
    [gamma, beta] = mlp([a, b])                            (Linear 2C->3C, SiLU, Linear 3C->2C zero-init)
    Y = G + m * (F * (1 + gamma) + beta)

At initialisation (zero last layer) MACA is the identity.

``reference_mask`` r (optional, same shape as ``mask``): the background statistic b is taken from
the region r instead of the whole background ("harmonize the foreground towards this region"):

    b = mean_hw conv2(r * X) * sum(1 - m) / sum(r)

``mean_hw`` over all pixels scales a region's statistic by its area, so without the factor a small
region would feed the MLP magnitudes it never saw in training. The factor gives the region the
magnitude the background statistic has (the background's area share times a mean over the region):
with ``r = 1 - m`` it is exactly 1 and b is the official statistic. Without ``reference_mask`` the
official formula is used unchanged. The output formula is unchanged (G is still ``(1 - m) * X``).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import R2RUserError


class MACA(ModelMixin, ConfigMixin):
    """Mask-Aware Channel Attention (the official ``PCCAs.k`` modules)."""

    @register_to_config
    def __init__(self, channels: int = 320):
        super().__init__()
        c = channels
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * c, 3 * c), nn.SiLU(), nn.Linear(3 * c, 2 * c))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, reference_mask: torch.Tensor | None = None,
        reference_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config.channels
        if x.ndim != 4 or x.shape[1] != c:
            raise R2RUserError(f"MACA expected a [B,{c},h,w] feature map, got {tuple(x.shape)}.")
        for name, m in (("mask", mask), ("reference_mask", reference_mask)):
            if m is None:
                continue
            if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != x.shape[-2:] or m.shape[0] not in (1, x.shape[0]):
                raise R2RUserError(
                    f"MACA {name} must be [B,1,{x.shape[-2]},{x.shape[-1]}] (resized to the feature map), "
                    f"got {tuple(m.shape)}."
                )
        if reference_features is not None and (reference_mask is None or reference_features.shape[1:] != x.shape[1:]):
            raise R2RUserError(f"MACA reference_features must be [B,{c},{x.shape[-2]},{x.shape[-1]}] with a "
                               f"reference_mask; got {tuple(reference_features.shape)}.")
        m = mask.to(x.dtype)
        fg = m * x
        bg = (1 - m) * x
        a = self.conv1(fg).mean(dim=(2, 3))
        if reference_mask is None:
            b = self.conv2(bg).mean(dim=(2, 3))
        else:
            r = reference_mask.to(x.dtype)
            source = x if reference_features is None else reference_features
            area_ratio = (1 - m).flatten(1).sum(1).float() / r.flatten(1).sum(1).float().clamp_min(1.0)
            b = self.conv2(r * source).mean(dim=(2, 3)) * area_ratio.to(x.dtype)[:, None]
        gamma, beta = self.mlp(torch.cat([a, b], dim=1)).chunk(2, dim=1)
        gamma = gamma[:, :, None, None]
        beta = beta[:, :, None, None]
        return bg + m * (fg * (1 + gamma) + beta)
