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
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RUserError
from . import _convert, flow
from ._schema import SEED_MAX, R2RControllerType, R2RModelType, R2RNode, choice, mask_in, strength_in
from ._types import LATENT_KEY

COMPOSITE_LATENTS = ("sample", "mean")

REFERENCE_TIP = ("Optional region (white = 1) whose colours and light the object should take, instead of the "
                 "whole background (same size or aspect ratio as the composite).")


def composite_latent(state, how: str = "sample", seed: int = 0, noise_dtype=None):
    """The composite's UNSCALED latent ``[B,4,h,w]`` for the U-Net's concat input (float32, CPU).

    ``"sample"`` draws as R2R Sampler does for ``seed``: a CPU generator seeded with ``seed`` draws
    the initial noise (in ``noise_dtype``, the U-Net's; discarded here: KSampler draws its own, the
    same numbers for the same seed) and then the posterior sample in the Clear-VAE's dtype.
    ``"mean"``: the posterior mean.
    """
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    mean = state.posterior_mean.detach().to("cpu", torch.float32)
    if how == "mean":
        return mean
    generator = torch.Generator("cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    torch.randn(mean.shape, generator=generator, dtype=noise_dtype or torch.float32)  # R2R Sampler's first draw
    params = torch.cat([mean, state.posterior_logvar.detach().to("cpu", torch.float32)], dim=1)
    posterior = DiagonalGaussianDistribution(params.to(state.posterior_dtype))
    return posterior.sample(generator=generator).to(torch.float32)


def composite_latent_for(state, how: str, seed: int, noise_dtype=None):
    """:func:`composite_latent`, rescaled when the Clear-VAE's scaling factor is not SD1.5's 0.18215
    (ComfyUI scales the concat latent with SD1.5's factor)."""
    z = composite_latent(state, how, seed, noise_dtype)
    factor = float(state.scaling_factor) / 0.18215
    return z if factor == 1.0 else z * factor


def build_conditioning(prompt_embeds, concat_latent, latent_mask, control=None):
    """ComfyUI CONDITIONING ``[[cross_attn, extras]]`` for the R2R U-Net.

    ``concat_latent``: the UNSCALED composite latent (ComfyUI scales it with the SD1.5 latent
    format, 0.18215); ``latent_mask``: ``[B,1,h,w]`` at the latent size (so ComfyUI does not
    resize it). ``control``: an ``R2RHarmonyControl`` or None (the U-Net alone).
    """
    import torch

    extras = {"concat_latent_image": concat_latent, "concat_mask": latent_mask.to(torch.float32)}
    if control is not None:
        extras["control"] = control
        extras["control_apply_to_uncond"] = False  # negative carries the same control itself
    return [[prompt_embeds.detach().to("cpu", torch.float32), extras]]


def _reference_latent(reference_mask, state, node: str):
    """A MASK at (or with the aspect ratio of) the composite's size -> the latent grid, like the mask."""
    from ..r2r import imaging

    geometry = state.prepared.geometry
    ref = _convert.mask_to_b1hw(reference_mask, tuple(geometry.original_size), name="reference_mask",
                                allow_empty=True, node=node)
    batch = state.batch_size
    if ref.shape[0] not in (1, batch):
        raise R2RUserError(f"R2R {node}: reference_mask has {ref.shape[0]} masks but the LATENT holds {batch} "
                           "images; give one reference mask, or one per image.")
    try:
        ref_lat = imaging.reference_latent_mask(ref, geometry)
    except R2RUserError as exc:
        raise R2RUserError(f"R2R {node}: {exc}") from None
    return ref_lat.expand(batch, -1, -1, -1).contiguous()


class R2RUNetToModel(R2RNode):
    SEARCH_ALIASES = ("ksampler", "model", "unet", "inpainting model", "sd1.5", "harmonize")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RUNetToModel",
            display_name="R2R Model for KSampler",
            category="R2R/ksampler",
            description="The R2R U-Net (an SD-1.5 inpainting U-Net) as a core MODEL for KSampler, KSampler "
                        "(Advanced), SamplerCustomAdvanced and model patches. Pair it with R2R Conditioning. "
                        "For the exact, seed-compatible R2R result use R2R Sampler instead.",
            inputs=[R2RModelType.Input("model", tooltip="The R2R model from the R2R Checkpoint Loader (or U-Net "
                                                        "Loader).")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The R2R U-Net as a ComfyUI SD1.5 inpainting "
                                                                   "MODEL (built once per loaded U-Net).")],
        )

    @classmethod
    def execute(cls, model):
        from .comfy_unet import comfy_model

        if model is None or not hasattr(model, "unet"):
            raise R2RUserError("R2R Model for KSampler: 'model' must be an R2R_MODEL from the R2R Checkpoint Loader "
                               "or the R2R U-Net Loader.")
        return io.NodeOutput(comfy_model(model.unet))


class R2RConditioning(R2RNode):
    SEARCH_ALIASES = ("conditioning", "controlnet", "harmony controller", "maca", "inpaint conditioning",
                      "ksampler", "harmonize")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            node_id="R2RConditioning",
            display_name="R2R Conditioning",
            category="R2R/ksampler",
            description="Everything KSampler needs to run R2R: positive/negative conditioning with R2R's empty "
                        "prompt, the composite latent and the mask as the inpainting inputs, and the Harmony "
                        "Controller (MACA) attached like a ControlNet; plus the LATENT to sample (zeros; "
                        "Clear-VAE Decode decodes KSampler's result). Use cfg 1.0: R2R has no negative prompt.",
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
                mask_in("reference_mask", tooltip=REFERENCE_TIP, optional=True),
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
                reference_mask=None):
        import torch

        from .harmony_control import control_class

        node = "Conditioning"
        _convert.check_number(strength, "strength", node, 0.0, 2.0)
        _convert.check_number(composite_seed, "composite_seed", node, 0, SEED_MAX, integer=True)
        choice(composite_latent, COMPOSITE_LATENTS, "composite_latent", node)
        if model is None or not hasattr(model, "prompt_embeds"):
            raise R2RUserError(f"R2R {node}: 'model' must be an R2R_MODEL from the R2R Checkpoint Loader or the "
                               "R2R U-Net Loader.")
        if controller is not None and not hasattr(controller, "load"):
            raise R2RUserError(f"R2R {node}: 'controller' must be an R2R_CONTROLLER from the R2R Checkpoint "
                               "Loader or the R2R Controller Loader.")
        state = flow.r2r_state(latent, node)
        latent_mask = state.prepared.latent_mask.detach().to("cpu", torch.float32)
        ref = None if reference_mask is None else _reference_latent(reference_mask, state, node)
        control = None
        if controller is not None:
            control = control_class()(controller, state.prepared.hint.detach().to("cpu", torch.float32),
                                      latent_mask, ref, strength)
        concat = composite_latent_for(state, composite_latent, composite_seed, model.unet.dtype)
        positive = build_conditioning(model.prompt_embeds, concat, latent_mask, control)
        negative = build_conditioning(model.prompt_embeds, concat, latent_mask, control)
        out_latent = {"samples": torch.zeros_like(state.posterior_mean, dtype=torch.float32, device="cpu"),
                      LATENT_KEY: latent[LATENT_KEY]}
        return io.NodeOutput(positive, negative, out_latent)


NODES = [R2RUNetToModel, R2RConditioning]
