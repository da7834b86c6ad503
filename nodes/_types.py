"""The objects that travel on the pack's sockets.

* ``R2R_MODEL``      -> :class:`R2RModel` (U-Net + scheduler config + cached empty-prompt
  embedding; after "MACA Controller Apply" also the attached :class:`ControlSettings`)
* ``R2R_CLEAR_VAE``  -> :class:`ManagedModel` around ``r2r.models.ClearVAE``
* ``R2R_CONTROLLER`` -> :class:`ManagedModel` around ``r2r.models.HarmonyController``
* ``LATENT``         -> ``{"samples": unscaled latent, "r2r": R2RLatentState}`` (Clear-VAE Encode,
  R2R Sampler, R2R Conditioning, KSampler on the R2R path)

They are passed by reference and cached by ComfyUI while their inputs do not change; nodes treat
them as read-only and return modified copies. The residual caches are the exception: they hold
results that depend only on what the object already fixes (the controller residuals for a given
composite, reference and strength, by timestep), so re-running the graph with a new seed reuses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._host import ManagedModel

if TYPE_CHECKING:
    import torch

    from ..r2r.imaging import Prepared
    from ..r2r.pipeline import EncodedComposite, Reference

R2R_MODEL = "R2R_MODEL"
R2R_CLEAR_VAE = "R2R_CLEAR_VAE"
R2R_CONTROLLER = "R2R_CONTROLLER"

#: key in a LATENT dict holding the R2R state
LATENT_KEY = "r2r"


@dataclass(eq=False)
class R2RLatentState:
    """What Clear-VAE Encode read and computed, carried to the sampler and to Decode.

    ``prepared``: the composite, mask and hint at the working resolution, the latent mask, the
    original composite and mask for the paste-back (on the CPU). ``encoded``: the composite's
    Clear-VAE posterior and, where the placement rule kept them, its encoder skips. ``key``: the
    fingerprint of the composite, mask and working settings that every consumer checks (a LATENT
    from one composite never decodes with another's state). ``sampled``: the fingerprint of the
    latent R2R Sampler produced with this state (None before sampling).
    """

    prepared: Prepared
    encoded: EncodedComposite
    key: str
    sampled: str | None = None
    origin: str = "R2R Clear-VAE Encode"

    @property
    def batch_size(self) -> int:
        return self.encoded.batch_size

    @property
    def latent_shape(self) -> list[int]:
        return list(self.encoded.mean.shape)

    def describe(self) -> str:
        h, w = self.prepared.geometry.original_size
        return f"a {w}x{h} composite (batch {self.batch_size}, id {self.key[:8]})"

    def expand(self, batch: int) -> R2RLatentState:
        """The state of ``batch`` items: a batch-1 state repeated, or the state tiled for several seeds."""
        if batch == self.batch_size:
            return self
        return dataclasses.replace(self, prepared=self.prepared.expand(batch), encoded=self.encoded.expand(batch))


@dataclass(frozen=True)
class ControlSettings:
    """What "MACA Controller Apply" attaches to a model."""

    controller: ManagedModel
    strength: float
    #: where MACA's colour statistics come from (None: the whole background); a mask region is kept at
    #: its own size and brought to the composite's when the LATENT is known
    reference: Reference | None = None
    #: controller residuals already computed (r2r.pipeline.ResidualCache), reused for a new seed
    cache: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.cache is None:
            from ..r2r.pipeline import ResidualCache

            object.__setattr__(self, "cache", ResidualCache())


@dataclass(frozen=True)
class R2RModel:
    unet: ManagedModel
    scheduler_config: dict
    prompt_embeds: torch.Tensor  # [1,77,768]
    source: str
    control: ControlSettings | None = None

    def with_control(self, control: ControlSettings | None) -> R2RModel:
        return dataclasses.replace(self, control=control)
