"""What the diffusion nodes do, as plain functions over the pack's socket objects: each one calls
``r2r.pipeline.R2RPipeline``'s stages over :class:`ComfyModels` (ComfyUI's model management with a
memory estimate per stage) and builds no scheduler, posterior or noise itself.

Masks are read once (Clear-VAE Encode / Harmonize). The LATENT carries an
:class:`~._types.R2RLatentState` with everything the later nodes need and a fingerprint of the
composite, so they cannot disagree about the composite or the mask (nodes/_checks.py).

What is reused between runs (ComfyUI keeps node outputs cached while their inputs are unchanged):

* the Encode output (posterior, working tensors, skips) — a new seed or strength does not re-encode;
* the controller residuals, in the :class:`r2r.pipeline.ResidualCache` on the MODEL that MACA
  Controller Apply returns, by timestep — a new seed skips the controller entirely;
* R2R Harmonize keeps the same two per node (``HarmonizeMemo`` in nodes/harmonize.py).

Where skips and residuals wait follows r2r.pipeline.memory's rule with ComfyUI's free-memory figure;
``R2R_NODE_SKIPS`` (``auto`` | ``host`` | ``recompute``) forces the skips' placement.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

from ..r2r.devices import resolve_max_side
from ..r2r.errors import R2RUserError
from ..r2r.pipeline import Reference
from . import _checks, _convert, _host
from ._types import LATENT_KEY, ControlSettings, R2RLatentState

if TYPE_CHECKING:
    import torch

SKIPS_ENV = "R2R_NODE_SKIPS"
SKIPS_CHOICES = ("auto", "host", "recompute")


class ComfyModels:
    """An ``r2r.pipeline.ModelSource`` over the pack's ManagedModels: each stage's network is loaded
    through ComfyUI's model management with the stage's memory estimate; ComfyUI decides when to
    offload it, so ``release`` does nothing."""

    def __init__(self, unet=None, controller=None, clear_vae=None, scheduler_config=None, prompt_embeds=None,
                 in_sampler: bool = False):
        self._managed = {"unet": unet, "controller": controller, "clear_vae": clear_vae}
        #: inside ComfyUI's sampling (the KSampler path's control object): ComfyUI has loaded the network
        #: with the U-Net; it is only loaded again (whole) when ComfyUI left it partly offloaded
        self.in_sampler = in_sampler
        self.scheduler_config = dict(scheduler_config or {})
        self.prompt_embeds = prompt_embeds
        self.source = "ComfyUI"
        self.device = _host.compute_device()

    def has(self, name: str) -> bool:
        return self._managed[name] is not None

    def dtype(self, name: str):
        return self._managed[name].dtype

    def config(self, name: str):
        return self._managed[name].model.config

    def get(self, name: str, memory_required: int = 0):
        managed = self._managed[name]
        if managed is None:
            raise R2RUserError(f"R2R: no {name} was connected for this step.")
        if self.in_sampler:
            return managed.ensure_loaded(memory_required)
        return managed.load(memory_required=memory_required)

    def release(self, name: str) -> None:
        """ComfyUI offloads models when it needs the memory."""

    def free_memory(self) -> int | None:
        return _host.free_device_memory(self.device)


def pipeline(**models):
    """An ``R2RPipeline`` over the given ManagedModels (``in_sampler=True``: inside ComfyUI's sampling)."""
    from ..r2r.pipeline import R2RPipeline

    return R2RPipeline(models=ComfyModels(**models))


# ----------------------------------------------------------------------------- inputs


def read_inputs(image, mask, invert_mask=False, node: str = ""):
    """The one place a node reads IMAGE/MASK: -> (composite ``[B,3,H,W]``, mask ``[B,1,H,W]``), batches matched."""
    comp = _convert.image_to_nchw(image, "image", node=node)
    m = _convert.mask_to_b1hw(mask, comp.shape[-2:], invert=bool(invert_mask), name="mask", node=node)
    comp, m = _convert.broadcast_batch(("image", comp), ("mask", m), node=node)
    return comp, m


def make_reference(reference_mask=None, reference_image=None, reference_image_mask=None,
                   node: str = "") -> Reference | None:
    """The node inputs that choose MACA's colour source -> a ``Reference`` (a region of the composite at
    its own size, or another photo with its region), or None for the whole background."""
    if reference_image is not None:
        if reference_mask is not None:
            raise R2RUserError(f"R2R {node}: connect either reference_mask (a region of this picture) or "
                               "reference_image (another photo), not both.")
        photo = _convert.image_to_nchw(reference_image, "reference_image", node=node)
        region = None
        if reference_image_mask is not None:
            region = _convert.mask_to_b1hw(reference_image_mask, photo.shape[-2:], name="reference_image_mask",
                                           allow_empty=True, node=node)
        return Reference(image=photo, image_mask=region)
    if reference_image_mask is not None:
        raise R2RUserError(f"R2R {node}: reference_image_mask needs the photo it belongs to in reference_image.")
    if reference_mask is not None:
        return Reference(mask=_convert.mask_to_b1hw(reference_mask, None, name="reference_mask", allow_empty=True,
                                                    node=node))
    return None


def reference_for(reference: Reference | None, state: R2RLatentState, node: str) -> Reference | None:
    """A region at its own size brought to the composite's size (same aspect ratio); a photo as is."""
    if reference is None or reference.mask is None:
        return reference
    size = tuple(state.prepared.geometry.original_size)
    region = cast("torch.Tensor", reference.mask)  # make_reference keeps a [B,1,H,W] tensor
    mask = _convert.mask_to_b1hw(region[:, 0], size, name="reference_mask", allow_empty=True, node=node)
    return Reference(mask=mask)


def _node_skips_placement() -> str:
    value = os.environ.get(SKIPS_ENV, "auto").strip().lower() or "auto"
    if value not in SKIPS_CHOICES:
        raise R2RUserError(f"{SKIPS_ENV} must be one of {', '.join(SKIPS_CHOICES)}; got {value!r}.")
    return value


#: a mask covering more than this share of the picture gets a warning (usually an inverted mask)
LARGE_MASK_SHARE = 0.5


def warn_large_mask(mask, node: str, node_id=None) -> bool:
    """A text on the node and a warning in the log when the mask covers more than half of the picture:
    usually the mask of a cut-out PNG, whose object is the opaque part while Load Image's MASK is
    ``1 - alpha`` (so the background would be harmonized). Returns whether it warned."""
    share = float((mask >= 0.5).float().mean())
    if share <= LARGE_MASK_SHARE:
        return False
    _host.show_text(f"R2R {node}: the mask covers {share:.0%} of the picture, so R2R will re-light that part "
                    "against the rest. If your object is the opaque part of a cut-out PNG, switch invert_mask on "
                    "(Load Image's MASK is 1 - alpha). White (1) = the pasted object.", node_id)
    return True


# ----------------------------------------------------------------------------- stages


def encode(clear_vae, comp, mask, max_side=1024, resize_mode="fit"):
    """Clear-VAE encode at the working resolution -> LATENT (posterior mean + the R2R state)."""
    import torch

    pipe = pipeline(clear_vae=clear_vae)
    prepared = pipe.prepare(comp, mask, max_side=resolve_max_side(int(max_side), pipe.device), resize_mode=resize_mode)
    encoded = pipe.encode(prepared, skips=_node_skips_placement())
    host = _host.intermediate_device()
    state = R2RLatentState(prepared=prepared.to(device=host), encoded=encoded, key=prepared.key)
    return {"samples": encoded.mean.detach().to(host, torch.float32), LATENT_KEY: state}


def attach_controller(model, controller, strength=1.0, reference=None):
    """MACA Controller Apply: the model with the controller settings attached (computed in the sampler)."""
    _checks.check_kind(model, "R2R_MODEL", "model", "MACA Controller Apply")
    _checks.check_kind(controller, "R2R_CONTROLLER", "controller", "MACA Controller Apply")
    return model.with_control(ControlSettings(controller=controller, strength=float(strength), reference=reference))


def sample(model, latent, seed=0, steps=10, sampler="euler_ancestral", noise_device="cpu", batch_size=1,
           shared_noise=False):
    """R2R Sampler: the denoising loop (official random-number order) -> LATENT (unscaled) with the R2R state.

    ``batch_size`` > 1: that many seeds (``seed``, ``seed + 1``, ...) in one run, each the image its seed
    gives alone; the LATENT holds them seed by seed. ``shared_noise`` (a clip, r2r.video): every batch item
    draws from its own generator seeded with ``seed`` (``r2r.pipeline.SharedSeed``)."""
    import torch

    state = _checks.latent_state(latent, "Sampler")
    _checks.check_unsampled(latent, state, "Sampler")
    _checks.check_kind(model, "R2R_MODEL", "model", "Sampler")
    control = model.control
    pipe = pipeline(unet=model.unet, controller=None if control is None else control.controller,
                    scheduler_config=model.scheduler_config, prompt_embeds=model.prompt_embeds)
    plan = pipe.plan(int(steps), sampler)
    seeds = [(int(seed) + i) % 2**64 for i in range(int(batch_size))]
    strength = control.strength if control is not None else 0.0
    residuals = None
    if strength > 0:  # the controller's own progress bar, only when it runs (memoised residuals skip it)
        with _host.LazyProgress("R2R controller") as bar:
            residuals = pipe.residuals(state.prepared, plan, strength,
                                       reference_for(control.reference, state, "Sampler"), cache=control.cache,
                                       callback=bar.step)
    with _host.Progress(plan.evaluations * len(seeds), desc="R2R sampler") as bar:
        if shared_noise:
            from ..r2r.pipeline import SharedSeed

            latents = pipe.sample(state.prepared, state.encoded, residuals, plan, SharedSeed(int(seed), noise_device),
                                  callback=lambda i, n: bar.update(1), preview=lambda i, x0: bar.update(0, x0))
        else:
            latents = pipe.sample(state.prepared, state.encoded, residuals, plan, seeds=seeds,
                                  noise_device=noise_device, callback=lambda i, n: bar.update(1),
                                  preview=lambda i, x0: bar.update(0, x0))
    samples = (latents / state.encoded.scaling_factor).detach().to(_host.intermediate_device(), torch.float32)
    out_state = _checks.sampled_state(state, samples, "R2R Sampler")
    return {"samples": samples, LATENT_KEY: out_state}


def decode(clear_vae, latent, paste_back=True, feather=-1, fullres_mode="auto", legacy=None, node_id=None,
           temporal="independent", keyframe_interval=8):
    """Clear-VAE decode with the composite's skips; back to the original size, background pasted back.

    Accepts the LATENT of R2R Sampler and the one KSampler returns on the R2R path. ``feather``:
    -1 = automatic (one latent cell), 0 = hard edge, N = N original pixels. ``legacy``: the old
    image/mask inputs of the version-1 node, checked against the LATENT's composite when connected."""
    import torch

    state = _checks.latent_state(latent, "Clear-VAE Decode")
    z = _checks.check_decodable(latent, state, "Clear-VAE Decode", show=lambda text: _host.show_text(text, node_id))
    if legacy is not None:
        _checks.check_legacy_inputs(state, *legacy, node="Clear-VAE Decode")
    state = state.expand(int(z.shape[0]))
    pipe = pipeline(clear_vae=clear_vae)
    with torch.inference_mode():
        working = pipe.decode(z.to(torch.float32) * state.encoded.scaling_factor, state.encoded, state.prepared)
        _host.check_interrupt()
    if temporal in ("smoothed", "keyframes"):  # a clip: the colour transforms over time (r2r.video.run.restore_clip)
        from ..r2r.video.run import restore_clip

        if not paste_back:
            raise R2RUserError(f"R2R Clear-VAE Decode: temporal {temporal} changes the object's colours inside the "
                               "mask, so it always pastes the background back; switch paste_back on.")
        with _host.Progress(int(z.shape[0]), desc="R2R clip restore") as bar:
            restored = restore_clip(working.cpu(), state.prepared, temporal, int(keyframe_interval),
                                    feather=int(feather), progress=lambda d, n, phase: bar.update(
                                        max(0, d - bar.value) if phase == "output" else 0))
        return _convert.nchw_to_image(restored)
    restored = pipe.restore(working.cpu(), state.prepared, paste_back=bool(paste_back),
                            feather=None if int(feather) < 0 else int(feather), fullres_mode=fullres_mode)
    return _convert.nchw_to_image(restored)
