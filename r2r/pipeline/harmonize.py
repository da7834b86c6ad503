"""R2RPipeline: the stages (:mod:`r2r.pipeline.stages`) chained for one call, several seeds, or one
network at a time.

    from r2r import R2RPipeline
    pipe = R2RPipeline.from_pretrained("models/r2r/region2region", torch_dtype="fp16", device="cuda")
    out = pipe(composite, mask, num_inference_steps=10, generator=0)
    out.images        # [B,3,H,W] in [0, 1] at the original resolution, background pasted back

The composite is encoded once (the official code encodes it twice); the discarded posterior draw
of the second encode is still taken, so a seed gives the official result.
"""

from __future__ import annotations

import logging

import torch

from ..devices import resolve_device, resolve_dtype, resolve_max_side, warn_if_slow_dtype
from ..errors import R2RUserError
from ..params import DEFAULT_FULLRES_MODE, DEFAULT_PLACEMENT, DEFAULT_SCHEDULER, check
from .model_sources import PhaseLoadedModels, ResidentModels
from .noise import noise_source
from .reference import as_reference, output_batch
from .stages import Stages
from .values import R2ROutput

log = logging.getLogger(__name__)


class R2RPipeline(Stages):
    """R2R harmonization over a model source.

    ``R2RPipeline(components)`` takes :func:`r2r.weights.load_components`' result (all networks
    resident); ``R2RPipeline(models=source)`` takes any :class:`~r2r.pipeline.model_sources.ModelSource`.
    """

    def __init__(self, components=None, scheduler: str = DEFAULT_SCHEDULER, *, models=None):
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
            _check_kinds(components)
            models = ResidentModels(components)
        self.components = components
        self.models = models
        self.scheduler_name = check("scheduler", scheduler, "scheduler")

    @classmethod
    def from_pretrained(cls, path_or_repo_id, torch_dtype="fp32", device="cpu", scheduler=DEFAULT_SCHEDULER,
                        **load_kwargs) -> R2RPipeline:
        """Load a release (hub-layout folder, hub repo id or dict of single files) via ``r2r.weights``."""
        from ..weights import load_components

        device = resolve_device(device)
        check("scheduler", scheduler, "scheduler")
        dtype = resolve_dtype(torch_dtype, device)
        warn_if_slow_dtype(dtype, device)
        components = load_components(path_or_repo_id, torch_dtype=dtype, device=str(device), **load_kwargs)
        return cls(components, scheduler=scheduler)

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
    def scheduler_config(self) -> dict:
        return self.models.scheduler_config

    def to(self, device=None, dtype=None) -> R2RPipeline:
        if not isinstance(self.models, ResidentModels):
            raise R2RUserError("R2RPipeline.to() moves resident networks; this pipeline loads them per phase.")
        self.models.to(None if device is None else resolve_device(device),
                       None if dtype is None else resolve_dtype(dtype))
        return self

    # ------------------------------------------------------------------ all in one
    def _check_call(self, *, fullres_mode, use_controller, strength, feather, callback, preview, noise_device):
        """Every argument that does not need the images, checked before any work."""
        check("fullres_mode", fullres_mode, "fullres_mode")
        check("noise_device", noise_device, "noise_device")
        for name, fn in (("callback", callback), ("preview", preview)):
            if fn is not None and not callable(fn):
                raise R2RUserError(f"{name} must be callable (a function taking (step, total)) or None; "
                                   f"got {type(fn).__name__} {fn!r}.")
        if feather is not None:
            feather = check("feather", feather, "feather")
        strength = check("strength", strength, "strength") if use_controller else 0.0
        if strength > 0 and not self.models.has("controller"):
            raise R2RUserError(
                "This pipeline was loaded without the Harmony Controller; load it (components=('unet', 'controller', "
                "'clear_vae')) or call with use_controller=False."
            )
        return strength, (None if feather == -1 else feather)

    @torch.inference_mode()
    def __call__(self, composite, mask, num_inference_steps: int = 10, generator=None, max_side: int = 1024,
                 paste_back: bool = True, feather: int | None = None, resize_mode: str = "fit",
                 canny_at: str = "original", scheduler: str | None = None, use_controller: bool = True,
                 strength: float = 1.0, reference_mask=None, callback=None, preview=None,
                 timestep_batch: int | None = None, skips: str = DEFAULT_PLACEMENT,
                 residuals: str = DEFAULT_PLACEMENT, fullres_mode: str = DEFAULT_FULLRES_MODE, *,
                 reference=None, noise_device: str = "cpu", objects: str = "together", crop: str = "none",
                 context: float = 2.0) -> R2ROutput:
        """Harmonize ``composite`` (``[B,3,H,W]`` 0..1 tensor, ``HxWx3`` uint8 array, PIL image) inside ``mask``.

        ``generator``: int seed, ``torch.Generator``, a list (one per batch item), a
        :mod:`noise source <r2r.pipeline.noise>` or None; ``noise_device``: where an int seed draws
        (``cpu``: the same picture on every device; ``device``: as the official script).
        ``max_side``: working resolution (0 = automatic: 1024 on a GPU, 512 on a CPU). ``feather``:
        paste-back band in original pixels (None or -1 = one latent cell, 0 = hard paste with the
        soft mask). ``strength``: the controller's conditioning scale (1 = as trained);
        ``reference``: a :class:`~r2r.pipeline.Reference` — a region of the composite or another
        photo — whose colours steer MACA (``reference_mask=M`` is ``Reference(mask=M)``; default:
        the whole background). ``skips`` / ``residuals``: where the encoder skips / controller
        residuals wait (``auto | device | host | recompute``, :mod:`r2r.pipeline.memory`; the image
        is the same for every choice). ``callback(step, total)`` after each denoising step (raise
        from it to cancel); ``preview(step, x0)`` with the predicted latent.
        ``objects`` (``together`` | ``each``), ``crop`` (``none`` | ``per_object``), ``context``: several
        objects in one picture and a crop around each (:mod:`r2r.pipeline.objects`; returns an
        :class:`~r2r.pipeline.objects.ObjectsOutput`, without working images or latents).
        """
        strength, feather = self._check_call(fullres_mode=fullres_mode, use_controller=use_controller,
                                             strength=strength, feather=feather, callback=callback, preview=preview,
                                             noise_device=noise_device)
        reference = as_reference(reference, reference_mask)
        if (objects, crop) != ("together", "none"):
            from .objects import harmonize_objects

            return harmonize_objects(
                self, composite, mask, objects=objects, crop=crop, context=context, reference=reference,
                generator=generator, num_inference_steps=num_inference_steps,
                max_side=resolve_max_side(max_side, self.device), feather=feather, resize_mode=resize_mode,
                canny_at=canny_at, scheduler=scheduler, strength=strength, callback=callback, preview=preview,
                timestep_batch=timestep_batch, skips=skips, residuals=residuals, fullres_mode=fullres_mode,
                noise_device=noise_device, paste_back=paste_back)
        check("context", context, "context")
        plan = self.plan(num_inference_steps, scheduler)
        noise = noise_source(generator, noise_device)
        prepared = self.prepare(composite, mask, max_side=resolve_max_side(max_side, self.device),
                                resize_mode=resize_mode, canny_at=canny_at)
        ref = self.prepare_reference(reference, prepared)
        noise.generators(output_batch(prepared.batch_size, ref), self.device)  # a generator list's length, checked
        encoded = self.encode(prepared, skips=skips)
        res = self.residuals(prepared, plan, strength, ref, placement=residuals, timestep_batch=timestep_batch)
        latents = self.sample(prepared, encoded, res, plan, noise, callback=callback, preview=preview,
                              free_residuals=True)
        del res
        working = self.decode(latents, encoded, prepared, consume_skips=True)
        del encoded
        images = self.restore(working, prepared, paste_back=paste_back, feather=feather, fullres_mode=fullres_mode)
        return R2ROutput(images=images, working_images=working, latents=latents, prepared=prepared)

    @torch.inference_mode()
    def variations(self, composite, mask, seeds, num_inference_steps: int = 10, max_side: int = 1024,
                   paste_back: bool = True, feather: int | None = None, resize_mode: str = "fit",
                   scheduler: str | None = None, strength: float = 1.0, reference_mask=None, callback=None,
                   timestep_batch: int | None = None, fullres_mode: str = DEFAULT_FULLRES_MODE, *,
                   reference=None, noise_device: str = "cpu") -> list[R2ROutput]:
        """One result per seed in ``seeds``, each the same image as ``pipe(..., generator=seed)``.

        Preparation, the encoder pass and the controller residuals are shared by all seeds (they do
        not depend on the seed); the U-Net loop runs the seeds of one composite batched, as many per
        forward as the free memory allows, and the decoder runs once per seed.
        """
        seeds = list(seeds)
        if not seeds:
            raise R2RUserError("variations needs at least one seed; got an empty list.")
        for s in seeds:
            noise_source(s, noise_device)
        strength, feather = self._check_call(fullres_mode=fullres_mode, use_controller=True, strength=strength,
                                             feather=feather, callback=callback, preview=None,
                                             noise_device=noise_device)
        plan = self.plan(num_inference_steps, scheduler)
        reference = as_reference(reference, reference_mask)
        prepared = self.prepare(composite, mask, max_side=resolve_max_side(max_side, self.device),
                                resize_mode=resize_mode)
        encoded = self.encode(prepared)
        res = self.residuals(prepared, plan, strength, reference, timestep_batch=timestep_batch)
        latents = self.sample(prepared, encoded, res, plan, seeds=seeds, noise_device=noise_device, callback=callback)
        per_seed = latents.shape[0] // len(seeds)
        outputs = []
        for i in range(len(seeds)):
            lat = latents[i * per_seed:(i + 1) * per_seed]
            working = self.decode(lat, encoded, prepared, release=False)
            images = self.restore(working, prepared, paste_back=paste_back, feather=feather, fullres_mode=fullres_mode)
            outputs.append(R2ROutput(images=images, working_images=working, latents=lat, prepared=prepared))
        self.models.release("clear_vae")
        return outputs


