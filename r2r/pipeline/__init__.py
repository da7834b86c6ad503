"""R2RPipeline: composite + mask -> harmonized image (ref §a), the one orchestration of R2R.

    from r2r import R2RPipeline
    pipe = R2RPipeline.from_pretrained("models/r2r/region2region", torch_dtype="fp16", device="cuda")
    out = pipe(composite, mask, num_inference_steps=10, generator=0)
    out.images        # [B,3,H,W] in [0, 1] at the original resolution, background pasted back

The stages, in the order every caller runs them:

1. :meth:`R2RPipeline.prepare` — validation, working canvas, 7-channel hint, nearest latent mask
   (and the reference region's latent mask);
2. :meth:`~R2RPipeline.encode` — one Clear-VAE encoder pass: the posterior (for the U-Net's
   composite latent) and the 12 encoder skips (for decoding), kept by the placement rule;
3. :meth:`~R2RPipeline.residuals` — Harmony Controller residuals for every timestep (the
   controller never sees the noisy latent, so they are computed before the loop, scaled by
   ``strength``, steered by the reference region);
4. :meth:`~R2RPipeline.denoise` — the U-Net loop, drawing random numbers in the official order
   (:mod:`r2r.pipeline.sampling` is the only place that order is written);
5. :meth:`~R2RPipeline.decode` — Clear-VAE decode with the composite's skips;
6. :meth:`~R2RPipeline.restore` — back to the original resolution, background pasted back.

``__call__`` chains them; :meth:`~R2RPipeline.variations` runs 1-3 once and 4-6 per seed. The
networks come from a *model source* (:mod:`r2r.pipeline.model_sources`): resident (``from_pretrained``),
loaded per phase (:func:`harmonize_low_memory`), or ComfyUI's model management (the nodes); a
stage releases its network when its phase is over. The composite is encoded once (the official
code encodes it twice); the discarded posterior draw of the second encode is still taken, so a
seed gives the official result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import imaging
from ..devices import resolve_device, resolve_dtype
from ..errors import R2RUserError
from ..imaging import tiling
from ..params import DEFAULT_FULLRES_MODE, DEFAULT_PLACEMENT, FULLRES_MODES, SCHEDULER_NAMES, check_choice
from . import memory, sampling
from .model_sources import PhaseLoadedModels, ResidentModels, missing_network


def make_generator(generator):
    """``None`` | int seed | ``torch.Generator`` | list of those -> what the sampler takes.

    An int seed makes a CPU generator, so the same seed gives the same noise on any device.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        return [make_generator(g) for g in generator]
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise R2RUserError(f"generator must be None, an int seed or a torch.Generator; got {type(generator).__name__}.")
    if not 0 <= generator < 2**64:
        raise R2RUserError(f"A seed must be an integer from 0 to 2**64 - 1; got {generator}.")
    return torch.Generator(device="cpu").manual_seed(int(generator))


@dataclass
class EncodedComposite:
    """The Clear-VAE encoding of the composite: posterior (for the U-Net latent) + raw skips (for decoding)."""

    posterior: object  # diffusers DiagonalGaussianDistribution, unscaled
    skips: list | None  # 12 raw encoder features on `skips_device`; None: recomputed when decoding
    scaling_factor: float = 0.18215
    skips_placement: str = "device"  # device | host | recompute (r2r.pipeline.memory)


