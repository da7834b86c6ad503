"""The diffusion nodes (the exact R2R path): Clear-VAE Encode, MACA Controller Apply, R2R Sampler,
Clear-VAE Decode, and R2R Harmonize (all four in one).

The classes only declare their V3 schemas, check their widget values and call ``nodes/flow.py``.
Masks are read once: Encode (or Harmonize) reads the composite, the mask and ``invert_mask``; the
LATENT carries them to the sampler and to Decode. MACA Controller Apply's and Decode's
``image`` / ``mask`` / ``invert_mask`` stay in their schemas only so that workflows saved with the
V1 nodes still load (same input names, same widget order); they are ignored.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..r2r.params import DEFAULT_SCHEDULER, FULLRES_MODES, RESIZE_MODES, SCHEDULER_NAMES
from . import _convert, flow
from ._schema import (
    LEGACY_TIP,
    REFERENCE_TIP,
    SEED_MAX,
    R2RControllerType,
    R2RModelType,
    R2RNode,
    choice,
    clear_vae_in,
    feather_in,
    fullres_in,
    image_in,
    invert_in,
    mask_in,
    max_side_in,
    paste_back_in,
    resize_in,
    sampler_in,
    seed_in,
    steps_in,
    strength_in,
)

HARMONIZE_ALIASES = ("harmonize", "harmonization", "relight", "color match", "colour match", "composite",
                     "blend", "match lighting", "paste object", "region2region")


def _check_sampling(node, seed, steps, sampler):
    _convert.check_number(seed, "seed", node, 0, SEED_MAX, integer=True)
    _convert.check_number(steps, "steps", node, 1, 200, integer=True)
    choice(sampler, SCHEDULER_NAMES, "sampler", node)


def _check_working(node, max_side, resize_mode):
    _convert.check_number(max_side, "max_side", node, 64, 4096, integer=True)
    choice(resize_mode, RESIZE_MODES, "resize_mode", node)


def _check_output(node, feather, fullres_mode):
    _convert.check_number(feather, "feather", node, -1, 256, integer=True)
    choice(fullres_mode, FULLRES_MODES, "fullres_mode", node)


class R2RClearVAEEncode(R2RNode):
    SEARCH_ALIASES = ("vae encode", "encode composite", "clear vae", "harmonize")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RClearVAEEncode",
            display_name="R2R Clear-VAE Encode",
            category="R2R/vae",
            description="Reads the composite and its mask (the only node of the R2R chain that does) and encodes "
                        "the composite with the Clear-VAE at the working resolution. The LATENT carries the "
                        "composite and mask on to the sampler and to Clear-VAE Decode.",
            inputs=[
                clear_vae_in(),
                image_in(),
                mask_in(),
                max_side_in(),
                invert_in(),
                resize_in(),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The composite's Clear-VAE latent (unscaled posterior mean) plus "
                                              "what the R2R nodes need (composite, mask, working size).")],
        )

    @classmethod
    def execute(cls, clear_vae, image, mask, max_side=1024, invert_mask=False, resize_mode="fit"):
        node = "Clear-VAE Encode"
        _check_working(node, max_side, resize_mode)
        comp, m, _ = flow.read_inputs(image, mask, invert_mask, node=node)
        return io.NodeOutput(flow.encode(clear_vae, comp, m, max_side, resize_mode))


class R2RMACAControllerApply(R2RNode):
    SEARCH_ALIASES = ("controlnet", "harmony controller", "maca", "reference region", "color reference",
                      "harmonize")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RMACAControllerApply",
            display_name="R2R MACA Controller Apply",
            category="R2R/conditioning",
            description="Attaches the Harmony Controller to the R2R model. MACA steers the object's colours "
                        "with the statistics of the background, or of reference_mask's region when connected. "
                        "strength scales the controller (1 = as trained). The composite and mask come with "
                        "the LATENT from Clear-VAE Encode.",
            inputs=[
                R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader (or U-Net Loader)."),
                R2RControllerType.Input("controller", tooltip="The Harmony Controller from an R2R loader."),
                strength_in(),
                image_in(tooltip=LEGACY_TIP, optional=True),
                mask_in(tooltip=LEGACY_TIP, optional=True),
                invert_in(tooltip=LEGACY_TIP, optional=True),
                mask_in("reference_mask", tooltip=REFERENCE_TIP, optional=True),
            ],
            outputs=[R2RModelType.Output(display_name="model",
                                         tooltip="The R2R model with the controller attached (for R2R Sampler).")],
        )

    @classmethod
    def execute(cls, model, controller, strength=1.0, image=None, mask=None, invert_mask=False,
                reference_mask=None):
        node = "MACA Controller Apply"
        _convert.check_number(strength, "strength", node, 0.0, 2.0)
        ref = None
        if reference_mask is not None:
            # at its own size: flow brings it to the composite's size once the LATENT is known
            ref = _convert.mask_to_b1hw(reference_mask, None, name="reference_mask", allow_empty=True, node=node)
        return io.NodeOutput(flow.attach_controller(model, controller, float(strength), ref))


class R2RSampler(R2RNode):
    SEARCH_ALIASES = ("sampler", "denoise", "ksampler", "harmonize")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RSampler",
            display_name="R2R Sampler",
            category="R2R/sampling",
            description="The exact R2R denoising loop (empty prompt, no CFG) on the Clear-VAE latent of the "
                        "composite, seed-compatible with the official code. Defaults are the official ones: "
                        "Euler-ancestral, 10 steps. Shows latent previews and can be cancelled between steps.",
            inputs=[
                R2RModelType.Input("model", tooltip="The R2R model, usually with the controller attached by MACA "
                                                    "Controller Apply (without it the U-Net runs alone)."),
                io.Latent.Input("latent", tooltip="The LATENT from R2R Clear-VAE Encode."),
                seed_in(),
                steps_in(),
                sampler_in(SCHEDULER_NAMES, DEFAULT_SCHEDULER),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The harmonized latent (decode it with R2R Clear-VAE Decode).")],
        )

    @classmethod
    def execute(cls, model, latent, seed=0, steps=10, sampler=DEFAULT_SCHEDULER):
        _check_sampling("Sampler", seed, steps, sampler)
        return io.NodeOutput(flow.sample(model, latent, seed, steps, sampler))


class R2RClearVAEDecode(R2RNode):
    SEARCH_ALIASES = ("vae decode", "decode", "paste back", "clear vae", "harmonize")

    @classmethod
    def define_schema(cls):
        # the V1 node had the widgets invert_mask, paste_back, feather, fullres_mode in this order; they
        # stay in it (optional inputs follow required ones) so that saved widgets_values still map
        return cls.schema(
            node_id="R2RClearVAEDecode",
            display_name="R2R Clear-VAE Decode",
            category="R2R/vae",
            description="Decodes the sampled latent with the Clear-VAE, re-injecting the composite's encoder "
                        "skips, brings the result back to the original resolution and pastes the original "
                        "background back through a feathered mask. Takes the LATENT of R2R Sampler or of "
                        "KSampler (R2R Conditioning path).",
            inputs=[
                clear_vae_in(),
                io.Latent.Input("latent", tooltip="The LATENT from R2R Sampler (or KSampler)."),
                image_in(tooltip=LEGACY_TIP, optional=True),
                mask_in(tooltip=LEGACY_TIP, optional=True),
                invert_in(tooltip=LEGACY_TIP, optional=True),
                paste_back_in(optional=True),
                feather_in(optional=True),
                fullres_in(optional=True),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The harmonized picture at the composite's "
                                                                   "original size.")],
        )

    @classmethod
    def execute(cls, clear_vae, latent, image=None, mask=None, invert_mask=False, paste_back=True, feather=-1,
                fullres_mode="auto"):
        _check_output("Clear-VAE Decode", feather, fullres_mode)
        return io.NodeOutput(flow.decode(clear_vae, latent, bool(paste_back), int(feather), fullres_mode))


class R2RHarmonize(R2RNode):
    SEARCH_ALIASES = HARMONIZE_ALIASES

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RHarmonize",
            display_name="R2R Harmonize",
            category="R2R",
            description="Makes a pasted object look like it belongs in the picture (colour, light, tone), with "
                        "the R2R model: Clear-VAE encode, MACA controller, sampling and Clear-VAE decode with "
                        "paste-back in one node. Same result as the four separate nodes with the same settings.",
            inputs=[
                R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader."),
                clear_vae_in(),
                R2RControllerType.Input("controller", tooltip="The Harmony Controller from an R2R loader."),
                image_in(),
                mask_in(),
                seed_in(),
                steps_in(),
                sampler_in(SCHEDULER_NAMES, DEFAULT_SCHEDULER),
                max_side_in(),
                strength_in(),
                invert_in(),
                paste_back_in(),
                feather_in(),
                resize_in(),
                fullres_in(),
                mask_in("reference_mask", tooltip=REFERENCE_TIP, optional=True),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The harmonized picture at the composite's "
                                                                   "original size.")],
        )

    @classmethod
    def execute(cls, model, clear_vae, controller, image, mask, seed=0, steps=10, sampler=DEFAULT_SCHEDULER,
                max_side=1024, strength=1.0, invert_mask=False, paste_back=True, feather=-1, resize_mode="fit",
                fullres_mode="auto", reference_mask=None):
        node = "Harmonize"
        _check_sampling(node, seed, steps, sampler)
        _check_working(node, max_side, resize_mode)
        _check_output(node, feather, fullres_mode)
        _convert.check_number(strength, "strength", node, 0.0, 2.0)
        comp, m, ref = flow.read_inputs(image, mask, invert_mask, reference_mask, node=node)
        return io.NodeOutput(flow.harmonize(
            model, clear_vae, controller, comp, m, ref, seed, steps, sampler, max_side, float(strength),
            bool(paste_back), int(feather), resize_mode, fullres_mode,
        ))


NODES = [R2RClearVAEEncode, R2RMACAControllerApply, R2RSampler, R2RClearVAEDecode, R2RHarmonize]