#: what each slot of R2RComponents must hold (class name, what it is)
_KINDS = {"unet": ("UNet2DConditionModel", "the R2R U-Net"), "controller": ("HarmonyController", "the Harmony Controller"),
          "clear_vae": ("ClearVAE", "the Clear-VAE")}


def _check_kinds(components) -> None:
    """Each network in its own slot (a controller passed as the Clear-VAE is refused, with what it is)."""
    found = ", ".join(f"{slot}={type(getattr(components, slot)).__name__}" for slot in _KINDS)
    for slot, (cls, what) in _KINDS.items():
        module = getattr(components, slot)
        if module is None:
            continue
        got = type(module).__name__
        if got != cls and not any(c.__name__ == cls for c in type(module).__mro__):
            other = next((w for s, (c, w) in _KINDS.items() if c == got), f"a {got}")
            raise R2RUserError(f"R2RPipeline: components.{slot} must be {what} ({cls}); got {other} ({got}). "
                               f"Load the release with r2r.weights.load_components, or put each network in its "
                               f"own field (found: {found}).")


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
    scheduler = call_kwargs.get("scheduler") or DEFAULT_SCHEDULER
    check("scheduler", scheduler, "scheduler")
    dtype = resolve_dtype(torch_dtype, device)
    warn_if_slow_dtype(dtype, device)
    models = PhaseLoadedModels(source, torch_dtype=dtype, device=device, **load_kwargs)
    call_kwargs.setdefault("skips", "recompute")
    return R2RPipeline(models=models, scheduler=scheduler)(composite, mask, **call_kwargs)
