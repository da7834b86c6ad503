"""The four nodes of the exact R2R path: Clear-VAE Encode -> MACA Controller Apply -> R2R Sampler ->
Clear-VAE Decode (R2R Harmonize is all four in one: nodes/harmonize.py).

The classes only declare their V3 schemas, check their widget values and call ``nodes/flow.py``.
Masks are read once: Encode reads the composite, the mask and ``invert_mask``; the LATENT carries
them to the sampler and to Decode.

MACA Controller Apply and Clear-VAE Decode come in two forms. The version-2 nodes
(``R2RMACAControllerApplyV2``, ``R2RClearVAEDecodeV2``) show only what they use. The version-1
nodes keep their old ``image`` / ``mask`` / ``invert_mask`` inputs so that saved workflows load and
run unchanged; they are deprecated (hidden from the node search). Their ``image`` is checked against
the LATENT's composite when connected (a different picture there is an error, not a silent mix-up).
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from . import _checks, flow
from ._schema import (
    LEGACY_TIP,
    R2RControllerType,
    R2RModelType,
    R2RNode,
    check_param,
    clear_vae_in,
    feather_in,
    fullres_in,
    image_in,
    invert_in,
    mask_in,
    max_side_in,
    noise_device_in,
    param_input,
    paste_back_in,
    reference_inputs,
    resize_in,
    sampler_in,
    seed_in,
    steps_in,
    strength_in,
)

HARMONIZE = "Harmonize (relight / colour-match) a pasted object"
SAMPLER_TEMPORAL_TIP = ("For a clip (the frames as a batch): shared_noise, smoothed and keyframes give every frame the "
                        "same noise, so identical frames give the same result (up to rounding); independent = each "
                        "batch item its own noise (as before). Set the same mode on Clear-VAE Decode.")
DECODE_TEMPORAL_TIP = ("For a clip (the frames as a batch): smoothed = the colour change smoothed over time within "
                       "each shot; keyframes = the colour change of every keyframe_interval-th frame (and at cuts) "
                       "interpolated between them; independent / shared_noise = each frame restored on its own. "
                       "For long clips use R2R Harmonize (it runs the frames in chunks).")


def check_sampling(node, seed, steps, sampler, noise_device="cpu"):
    check_param("seed", seed, node)
    check_param("steps", steps, node)
    check_param("scheduler", sampler, node, "sampler")
    check_param("noise_device", noise_device, node)


def check_working(node, max_side, resize_mode):
    check_param("max_side", max_side, node)
    check_param("resize_mode", resize_mode, node)


def check_output(node, feather, fullres_mode):
    check_param("feather", feather, node)
    check_param("fullres_mode", fullres_mode, node)


class R2RClearVAEEncode(R2RNode):
    """Harmonize (relight / colour-match) a pasted object, step 1: reads the composite (the picture with the pasted
    object) and its mask (the only node of the R2R chain that does) and encodes the composite with the Clear-VAE
    at the working resolution. The LATENT carries the composite and mask on to the sampler and to Clear-VAE
    Decode.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[clear_vae_in(), image_in(), mask_in(), max_side_in(), invert_in(), resize_in()],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The composite's Clear-VAE latent (unscaled posterior mean) plus "
                                              "what the R2R nodes need (composite, mask, working size).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, clear_vae, image, mask, max_side=0, invert_mask=False, resize_mode="fit"):
        node = "Clear-VAE Encode"
        check_working(node, max_side, resize_mode)
        comp, m = flow.read_inputs(image, mask, invert_mask, node=node)
        _checks.check_kind(clear_vae, "R2R_CLEAR_VAE", "clear_vae", node)
        flow.warn_large_mask(m, node, cls.hidden.unique_id if cls.hidden else None)
        return io.NodeOutput(flow.encode(clear_vae, comp, m, max_side, resize_mode))


def _apply_schema(node: type[R2RNode], legacy: bool):
    inputs = [
        R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader (or U-Net Loader)."),
        R2RControllerType.Input("controller", tooltip="The Harmony Controller from an R2R loader."),
        strength_in(),
    ]
    if legacy:
        inputs += [image_in(tooltip=LEGACY_TIP, optional=True), mask_in(tooltip=LEGACY_TIP, optional=True),
                   invert_in(tooltip=LEGACY_TIP, optional=True)]
    return node.schema(
        description=f"{HARMONIZE}, step 2: attaches the Harmony Controller to the R2R model. MACA steers the "
                    "object's colours and light with the statistics of the background, of reference_mask's "
                    "region, or of another photo (reference_image, optionally its reference_image_mask region) "
                    "— match the look of that photo. strength scales the controller (1 = as trained).",
        inputs=inputs + reference_inputs(),
        outputs=[R2RModelType.Output(display_name="model",
                                     tooltip="The R2R model with the controller attached (for R2R Sampler).")],
    )


def _apply(model, controller, strength, reference_mask, reference_image, reference_image_mask):
    node = "MACA Controller Apply"
    check_param("strength", strength, node)
    reference = flow.make_reference(reference_mask, reference_image, reference_image_mask, node)
    return io.NodeOutput(flow.attach_controller(model, controller, float(strength), reference))


class R2RMACAControllerApply(R2RNode):
    """Version 1 (deprecated): the old image/mask/invert_mask inputs stay so saved workflows load."""

    @classmethod
    def define_schema(cls):
        return _apply_schema(cls, legacy=True)

    @classmethod
    def execute(cls, model, controller, strength=1.0, image=None, mask=None, invert_mask=False,
                reference_mask=None, reference_image=None, reference_image_mask=None):
        return _apply(model, controller, strength, reference_mask, reference_image, reference_image_mask)


