"""R2RPipeline's stages — the one orchestration of R2R that every caller (``pipe(...)``,
``variations``, the low-memory flow, the CLI, the ComfyUI nodes, the benchmarks) runs:

    prepared = pipe.prepare(composite, mask, max_side)        validation, working canvas, hint
    plan     = pipe.plan(steps, scheduler)                     scheduler + timesteps
    encoded  = pipe.encode(prepared)                           Clear-VAE: posterior + skips
    res      = pipe.residuals(prepared, plan, strength, reference)   Harmony Controller, per timestep
    latents  = pipe.sample(prepared, encoded, res, plan, noise)      U-Net loop, official RNG order
    working  = pipe.decode(latents, encoded, prepared)         Clear-VAE decode with the skips
    images   = pipe.restore(working, prepared)                 original size, background pasted back

Callers build no scheduler, timesteps, posterior or noise themselves: the plan holds the
scheduler, :class:`~r2r.pipeline.values.EncodedComposite` the posterior, a
:mod:`noise source <r2r.pipeline.noise>` the generators, and :mod:`r2r.pipeline.sampling` the
random-number order. Networks come from a :class:`~r2r.pipeline.model_sources.ModelSource`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .. import imaging
from ..errors import R2RUserError
from ..imaging import tiling
from ..params import DEFAULT_FULLRES_MODE, DEFAULT_PLACEMENT, check
from . import memory, sampling
from .model_sources import ModelSource, missing_network
from .noise import ItemSeeds, Seed, noise_source
from .reference import PreparedReference, Reference, output_batch, prepare_reference
from .residuals import ResidualCache, Residuals
from .sampling import SamplingPlan
from .values import EncodedComposite

log = logging.getLogger(__name__)


class Stages:
    """The stages over ``self.models`` (a :class:`ModelSource`); see the module docstring."""

    models: ModelSource
    scheduler_name: str

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self.models.prompt_embeds

    # ------------------------------------------------------------------ prepare / plan
    def prepare(self, composite, mask, max_side: int = 1024, resize_mode: str = "fit",
                canny_at: str = "original") -> imaging.Prepared:
        """Validate inputs and build the working-resolution tensors (float32, on the pipeline's device)."""
        prepared = imaging.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode, canny_at=canny_at)
        return prepared.to(device=self.device)

    def plan(self, steps: int = 10, scheduler: str | None = None) -> SamplingPlan:
        """The scheduler (``None``: the pipeline's) and its timesteps for ``steps`` steps."""
        return SamplingPlan.make(self.models.scheduler_config, steps, scheduler or self.scheduler_name)

    def prepare_reference(self, reference: Reference | PreparedReference | None,
                          prepared: imaging.Prepared) -> PreparedReference | None:
        """A :class:`Reference` on ``prepared``'s working grid (done by :meth:`residuals` when given a Reference)."""
        if reference is None or isinstance(reference, PreparedReference):
            return reference
        return prepare_reference(reference, prepared)

    # ------------------------------------------------------------------ Clear-VAE
    @torch.inference_mode()
    def encode(self, prepared: imaging.Prepared, skips: str = DEFAULT_PLACEMENT) -> EncodedComposite:
        """One Clear-VAE encoder pass: the posterior + the raw skips, kept where ``skips`` says
        (``auto | device | host | recompute``, :mod:`r2r.pipeline.memory`). Banded above the memory
        budget and on out-of-memory (:func:`r2r.imaging.tiling.encode_with_skips_auto`)."""
        vae = self.models.get("clear_vae", self.vae_memory(prepared, "encode"))
        x = prepared.composite_pm1.to(device=self.device, dtype=vae.dtype)
        posterior, raw = tiling.encode_with_skips_auto(vae, x, budget_bytes=self._vae_budget())
        scaling = float(getattr(vae.config, "scaling_factor", sampling.SD15_LATENT_SCALE))
        placement = memory.choose_placement(skips, memory.tensors_bytes(raw), self.device, "Clear-VAE skips",
                                            self.models.free_memory())
        if placement == "host":
            raw = [s.to("cpu") for s in raw]
        elif placement == "recompute":
            raw = None
        self.models.release("clear_vae")
        return EncodedComposite(posterior.mean, posterior.logvar, raw, scaling, placement)

    @torch.inference_mode()
    def decode(self, latents, encoded: EncodedComposite | None = None, prepared: imaging.Prepared | None = None,
               release: bool = True, consume_skips: bool = False) -> torch.Tensor:
        """Clear-VAE decode with the composite's skips -> ``[B,3,h,w]`` float32 in [0, 1].

        Uses ``encoded.skips`` (moved to the device when they wait on the host); when they were not
        kept, the composite of ``prepared`` is encoded again (the same numbers: the encoder is
        deterministic). Banded above the memory budget and on out-of-memory. Skips the decoder owns
        (encoded again, or copied from host RAM) are released as soon as it has used them;
        ``consume_skips=True`` (the caller decodes no more with ``encoded``): ``encoded``'s own too
        (``encoded.skips`` becomes None)."""
        if prepared is None and (encoded is None or encoded.skips is None):
            raise R2RUserError("decode needs the composite's encoder skips: pass encoded= (with skips) or prepared=.")
        batch = int(latents.shape[0])
        working_hw = tuple(prepared.geometry.working_size) if prepared is not None else \
            tuple(s * 8 for s in latents.shape[-2:])
        vae = self.models.get("clear_vae", self.vae_memory(prepared, "decode", working_hw, batch))
        skips = None if encoded is None else encoded.skips
        budget = self._vae_budget()
        owned = True
        if skips is None:
            assert prepared is not None  # checked above: no skips without prepared is refused
            skips = self._encode_skips(vae, prepared, batch, budget)
        else:
            kept = {s.untyped_storage().data_ptr() for s in skips}
            skips = [sampling.to_batch(s.to(self.device), batch) for s in skips]
            owned = consume_skips or not kept & {s.untyped_storage().data_ptr() for s in skips}
            if consume_skips and encoded is not None:
                encoded.skips = None
        scaling = encoded.scaling_factor if encoded is not None else float(vae.config.scaling_factor)
        z = latents.to(device=self.device, dtype=vae.dtype) / scaling
        try:
            image = tiling.decode_with_skips_auto(vae, z, skips, budget_bytes=budget, consume_skips=owned)
        except tiling.SkipsConsumedError as e:
            if prepared is None:
                raise (e.__cause__ or e) from None
            log.warning("Clear-VAE decode ran out of memory after releasing skips; encoding the composite again "
                        "for a banded decode (same result)")
            skips = self._encode_skips(vae, prepared, batch, 0)
            image = tiling.decode_with_skips_auto(vae, z, skips, tiled=True, consume_skips=True)
        del skips
        if release:
            self.models.release("clear_vae")
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _encode_skips(self, vae, prepared: imaging.Prepared, batch: int, budget: int) -> list:
        """The composite's skips encoded again for decoding (banded above ``budget``; 0 = banded)."""
        x = prepared.expand(batch).composite_pm1.to(self.device, vae.dtype)
        return tiling.encode_with_skips_auto(vae, x, budget_bytes=budget, tiled=True if budget == 0 else None)[1]

    def restore(self, working_images, prepared: imaging.Prepared, paste_back: bool = True, feather: int | None = None,
                fullres_mode: str = DEFAULT_FULLRES_MODE) -> torch.Tensor:
        """Back to the original resolution with the original background pasted back
        (:func:`r2r.imaging.fullres.to_original_size`: ``upsample``, ``color_transform`` or ``auto``)."""
        from ..imaging.fullres import to_original_size

        prepared = prepared.expand(int(working_images.shape[0]))
        return to_original_size(working_images, prepared, paste_back=paste_back, feather=feather, mode=fullres_mode)

    # ------------------------------------------------------------------ controller
    @torch.inference_mode()
    def residuals(self, prepared: imaging.Prepared, plan: SamplingPlan | Sequence, strength: float = 1.0,
                  reference: Reference | PreparedReference | None = None, *, placement: str = DEFAULT_PLACEMENT,
                  timestep_batch: int | None = None, callback=None,
                  cache: ResidualCache | None = None) -> Residuals | None:
        """Harmony Controller residuals for every timestep of ``plan`` (or a list of timesteps).

        ``strength`` scales them (0 = no controller: returns None); ``reference`` chooses where
        MACA's background statistic comes from (:mod:`r2r.pipeline.reference`). ``placement``:
        where they wait (``recompute``: computed per step inside the loop, the controller staying
        loaded). ``cache``: a :class:`ResidualCache` to reuse and fill (timesteps found there run
        no controller). ``callback(i, total)`` after each computed timestep.
        """
        strength = check("strength", strength, "strength")
        if strength == 0.0:
            return None
        if not self.models.has("controller"):
            raise missing_network("controller", "Load the release with the controller, or use strength 0.")
        reference = self.prepare_reference(reference, prepared)
        batch = output_batch(prepared.batch_size, reference)
        timesteps = list(plan.timesteps) if isinstance(plan, SamplingPlan) else [float(t) for t in plan]
        dtype, device = self.models.dtype("controller"), self.device
        latent_hw = prepared.latent_size
        nbytes = len(timesteps) * memory.residual_bytes_per_step(self.models.config("controller"), batch, latent_hw,
                                                                 dtype)
        where = memory.choose_placement(placement, nbytes, device, "controller residuals", self.models.free_memory())

        def inputs():
            photos = 0 if reference is None or reference.photo is None else reference.batch_size  # their own pass
            controller = self.models.get("controller", self.controller_memory(prepared, batch + photos))
            p = prepared.expand(batch)
            ref_mask, ref_hint = (None, None) if reference is None else reference.controller_inputs(device, dtype)
            return (controller, p.hint.to(device, dtype), p.latent_mask.to(device, dtype),
                    self.prompt_embeds.to(device, dtype), ref_mask, ref_hint)

        if where == "recompute":
            ctrl, hint, mask, text, ref_mask, ref_hint = inputs()

            def on_the_fly(i, t):
                with torch.inference_mode():
                    return sampling.controller_residuals(ctrl, hint, mask, [t], text, conditioning_scale=strength,
                                                         reference_mask=ref_mask, reference_hint=ref_hint)[0]
            return Residuals(None, on_the_fly, where, batch)
        key = (prepared.key, None if reference is None else reference.key, strength, str(device), str(dtype), batch)
        found = cache.lookup(key, timesteps) if cache is not None else [None] * len(timesteps)
        missing = [t for t, e in zip(timesteps, found) if e is None]
        if missing:
            ctrl, hint, mask, text, ref_mask, ref_hint = inputs()
            if timestep_batch is None:
                timestep_batch = self.auto_timestep_batch(prepared, len(missing), batch)
            computed = sampling.controller_residuals(
                ctrl, hint, mask, missing, text, conditioning_scale=strength, reference_mask=ref_mask,
                reference_hint=ref_hint, timestep_batch=timestep_batch, callback=callback,
                store_device="cpu" if where == "host" else None)
            by_t = dict(zip(missing, computed))
            found = [e if e is not None else by_t[t] for t, e in zip(timesteps, found)]
            if cache is not None:
                for t, entry in by_t.items():
                    cache.store(key, t, entry)
            self.models.release("controller")
        else:
            log.info("controller residuals: all %d timesteps reused (no controller run)", len(timesteps))
        return Residuals(found, None, where, batch)

    def auto_timestep_batch(self, prepared: imaging.Prepared, n_timesteps: int, batch: int | None = None) -> int:
        """Timesteps per controller forward: 1 on the CPU; on an accelerator as many as fit in half the free memory."""
        free = self.models.free_memory()
        if self.device.type == "cpu" or free is None or n_timesteps <= 1:
            return 1
        batch = batch or prepared.batch_size
        dtype = self.models.dtype("controller")
        per_step = memory.residual_bytes_per_step(self.models.config("controller"), batch, prepared.latent_size,
                                                  dtype)
        activations = memory.controller_activation_bytes(batch, prepared.latent_size, dtype)
        return int(max(1, min(n_timesteps, (free * 0.5) // (per_step + activations))))

    # ------------------------------------------------------------------ U-Net
    @torch.inference_mode()
    def sample(self, prepared: imaging.Prepared, encoded: EncodedComposite, residuals: Residuals | None,
               plan: SamplingPlan, noise=None, *, seeds: Sequence[int] | None = None, noise_device: str = "cpu",
               callback=None, preview=None, free_residuals: bool = False) -> torch.Tensor:
        """The U-Net loop -> float32 latents (scaled), drawing random numbers in the official order
        (:mod:`r2r.pipeline.sampling`) from ``noise``: an int seed, a ``torch.Generator``, a list of
        either (one per batch item) or a :class:`~r2r.pipeline.noise.NoiseSource` (the hook).

        ``seeds``: several runs, one per seed -> ``[len(seeds) * B, ...]`` (seed-major), each the
        latents a run with that seed alone gives. For one composite they go through batched U-Net
        forwards, as many seeds at a time as the free memory allows (:func:`r2r.pipeline.memory.seeds_per_forward`).
        ``noise_device``: where an int seed draws (``cpu`` | ``device``, :mod:`r2r.pipeline.noise`).
        ``callback(step, total)`` after every model evaluation (over all seeds); ``preview(step, x0)``
        with the predicted clean latent.
        """
        batch = max(prepared.batch_size, encoded.batch_size, residuals.batch if residuals is not None else 1)
        if seeds is None:
            source = noise_source(noise, noise_device)
            return self._loop(prepared.expand(batch), encoded.expand(batch), residuals, plan, source, callback,
                              preview, free_residuals)
        if noise is not None:
            raise R2RUserError("sample() takes noise= (one run) or seeds= (one run per seed), not both.")
        seeds = [check("seed", s, "seed") for s in seeds]
        if not seeds:
            raise R2RUserError("sample(seeds=...) needs at least one seed; got an empty list.")
        total = plan.evaluations * len(seeds)
        if batch == 1 and len(seeds) > 1:
            per_seed = memory.unet_activation_bytes(1, prepared.latent_size, self.models.dtype("unet"))
            n = memory.seeds_per_forward(len(seeds), per_seed, self.device, self.models.free_memory())
            groups = [seeds[i:i + n] for i in range(0, len(seeds), n)]
        else:
            groups = [[s] for s in seeds]
        out, done = [], 0
        for group in groups:
            source = ItemSeeds(tuple(group), noise_device) if len(group) > 1 else Seed(group[0], noise_device)
            k = len(group) * batch
            step_cb = None if callback is None else (lambda i, n, d=done: callback(d + i, total))
            out.append(self._loop(prepared.expand(k), encoded.expand(k), residuals, plan, source, step_cb, preview,
                                  False))
            done += plan.evaluations
        return torch.cat(out)

    def _loop(self, prepared, encoded, residuals, plan, source, callback, preview, free_residuals):
        unet = self.models.get("unet", self.unet_memory(prepared))
        device = self.device
        generator = source.generators(prepared.batch_size, device)
        res = residuals.consuming() if residuals is not None and free_residuals else residuals
        latents = sampling.denoise(
            unet, plan.scheduler(device), encoded.posterior(device), prepared.latent_mask.to(device),
            self.prompt_embeds, res, generator, plan.steps, callback, scaling_factor=encoded.scaling_factor,
            preview=preview)
        if residuals is not None and residuals.recomputed:
            self.models.release("controller")
        self.models.release("unet")
        return latents

    def composite_latent(self, encoded: EncodedComposite, noise=0, how: str = "sample",
                         noise_device: str = "cpu") -> torch.Tensor:
        """The composite's UNSCALED latent for the U-Net's concat input, float32 on the CPU (the KSampler
        path): ``"sample"`` draws it as :meth:`sample` does for ``noise`` (the initial noise first, then
        the posterior sample, from the same generator); ``"mean"``: the posterior mean."""
        if how == "mean":
            return encoded.mean.detach().to("cpu", torch.float32)
        if how != "sample":
            raise R2RUserError(f"composite_latent how must be 'sample' or 'mean'; got {how!r}.")
        device = self.device if noise_device == "device" else torch.device("cpu")
        generator = noise_source(noise, noise_device).generators(encoded.batch_size, self.device)
        with torch.inference_mode():
            _, z, _, _ = sampling.draw_start(encoded.posterior(device), generator, device, self.models.dtype("unet"),
                                             scaling_factor=1.0)
        return z.to("cpu", torch.float32)

    # ------------------------------------------------------------------ memory estimates (bytes)
    # what a phase needs beside the weights; the ComfyUI nodes hand these to ComfyUI's model management
    def unet_memory(self, prepared: imaging.Prepared) -> int:
        return memory.unet_activation_bytes(prepared.batch_size, prepared.latent_size, self.models.dtype("unet"))

    def controller_memory(self, prepared: imaging.Prepared, batch: int | None = None) -> int:
        return memory.controller_activation_bytes(batch or prepared.batch_size, prepared.latent_size,
                                                  self.models.dtype("controller"))

    def vae_memory(self, prepared, which: str, working_hw=None, batch: int | None = None) -> int:
        """The untiled Clear-VAE pass's activations, capped at the banding budget (above it the VAE is banded)."""
        working_hw = working_hw or tuple(prepared.geometry.working_size)
        batch = batch or prepared.batch_size
        extra = memory.vae_activation_bytes(working_hw, batch, self.models.dtype("clear_vae"),
                                            self.models.config("clear_vae"), which)
        return min(extra, self._vae_budget())

    def _vae_budget(self) -> int:
        return memory.vae_budget_bytes(self.models.free_memory(), tiling.memory_budget_bytes())


