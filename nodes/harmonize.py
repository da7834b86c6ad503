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

from ..r2r.errors import R2RUserError
from ..r2r.sampling import DEFAULT_SCHEDULER, SCHEDULERS  # cheap: diffusers is imported lazily there
from .flow import _inputs, attach_controller, decode, encode, sample
from ._types import R2R_CLEAR_VAE, R2R_CONTROLLER, R2R_MODEL

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
