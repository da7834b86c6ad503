"""The KSampler path: R2R as a core MODEL + CONDITIONING, for ComfyUI's own samplers.

    R2R Checkpoint Loader --R2R_MODEL--> R2R Model for KSampler --MODEL--> KSampler
    R2R Clear-VAE Encode --LATENT--> R2R Conditioning --positive/negative/LATENT--> KSampler
    KSampler --LATENT--> R2R Clear-VAE Decode

* **R2R Model for KSampler** (``R2RUNetToModel``): the R2R U-Net (SD-1.5 inpainting layout,
  9 input channels) as a ComfyUI MODEL, built by ComfyUI's own loader (nodes/comfy_unet.py).
* **R2R Conditioning** (``R2RConditioning``): the empty-prompt embedding as the cross-attention
  conditioning (R2R uses no prompt and no CFG: positive and negative are the same), the
  composite latent and the latent mask (nearest-downsampled, as R2R does) as the inpainting
  concat inputs (``concat_latent_image`` / ``concat_mask``, like InpaintModelConditioning), and
  the Harmony Controller as a core control object (nodes/harmony_control.py). Its LATENT is
  zeros (KSampler adds the noise; R2R starts from pure noise) carrying the R2R state, so that
  Clear-VAE Decode can decode what KSampler returns (KSampler copies the input LATENT dict).

The composite latent is, by default, the Clear-VAE posterior SAMPLE that R2R Sampler would draw
for ``composite_seed`` (its generator draws the initial noise first, then this sample): with the
same seed as KSampler and the ``euler`` sampler (scheduler ``normal``), KSampler gives R2R Sampler's
``euler`` result. ``composite_latent = mean`` uses the posterior mean instead (deterministic).

The KSampler path keeps ComfyUI's own noise (KSampler's seed and noise device); ``noise_device`` of
R2R Sampler does not apply here.

Mixed-up graphs are refused before sampling: the conditioning names its composite (``r2r_composite``)
and R2R Conditioning's LATENT tensor carries the same name; the MODEL of R2R Model for KSampler checks
that they agree, that KSampler got R2R Conditioning's LATENT, and that ``denoise`` is 1.0
(nodes/harmony_control.py). ``denoise`` < 1 is refused: R2R starts from pure noise, and KSampler's
img2img would start from the LATENT's zeros (use ``strength`` for a weaker change).
"""

from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from ..r2r.pipeline.sampling import SD15_LATENT_SCALE
from . import _checks, flow
from ._schema import (
    SEED_MAX,
    R2RControllerType,
    R2RModelType,
    R2RNode,
    check_param,
    choice,
    reference_inputs,
    strength_in,
)
from ._types import LATENT_KEY
from .harmony_control import COND_KEY, LATENT_TAG

COMPOSITE_LATENTS = ("sample", "mean")


def composite_latent_for(pipe, state, how: str, seed: int):
    """The composite's UNSCALED latent for the concat input (drawn by the pipeline's stage as R2R Sampler
    draws it for ``seed``), rescaled when the Clear-VAE's scaling factor is not SD1.5's (ComfyUI scales
    the concat latent with SD1.5's factor)."""
    z = pipe.composite_latent(state.encoded, int(seed), how)
    factor = float(state.encoded.scaling_factor) / SD15_LATENT_SCALE
    return z if factor == 1.0 else z * factor


def build_conditioning(prompt_embeds, concat_latent, latent_mask, control=None, composite_key=None):
    """ComfyUI CONDITIONING ``[[cross_attn, extras]]`` for the R2R U-Net.

    ``concat_latent``: the UNSCALED composite latent (ComfyUI scales it with the SD1.5 latent
    format, 0.18215); ``latent_mask``: ``[B,1,h,w]`` at the latent size (so ComfyUI does not
    resize it). ``control``: an ``R2RHarmonyControl`` or None (the U-Net alone).
    """
    import torch

    extras = {"concat_latent_image": concat_latent, "concat_mask": latent_mask.to(torch.float32)}
    if composite_key is not None:
        extras[COND_KEY] = composite_key
    if control is not None:
        extras["control"] = control
        extras["control_apply_to_uncond"] = False  # negative carries the same control itself
    return [[prompt_embeds.detach().to("cpu", torch.float32), extras]]


