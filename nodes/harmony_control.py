"""The Harmony Controller (with MACA) as a core ComfyUI control object, and the KSampler path's checks.

:func:`control_class` returns a ``comfy.controlnet.ControlBase`` subclass (built on first use, so
the pack imports without ComfyUI). An instance rides in CONDITIONING under ``"control"`` like a
ControlNet: at every model call ComfyUI asks it for ``get_control(x_noisy, sigma, cond,
batched_number, ...)``; it returns ComfyUI's control dict for the SD1.5 U-Net:

* ``"output"``: the 12 down residuals in the controller's order. The U-Net pops this list from the
  end, one per skip connection, so residual ``i`` is added to stored skip feature ``i``; that is
  what diffusers' ``down_block_additional_residuals`` does.
* ``"middle"``: ``[mid residual]``, added to the middle block's output
  (``mid_block_additional_residual``).

The residuals come from the pipeline's residual stage (``R2RPipeline.residuals``) for the timestep
``model_sampling.timestep(sigma)`` — the one ComfyUI gives the U-Net — and are memoised by timestep
in a :class:`r2r.pipeline.ResidualCache` that lives as long as R2R Conditioning's output: the
controller never sees the noisy latent, so a new seed, or another sampler visiting the same
timesteps, runs no controller; cond and uncond share one computation. The strength is applied by
the residual stage; controls chain with ``previous_controlnet`` like ControlNets do.

:func:`add_pairing_check` puts an OUTER_SAMPLE wrapper on the MODEL of R2R Model for KSampler: before
sampling it refuses a LATENT that is not R2R Conditioning's, a conditioning made for another
composite than the LATENT, and ``denoise`` < 1; after sampling it records which composite the
samples belong to (Clear-VAE Decode checks it, nodes/_checks.py).
"""

from __future__ import annotations

import functools

from ..r2r.errors import R2RUserError

#: the cond key that names the composite a conditioning was made for (checked against KSampler's latent)
COND_KEY = "r2r_composite"
#: the attribute R2R Conditioning puts on its LATENT's samples tensor (KSampler hands that tensor on)
LATENT_TAG = "_r2r_composite"


