"""The values that pass between R2RPipeline's stages (besides :class:`r2r.imaging.Prepared`,
:class:`~r2r.pipeline.sampling.SamplingPlan`, :class:`~r2r.pipeline.residuals.Residuals` and
:class:`~r2r.pipeline.reference.PreparedReference`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .sampling import SD15_LATENT_SCALE

if TYPE_CHECKING:
    import torch

    from ..imaging import Prepared


@dataclass(eq=False)
class EncodedComposite:
    """The Clear-VAE encoding of the composite: its posterior (for the U-Net's composite latent) and
    the raw encoder skips (for decoding)."""

    mean: torch.Tensor  # [B,4,h,w] posterior mean, unscaled, in the Clear-VAE's dtype
    logvar: torch.Tensor  # [B,4,h,w] posterior log-variance (clamped as diffusers does)
    skips: list[torch.Tensor] | None  # 12 raw encoder features; None: the composite is encoded again to decode
    scaling_factor: float = SD15_LATENT_SCALE
    skips_placement: str = "device"  # device | host | recompute (r2r.pipeline.memory)

    @property
    def batch_size(self) -> int:
        return int(self.mean.shape[0])

    def posterior(self, device=None):
        """The diffusers ``DiagonalGaussianDistribution`` (on ``device``) the sampler draws from."""
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        params = torch.cat([self.mean, self.logvar], dim=1)
        return DiagonalGaussianDistribution(params if device is None else params.to(device))

    def expand(self, batch: int) -> EncodedComposite:
        """The encoding of ``batch`` items: a batch-1 encoding repeated, or a batch tiled (several seeds)."""
        if batch == self.batch_size:
            return self
        from ..imaging import batch_repeater

        rep = batch_repeater(self.batch_size, batch, "encoded composites")
        skips = None if self.skips is None else [rep(s) for s in self.skips]
        return dataclasses.replace(self, mean=rep(self.mean), logvar=rep(self.logvar), skips=skips)


@dataclass
class R2ROutput:
    images: torch.Tensor  # [B,3,H,W] in [0, 1] at the original resolution
    working_images: torch.Tensor | None  # [B,3,h,w] in [0, 1] at the working resolution (model output); None
    # when several runs were composed (objects / crops: r2r.pipeline.objects)
    latents: torch.Tensor | None = None  # [B,4,h/8,w/8] final latents (scaled), float32
    prepared: Prepared | None = field(default=None, repr=False)

    def to_numpy(self) -> list:
        """Images as a list of ``HxWx3 uint8`` arrays (rounded)."""
        import torch

        arr = (self.images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return [a.permute(1, 2, 0).cpu().numpy() for a in arr]
