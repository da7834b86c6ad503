"""The diffusion nodes: Clear-VAE Encode, MACA Controller Apply, R2R Sampler,
Clear-VAE Decode, and R2R Harmonize (all four in one).

The LATENT passed between them is a normal ComfyUI latent dict: ``samples`` is the
*unscaled* latent ``[B,4,h,w]`` (as everywhere in ComfyUI), and the ``"r2r"`` key holds
the small extras the next R2R node needs: the Clear-VAE posterior's log-variance (so the
sampler draws the composite's posterior sample in the official random-number order),
the working geometry and a fingerprint of the composite. The Clear-VAE skips are NOT
kept in the graph (hundreds of MB to GB at 1024 px): Decode re-runs the encoder on the
composite it is given, which is exactly what the official ``decode_with_cond`` does.
"""

from __future__ import annotations

import functools

from ..r2r.errors import R2RUserError
from ..r2r.sampling import DEFAULT_SCHEDULER, SCHEDULERS  # cheap: diffusers is imported lazily there
from . import _convert, _host
from ._types import LATENT_KEY, R2R_CLEAR_VAE, R2R_CONTROLLER, R2R_MODEL, ControlSettings, image_fingerprint

MAX_SIDE = {"default": 1024, "min": 64, "max": 4096, "step": 64,
            "tooltip": "Working resolution: the longer side the model runs at (a multiple of 64). The official "
                       "release runs at 1024; 512 is ~4x faster and uses less memory. The result is brought back "
                       "to the original size."}
RESIZE_MODES = ["fit", "pad", "square"]
RESIZE_TIP = ("How the image becomes the working canvas: fit = scale the long side to max_side, round both sides "
              "to multiples of 64 (<=3% stretch, undone afterwards); pad = exact aspect ratio, padded; "
              "square = squash to max_side x max_side like the official code.")
INVERT_TIP = ("Flip the mask (1 - mask). R2R needs foreground = 1 (white = the pasted object). Load Image's MASK "
              "output is 1 - alpha, i.e. 1 where the PNG is transparent: switch this on when the object is "
              "the opaque part of a cut-out PNG.")
MASK_TIP = ("Foreground mask [batch, height, width]: 1 (white) = the pasted object to harmonize, 0 = background. "
            "A different size with the same aspect ratio is resized.")
IMAGE_TIP = "The composite: the image with the pasted foreground (IMAGE, 0..1). A batch is processed together."
SAMPLERS = list(SCHEDULERS)
FULLRES_MODES = ["auto", "upsample", "color_transform"]
FULLRES_TIP = ("How the result reaches the original resolution: upsample = resize the working-resolution result "
               "(simple; fine detail limited by max_side); color_transform = apply the model's colour change to "
               "the full-resolution composite (keeps every original detail; best for large images); auto = "
               "color_transform when the image is larger than the working resolution, else upsample. Only with "
               "paste_back on.")


# input specs shared by several nodes (one definition: same ranges and tooltips everywhere)
CLEAR_VAE_IN = (R2R_CLEAR_VAE, {"tooltip": "The Clear-VAE from an R2R loader."})
MASK_IN = ("MASK", {"tooltip": MASK_TIP})
INVERT_IN = ("BOOLEAN", {"default": False, "tooltip": INVERT_TIP})
RESIZE_IN = (RESIZE_MODES, {"default": "fit", "tooltip": RESIZE_TIP})
SEED_IN = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1, "control_after_generate": True,
                   "tooltip": "Random seed (CPU generator, so results match across devices)."})
STEPS_IN = ("INT", {"default": 10, "min": 1, "max": 200, "step": 1,
                    "tooltip": "Denoising steps. The release was tuned for 10."})
SAMPLER_IN = (SAMPLERS, {"default": DEFAULT_SCHEDULER,
                         "tooltip": "Scheduler. euler_ancestral is the official one; the others are "
                                    "diffusers schedulers on the same noise schedule."})
PASTE_BACK_IN = ("BOOLEAN", {"default": True,
                             "tooltip": "Keep the original background pixels outside the (feathered) mask. "
                                        "Off: the whole decoded image."})
FEATHER_IN = ("INT", {"default": -1, "min": -1, "max": 256, "step": 1,
                      "tooltip": "Width in original pixels of the soft edge outside the mask for the paste-back. "
                                 "-1 = automatic (one latent cell), 0 = hard edge."})