@dataclass
class R2ROutput:
    images: torch.Tensor  # [B,3,H,W] in [0, 1] at the original resolution
    working_images: torch.Tensor  # [B,3,h,w] in [0, 1] at the working resolution (model output)
    latents: torch.Tensor | None = None  # [B,4,h/8,w/8] final latents (scaled), float32
    prepared: imaging.Prepared | None = field(default=None, repr=False)

    def to_numpy(self) -> list:
        """Images as a list of ``HxWx3 uint8`` arrays (rounded)."""
        arr = (self.images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return [a.permute(1, 2, 0).cpu().numpy() for a in arr]


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 10.0:
        raise R2RUserError(f"strength (the controller's conditioning scale) must be a number from 0 to 10 "
                           f"(1 = as trained, 0 = no controller); got {strength!r}.")
    return float(strength)


class R2RPipeline:
    """R2R harmonization over a model source (see the module docstring).

    ``R2RPipeline(components)`` takes :func:`r2r.weights.load_components`' result (all networks
    resident); ``R2RPipeline(models=source)`` takes any model source.
    """

    def __init__(self, components=None, scheduler: str = sampling.DEFAULT_SCHEDULER, *, models=None):
        if models is None:
            for name in ("unet", "controller", "clear_vae", "scheduler_config", "prompt_embeds"):
                if not hasattr(components, name):
                    raise R2RUserError(
                        f"R2RPipeline needs R2RComponents (from r2r.weights.load_components); missing {name!r}.")
            for name in ("unet", "clear_vae"):
                if getattr(components, name) is None:
                    raise R2RUserError(
                        f"R2RPipeline needs the {name} loaded; load_components(..., components=...) left it out. "
                        "Load with the default components=('unet', 'controller', 'clear_vae')."
                    )
            models = ResidentModels(components)
        self.components = components
        self.models = models
        self.scheduler_name = check_choice(scheduler, SCHEDULER_NAMES, "scheduler")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path_or_repo_id, torch_dtype="fp32", device="cpu", scheduler=sampling.DEFAULT_SCHEDULER,
                        **load_kwargs) -> R2RPipeline:
        """Load a release (hub-layout folder, hub repo id or dict of single files) via ``r2r.weights``."""
        from ..weights import load_components

        device = resolve_device(device)
        check_choice(scheduler, SCHEDULER_NAMES, "scheduler")
        components = load_components(path_or_repo_id, torch_dtype=resolve_dtype(torch_dtype, device),
                                     device=str(device), **load_kwargs)
        return cls(components, scheduler=scheduler)

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def dtype(self) -> torch.dtype:
        return self.models.dtype("unet")

    @property
    def source(self) -> str:
        return self.models.source

    # the resident networks (for a pipeline built from R2RComponents)
    unet = property(lambda self: self.models.get("unet"))
    controller = property(lambda self: self.models.get("controller") if self.models.has("controller") else None)
    clear_vae = property(lambda self: self.models.get("clear_vae"))

    @property
    def prompt_embeds(self):
        return self.models.prompt_embeds

    @property
    def scheduler_config(self) -> dict:
        return self.models.scheduler_config

    def to(self, device=None, dtype=None) -> R2RPipeline:
        if not isinstance(self.models, ResidentModels):
            raise R2RUserError("R2RPipeline.to() moves resident networks; this pipeline loads them per phase.")
        self.models.to(None if device is None else resolve_device(device),
                       None if dtype is None else resolve_dtype(dtype))
        return self

    def make_scheduler(self, name: str | None = None):
        return sampling.make_scheduler(self.scheduler_config, name or self.scheduler_name)

    # ------------------------------------------------------------------ stages
    def prepare(self, composite, mask, max_side: int = 1024, resize_mode: str = "fit", canny_at: str = "original",
                reference_mask=None) -> imaging.Prepared:
        """Validate inputs and build the working-resolution tensors (float32, on the pipeline's device)."""
        prepared = imaging.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode, canny_at=canny_at,
                                   reference_mask=reference_mask)
        return prepared.to(device=self.device)

    @torch.inference_mode()
    def encode(self, prepared: imaging.Prepared, skips: str = DEFAULT_PLACEMENT) -> EncodedComposite:
        """One Clear-VAE encoder pass: the posterior + the raw skips, kept where ``skips`` says
        (``auto | device | host | recompute``, see :mod:`r2r.pipeline.memory`). Banded above the memory budget
        and on out-of-memory (:func:`r2r.imaging.tiling.encode_with_skips_auto`)."""
        vae = self.models.get("clear_vae", self.vae_memory(prepared, "encode"))
        x = prepared.composite_pm1.to(device=self.device, dtype=vae.dtype)
        posterior, raw = tiling.encode_with_skips_auto(vae, x)
        scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
        placement = memory.choose_placement(skips, memory.tensors_bytes(raw), self.device, "skips")
        if placement == "host":
            raw = [s.to("cpu") for s in raw]
        elif placement == "recompute":
            raw = None
        self.models.release("clear_vae")
        return EncodedComposite(posterior, raw, scaling, placement)

    def auto_timestep_batch(self, prepared: imaging.Prepared, n_timesteps: int) -> int:
        """How many timesteps to batch through the controller: 1 on CPU, as many as fit in half the free GPU memory."""
        if self.device.type != "cuda" or n_timesteps <= 1:
            return 1
        controller = self.models.get("controller")
        per_step = memory.residual_bytes_per_step(controller.config, prepared.batch_size,
                                                  tuple(prepared.latent_mask.shape[-2:]), controller.dtype)
        activations = memory.controller_activation_bytes(prepared.batch_size, tuple(prepared.latent_mask.shape[-2:]),
                                                         controller.dtype)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(n_timesteps, (free * 0.5) // (per_step + activations))))

    @torch.inference_mode()
    def residuals(self, prepared: imaging.Prepared, timesteps, strength: float = 1.0,
                  placement: str = DEFAULT_PLACEMENT, timestep_batch: int | None = None, callback=None):
        """Harmony Controller residuals for every timestep, kept where ``placement`` says.

        Returns a list (one ``(down, mid)`` per timestep) for ``device``/``host``, or — for
        ``recompute`` — a callable the denoising loop calls per step (the controller then stays
        loaded through the loop). ``strength`` scales the residuals (0 = no controller); the
        reference region is ``prepared.reference_latent_mask``.
        """
        strength = _check_strength(strength)
        if strength == 0.0:
            return None
        if not self.models.has("controller"):
            raise missing_network("controller", "Load the release with the controller, or use strength 0.")
        controller = self.models.get("controller", self.controller_memory(prepared))
        dtype, device = controller.dtype, self.device
        n_steps = len(timesteps)
        latent_hw = tuple(prepared.latent_mask.shape[-2:])
        nbytes = n_steps * memory.residual_bytes_per_step(controller.config, prepared.batch_size, latent_hw, dtype)
        where = memory.choose_placement(placement, nbytes, device, "residuals")
        hint = prepared.hint.to(device, dtype)
        mask = prepared.latent_mask.to(device, dtype)
        ref = None if prepared.reference_latent_mask is None else prepared.reference_latent_mask.to(device, dtype)
        text = self.prompt_embeds.to(device, dtype)
        if where == "recompute":
            def on_the_fly(i, t):
                with torch.inference_mode():
                    return sampling.controller_residuals(controller, hint, mask, [t], text, conditioning_scale=strength,
                                                         reference_mask=ref)[0]
            return on_the_fly
        if timestep_batch is None:
            timestep_batch = self.auto_timestep_batch(prepared, n_steps)
        result = sampling.controller_residuals(
            controller, hint, mask, timesteps, text, conditioning_scale=strength, reference_mask=ref,
            timestep_batch=timestep_batch, callback=callback, store_device="cpu" if where == "host" else None,
        )
        self.models.release("controller")
        return result

    @torch.inference_mode()
    def denoise(self, prepared: imaging.Prepared, encoded: EncodedComposite, residuals, generator=None,
                num_inference_steps: int = 10, scheduler=None, callback=None, preview=None,
                free_residuals: bool = False):
        """The denoising loop (official RNG order, :func:`r2r.pipeline.sampling.denoise`); returns float32 latents (scaled).

        ``free_residuals`` drops each residual once used (lower peak memory); leave it off to reuse them.
        """
        if scheduler is None or isinstance(scheduler, str):
            scheduler = self.make_scheduler(scheduler)
        unet = self.models.get("unet", self.unet_memory(prepared))
        latents = sampling.denoise(
            unet, scheduler, encoded.posterior, prepared.latent_mask.to(self.device), self.prompt_embeds,
            residuals, make_generator(generator), num_inference_steps, callback,
            scaling_factor=encoded.scaling_factor, free_residuals=free_residuals, preview=preview,
        )
        if callable(residuals):
            self.models.release("controller")
        self.models.release("unet")
        return latents

    @torch.inference_mode()
    def decode(self, latents, encoded: EncodedComposite | None = None, prepared: imaging.Prepared | None = None,
               release: bool = True):
        """Clear-VAE decode with the composite's skips -> ``[B,3,h,w]`` float32 in [0, 1].

        Uses ``encoded.skips`` (moved to the device when they wait on the host); when they were not
        kept, the composite of ``prepared`` is encoded again (the same numbers: the encoder is
        deterministic). Banded above the memory budget and on out-of-memory.
        """
        if prepared is None and (encoded is None or encoded.skips is None):
            raise R2RUserError("decode needs the composite's encoder skips: pass encoded= (with skips) or prepared=.")
        working_hw = tuple(prepared.geometry.working_size) if prepared is not None else \
            tuple(s * 8 for s in latents.shape[-2:])
        vae = self.models.get("clear_vae", self.vae_memory(prepared, "decode", working_hw, latents.shape[0]))
        skips = None if encoded is None else encoded.skips
        if skips is None:
            _, skips = tiling.encode_with_skips_auto(vae, prepared.composite_pm1.to(self.device, vae.dtype))
        else:
            skips = [s.to(self.device) for s in skips]
        z = latents.to(device=self.device, dtype=vae.dtype) / float(getattr(vae.config, "scaling_factor", 0.18215))
        image = tiling.decode_with_skips_auto(vae, z, skips)
        if release:
            self.models.release("clear_vae")
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def restore(self, working_images, prepared: imaging.Prepared, paste_back: bool = True, feather: int | None = None,
                fullres_mode: str = DEFAULT_FULLRES_MODE):
        """Back to the original resolution with the original background pasted back
        (:func:`r2r.imaging.fullres.to_original_size`: ``upsample``, ``color_transform`` or ``auto``)."""
        from ..imaging.fullres import to_original_size

        return to_original_size(working_images, prepared, paste_back=paste_back, feather=feather, mode=fullres_mode)

    # ------------------------------------------------------------------ memory estimates (bytes)
    # (what a phase needs beside the weights; the ComfyUI nodes hand these to ComfyUI's model management)
    def unet_memory(self, prepared: imaging.Prepared) -> int:
        return memory.unet_activation_bytes(prepared.batch_size, tuple(prepared.latent_mask.shape[-2:]),
                                            self.models.dtype("unet"))

    def controller_memory(self, prepared: imaging.Prepared) -> int:
        return memory.controller_activation_bytes(prepared.batch_size, tuple(prepared.latent_mask.shape[-2:]),
                                                  self.models.dtype("controller"))

    def vae_memory(self, prepared, which: str, working_hw=None, batch: int | None = None) -> int:
        """The untiled Clear-VAE pass's activations, capped at the banding budget (above it the VAE is banded)."""
        working_hw = working_hw or tuple(prepared.geometry.working_size)
        batch = batch or prepared.batch_size
        extra = memory.vae_activation_bytes(working_hw, batch, self.models.dtype("clear_vae"),
                                            {"block_out_channels": (128, 256, 512, 512)}, which)
        return min(extra, tiling.memory_budget_bytes())

    # ------------------------------------------------------------------ all in one
    def _check_call(self, num_inference_steps, scheduler, fullres_mode, use_controller, strength, *,
                    generator=None, feather=None, callback=None, preview=None):
        """Every argument that does not need the images, checked before any work."""
        check_choice(fullres_mode, FULLRES_MODES, "fullres_mode")
        make_generator(generator)
        for name, fn in (("callback", callback), ("preview", preview)):
            if fn is not None and not callable(fn):
                raise R2RUserError(f"{name} must be callable (a function taking (step, total)) or None; "
                                   f"got {type(fn).__name__} {fn!r}.")
        if feather is not None and (isinstance(feather, bool) or not isinstance(feather, int) or feather < -1):
            raise R2RUserError(f"feather must be None or -1 (automatic: one latent cell), 0 (hard edge) or a number "
                               f"of pixels; got {feather!r}.")
        sched = self.make_scheduler(scheduler)
        timesteps = sampling.set_timesteps(sched, num_inference_steps, device=self.device)
        strength = _check_strength(strength) if use_controller else 0.0
        if strength > 0 and not self.models.has("controller"):
            raise R2RUserError(
                "This pipeline was loaded without the Harmony Controller; load it (components=('unet', 'controller', "
                "'clear_vae')) or call with use_controller=False."
            )
        return sched, timesteps, strength, (None if feather == -1 else feather)

    @staticmethod
    def _check_generator_batch(generator, batch: int) -> None:
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise R2RUserError(f"Got {len(generator)} generators for a batch of {batch} image(s); pass one generator "
                               "(or seed) per batch item, or a single one for the whole batch.")

    @torch.inference_mode()
    def __call__(self, composite, mask, num_inference_steps: int = 10, generator=None, max_side: int = 1024,
                 paste_back: bool = True, feather: int | None = None, resize_mode: str = "fit",
                 canny_at: str = "original", scheduler: str | None = None, use_controller: bool = True,
                 strength: float = 1.0, reference_mask=None, callback=None, preview=None,
                 timestep_batch: int | None = None, skips: str = DEFAULT_PLACEMENT,
                 residuals: str = DEFAULT_PLACEMENT, fullres_mode: str = DEFAULT_FULLRES_MODE) -> R2ROutput:
        """Harmonize ``composite`` (``[B,3,H,W]`` 0..1 tensor, ``HxWx3`` uint8 array, PIL image) inside ``mask``.

        ``generator``: int seed, ``torch.Generator`` or None. ``feather``: paste-back band in
        original pixels (None or -1 = one latent cell, 0 = hard paste with the soft mask).
        ``strength``: the controller's conditioning scale (1 = as trained); ``reference_mask``: the
        region whose colours steer MACA (default: the whole background). ``skips`` / ``residuals``:
        where the encoder skips / controller residuals wait (``auto | device | host | recompute``,
        :mod:`r2r.pipeline.memory`; the image is the same for every choice). ``callback(step, total)`` after
        each denoising step (raise from it to cancel); ``preview(step, x0)`` with the predicted latent.
        """
        sched, timesteps, strength, feather = self._check_call(
            num_inference_steps, scheduler, fullres_mode, use_controller, strength, generator=generator,
            feather=feather, callback=callback, preview=preview)
        prepared = self.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode, canny_at=canny_at,
                                reference_mask=reference_mask)
        self._check_generator_batch(generator, prepared.batch_size)
        encoded = self.encode(prepared, skips=skips)
        res = self.residuals(prepared, timesteps, strength, residuals, timestep_batch)
        latents = self.denoise(prepared, encoded, res, generator, num_inference_steps, sched, callback, preview,
                               free_residuals=True)
        del res
        working = self.decode(latents, encoded, prepared)
        del encoded
        images = self.restore(working, prepared, paste_back=paste_back, feather=feather, fullres_mode=fullres_mode)
        return R2ROutput(images=images, working_images=working, latents=latents, prepared=prepared)

    @torch.inference_mode()
    def variations(self, composite, mask, seeds, num_inference_steps: int = 10, max_side: int = 1024,
                   paste_back: bool = True, feather: int | None = None, resize_mode: str = "fit",
                   scheduler: str | None = None, strength: float = 1.0, reference_mask=None, callback=None,
                   timestep_batch: int | None = None, fullres_mode: str = DEFAULT_FULLRES_MODE) -> list[R2ROutput]:
        """One result per seed in ``seeds``, each the same image as ``pipe(..., generator=seed)``.

        Preparation, the encoder pass and the controller residuals are shared by all seeds (they do
        not depend on the seed); only the U-Net loop and the decoder run per seed.
        """
        seeds = list(seeds)
        if not seeds:
            raise R2RUserError("variations needs at least one seed; got an empty list.")
        for s in seeds:
            make_generator(s)
        sched, timesteps, strength, feather = self._check_call(num_inference_steps, scheduler, fullres_mode, True,
                                                               strength, feather=feather, callback=callback)
        prepared = self.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode,
                                reference_mask=reference_mask)
        encoded = self.encode(prepared)
        res = self.residuals(prepared, timesteps, strength, DEFAULT_PLACEMENT, timestep_batch)
        outputs = []
        for seed in seeds:
            latents = self.denoise(prepared, encoded, res, seed, num_inference_steps, scheduler, callback)
            working = self.decode(latents, encoded, prepared, release=False)
            images = self.restore(working, prepared, paste_back=paste_back, feather=feather, fullres_mode=fullres_mode)
            outputs.append(R2ROutput(images=images, working_images=working, latents=latents, prepared=prepared))
        self.models.release("clear_vae")
        return outputs


