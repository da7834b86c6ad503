"""The denoising loop pieces: scheduler, controller residuals, U-Net steps (ref §a.3).

Random numbers are drawn in the official order from one generator (or a list of
per-item generators), which makes a seed reproduce the official pipeline's result
for the same generator device and dtype:

1. initial noise ``N(0, I)`` of the latent shape, times ``init_noise_sigma``;
2. the composite latent: a SAMPLE of the Clear-VAE posterior times the scaling factor
   (drawn here when :func:`denoise` gets the posterior, or by the caller before);
3. one draw per Euler-ancestral step, including the last one (where sigma_up = 0);
4. one discarded draw of the latent shape (the official decoder re-encodes the
   composite and samples its posterior without using it).

The controller never sees the noisy latent, so :func:`controller_residuals` can run
for every timestep before denoising (and the controller can then be released).
The scheduler maths runs in float32 whatever the model dtype; only the model inputs
are cast to the models' dtype.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import R2RUserError
from ..params import DEFAULT_SCHEDULER, SCHEDULER_NAMES, check

#: the SD 1.5 latent scale (Clear-VAE config's ``scaling_factor``; ComfyUI's SD15 latent format)
SD15_LATENT_SCALE = 0.18215

# name -> (diffusers class name, extra config overrides, description)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, "Euler ancestral (official, stochastic)"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler (deterministic)"),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "Euler with Karras sigmas"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        "DPM++ 2M SDE (stochastic)",
    ),
    "ddim": ("DDIMScheduler", {}, "DDIM (eta 0)"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun (2 model calls per step)"),
}


if tuple(SCHEDULERS) != SCHEDULER_NAMES:  # one list of names: r2r.params
    raise ImportError("r2r.pipeline.sampling.SCHEDULERS and r2r.params.SCHEDULER_NAMES disagree")


def make_scheduler(scheduler_config: dict, name: str = DEFAULT_SCHEDULER):
    """A diffusers scheduler built ``from_config`` of the release's scheduler config.

    ``"euler_ancestral"`` is the official sampler; the others are offered for
    experiments (the models were evaluated with Euler-ancestral, 10 steps).
    """
    import diffusers

    if name not in SCHEDULERS:
        raise R2RUserError(f"Unknown scheduler {name!r}; expected one of: {', '.join(SCHEDULERS)}.")
    class_name, overrides, _ = SCHEDULERS[name]
    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    config.update(overrides)
    return getattr(diffusers, class_name).from_config(config)


def set_timesteps(scheduler, num_inference_steps: int, device=None):
    """``scheduler.set_timesteps`` with a clear error for bad step counts; returns the timesteps."""
    check("steps", num_inference_steps, "num_inference_steps")
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


@dataclass(frozen=True)
class SamplingPlan:
    """The scheduler and its timesteps for one number of steps: what the residual stage computes
    for and what :meth:`R2RPipeline.sample` runs (:meth:`R2RPipeline.plan` makes it).

    ``timesteps`` are plain floats (one per model evaluation: Heun's are ``2N - 1``), so a plan
    is device-independent and can key caches; :meth:`scheduler` gives each run a fresh scheduler
    (schedulers keep per-run state)."""

    scheduler_name: str
    steps: int
    timesteps: tuple[float, ...]
    scheduler_config: dict = field(compare=False, repr=False)

    @classmethod
    def make(cls, scheduler_config: dict, steps: int = 10, scheduler_name: str = DEFAULT_SCHEDULER) -> SamplingPlan:
        steps = check("steps", steps, "num_inference_steps")
        check("scheduler", scheduler_name, "scheduler")
        sched = make_scheduler(scheduler_config, scheduler_name)
        timesteps = set_timesteps(sched, steps)
        return cls(scheduler_name, steps, tuple(float(t) for t in timesteps), dict(scheduler_config))

    def scheduler(self, device=None):
        """A fresh scheduler with this plan's timesteps set (on ``device``)."""
        sched = make_scheduler(self.scheduler_config, self.scheduler_name)
        set_timesteps(sched, self.steps, device=device)
        return sched

    @property
    def evaluations(self) -> int:
        """Model evaluations per run (= residual entries)."""
        return len(self.timesteps)


def to_batch(t, batch: int):
    """``t`` with ``batch`` items: as it is, or its one item expanded (a view)."""
    return t if t.shape[0] == batch else t.expand(batch, *t.shape[1:])


def _expand_embeds(prompt_embeds, batch: int):
    if prompt_embeds.shape[0] == batch:
        return prompt_embeds
    if prompt_embeds.shape[0] != 1:
        raise R2RUserError(
            f"prompt_embeds has batch {prompt_embeds.shape[0]} but the images have batch {batch}; expected 1 or {batch}."
        )
    return prompt_embeds.expand(batch, *prompt_embeds.shape[1:])


def controller_residuals(controller, hint, latent_mask, timesteps, prompt_embeds, *, conditioning_scale: float = 1.0,
                         reference_mask=None, reference_hint=None, timestep_batch: int = 1,
                         callback: Callable[[int, int], None] | None = None, store_device=None):
    """Harmony Controller residuals for every timestep: a list of ``(down_residuals, mid_residual)``.

    Exact: the controller ignores the noisy latent, so evaluating it before the loop
    gives the same numbers as evaluating it inside. ``conditioning_scale`` scales the
    residuals (the nodes' "strength"); ``reference_mask`` ``[B,1,h,w]`` (latent size) is the
    region whose statistics steer MACA — of the composite, or of the reference photo whose hint
    is ``reference_hint`` (see :class:`r2r.models.HarmonyController`). ``timestep_batch`` > 1
    evaluates that many timesteps in one forward (hint, masks and text are repeated) —
    faster on a GPU with memory to spare. ``store_device`` (e.g. ``"cpu"``) keeps the results
    there until the U-Net needs them. Inputs must already be in the controller's
    dtype/device. ``callback(i, total)`` is called after each timestep (raise to abort).
    """
    import torch

    check("timestep_batch", timestep_batch, "timestep_batch")
    batch = hint.shape[0]
    embeds = _expand_embeds(prompt_embeds, batch)
    if reference_hint is None and reference_mask is not None and reference_mask.shape[0] != batch:
        reference_mask = reference_mask.expand(batch, *reference_mask.shape[1:])
    photo = {} if reference_hint is None else {"reference_hint": reference_hint}
    timesteps = list(timesteps)
    results = []
    for start in range(0, len(timesteps), timestep_batch):
        chunk = timesteps[start : start + timestep_batch]
        k = len(chunk)
        if k == 1:
            down, mid = controller(hint, chunk[0], embeds, latent_mask, conditioning_scale=conditioning_scale,
                                   reference_mask=reference_mask, **photo)
            parts = [(tuple(down), mid)]
        else:
            t = torch.stack([torch.as_tensor(c) for c in chunk]).to(hint.device).repeat_interleave(batch)
            ref = ref_hint = None
            if reference_mask is not None:  # a photo is repeated per item too: it must see each item's timestep
                ref = to_batch(reference_mask, batch).repeat(k, 1, 1, 1)
            if reference_hint is not None:
                ref_hint = to_batch(reference_hint, batch).repeat(k, 1, 1, 1)
            down, mid = controller(
                hint.repeat(k, 1, 1, 1), t, embeds.repeat(k, 1, 1), latent_mask.repeat(k, 1, 1, 1),
                conditioning_scale=conditioning_scale, reference_mask=ref,
                **({} if ref_hint is None else {"reference_hint": ref_hint}),
            )
            parts = [
                (tuple(d[j * batch : (j + 1) * batch] for d in down), mid[j * batch : (j + 1) * batch])
                for j in range(k)
            ]
        for down, mid in parts:
            if store_device is not None:
                down, mid = tuple(d.to(store_device) for d in down), mid.to(store_device)
            results.append((down, mid))
            if callback is not None:
                callback(len(results), len(timesteps))
    return results


def predicted_clean_latent(scheduler, sample, model_output, t, step_output=None):
    """The scheduler's estimate of the clean latent x0 at this step (for previews), float32.

    Uses the scheduler's own ``pred_original_sample`` when it returns one (Euler, Euler-ancestral,
    DDIM, Heun); otherwise the epsilon-parameterisation formula on the ``alphas_cumprod`` schedule
    (DPM-Solver, UniPC work on the variance-preserving sample).
    """
    import torch

    if step_output is not None and len(step_output) > 1 and step_output[1] is not None:
        return step_output[1].to(torch.float32)
    alphas = scheduler.alphas_cumprod.to(sample.device)
    a = alphas[int(t)].to(torch.float32)
    return (sample.to(torch.float32) - (1 - a).sqrt() * model_output.to(torch.float32)) / a.sqrt()


def _randn(shape, generator, device, dtype):
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def draw_start(z_comp, generator, device, unet_dtype, init_noise_sigma: float = 1.0,
               scaling_factor: float = SD15_LATENT_SCALE, init_latents=None):
    """RNG draws (1) and (2): ``(initial latents float32, scaled composite latent, noise shape, noise dtype)``.

    ``z_comp`` is the Clear-VAE posterior (its sample is drawn after the initial noise, from the
    same generator — the official order; returned in the posterior's dtype, times ``scaling_factor``)
    or an already scaled tensor (returned as is). ``init_latents`` replaces draw (1).
    """
    import torch

    posterior = z_comp if hasattr(z_comp, "sample") and not isinstance(z_comp, torch.Tensor) else None
    source = posterior.mean if posterior is not None else z_comp
    shape, noise_dtype = tuple(source.shape), source.dtype
    if init_latents is None:
        latents = _randn(shape, generator, device, unet_dtype).to(torch.float32) * init_noise_sigma
    else:
        latents = init_latents.to(device=device, dtype=torch.float32)
    if posterior is not None:
        z_comp = posterior.sample(generator=generator) * scaling_factor
    return latents, z_comp, shape, noise_dtype


def denoise(unet, scheduler, z_comp, latent_mask, prompt_embeds, residuals, generator,
            num_inference_steps: int = 10, callback: Callable[[int, int], None] | None = None, *,
            scaling_factor: float = SD15_LATENT_SCALE, init_latents=None, draw_decode_noise: bool = True,
            free_residuals: bool = False, preview: Callable[[int, object], None] | None = None):
    """Run the R2R denoising loop; returns the final latents (float32, still scaled).

    * ``z_comp``: the composite latent. Either a Clear-VAE posterior (anything with
      ``.sample(generator)``, e.g. diffusers' ``DiagonalGaussianDistribution``): then the
      initial noise is drawn first and the posterior sample second, exactly the
      official order; or an already scaled tensor ``[B,4,h,w]`` (drawn by the caller,
      who then also owns the order).
    * ``residuals``: the list from :func:`controller_residuals` (one per scheduler
      timestep), a callable ``(i, t) -> (down, mid)`` computing them on the fly, or
      ``None`` to run the U-Net without the controller.
    * ``callback(step, total)`` is called after every model evaluation (``total`` is the number
      of scheduler timesteps: ``2N - 1`` for Heun); raising aborts the loop.
    * ``preview(step, x0)``: called after every step with the predicted clean latent (scaled,
      float32) — only computed when given.
    * ``init_latents``: an explicit initial latent (already multiplied by
      ``init_noise_sigma``) instead of RNG draw (1).

    ``draw_decode_noise`` draws the discarded tensor (4) at the end so the generator
    is left where the official pipeline leaves it. ``free_residuals`` drops each entry of
    a residual list once used (lower peak memory; the list is left full of ``None``).
    """
    import torch

    dtype = unet.dtype
    device = latent_mask.device
    timesteps = set_timesteps(scheduler, num_inference_steps, device=device)
    source = z_comp.mean if hasattr(z_comp, "sample") and not isinstance(z_comp, torch.Tensor) else z_comp
    batch = source.shape[0]
    if tuple(latent_mask.shape) != (batch, 1, *source.shape[2:]):
        raise R2RUserError(
            f"The latent mask {tuple(latent_mask.shape)} does not match the composite latent {tuple(source.shape)}; "
            "both must come from the same prepared image."
        )
    if isinstance(residuals, Sequence) and len(residuals) != len(timesteps):
        raise R2RUserError(
            f"Got controller residuals for {len(residuals)} timesteps but the scheduler runs {len(timesteps)}; "
            "compute them with the same scheduler and number of steps."
        )

    # (1) initial noise, (2) composite posterior sample
    latents, z_comp, shape, noise_dtype = draw_start(z_comp, generator, device, dtype, scheduler.init_noise_sigma,
                                                     scaling_factor, init_latents)
    z_comp = z_comp.to(device=device, dtype=dtype)
    mask_in = latent_mask.to(dtype)
    embeds = _expand_embeds(prompt_embeds.to(device=device, dtype=dtype), batch)

    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(latents, t).to(dtype)
        if residuals is None:
            down, mid = None, None
        elif callable(residuals):
            down, mid = residuals(i, t)
        else:
            down, mid = residuals[i]
            if free_residuals and isinstance(residuals, list):
                residuals[i] = None
        if down is not None and mid is not None:  # one composite's residuals serve a batch of seeds of it
            down = [to_batch(d.to(device=device, dtype=dtype), batch) for d in down]
            mid = to_batch(mid.to(device=device, dtype=dtype), batch)
        eps = unet(
            torch.cat([x_in, mask_in, z_comp], dim=1), t, encoder_hidden_states=embeds,
            down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
        )[0]
        del x_in, down, mid
        # (3) one draw per ancestral step; float32 model output keeps the update in float32
        sample = latents
        out = scheduler.step(eps.to(torch.float32), t, latents, return_dict=False, **step_kwargs)
        latents = out[0]
        if preview is not None:
            preview(i + 1, predicted_clean_latent(scheduler, sample, eps, t, out))
        del eps, sample, out
        if callback is not None:
            callback(i + 1, total)
    # (4) the official decoder's unused posterior sample
    if draw_decode_noise and generator is not None:
        _randn(shape, generator, device, noise_dtype)
    return latents