FULLRES_IN = (FULLRES_MODES, {"default": "auto", "tooltip": FULLRES_TIP})


# ----------------------------------------------------------------------------- helpers


def _inputs(image, mask, invert_mask, reference_mask=None):
    comp = _convert.image_to_nchw(image, "image")
    m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=invert_mask, name="mask")
    ref = None
    if reference_mask is not None:
        ref = _convert.mask_to_b1hw(reference_mask, comp.shape[-2:], invert=False, name="reference_mask", allow_empty=True)
        comp, m, ref = _convert.broadcast_batch(("image", comp), ("mask", m), ("reference_mask", ref))
    else:
        comp, m = _convert.broadcast_batch(("image", comp), ("mask", m))
    return comp, m, ref


def _prepare(comp, mask, max_side, resize_mode):
    from ..r2r.imaging import prepare

    return prepare(comp, mask, max_side=int(max_side), resize_mode=resize_mode)


def _r2r_info(latent, node):
    if not isinstance(latent, dict) or "samples" not in latent:
        raise R2RUserError(f"R2R {node}: 'latent' must be a LATENT; got {type(latent).__name__}.")
    info = latent.get(LATENT_KEY)
    if not isinstance(info, dict):
        raise R2RUserError(
            f"R2R {node}: this LATENT did not come from 'R2R Clear-VAE Encode' (it lacks the R2R extras: the "
            "composite's posterior and working size). Encode the composite with R2R Clear-VAE Encode and "
            "connect its LATENT here."
        )
    return info


def _check_same_composite(info, comp, mask, node):
    if info["composite_id"] != image_fingerprint(comp) or info["mask_id"] != image_fingerprint(mask):
        raise R2RUserError(
            f"R2R {node}: the image/mask given here are not the ones the LATENT was encoded from (R2R Clear-VAE "
            "Encode). Connect the same composite IMAGE and MASK (with the same invert_mask) to both nodes."
        )


def _reference_latent_mask(reference, prepared):
    """The reference-region mask brought to the working canvas and latent size like the mask."""
    from ..r2r import imaging

    ref_w = (imaging.to_working(reference, prepared.geometry, pad_value=0.0) >= 0.5).float()
    ref_lat = imaging.latent_mask_from(ref_w)
    if (ref_lat.flatten(1).sum(1) == 0).any():
        raise R2RUserError(
            "R2R MACA Controller Apply: the reference_mask is empty at the latent resolution (1/8 of the working "
            "size). Paint a larger reference region (white = the region whose colours the object should take), "
            "or disconnect reference_mask to use the whole background."
        )
    return ref_lat


# ----------------------------------------------------------------------------- stages


def encode(clear_vae, comp, mask, max_side=1024, resize_mode="fit"):
    """Clear-VAE encode at the working resolution -> LATENT dict (posterior mean + log-variance)."""
    import torch

    prepared = _prepare(comp, mask, max_side, resize_mode)
    vae = clear_vae.load()
    device = next(vae.parameters()).device
    with torch.no_grad():
        dist = vae.encode(prepared.composite_pm1.to(device=device, dtype=clear_vae.dtype)).latent_dist
    out_dev = _host.intermediate_device()
    info = {
        "logvar": dist.logvar.detach().to(out_dev, torch.float32),
        "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215)),
        "posterior_dtype": str(dist.mean.dtype).replace("torch.", ""),
        "latent_mask": prepared.latent_mask.to(out_dev),
        "max_side": int(max_side),
        "resize_mode": resize_mode,
        "working_size": tuple(prepared.geometry.working_size),
        "original_size": tuple(prepared.geometry.original_size),
        "composite_id": image_fingerprint(comp),
        "mask_id": image_fingerprint(mask),
        "stage": "encoded",
    }
    return {"samples": dist.mean.detach().to(out_dev, torch.float32), LATENT_KEY: info}


def attach_controller(model, controller, comp, mask, reference_mask=None, strength=1.0):
    if model is None or not hasattr(model, "with_control"):
        raise R2RUserError("R2R MACA Controller Apply: 'model' must be an R2R_MODEL from the R2R Checkpoint Loader "
                           "or the R2R U-Net Loader.")
    if controller is None or not hasattr(controller, "load"):
        raise R2RUserError(
            "R2R MACA Controller Apply: 'controller' must be an R2R_CONTROLLER from the R2R Checkpoint Loader "
            "or the R2R Controller Loader."
        )
    control = ControlSettings(
        controller=controller, strength=float(strength), reference_mask=reference_mask,
        composite_id=(image_fingerprint(comp), image_fingerprint(mask)), composite=comp, mask=mask,
    )
    return model.with_control(control)


