"""The objects that travel on the pack's sockets.

* ``R2R_MODEL``      -> :class:`R2RModel` (U-Net + scheduler config + cached empty-prompt
  embedding; after "MACA Controller Apply" also the attached :class:`ControlSettings`)
* ``R2R_CLEAR_VAE``  -> :class:`ManagedModel` around ``r2r.models.ClearVAE``
* ``R2R_CONTROLLER`` -> :class:`ManagedModel` around ``r2r.models.HarmonyController``
* ``LATENT``         -> ``{"samples": unscaled latent, "r2r": R2RLatentState}`` (Clear-VAE Encode,
  R2R Sampler, KSampler on the R2R path)

They are passed by reference and cached by ComfyUI while their inputs do not change; nodes treat
them as read-only and return modified copies. The ``cache`` dicts are the exception: they hold
results that depend only on what the object already fixes (the controller residuals for a given
composite, steps and scheduler), so re-running the graph with a new seed reuses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._host import ManagedModel

R2R_MODEL = "R2R_MODEL"
R2R_CLEAR_VAE = "R2R_CLEAR_VAE"
R2R_CONTROLLER = "R2R_CONTROLLER"

#: key in a LATENT dict holding the R2R state
LATENT_KEY = "r2r"


@dataclass(eq=False)
class R2RLatentState:
    """What Clear-VAE Encode read and computed, carried to the sampler and to Decode.

    ``prepared`` is :class:`r2r.imaging.Prepared` on the CPU (the composite, mask and hint at the
    working resolution, the latent mask, the original composite and mask for the paste-back).
    The composite's Clear-VAE posterior (mean and log-variance, unscaled, float32 on the CPU) lets the
    sampler draw its sample in the official random-number order. ``skips``: the encoder skips kept
    in host RAM for Decode, or None when Decode encodes the composite again (see nodes/flow.py).
    """

    prepared: object
    posterior_mean: object  # [B,4,h,w] float32
    posterior_logvar: object  # [B,4,h,w] float32
    posterior_dtype: object  # the Clear-VAE's torch dtype (the sample is drawn in it)
    scaling_factor: float
    key: str  # content fingerprint of composite + mask + working settings
    skips: list | None = None

    @property
    def batch_size(self) -> int:
        return int(self.posterior_mean.shape[0])


@dataclass(frozen=True)
class ControlSettings:
    """What "MACA Controller Apply" attaches to a model."""

    controller: ManagedModel
    strength: float
    #: [B,1,H,W] reference-region mask at its own size (None: the whole background)
    reference_mask: object = None
    #: controller residuals already computed, keyed by what they depend on (see nodes/flow.py)
    cache: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class R2RModel:
    unet: ManagedModel
    scheduler_config: dict
    prompt_embeds: object  # [1,77,768] tensor
    source: str
    control: ControlSettings | None = None

    def with_control(self, control: ControlSettings | None) -> R2RModel:
        return dataclasses.replace(self, control=control)


def tensor_fingerprint(*tensors) -> str:
    """A content hash of tensors (shape + values), to key caches and detect changed inputs."""
    import hashlib

    import torch

    digest = hashlib.blake2b(digest_size=16)
    for x in tensors:
        data = x.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()
