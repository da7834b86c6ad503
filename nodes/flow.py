"""The node-side harmonization flow: what Encode, MACA Controller Apply, Sampler, Decode and
Harmonize do, as plain functions over the pack's socket objects. The node classes only declare
schemas and call these; every model computation is a stage of ``r2r.pipeline.R2RPipeline``,
run over :class:`ComfyModels` (ComfyUI's model management with a memory estimate per phase).

Masks are read once (Clear-VAE Encode / Harmonize). The LATENT carries an
:class:`~._types.R2RLatentState` with everything the later nodes need, so they cannot disagree
about the composite or the mask.

What is reused between runs (ComfyUI keeps node outputs cached while their inputs are unchanged):

* the Encode output (posterior, working tensors) — a new seed or strength does not re-encode;
* the controller residuals, memoised on the object MACA Controller Apply returns, keyed by the
  composite, steps, sampler, device and dtype — a new seed skips the controller entirely;
* the encoder skips for Decode: kept in host RAM by Encode when they take at most a quarter of
  the available RAM, otherwise Decode encodes the composite again (same numbers). The
  ``R2R_NODE_SKIPS`` environment variable (``auto`` | ``host`` | ``recompute``) forces either.

On an accelerator, residuals and skips wait in host RAM (ComfyUI's offload device), never in VRAM
outside ComfyUI's accounting.
"""

from __future__ import annotations

import os

from ..r2r.errors import R2RUserError
from . import _convert, _host
from ._types import LATENT_KEY, ControlSettings, R2RLatentState, tensor_fingerprint

SKIPS_ENV = "R2R_NODE_SKIPS"
SKIPS_CHOICES = ("auto", "host", "recompute")


class ComfyModels:
    """An ``r2r.pipeline.model_sources`` source over the pack's ManagedModels: each stage's network is loaded
    through ComfyUI's model management with the stage's memory estimate; ComfyUI decides when to
    offload it, so ``release`` does nothing."""

    def __init__(self, unet=None, controller=None, clear_vae=None, scheduler_config=None, prompt_embeds=None):
        self._managed = {"unet": unet, "controller": controller, "clear_vae": clear_vae}
        self.scheduler_config = dict(scheduler_config or {})
        self.prompt_embeds = prompt_embeds
        self.source = "ComfyUI"
        self.device = _host.compute_device()

    def has(self, name: str) -> bool:
        return self._managed[name] is not None

    def dtype(self, name: str):
        return self._managed[name].dtype

    def get(self, name: str, memory_required: int = 0):
        managed = self._managed[name]
        if managed is None:
            raise R2RUserError(f"R2R: no {name} was connected for this step.")
        return managed.load(memory_required=memory_required)

    def release(self, name: str) -> None:
        """ComfyUI offloads models when it needs the memory."""


def _pipeline(**models):
    from ..r2r.pipeline import R2RPipeline

    return R2RPipeline(models=ComfyModels(**models))


# ----------------------------------------------------------------------------- inputs


def read_inputs(image, mask, invert_mask=False, reference_mask=None, node: str = ""):
    """The one place a node reads IMAGE/MASK: -> (composite ``[B,3,H,W]``, mask ``[B,1,H,W]``, reference or None)."""
    comp = _convert.image_to_nchw(image, "image", node=node)
    m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=bool(invert_mask), name="mask", node=node)
    ref = None
    if reference_mask is not None:
        ref = _convert.mask_to_b1hw(reference_mask, comp.shape[-2:], name="reference_mask", allow_empty=True,
                                    node=node)
    comp, m, ref = _convert.broadcast_batch(("image", comp), ("mask", m), ("reference_mask", ref), node=node)
    return comp, m, ref


