"""The node-side harmonization flow: what Encode, MACA Controller Apply, Sampler, Decode and
Harmonize do, as plain functions over the pack's socket objects (the node classes in
``harmonize.py`` only declare schemas and call these). Every model computation goes through
``r2r``'s stage API.
"""

from __future__ import annotations

import functools

from ..r2r.errors import R2RUserError
from . import _convert, _host
from ._types import LATENT_KEY, ControlSettings, image_fingerprint

FULLRES_MODES = ["auto", "upsample", "color_transform"]


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