def _batch_to(t, total: int, batched_number: int):
    """Repeat a per-image tensor [B,...] to ComfyUI's model batch (cond/uncond groups of the latent batch)."""
    import comfy.utils
    import torch

    per_group = total // max(int(batched_number), 1)
    t = comfy.utils.repeat_to_batch_size(t, per_group)
    return t if per_group == total else torch.cat([t] * (total // per_group), dim=0)


def controller_memory_bytes(controller, batch: int, latent_hw, dtype) -> int:
    """Device memory one controller call needs besides its weights (r2r.pipeline.memory's estimates:
    the activations and the 13 residuals it returns) for ``batch`` images."""
    from ..r2r.pipeline import memory

    hw = tuple(int(v) for v in latent_hw)
    return (memory.controller_activation_bytes(int(batch), hw, dtype)
            + memory.residual_bytes_per_step(controller.model.config, int(batch), hw, dtype))


@functools.cache
def control_class():
    """``R2RHarmonyControl``, a ``comfy.controlnet.ControlBase`` subclass."""
    import comfy.controlnet

    from ..r2r.pipeline import ResidualCache

    class R2RHarmonyControl(comfy.controlnet.ControlBase):
        """The R2R Harmony Controller for one prepared composite (and its reference)."""

        def __init__(self, pipe, prepared, reference=None, strength=1.0, cache=None):
            super().__init__()
            self.pipe = pipe  # R2RPipeline over ComfyModels with the controller
            self.prepared = prepared  # r2r.imaging.Prepared (host)
            self.reference = reference  # r2r.pipeline.PreparedReference or None
            self.r2r_strength = float(strength)  # applied by the residual stage (ComfyUI's own strength stays 1)
            self.cache = cache if cache is not None else ResidualCache()
            self.model_sampling_current = None

        @property
        def managed(self):
            return self.pipe.models._managed["controller"]

        def copy(self):
            c = R2RHarmonyControl(self.pipe, self.prepared, self.reference, self.r2r_strength, self.cache)
            self.copy_to(c)
            return c

        def pre_run(self, model, percent_to_timestep_function):
            super().pre_run(model, percent_to_timestep_function)
            self.model_sampling_current = model.model_sampling

        def cleanup(self):
            self.model_sampling_current = None
            super().cleanup()

        def get_models(self):
            # loaded by ComfyUI together with the U-Net (and counted in its memory plan)
            return super().get_models() + [self.managed.patcher()]

        def inference_memory_requirements(self, dtype):
            own = controller_memory_bytes(self.managed, self.prepared.batch_size, self.prepared.latent_size,
                                          self.managed.dtype)
            return super().inference_memory_requirements(dtype) + own

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            control_prev = None
            if self.previous_controlnet is not None:
                control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number,
                                                                    transformer_options)
            if tuple(x_noisy.shape[-2:]) != tuple(self.prepared.latent_size):
                raise R2RUserError(
                    f"R2R Conditioning: KSampler's latent is {list(x_noisy.shape[-2:])} but the Harmony Controller "
                    f"was prepared for {list(self.prepared.latent_size)}. Give KSampler the LATENT of R2R "
                    "Conditioning, without latent upscaling or cropping in between."
                )
            timestep = float(self.model_sampling_current.timestep(t).reshape(-1)[0])
            residuals = self.pipe.residuals(self.prepared, [timestep], self.r2r_strength, self.reference,
                                            cache=self.cache)
            down, mid = residuals(0, timestep)
            out_device, total = x_noisy.device, x_noisy.shape[0]

            def out(r):  # a copy: control_merge scales in place, and the cache keeps the originals
                return _batch_to(r, total, batched_number).to(out_device, copy=True)

            control = {"input": [], "middle": [out(mid)], "output": [out(d) for d in down]}
            return self.control_merge(control, control_prev, output_dtype=None)

    return R2RHarmonyControl


def r2r_composites(conds) -> set:
    """The composite keys the R2R conditionings among ``conds`` (the guider's cond lists) were made for."""
    keys = set()
    for items in (conds or {}).values():
        for c in items or ():
            if isinstance(c, dict) and c.get(COND_KEY):
                keys.add(c[COND_KEY])
    return keys


def check_pairing(guider, latent_image, sigmas) -> set:
    """Refuse, before any step runs, a KSampler whose conditioning and LATENT do not belong together."""
    composites = r2r_composites(getattr(guider, "conds", None) or getattr(guider, "original_conds", None))
    if not composites:
        return composites
    tag = getattr(latent_image, LATENT_TAG, None)
    if tag is None:
        raise R2RUserError(
            "R2R KSampler path: KSampler's latent_image is not the LATENT of R2R Conditioning. Connect R2R "
            "Conditioning's 'latent' output to KSampler's latent_image (R2R starts from pure noise; a latent from "
            "Clear-VAE Encode or Empty Latent Image would be mixed into it).")
    if tag not in composites:
        raise R2RUserError(
            "R2R KSampler path: KSampler's positive/negative conditioning was made for another composite than its "
            f"latent_image (conditioning: composite id {sorted(composites)[0][:8]}, latent: composite id "
            f"{tag[:8]}). Connect the 'positive', 'negative' and 'latent' outputs of the same R2R Conditioning.")
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    first, top = float(sigmas.reshape(-1)[0]), float(model_sampling.sigma_max)
    if first < top * 0.999:
        raise R2RUserError(
            f"R2R KSampler path: sampling starts at sigma {first:.3g}, below the model's {top:.3g} (KSampler denoise "
            "< 1, or KSampler (Advanced) start_at_step > 0). R2R starts from pure noise: set denoise to 1.0 "
            "(start_at_step 0); for a weaker harmonization lower R2R Conditioning's strength.")
    return composites


def _pairing_wrapper(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None):
    from ..r2r.imaging import fingerprint
    from . import _checks

    composites = check_pairing(executor.class_obj, latent_image, sigmas)
    out = executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
    if len(composites) == 1:
        _checks.remember_sampled(fingerprint(out), next(iter(composites)))
    return out


def add_pairing_check(patcher):
    """The MODEL with the pairing check as an OUTER_SAMPLE wrapper (see the module docstring)."""
    import comfy.patcher_extension

    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "r2r_pairing", _pairing_wrapper)
    return patcher
