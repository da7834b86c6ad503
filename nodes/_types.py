"""The objects that travel on the pack's custom sockets.

* ``R2R_MODEL``      -> :class:`R2RModel` (U-Net + scheduler config + cached empty-prompt
  embedding; after "MACA Controller Apply" also the attached controller settings)
* ``R2R_CLEAR_VAE``  -> :class:`ManagedModel` around ``r2r.models.ClearVAE``
* ``R2R_CONTROLLER`` -> :class:`ManagedModel` around ``r2r.models.HarmonyController``

They are passed by reference and cached by ComfyUI while the loader's inputs do not
change; nodes treat them as read-only and return modified copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._host import ManagedModel

R2R_MODEL = "R2R_MODEL"
R2R_CLEAR_VAE = "R2R_CLEAR_VAE"
R2R_CONTROLLER = "R2R_CONTROLLER"

#: key in a LATENT dict holding what the R2R nodes need besides "samples"
LATENT_KEY = "r2r"


@dataclass(frozen=True)
class ControlSettings:
    """What "MACA Controller Apply" attaches to a model."""

    controller: ManagedModel
    strength: float
    #: [B,1,H,W] reference-region mask at the composite's ORIGINAL size (None: whole background)
    reference_mask: object = None
    #: fingerprint of the composite/mask the controller was applied for (checked by the sampler)
    composite_id: tuple = ()
    #: the working-resolution inputs (built lazily by the sampler from the composite it sees)
    composite: object = None  # [B,3,H,W] in [0,1], original size
    mask: object = None  # [B,1,H,W] in [0,1], original size


@dataclass(frozen=True)
class R2RModel:
    unet: ManagedModel
    scheduler_config: dict
    prompt_embeds: object  # [1,77,768] tensor
    source: str
    control: ControlSettings | None = None
    extras: dict = field(default_factory=dict)

    def with_control(self, control: ControlSettings | None) -> R2RModel:
        return dataclasses.replace(self, control=control)


def image_fingerprint(x) -> tuple:
    """An identity for a composite/mask tensor (shape + content hash), to detect that the
    image given to one node is not the one another node was given."""
    import hashlib

    import torch

    data = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return (tuple(x.shape), hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest())