def r2r_state(latent, node: str) -> R2RLatentState:
    """The R2R state a LATENT carries (from Clear-VAE Encode, R2R Sampler or KSampler on the R2R path)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise R2RUserError(f"R2R {node}: 'latent' must be a LATENT; got {type(latent).__name__}.")
    state = latent.get(LATENT_KEY)
    if not isinstance(state, R2RLatentState):
        raise R2RUserError(
            f"R2R {node}: this LATENT did not come from 'R2R Clear-VAE Encode' (it lacks the R2R state: the "
            "composite, its mask and its Clear-VAE posterior). Encode the composite with R2R Clear-VAE Encode and "
            "connect its LATENT here (directly, or through R2R Sampler / KSampler)."
        )
    return state


def _check_latent_shape(latent, state: R2RLatentState, node: str):
    z = latent["samples"]
    expected = list(state.posterior_mean.shape)
    if list(z.shape[1:]) != expected[1:] or z.shape[0] not in (1, expected[0]) and expected[0] != 1:
        raise R2RUserError(
            f"R2R {node}: the LATENT samples are {list(z.shape)} but the composite it carries needs "
            f"{expected}: the LATENT was changed after R2R Clear-VAE Encode. Latent upscaling/cropping/batching "
            "nodes cannot be used between R2R nodes: connect "
            "the LATENT of R2R Clear-VAE Encode / R2R Sampler directly."
        )


def _node_skips_placement() -> str:
    value = os.environ.get(SKIPS_ENV, "auto").strip().lower() or "auto"
    if value not in SKIPS_CHOICES:
        raise R2RUserError(f"{SKIPS_ENV} must be one of {', '.join(SKIPS_CHOICES)}; got {value!r}.")
    return value


# ----------------------------------------------------------------------------- stages


def encode(clear_vae, comp, mask, max_side=1024, resize_mode="fit"):
    """Clear-VAE encode at the working resolution -> LATENT (posterior mean + the R2R state)."""
    import torch

    pipe = _pipeline(clear_vae=clear_vae)
    prepared = pipe.prepare(comp, mask, max_side=int(max_side), resize_mode=resize_mode)
    placement = _node_skips_placement()
    with torch.inference_mode():
        encoded = pipe.encode(prepared, skips="auto" if placement == "auto" else placement)
    host = _host.intermediate_device()
    skips = None if encoded.skips is None else [s.to(host) for s in encoded.skips]
    posterior = encoded.posterior
    state = R2RLatentState(
        prepared=prepared.to(device=host),
        posterior_mean=posterior.mean.detach().to(host, torch.float32),
        posterior_logvar=posterior.logvar.detach().to(host, torch.float32),
        posterior_dtype=posterior.mean.dtype,
        scaling_factor=encoded.scaling_factor,
        key=tensor_fingerprint(comp, mask) + f"/{int(max_side)}/{resize_mode}",
        skips=skips,
    )
    return {"samples": state.posterior_mean, LATENT_KEY: state}


def attach_controller(model, controller, strength=1.0, reference_mask=None):
    """MACA Controller Apply: the model with the controller settings attached (computed in the sampler)."""
    if model is None or not hasattr(model, "with_control"):
        raise R2RUserError("R2R MACA Controller Apply: 'model' must be an R2R_MODEL from the R2R Checkpoint Loader "
                           "or the R2R U-Net Loader.")
    if controller is None or not hasattr(controller, "load"):
        raise R2RUserError("R2R MACA Controller Apply: 'controller' must be an R2R_CONTROLLER from the R2R "
                           "Checkpoint Loader or the R2R Controller Loader.")
    return model.with_control(ControlSettings(controller=controller, strength=float(strength),
                                              reference_mask=reference_mask))


def _expand_state(state: R2RLatentState, batch: int) -> R2RLatentState:
    """A batch-1 state repeated for ``batch`` items (a batch of reference masks for one composite)."""
    import dataclasses

    if state.batch_size == batch:
        return state
    if state.batch_size != 1:
        raise R2RUserError(f"R2R Sampler: the reference_mask batch ({batch}) does not match the composite batch "
                           f"({state.batch_size}); connect one reference mask, or one per composite.")
    p = state.prepared

    def rep(t):
        return None if t is None else t.expand(batch, *t.shape[1:])

    prepared = dataclasses.replace(
        p, composite_pm1=rep(p.composite_pm1), mask=rep(p.mask), hint=rep(p.hint), latent_mask=rep(p.latent_mask),
        original_composite=rep(p.original_composite), original_mask=rep(p.original_mask),
        reference_latent_mask=rep(p.reference_latent_mask))
    skips = None if state.skips is None else [rep(s) for s in state.skips]
    return dataclasses.replace(state, prepared=prepared, posterior_mean=rep(state.posterior_mean),
                               posterior_logvar=rep(state.posterior_logvar), skips=skips,
                               key=f"{state.key}/x{batch}")


def _with_reference(state: R2RLatentState, reference_mask):
    """The state's prepared inputs with the reference region on the latent grid."""
    import dataclasses

    from ..r2r import imaging

    if reference_mask is None:
        return state, "whole-background"
    geometry = state.prepared.geometry
    ref = _convert.mask_to_b1hw(reference_mask[:, 0], geometry.original_size, name="reference_mask",
                                allow_empty=True, node="MACA Controller Apply")
    state = _expand_state(state, ref.shape[0]) if ref.shape[0] != state.batch_size else state
    ref = ref.expand(state.batch_size, *ref.shape[1:]) if ref.shape[0] == 1 else ref
    prepared = dataclasses.replace(state.prepared, reference_latent_mask=imaging.reference_latent_mask(ref, geometry))
    return dataclasses.replace(state, prepared=prepared), tensor_fingerprint(ref)


