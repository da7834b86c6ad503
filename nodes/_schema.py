"""What every R2R node shares on ComfyUI's V3 node API (``comfy_api.v0_0_2``).

* the pack's socket types (``R2R_MODEL``, ``R2R_CLEAR_VAE``, ``R2R_CONTROLLER``) as ``io.Custom``;
* :class:`R2RNode`, the base class: search aliases (``SEARCH_ALIASES``) go into the schema where
  ComfyUI's ``io.Schema`` has the field (newer than 0.3.64) and into ``/object_info`` as
  ``search_aliases`` in any case;
* the input specs several nodes share (one definition: the same ranges and tooltips everywhere).

The node modules import this one, so they need ComfyUI's ``comfy_api`` on ``sys.path`` (always
true inside ComfyUI; tests add the ComfyUI source tree, see tests/comfy_pack.py).
"""

from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ..r2r.params import DEFAULT_FULLRES_MODE, DEFAULT_RESIZE_MODE, FULLRES_MODES, RESIZE_MODES, check_choice
from ._types import R2R_CLEAR_VAE, R2R_CONTROLLER, R2R_MODEL

R2RModelType = io.Custom(R2R_MODEL)
R2RClearVAEType = io.Custom(R2R_CLEAR_VAE)
R2RControllerType = io.Custom(R2R_CONTROLLER)

_SCHEMA_HAS_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
SEED_MAX = 0xFFFFFFFFFFFFFFFF


class R2RNode(io.ComfyNode):
    """Base of every R2R node: ``define_schema`` builds its schema with :meth:`schema`."""

    #: words the node search should find this node by (besides its name)
    SEARCH_ALIASES: tuple[str, ...] = ()

    @classmethod
    def schema(cls, **fields) -> io.Schema:
        if _SCHEMA_HAS_ALIASES:
            fields["search_aliases"] = list(cls.SEARCH_ALIASES)
        return io.Schema(**fields)

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        # ComfyUI 0.3.64's schema has no search_aliases: publish them in /object_info ourselves
        info = super().GET_NODE_INFO_V1()
        info.setdefault("search_aliases", list(cls.SEARCH_ALIASES))
        return info


def choice(value, choices, name: str, node: str):
    """A combo value checked against its options (0.3.64 does not check V3 combos itself)."""
    try:
        return check_choice(value, tuple(choices), name)
    except R2RUserError as exc:
        raise R2RUserError(f"R2R {node}: {exc}") from None


# ----------------------------------------------------------------------------- tooltips

IMAGE_TIP = ("The composite: the picture with the pasted object (IMAGE, values 0..1, as Load Image gives it). "
             "A batch is processed together.")
MASK_TIP = ("Where the pasted object is: white (1) = the object to harmonize, black (0) = the background. "
            "Paint it in the MaskEditor (right-click Load Image -> Open in MaskEditor) or load a mask file. "
            "A mask of another size with the same aspect ratio is resized.")
INVERT_TIP = ("Flip the mask (1 - mask). R2R needs the object white (1). Load Image's MASK is 1 - alpha: it is "
              "already white where you painted in the MaskEditor; switch this on when your object is the opaque "
              "part of a cut-out PNG.")
LEGACY_TIP = ("Not needed any more: the composite and mask come with the LATENT from Clear-VAE Encode. "
              "Kept (and ignored) so that older workflows still load.")
MAX_SIDE_TIP = ("Working resolution: the longer side the model runs at (a multiple of 64). The official release "
                "runs at 1024; 512 is about 4x faster and uses less memory. The result comes back at the "
                "original size.")
RESIZE_TIP = ("How the picture becomes the working canvas: fit = scale the long side to max_side and round both "
              "sides to multiples of 64 (<= 3% stretch, undone afterwards); pad = keep the exact aspect ratio, "
              "padded; square = squash to max_side x max_side like the official code.")
FULLRES_TIP = ("How the result reaches the original resolution: upsample = resize the working-resolution result "
               "(fine detail limited by max_side); color_transform = apply the model's colour change to the "
               "full-resolution composite (keeps every original detail; best for large pictures); auto = "
               "color_transform when the picture is larger than the working resolution, else upsample. Only "
               "with paste_back on.")
STRENGTH_TIP = "Harmony Controller strength: 1 = as trained, 0 = no controller (the U-Net alone)."
REFERENCE_TIP = ("Optional region (white = 1) whose colours and light the object should take, instead of the "
                 "whole background. Not affected by invert_mask.")


# ----------------------------------------------------------------------------- shared inputs


def clear_vae_in():
    return R2RClearVAEType.Input("clear_vae", tooltip="The Clear-VAE from an R2R loader.")


def image_in(name="image", tooltip=IMAGE_TIP, optional=False):
    return io.Image.Input(name, tooltip=tooltip, optional=optional)


def mask_in(name="mask", tooltip=MASK_TIP, optional=False):
    return io.Mask.Input(name, tooltip=tooltip, optional=optional)


def invert_in(tooltip=INVERT_TIP, optional=False):
    return io.Boolean.Input("invert_mask", default=False, tooltip=tooltip, optional=optional)


def max_side_in():
    return io.Int.Input("max_side", default=1024, min=64, max=4096, step=64, tooltip=MAX_SIDE_TIP)


def resize_in():
    return io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default=DEFAULT_RESIZE_MODE, tooltip=RESIZE_TIP)


def seed_in(tooltip="Random seed (a CPU generator, so a seed gives the same picture on every device)."):
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, step=1, control_after_generate=True, tooltip=tooltip)


def steps_in():
    return io.Int.Input("steps", default=10, min=1, max=200, step=1,
                        tooltip="Denoising steps. The release was tuned for 10.")


def sampler_in(names, default):
    return io.Combo.Input("sampler", options=list(names), default=default,
                          tooltip="Scheduler. euler_ancestral is the official one; the others are diffusers "
                                  "schedulers on the same noise schedule.")


def strength_in(default=1.0, maximum=2.0, tooltip=STRENGTH_TIP):
    return io.Float.Input("strength", default=default, min=0.0, max=maximum, step=0.05, tooltip=tooltip)


def paste_back_in(optional=False):
    return io.Boolean.Input("paste_back", default=True, optional=optional,
                            tooltip="Keep the original background pixels outside the (feathered) mask. Off: the "
                                    "whole decoded picture.")


def feather_in(optional=False):
    return io.Int.Input("feather", default=-1, min=-1, max=256, step=1, optional=optional,
                        tooltip="Width in original pixels of the soft edge outside the mask for the paste-back. "
                                "-1 = automatic (one latent cell), 0 = hard edge.")


def fullres_in(optional=False):
    return io.Combo.Input("fullres_mode", options=list(FULLRES_MODES), default=DEFAULT_FULLRES_MODE,
                          tooltip=FULLRES_TIP, optional=optional)