class R2RUNetToModel(R2RNode):
    """The R2R U-Net (an SD-1.5 inpainting U-Net) as a core MODEL for KSampler, KSampler (Advanced),
    SamplerCustomAdvanced and model patches. Pair it with R2R Conditioning. For the exact, seed-compatible R2R
    result use R2R Sampler instead.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader (or U-Net "
                                                        "Loader).")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The R2R U-Net as a ComfyUI SD1.5 inpainting "
                                                                   "MODEL (built once per loaded U-Net).")],
        )

    @classmethod
    def execute(cls, model):
        from .comfy_unet import comfy_model
        from .harmony_control import add_pairing_check

        _checks.check_kind(model, "R2R_MODEL", "model", "Model for KSampler")
        return io.NodeOutput(add_pairing_check(comfy_model(model.unet)))


class R2RConditioning(R2RNode):
    """Everything KSampler needs to run R2R: positive/negative conditioning with R2R's empty prompt, the composite
    latent and the mask as the inpainting inputs, and the Harmony Controller (MACA) attached like a ControlNet;
    plus the LATENT to sample (zeros; Clear-VAE Decode decodes KSampler's result). Use cfg 1.0: R2R has no
    negative prompt.
    """

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=[
                R2RModelType.Input("model", tooltip="The R2R model (for its empty-prompt embedding)."),
                io.Latent.Input("latent", tooltip="The LATENT of R2R Clear-VAE Encode."),
                R2RControllerType.Input("controller", optional=True,
                                        tooltip="The Harmony Controller from an R2R loader. Without it the "
                                                "U-Net runs alone (weaker harmonization)."),
                strength_in(),
                io.Int.Input("composite_seed", default=0, min=0, max=SEED_MAX, step=1,
                             tooltip="Seed of the composite latent's posterior sample (drawn as R2R Sampler "
                                     "draws it). Set it to KSampler's seed to reproduce R2R Sampler exactly "
                                     "(with KSampler's euler sampler)."),
                io.Combo.Input("composite_latent", options=list(COMPOSITE_LATENTS), default="sample",
                               tooltip="sample = a Clear-VAE posterior sample drawn as R2R Sampler draws it "
                                       "(official); mean = the posterior mean (deterministic)."),
                *reference_inputs(),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Connect to KSampler's positive."),
                io.Conditioning.Output(display_name="negative", tooltip="Connect to KSampler's negative (the "
                                                                        "same as positive: R2R uses no CFG)."),
                io.Latent.Output(display_name="latent", tooltip="Connect to KSampler's latent_image (zeros: "
                                                                "KSampler adds the noise)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, controller=None, strength=1.0, composite_seed=0, composite_latent="sample",
                reference_mask=None, reference_image=None, reference_image_mask=None):
        import torch

        from .harmony_control import control_class

        node = "Conditioning"
        check_param("strength", strength, node)
        check_param("seed", composite_seed, node, "composite_seed")
        choice(composite_latent, COMPOSITE_LATENTS, "composite_latent", node)
        _checks.check_kind(model, "R2R_MODEL", "model", node)
        if controller is not None:
            _checks.check_kind(controller, "R2R_CONTROLLER", "controller", node)
        state = _checks.latent_state(latent, node)
        reference = flow.make_reference(reference_mask, reference_image, reference_image_mask, node)
        pipe = flow.pipeline(unet=model.unet, controller=controller, scheduler_config=model.scheduler_config,
                             prompt_embeds=model.prompt_embeds, in_sampler=True)
        prepared_ref = pipe.prepare_reference(flow.reference_for(reference, state, node), state.prepared)
        if prepared_ref is not None and prepared_ref.batch_size not in (1, state.batch_size):
            raise R2RUserError(f"R2R {node}: {prepared_ref.batch_size} references for a LATENT of {state.batch_size} "
                               "image(s); give one reference, or one per image (R2R Sampler also takes several "
                               "references for one composite).")
        control = None
        if controller is not None and float(strength) > 0:
            control = control_class()(pipe, state.prepared, prepared_ref, float(strength))
        concat = composite_latent_for(pipe, state, composite_latent, composite_seed)
        latent_mask = state.prepared.latent_mask.detach().to("cpu", torch.float32)
        positive = build_conditioning(model.prompt_embeds, concat, latent_mask, control, state.key)
        negative = build_conditioning(model.prompt_embeds, concat, latent_mask, control, state.key)
        samples = torch.zeros(state.latent_shape, dtype=torch.float32, device="cpu")
        setattr(samples, LATENT_TAG, state.key)  # KSampler hands this tensor to the sampler: checked there
        out_state = dataclasses.replace(state, origin="R2R Conditioning")
        return io.NodeOutput(positive, negative, {"samples": samples, LATENT_KEY: out_state})


NODES = [R2RUNetToModel, R2RConditioning]