def sample(model, latent, seed=0, steps=10, sampler="euler_ancestral"):
    """R2R Sampler: the denoising loop (official random-number order) -> LATENT (unscaled) with the R2R state."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from ..r2r.pipeline import EncodedComposite, sampling

    state = r2r_state(latent, "Sampler")
    if not torch.equal(latent["samples"], state.posterior_mean):
        _check_latent_shape(latent, state, "Sampler")
        raise R2RUserError(
            "R2R Sampler: this LATENT was changed after R2R Clear-VAE Encode (or is already sampled). Connect the "
            "LATENT of R2R Clear-VAE Encode directly; the sampler starts from noise and the composite's posterior."
        )
    if model is None or not hasattr(model, "unet"):
        raise R2RUserError("R2R Sampler: 'model' must be an R2R_MODEL from the R2R Checkpoint Loader.")
    control = model.control
    state, ref_key = _with_reference(state, control.reference_mask if control is not None else None)
    pipe = _pipeline(unet=model.unet, controller=None if control is None else control.controller,
                     scheduler_config=model.scheduler_config, prompt_embeds=model.prompt_embeds)
    steps = int(steps)
    scheduler = pipe.make_scheduler(sampler)
    timesteps = sampling.set_timesteps(scheduler, steps, device=pipe.device)
    use_control = control is not None and control.strength > 0
    key = (state.key, ref_key, control.strength if control else 0.0, steps, sampler, str(pipe.device),
           str(control.controller.dtype) if control else "")
    cached = control.cache.get(key) if use_control else None
    total = len(timesteps) * (2 if use_control and cached is None else 1)
    progress = _host.Progress(total, desc="R2R sampler")
    device = pipe.device
    prepared = state.prepared.to(device=device)
    try:
        residuals = cached
        if use_control and residuals is None:
            residuals = pipe.residuals(prepared, timesteps, control.strength, "auto" if device.type == "cpu" else "host",
                                       callback=lambda i, n: progress.update(1))
            control.cache.clear()  # one entry: a new composite/steps/sampler replaces the old residuals
            if isinstance(residuals, list):
                control.cache[key] = residuals
        params = torch.cat([state.posterior_mean, state.posterior_logvar], dim=1)
        posterior = DiagonalGaussianDistribution(params.to(device=device, dtype=state.posterior_dtype))
        encoded = EncodedComposite(posterior, None, state.scaling_factor, "recompute")
        latents = pipe.denoise(
            prepared, encoded, residuals, int(seed) & 0xFFFFFFFFFFFFFFFF, steps, scheduler,
            callback=lambda i, n: progress.update(1),
            preview=lambda i, x0: progress.update(0, preview_latent=x0),
        )
    finally:
        progress.close()
    samples = (latents / state.scaling_factor).detach().to(_host.intermediate_device(), torch.float32)
    return {"samples": samples, LATENT_KEY: state}


def decode(clear_vae, latent, paste_back=True, feather=-1, fullres_mode="auto"):
    """Clear-VAE decode with the composite's skips; back to the original size, background pasted back.

    Accepts the LATENT of R2R Sampler and the one KSampler returns on the R2R path. ``feather``:
    -1 = automatic (one latent cell), 0 = hard edge, N = N original pixels.
    """
    import torch

    from ..r2r.pipeline import EncodedComposite

    state = r2r_state(latent, "Clear-VAE Decode")
    z = latent["samples"]
    if tuple(z.shape[1:]) != tuple(state.posterior_mean.shape[1:]):
        _check_latent_shape(latent, state, "Clear-VAE Decode")
    if z.shape[0] != state.batch_size:
        state = _expand_state(state, z.shape[0])
    pipe = _pipeline(clear_vae=clear_vae)
    prepared = state.prepared.to(device=pipe.device)
    encoded = EncodedComposite(None, state.skips, state.scaling_factor)
    with torch.inference_mode():
        working = pipe.decode(z.to(torch.float32) * state.scaling_factor, encoded, prepared)
        _host.check_interrupt()
    restored = pipe.restore(working.cpu(), state.prepared, paste_back=bool(paste_back),
                            feather=None if int(feather) < 0 else int(feather), fullres_mode=fullres_mode)
    return _convert.nchw_to_image(restored)


def harmonize(model, clear_vae, controller, comp, mask, reference_mask=None, seed=0, steps=10,
              sampler="euler_ancestral", max_side=1024, strength=1.0, paste_back=True, feather=-1,
              resize_mode="fit", fullres_mode="auto"):
    """R2R Harmonize: the four stages in one node (the same image as the four-node graph)."""
    latent = encode(clear_vae, comp, mask, max_side, resize_mode)
    controlled = attach_controller(model, controller, strength, reference_mask) if strength > 0 else model
    sampled = sample(controlled, latent, seed, steps, sampler)
    return decode(clear_vae, sampled, paste_back, feather, fullres_mode)
