"""What every R2R node shares on ComfyUI's V3 node API (``comfy_api.v0_0_2``).

* the pack's socket types (``R2R_MODEL``, ``R2R_CLEAR_VAE``, ``R2R_CONTROLLER``) as ``io.Custom``;
* :class:`R2RNode`, the base class: a node's id, name, menu and search words come from its row in
  ``_catalog.CARDS`` and its description from its docstring; the search words go into the schema
  where ComfyUI's ``io.Schema`` has the field (newer than 0.3.64) and into ``/object_info`` as
  ``search_aliases`` in any case;
* the input specs several nodes share (one definition: the same ranges and tooltips everywhere).

The node modules import this one, so they need ComfyUI's ``comfy_api`` on ``sys.path`` (always
true inside ComfyUI; tests add the ComfyUI source tree, see tests/comfy_pack.py).
"""

from __future__ import annotations

import dataclasses
import inspect

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ..r2r.params import AUTO_MAX_SIDE, PARAMS, check, check_choice
from ._catalog import CARDS
from ._types import R2R_CLEAR_VAE, R2R_CONTROLLER, R2R_MODEL

R2RModelType = io.Custom(R2R_MODEL)
R2RClearVAEType = io.Custom(R2R_CLEAR_VAE)
R2RControllerType = io.Custom(R2R_CONTROLLER)

#: the seed widget's maximum (from the parameter table)
SEED_MAX = int(PARAMS["seed"].maximum or 0)
_SCHEMA_HAS_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


class R2RNode(io.ComfyNode):
    """Base of every R2R node: ``define_schema`` builds its schema with :meth:`schema`."""

    @classmethod
    def schema(cls, **fields) -> io.Schema:
        """The node's schema: id, name, menu, search words and deprecation from its row in
        ``_catalog.CARDS``, the description from the class docstring (unless ``description`` is
        given), then ``fields`` (inputs, outputs, hidden, ...)."""
        card = CARDS[cls.__name__]
        fields = {"node_id": cls.__name__, "display_name": card.display_name, "category": card.category,
                  "description": " ".join(inspect.cleandoc(cls.__doc__ or "").split()),
                  "is_deprecated": card.deprecated, **fields}
        if _SCHEMA_HAS_ALIASES:
            fields["search_aliases"] = list(card.search_aliases)
        return io.Schema(**fields)

    @classmethod
    def display_name(cls) -> str:
        return CARDS[cls.__name__].display_name

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        # ComfyUI 0.3.64's schema has no search_aliases: publish them in /object_info ourselves
        info = super().GET_NODE_INFO_V1()
        info.setdefault("search_aliases", list(CARDS[cls.__name__].search_aliases))
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
MAX_SIDE_TIP = ("Working resolution: the longer side the model runs at (a multiple of 64). 0 = automatic: 1024 "
                "(what the release was trained at) on a GPU, 512 on a CPU (about 4x faster there). The result "
                "comes back at the original size.")
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


# ----------------------------------------------------------------------------- inputs from the parameter table


def param_input(name: str, input_name: str | None = None, *, tooltip: str | None = None, optional: bool = False,
                default=None, **extra):
    """The V3 input for the entry ``name`` of ``r2r.params.PARAMS``: its type, default, range and help."""
    p = PARAMS[name]
    kw = {"default": p.default if default is None else default, "tooltip": tooltip or p.help, "optional": optional}
    kw.update(extra)
    input_name = input_name or name
    if p.choices is not None:
        return io.Combo.Input(input_name, options=list(p.choices), **kw)
    if p.kind is bool:
        return io.Boolean.Input(input_name, **kw)
    low, high = p.widget_range()
    if p.kind is int:
        return io.Int.Input(input_name, min=int(low), max=int(high), step=int(p.step or 1), **kw)
    return io.Float.Input(input_name, min=float(low), max=float(high), step=float(p.step or 0.01), **kw)


def check_param(name: str, value, node: str, input_name: str | None = None):
    """A widget value checked against the table (API callers and direct calls skip the frontend's limits)."""
    return check(name, value, f"R2R {node}: '{input_name or name}'")


def clear_vae_in():
    return R2RClearVAEType.Input("clear_vae", tooltip="The Clear-VAE from an R2R loader.")


def image_in(name="image", tooltip=IMAGE_TIP, optional=False):
    return io.Image.Input(name, tooltip=tooltip, optional=optional)


def mask_in(name="mask", tooltip=MASK_TIP, optional=False):
    return io.Mask.Input(name, tooltip=tooltip, optional=optional)


def invert_in(tooltip=INVERT_TIP, optional=False):
    return io.Boolean.Input("invert_mask", default=False, tooltip=tooltip, optional=optional)


REFERENCE_IMAGE_TIP = ("Optional: another photo whose colours and light the object should take (any size; "
                       "stretched to the working canvas, only its region's average statistics matter).")
REFERENCE_IMAGE_MASK_TIP = ("Optional: the part of reference_image to take the colours from (white = use; default: "
                            "the whole photo). Same size as reference_image.")


def reference_inputs():
    """The optional colour-source inputs: a region of this picture, or another photo (and its region)."""
    return [mask_in("reference_mask", tooltip=REFERENCE_TIP, optional=True),
            image_in("reference_image", tooltip=REFERENCE_IMAGE_TIP, optional=True),
            mask_in("reference_image_mask", tooltip=REFERENCE_IMAGE_MASK_TIP, optional=True)]


def max_side_in(default=AUTO_MAX_SIDE):
    return param_input("max_side", default=default, tooltip=MAX_SIDE_TIP)


def resize_in():
    return param_input("resize_mode", tooltip=RESIZE_TIP)


def seed_in(tooltip="Random seed (drawn on the CPU by default, so a seed gives the same picture on every device)."):
    return param_input("seed", tooltip=tooltip, control_after_generate=True)


def steps_in():
    return param_input("steps")


def sampler_in():
    return param_input("scheduler", "sampler",
                       tooltip="Scheduler. euler_ancestral is the official one; the others are diffusers "
                               "schedulers on the same noise schedule.")


def strength_in(tooltip=STRENGTH_TIP):
    return param_input("strength", tooltip=tooltip)


def noise_device_in():
    return param_input("noise_device", optional=True)


def paste_back_in(optional=False):
    return io.Boolean.Input("paste_back", default=True, optional=optional,
                            tooltip="Keep the original background pixels outside the (feathered) mask. Off: the "
                                    "whole decoded picture.")


def feather_in(optional=False):
    return param_input("feather", optional=optional)


def fullres_in(optional=False):
    return param_input("fullres_mode", tooltip=FULLRES_TIP, optional=optional)