def harmonize_low_memory(source, composite, mask, *, torch_dtype="fp32", device="cpu", **call_kwargs) -> R2ROutput:
    """The same result as ``R2RPipeline.from_pretrained(source)(composite, mask, ...)`` with at most one
    network in memory at a time.

    The same stages run over :class:`r2r.pipeline.model_sources.PhaseLoadedModels`: each network is read from
    ``source`` straight to ``device``/``torch_dtype`` when its phase starts and dropped when it ends
    (Clear-VAE encode -> controller residuals -> U-Net loop -> Clear-VAE decode); the encoder skips
    are not kept (the composite is encoded again for decoding, as the official code does). Loading
    time is part of the call: use it for big images or small machines, and :class:`R2RPipeline` to
    harmonize many images with the networks kept loaded. ``call_kwargs`` are ``R2RPipeline.__call__``'s.
    """
    device = resolve_device(device)
    load_keys = {"cache_dir", "local_files_only", "local_dir", "revision"}
    load_kwargs = {k: call_kwargs.pop(k) for k in list(call_kwargs) if k in load_keys}
    scheduler = call_kwargs.get("scheduler") or sampling.DEFAULT_SCHEDULER
    check_choice(scheduler, SCHEDULER_NAMES, "scheduler")
    models = PhaseLoadedModels(source, torch_dtype=resolve_dtype(torch_dtype, device), device=device, **load_kwargs)
    call_kwargs.setdefault("skips", "recompute")
    return R2RPipeline(models=models, scheduler=scheduler)(composite, mask, **call_kwargs)
