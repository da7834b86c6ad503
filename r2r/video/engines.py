"""The harmonizers a clip runs through: what the temporal modes need from each.

An engine turns a chunk of frames into either finished frames (``outputs``: the ``independent`` and
``shared_noise`` modes) or per-frame colour-transform parameters (``params``: ``smoothed`` and
``keyframes``), which :mod:`r2r.video.temporal` smooths or interpolates and ``apply`` puts on a
frame. Parameters are flat float arrays that blend linearly.

* :class:`StatisticsEngine` — the weight-free harmonizer (:mod:`r2r.blending.harmonizer`): the
  parameters are its Lab gain and offset (6 numbers); the noise modes are the same as
  ``independent`` (nothing random).
* :class:`R2REngine` — R2R through :class:`~r2r.pipeline.R2RPipeline`'s stages, a chunk of frames per
  batch (chunk size by free memory, :func:`r2r.pipeline.memory.frames_per_chunk`): ``independent``
  draws frame ``i`` from seed ``seed + i`` (:class:`~r2r.pipeline.ItemSeeds`: frame i is the picture
  that frame alone gives with that seed, whatever the chunking), the other modes give every frame the
  same noise (:class:`~r2r.pipeline.SharedSeed`), so identical frames give identical results. The
  parameters are the object-relative colour-transform grid of :mod:`r2r.video.transforms`. Chunks
  whose frames and masks repeat the previous chunk's reuse its controller residuals
  (:class:`~r2r.pipeline.ResidualCache`; the residuals depend on the frame's hint, not on the noise).

``model_seconds`` (wall) and ``model_cpu_seconds`` (this process's CPU time) count the time spent making
outputs / parameters (the networks for R2R), the figures the ``keyframes`` speed-up is measured on.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from ..errors import R2RUserError
from ..params import DEFAULT_FULLRES_MODE, check
from . import transforms
from .clip import empty_mask_problem

log = logging.getLogger(__name__)


class _Timed:
    """Adds the wall time and the process CPU time of a block to an engine's ``model_seconds`` /
    ``model_cpu_seconds`` (CPU time: what the work cost this process, whatever else the machine runs)."""

    def __init__(self, engine):
        self.engine = engine

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.engine.model_seconds += time.perf_counter() - self.wall
        self.engine.model_cpu_seconds += time.process_time() - self.cpu
        return False


class StatisticsEngine:
    """The weight-free Lab-statistics harmonizer (``strength`` 0..1; optional reference photo)."""

    name = "weight-free statistics"
    uses_noise = False

    def __init__(self, strength: float = 1.0, reference_image=None, reference_image_mask=None):
        self.strength = check("statistics_strength", strength, "strength")
        self.reference_image, self.reference_image_mask = reference_image, reference_image_mask
        self.model_seconds = self.model_cpu_seconds = 0.0

    def mask_problem(self, mask: np.ndarray) -> str | None:
        return empty_mask_problem(mask)

    def chunk_frames(self, size) -> int:
        return 1

    def params(self, frames, masks, refs, indices, shared: bool) -> list[np.ndarray]:
        from ..blending.harmonizer import statistics_params

        out = []
        with _Timed(self):
            for frame, mask, ref in zip(frames, masks, refs):
                gain, offset = statistics_params(frame, mask, self.strength, reference_mask=ref,
                                                 reference_image=self.reference_image,
                                                 reference_image_mask=self.reference_image_mask)
                out.append(np.concatenate([gain, offset]).astype(np.float32))
        return out

    def outputs(self, frames, masks, refs, indices, shared: bool) -> list[np.ndarray]:
        params = self.params(frames, masks, refs, indices, shared)
        with _Timed(self):
            return [self.apply(f, m, p) for f, m, p in zip(frames, masks, params)]

    def apply(self, frame: np.ndarray, mask: np.ndarray, params: np.ndarray) -> np.ndarray:
        from ..blending.harmonizer import apply_statistics

        return apply_statistics(frame, mask, params[:3], params[3:6])


class R2REngine:
    """R2R over a pipeline (an :class:`~r2r.pipeline.R2RPipeline`, or a function returning one, called at
    the first chunk so that a clip is checked before the weights load). The settings are the pipeline
    call's; ``chunk_frames`` fixes the frames per batch (default: by free memory)."""

    name = "R2R"
    uses_noise = True

    def __init__(self, pipe, *, steps: int = 10, seed: int = 0, max_side: int = 1024, resize_mode: str = "fit",
                 strength: float = 1.0, scheduler: str | None = None, noise_device: str = "cpu",
                 feather: int | None = None, fullres_mode: str = DEFAULT_FULLRES_MODE, paste_back: bool = True,
                 reference=None, grid: int = transforms.GRID, chunk_frames: int | None = None):
        self._pipe = pipe
        self.steps = check("steps", steps, "steps")
        self.seed = check("seed", seed, "seed")
        self.max_side = check("max_side", max_side, "max_side")
        self.resize_mode = check("resize_mode", resize_mode, "resize_mode")
        self.strength = check("strength", strength, "strength")
        self.noise_device = check("noise_device", noise_device, "noise_device")
        self.fullres_mode = check("fullres_mode", fullres_mode, "fullres_mode")
        self.feather = None if feather is None or feather < 0 else check("feather", feather, "feather")
        self.scheduler = scheduler if scheduler is None else check("scheduler", scheduler, "scheduler")
        self.paste_back, self.reference, self.grid = bool(paste_back), reference, int(grid)
        self.fixed_chunk = chunk_frames
        self.model_seconds = self.model_cpu_seconds = 0.0
        self._cache = None

    @property
    def pipe(self):
        if not hasattr(self._pipe, "prepare"):
            self._pipe = self._pipe()
        return self._pipe

    def _geometry(self, size):
        from ..devices import resolve_max_side
        from ..imaging import compute_geometry

        device = self.pipe.device if hasattr(self._pipe, "prepare") else "cpu"
        return compute_geometry(int(size[0]), int(size[1]), resolve_max_side(self.max_side, device),
                                self.resize_mode)

    def mask_problem(self, mask: np.ndarray) -> str | None:
        """``prepare``'s mask rules without the image work: empty / whole frame / gone at the working or
        latent resolution."""
        import torch

        from ..imaging import latent_mask_from, to_working

        why = empty_mask_problem(mask)
        if why:
            return why
        geometry = self._geometry(mask.shape)
        working = (to_working(torch.from_numpy(mask)[None, None], geometry, pad_value=0.0) >= 0.5).float()
        if working.sum() == 0 or working.sum() == working.numel():
            return f"the mask is {'empty' if working.sum() == 0 else 'full'} at the working resolution"
        if latent_mask_from(working).sum() == 0:
            return "the mask is too thin for the model at the latent resolution (increase max_side)"
        return None

    def chunk_frames(self, size) -> int:
        """Frames per batch: ``chunk_frames`` if given, else what fits (:func:`r2r.pipeline.memory.frames_per_chunk`)."""
        if self.fixed_chunk:
            return int(self.fixed_chunk)
        from ..pipeline import memory

        pipe = self.pipe
        geometry = self._geometry(size)
        latent = (geometry.working_size[0] // 8, geometry.working_size[1] // 8)
        per_frame = memory.clip_frame_bytes(pipe.models, geometry.working_size, latent, size, self.steps,
                                            self.strength > 0)
        return memory.frames_per_chunk(per_frame, pipe.device, pipe.models.free_memory())

    def _decoded(self, frames, masks, refs, indices, shared):
        import torch

        from ..devices import resolve_max_side
        from ..pipeline import ItemSeeds, Reference, ResidualCache, SharedSeed

        pipe = self.pipe
        comp = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
        mask = torch.from_numpy(np.stack(masks))[:, None]
        reference = self.reference
        if refs and refs[0] is not None:
            if reference is not None:
                raise R2RUserError("Give either reference masks (regions of the frames) or a reference photo, not "
                                   "both.")
            reference = Reference(mask=torch.from_numpy(np.stack(refs))[:, None])
        prepared = pipe.prepare(comp, mask, max_side=resolve_max_side(self.max_side, pipe.device),
                                resize_mode=self.resize_mode)
        plan = pipe.plan(self.steps, self.scheduler)
        encoded = pipe.encode(prepared)
        if self._cache is None:
            self._cache = ResidualCache()
        res = pipe.residuals(prepared, plan, self.strength, reference, cache=self._cache)
        noise = SharedSeed(self.seed, self.noise_device) if shared else \
            ItemSeeds(tuple((self.seed + int(i)) % 2**64 for i in indices), self.noise_device)
        latents = pipe.sample(prepared, encoded, res, plan, noise, free_residuals=True)
        del res
        working = pipe.decode(latents, encoded, prepared)
        return working, prepared

    def outputs(self, frames, masks, refs, indices, shared: bool) -> list[np.ndarray]:
        with _Timed(self):
            working, prepared = self._decoded(frames, masks, refs, indices, shared)
            images = self.pipe.restore(working, prepared, paste_back=self.paste_back, feather=self.feather,
                                       fullres_mode=self.fullres_mode)
            return [images[k].permute(1, 2, 0).float().cpu().numpy() for k in range(images.shape[0])]

    def params(self, frames, masks, refs, indices, shared: bool) -> list[np.ndarray]:
        with _Timed(self):
            working, prepared = self._decoded(frames, masks, refs, indices, shared)
            return fit_decoded(working, prepared, masks, self.grid)

    def apply(self, frame: np.ndarray, mask: np.ndarray, params: np.ndarray) -> np.ndarray:
        feather = self.feather
        if feather is None:
            from ..imaging import pasteback

            feather = pasteback.default_feather(self._geometry(mask.shape))
        return apply_transform(frame, mask, params, int(feather))


class DecodedEngine:
    """The transform modes over results already decoded (the four-node chain's Clear-VAE Decode): ``params``
    fits frame ``i``'s transform from ``working[i]`` of ``prepared``; nothing runs a network."""

    name = "decoded"
    uses_noise = False
    paste_back = True

    def __init__(self, working, prepared, feather: int | None = None, grid: int = transforms.GRID):
        from ..imaging import pasteback

        self.working, self.prepared, self.grid = working, prepared, int(grid)
        self.feather = pasteback.default_feather(prepared.geometry) if feather is None or feather < 0 else \
            int(feather)
        self.model_seconds = self.model_cpu_seconds = 0.0

    def mask_problem(self, mask: np.ndarray) -> str | None:
        return empty_mask_problem(mask)

    def chunk_frames(self, size) -> int:
        return int(self.working.shape[0])

    def params(self, frames, masks, refs, indices, shared: bool) -> list[np.ndarray]:
        with _Timed(self):
            idx = list(indices)
            sub = self.prepared.expand(int(self.working.shape[0]))
            picked = dataclasses.replace(sub, composite_pm1=sub.composite_pm1[idx])
            return fit_decoded(self.working[idx], picked, masks, self.grid)

    def apply(self, frame: np.ndarray, mask: np.ndarray, params: np.ndarray) -> np.ndarray:
        return apply_transform(frame, mask, params, self.feather)


def fit_decoded(working, prepared, masks, grid: int = transforms.GRID) -> list[np.ndarray]:
    """The object-relative transform (:mod:`r2r.video.transforms`) of each decoded working image
    (``[B,3,h,w]`` on ``prepared``'s canvas) against the composite as the model saw it, inside ``masks``
    (the frames' ``HxW`` masks at full resolution)."""
    top, bottom, left, right = prepared.geometry.padding
    h, w = prepared.geometry.working_size
    low = working[..., top:h - bottom, left:w - right].float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    comp = (prepared.composite_pm1.float() * 0.5 + 0.5)[..., top:h - bottom, left:w - right]
    comp = comp.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for k, m in enumerate(masks):
        mask_low = transforms.resize_to(m[..., None], low.shape[1:3])[..., 0]
        out.append(transforms.fit_object_transform(comp[k], low[k], mask_low, grid))
    return out


def apply_transform(frame: np.ndarray, mask: np.ndarray, params: np.ndarray, feather: int) -> np.ndarray:
    """``params`` applied to the full-resolution frame inside the mask feathered by ``feather`` px (as the
    pipeline's paste-back: :func:`r2r.imaging.pasteback.feather_alpha`)."""
    import torch

    from ..imaging import pasteback

    box = transforms.object_box(mask)
    if box is None:
        return frame.astype(np.float32, copy=True)
    alpha = pasteback.feather_alpha(torch.from_numpy(mask)[None, None], int(feather))[0, 0].numpy()
    return transforms.apply_object_transform(frame, alpha, box, params)