class R2RMACAControllerApplyV2(R2RNode):
    @classmethod
    def define_schema(cls):
        return _apply_schema(cls, legacy=False)

    @classmethod
    def execute(cls, model, controller, strength=1.0, reference_mask=None, reference_image=None,
                reference_image_mask=None):
        return _apply(model, controller, strength, reference_mask, reference_image, reference_image_mask)


class R2RSampler(R2RNode):
    """Harmonize (relight / colour-match) a pasted object, step 3: the exact R2R denoising loop (empty prompt, no
    CFG) on the Clear-VAE latent of the composite, seed-compatible with the official code. Defaults are the
    official ones: Euler-ancestral, 10 steps. batch_size > 1 makes that many variations (seeds seed, seed+1,
    ...) in one run. Shows latent previews; can be cancelled between steps.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[
                R2RModelType.Input("model", tooltip="The R2R model, usually with the controller attached by MACA "
                                                    "Controller Apply (without it the U-Net runs alone)."),
                io.Latent.Input("latent", tooltip="The LATENT from R2R Clear-VAE Encode."),
                seed_in(),
                steps_in(),
                sampler_in(),
                noise_device_in(),
                param_input("seed_batch", "batch_size", optional=True),
                param_input("temporal", optional=True, tooltip=SAMPLER_TEMPORAL_TIP),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The harmonized latent (decode it with R2R Clear-VAE Decode).")],
        )

    @classmethod
    def execute(cls, model, latent, seed=0, steps=10, sampler="euler_ancestral", noise_device="cpu", batch_size=1,
                temporal="independent"):
        check_sampling("Sampler", seed, steps, sampler, noise_device)
        check_param("seed_batch", batch_size, "Sampler", "batch_size")
        check_param("temporal", temporal, "Sampler")
        if temporal != "independent" and int(batch_size) > 1:
            raise R2RUserError(f"R2R Sampler: temporal {temporal} gives every frame of a clip the same noise; "
                               "batch_size (seed variations) must be 1 then.")
        return io.NodeOutput(flow.sample(model, latent, seed, steps, sampler, noise_device, batch_size,
                                         shared_noise=temporal != "independent"))


def _decode_schema(node: type[R2RNode], legacy: bool):
    inputs = [clear_vae_in(), io.Latent.Input("latent", tooltip="The LATENT from R2R Sampler (or KSampler).")]
    if legacy:  # the V1 widgets were invert_mask, paste_back, feather, fullres_mode in this order
        inputs += [image_in(tooltip=LEGACY_TIP, optional=True), mask_in(tooltip=LEGACY_TIP, optional=True),
                   invert_in(tooltip=LEGACY_TIP, optional=True)]
    inputs += [paste_back_in(optional=legacy), feather_in(optional=legacy), fullres_in(optional=legacy)]
    if not legacy:
        inputs += [param_input("temporal", optional=True, tooltip=DECODE_TEMPORAL_TIP),
                   param_input("keyframe_interval", optional=True)]
    return node.schema(
        description=f"{HARMONIZE}, step 4: decodes the sampled latent with the Clear-VAE, re-injecting the "
                    "composite's encoder skips, brings the result back to the original resolution and pastes the "
                    "original background back through a feathered mask. Takes the LATENT of R2R Sampler or of "
                    "KSampler (R2R Conditioning path).",
        inputs=inputs,
        outputs=[io.Image.Output(display_name="image", tooltip="The harmonized picture at the composite's "
                                                               "original size.")],
        hidden=[io.Hidden.unique_id],
    )


def _decode(node_id, clear_vae, latent, paste_back, feather, fullres_mode, legacy=None, temporal="independent",
            keyframe_interval=8):
    node = "Clear-VAE Decode"
    check_output(node, feather, fullres_mode)
    check_param("temporal", temporal, node)
    check_param("keyframe_interval", keyframe_interval, node)
    _checks.check_kind(clear_vae, "R2R_CLEAR_VAE", "clear_vae", node)
    return io.NodeOutput(flow.decode(clear_vae, latent, bool(paste_back), int(feather), fullres_mode, legacy=legacy,
                                     node_id=node_id, temporal=temporal, keyframe_interval=int(keyframe_interval)))


class R2RClearVAEDecode(R2RNode):
    """Version 1 (deprecated): the old image/mask/invert_mask inputs stay so saved workflows load."""

    @classmethod
    def define_schema(cls):
        return _decode_schema(cls, legacy=True)

    @classmethod
    def execute(cls, clear_vae, latent, image=None, mask=None, invert_mask=False, paste_back=True, feather=-1,
                fullres_mode="auto"):
        return _decode(cls.hidden.unique_id if cls.hidden else None, clear_vae, latent, paste_back, feather,
                       fullres_mode, legacy=(image, mask, invert_mask))


class R2RClearVAEDecodeV2(R2RNode):
    @classmethod
    def define_schema(cls):
        return _decode_schema(cls, legacy=False)

    @classmethod
    def execute(cls, clear_vae, latent, paste_back=True, feather=-1, fullres_mode="auto", temporal="independent",
                keyframe_interval=8):
        return _decode(cls.hidden.unique_id if cls.hidden else None, clear_vae, latent, paste_back, feather,
                       fullres_mode, temporal=temporal, keyframe_interval=keyframe_interval)


NODES = [R2RClearVAEEncode, R2RMACAControllerApplyV2, R2RSampler, R2RClearVAEDecodeV2, R2RMACAControllerApply,
         R2RClearVAEDecode]

__all__ = ["NODES", "check_output", "check_sampling", "check_working"]