def sample(model, latent, seed=0, steps=10, sampler="euler_ancestral"):
    """Denoise: init noise, the composite's posterior sample, one draw per step (official order)."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from ..r2r import sampling

    info = _r2r_info(latent, "Sampler")
    if info.get("stage") != "encoded":
        raise R2RUserError(
            "R2R Sampler: this LATENT was already sampled. Connect the LATENT of R2R Clear-VAE Encode, not the "
            "output of another R2R Sampler."
        )
    if sampler not in sampling.SCHEDULERS:
        raise R2RUserError(f"R2R Sampler: sampler must be one of {list(sampling.SCHEDULERS)}; got {sampler!r}.")
    steps = int(steps)
    device = _host.compute_device()
    control = model.control
    if control is not None:
        if control.composite_id != (info["composite_id"], info["mask_id"]):
            raise R2RUserError(
                "R2R Sampler: the controller was applied (MACA Controller Apply) to a different image/mask than "
                "the one encoded (Clear-VAE Encode). Connect the same composite and mask to both nodes."
            )
        prepared = _prepare(control.composite, control.mask, info["max_side"], info["resize_mode"])
        ref_lat = None
        if control.reference_mask is not None:
            ref_lat = _reference_latent_mask(control.reference_mask, prepared)

    scheduler = sampling.make_scheduler(model.scheduler_config, sampler)
    timesteps = sampling.set_timesteps(scheduler, steps, device=device)
    progress = _host.Progress(steps * (2 if control is not None else 1), desc="R2R sampler")
    try:
        residuals = None
        if control is not None:
            ctrl = control.controller.load()
            cdt = control.controller.dtype
            forward = functools.partial(
                ctrl, conditioning_scale=control.strength,
                reference_mask=None if ref_lat is None else ref_lat.to(device=device, dtype=cdt),
            )
            with torch.no_grad():
                residuals = sampling.controller_residuals(
                    forward, prepared.hint.to(device=device, dtype=cdt),
                    prepared.latent_mask.to(device=device, dtype=cdt), timesteps,
                    model.prompt_embeds.to(device=device, dtype=cdt),
                    callback=lambda i, total: progress.update(1),
                )
        unet = model.unet.load()
        dtype = model.unet.dtype
        if tuple(latent["samples"].shape) != tuple(info["logvar"].shape):
            raise R2RUserError(
                f"R2R Sampler: the LATENT samples {list(latent['samples'].shape)} were changed after R2R Clear-VAE "
                f"Encode (expected {list(info['logvar'].shape)}). Connect Encode's LATENT directly; latent "
                "upscaling/cropping nodes cannot be used in between."
            )
        # the composite's posterior in the Clear-VAE's dtype (its sample is drawn as the official code does)
        post_dtype = getattr(torch, info.get("posterior_dtype", "float32"))
        params = torch.cat([latent["samples"], info["logvar"]], dim=1).to(device=device, dtype=post_dtype)
        posterior = DiagonalGaussianDistribution(params)
        generator = torch.Generator("cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
        with torch.no_grad():
            latents = sampling.denoise(
                unet, scheduler, posterior, info["latent_mask"].to(device=device, dtype=dtype),
                model.prompt_embeds.to(device=device, dtype=dtype), residuals, generator, steps,
                callback=lambda step, total: progress.update(1), scaling_factor=info["scaling_factor"],
            )
        del residuals
    finally:
        progress.close()
    out_info = dict(info)
    out_info.pop("logvar", None)
    out_info["stage"] = "sampled"
    samples = (latents / info["scaling_factor"]).detach().to(_host.intermediate_device(), torch.float32)
    return {"samples": samples, LATENT_KEY: out_info}


def decode(clear_vae, latent, comp, mask, paste_back=True, feather=-1, fullres_mode="auto"):
    """Clear-VAE decode with the composite's skips; back to the original size, background pasted back.

    ``fullres_mode``: "upsample" resizes the working-resolution result to the original size;
    "color_transform" carries only the colour change to the full-resolution composite
    (r2r.fullres), keeping every original detail of the foreground (for large images);
    "auto" picks color_transform when the original is larger than the working resolution.
    """
    import torch

    from ..r2r import tiling

    if fullres_mode not in FULLRES_MODES:
        raise R2RUserError(f"R2R Clear-VAE Decode: fullres_mode must be one of {FULLRES_MODES}; got {fullres_mode!r}.")
    info = _r2r_info(latent, "Clear-VAE Decode")
    _check_same_composite(info, comp, mask, "Clear-VAE Decode")
    prepared = _prepare(comp, mask, info["max_side"], info["resize_mode"])
    z = latent["samples"]
    if tuple(z.shape[-2:]) != tuple(prepared.geometry.latent_size) or z.shape[0] != comp.shape[0]:
        raise R2RUserError(
            f"R2R Clear-VAE Decode: the LATENT is {list(z.shape)} but the composite needs "
            f"[{comp.shape[0]}, 4, {prepared.geometry.latent_size[0]}, {prepared.geometry.latent_size[1]}]. "
            "Use the LATENT made from this composite."
        )
    vae = clear_vae.load()
    device = next(vae.parameters()).device
    with torch.no_grad():
        x = prepared.composite_pm1.to(device=device, dtype=clear_vae.dtype)
        _dist, skips = tiling.encode_with_skips_auto(vae, x)
        del x, _dist
        _host.check_interrupt()
        out_pm1 = tiling.decode_with_skips_auto(vae, z.to(device=device, dtype=clear_vae.dtype), skips,
                                                consume_skips=True)
        del skips
    result = (out_pm1.float().clamp(-1, 1) / 2 + 0.5).cpu()
    feather = None if int(feather) < 0 else int(feather)
    from ..r2r.fullres import restore_output

    restored = restore_output(result, prepared, paste_back=bool(paste_back), feather=feather, mode=fullres_mode)
    return _convert.nchw_to_image(restored)


# ----------------------------------------------------------------------------- nodes


class R2RClearVAEEncode:
    DESCRIPTION = ("Encodes the composite with the Clear-VAE at the working resolution (max_side). The LATENT keeps "
                   "only what the sampler needs (the posterior mean/std, the latent mask, the working size); "
                   "Decode gets the skips back by re-encoding the composite, so no large tensors stay in the graph.")
    CATEGORY = "R2R/vae"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The composite's Clear-VAE latent (unscaled posterior mean) plus R2R extras.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clear_vae": CLEAR_VAE_IN,
                "image": ("IMAGE", {"tooltip": IMAGE_TIP}),
                "mask": MASK_IN,
                "max_side": ("INT", dict(MAX_SIDE)),
                "invert_mask": INVERT_IN,
                "resize_mode": RESIZE_IN,
            }
        }

    def encode(self, clear_vae, image, mask, max_side=1024, invert_mask=False, resize_mode="fit"):
        comp, m, _ = _inputs(image, mask, invert_mask)
        return (encode(clear_vae, comp, m, max_side, resize_mode),)


class R2RMACAControllerApply:
    DESCRIPTION = ("Attaches the Harmony Controller to the R2R model for this composite and mask. MACA modulates "
                   "the foreground features with statistics of the background, or of reference_mask's region "
                   "when connected (to take the colours of one particular area). strength scales the "
                   "controller's residuals (1 = as trained).")
    CATEGORY = "R2R/conditioning"
    FUNCTION = "apply"
    RETURN_TYPES = (R2R_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The R2R model with the controller attached (feed it to R2R Sampler).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (R2R_MODEL, {"tooltip": "The R2R model from the R2R Checkpoint Loader."}),
                "controller": (R2R_CONTROLLER, {"tooltip": "The Harmony Controller from an R2R loader."}),
                "image": ("IMAGE", {"tooltip": IMAGE_TIP + " Must be the one given to Clear-VAE Encode."}),
                "mask": MASK_IN,
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Controller residual scale: 1 = as trained, 0 = no controller."}),
                "invert_mask": INVERT_IN,
            },
            "optional": {
                "reference_mask": ("MASK", {
                    "tooltip": "Optional region (1 = white) whose colour statistics steer MACA instead of the "
                               "whole background, e.g. the part of the scene lit like the object should be. "
                               "Not inverted by invert_mask."}),
            },
        }

    def apply(self, model, controller, image, mask, strength=1.0, invert_mask=False, reference_mask=None):
        comp, m, ref = _inputs(image, mask, invert_mask, reference_mask)
        return (attach_controller(model, controller, comp, m, ref, strength),)


class R2RSampler:
    DESCRIPTION = ("Runs the R2R denoising loop (empty prompt, no CFG) on the Clear-VAE latent of the composite. "
                   "Defaults are the official ones: Euler-ancestral, 10 steps. Shows progress and can be "
                   "cancelled between steps.")
    CATEGORY = "R2R/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The harmonized latent (decode it with R2R Clear-VAE Decode).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (R2R_MODEL, {"tooltip": "The R2R model, usually with the controller attached by "
                                                 "MACA Controller Apply (without it the U-Net runs alone)."}),
                "latent": ("LATENT", {"tooltip": "The LATENT from R2R Clear-VAE Encode."}),
                "seed": SEED_IN,
                "steps": STEPS_IN,
                "sampler": SAMPLER_IN,
            }
        }

    def sample(self, model, latent, seed=0, steps=10, sampler="euler_ancestral"):
        return (sample(model, latent, seed, steps, sampler),)


class R2RClearVAEDecode:
    DESCRIPTION = ("Decodes the sampled latent with the Clear-VAE, re-injecting the composite's encoder skips "
                   "(the composite is re-encoded here), brings the result back to the original resolution and "
                   "pastes the original background back through a feathered mask.")
    CATEGORY = "R2R/vae"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The harmonized image at the composite's original size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clear_vae": CLEAR_VAE_IN,
                "latent": ("LATENT", {"tooltip": "The LATENT from R2R Sampler."}),
                "image": ("IMAGE", {"tooltip": "The same composite given to Clear-VAE Encode."}),
                "mask": MASK_IN,
                "invert_mask": INVERT_IN,
                "paste_back": PASTE_BACK_IN,
                "feather": FEATHER_IN,
                "fullres_mode": FULLRES_IN,
            }
        }

    def decode(self, clear_vae, latent, image, mask, invert_mask=False, paste_back=True, feather=-1,
               fullres_mode="auto"):
        comp, m, _ = _inputs(image, mask, invert_mask)
        return (decode(clear_vae, latent, comp, m, paste_back, feather, fullres_mode),)


class R2RHarmonize:
    DESCRIPTION = ("All of R2R in one node: Clear-VAE encode, MACA controller, sampling and Clear-VAE decode "
                   "with paste-back. Same results as the four separate nodes with the same settings.")
    CATEGORY = "R2R"
    FUNCTION = "harmonize"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The harmonized image at the composite's original size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (R2R_MODEL, {"tooltip": "The R2R model from the R2R Checkpoint Loader."}),
                "clear_vae": CLEAR_VAE_IN,
                "controller": (R2R_CONTROLLER, {"tooltip": "The Harmony Controller from an R2R loader."}),
                "image": ("IMAGE", {"tooltip": IMAGE_TIP}),
                "mask": MASK_IN,
                "seed": SEED_IN,
                "steps": STEPS_IN,
                "sampler": SAMPLER_IN,
                "max_side": ("INT", dict(MAX_SIDE)),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Controller strength (1 = as trained, 0 = no controller)."}),
                "invert_mask": INVERT_IN,
                "paste_back": PASTE_BACK_IN,
                "feather": FEATHER_IN,
                "resize_mode": RESIZE_IN,
                "fullres_mode": FULLRES_IN,
            },
            "optional": {
                "reference_mask": ("MASK", {"tooltip": "Optional region whose colours steer MACA instead of the "
                                                       "whole background (1 = white)."}),
            },
        }

    def harmonize(self, model, clear_vae, controller, image, mask, seed=0, steps=10, sampler="euler_ancestral",
                  max_side=1024, strength=1.0, invert_mask=False, paste_back=True, feather=-1, resize_mode="fit",
                  fullres_mode="auto", reference_mask=None):
        comp, m, ref = _inputs(image, mask, invert_mask, reference_mask)
        latent = encode(clear_vae, comp, m, max_side, resize_mode)
        controlled = attach_controller(model, controller, comp, m, ref, strength) if strength > 0 else model
        sampled = sample(controlled, latent, seed, steps, sampler)
        return (decode(clear_vae, sampled, comp, m, paste_back, feather, fullres_mode),)
