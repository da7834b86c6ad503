"""R2RPipeline: composite + mask -> harmonized image (ref §a).

    from r2r import R2RPipeline
    pipe = R2RPipeline.from_pretrained("models/r2r/region2region", torch_dtype=torch.float16, device="cuda")
    out = pipe(composite, mask, num_inference_steps=10, generator=0)
    out.images        # [B,3,H,W] in [0, 1] at the original resolution, background pasted back

Flow (official, see :mod:`r2r.sampling` for the random-number order): 7-channel hint ->
Clear-VAE posterior of the composite (a SAMPLE times the scaling factor is the U-Net's
"masked image" latent) -> nearest latent mask -> controller residuals + U-Net per
Euler-ancestral step -> Clear-VAE decode with the composite's encoder skips.
Unlike the official code, the composite is encoded once and its skips are reused for
decoding; the discarded posterior draw of the second encode is still taken, so a seed
gives the official result.

The stage methods (:meth:`R2RPipeline.prepare`, :meth:`encode`, :meth:`residuals`,
:meth:`denoise`, :meth:`decode`, :meth:`restore`) are what the ComfyUI nodes call
separately; ``__call__`` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import imaging, sampling, tiling
from .errors import R2RUserError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


FULLRES_MODES = ("auto", "color_transform", "upsample")


def _check_fullres_mode(mode: str) -> None:
    if mode not in FULLRES_MODES:
        raise R2RUserError(f"fullres_mode must be one of {FULLRES_MODES}; got {mode!r}.")


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise R2RUserError(f"Unsupported dtype {dtype!r}; expected one of fp32, bf16, fp16 (or the torch dtypes).")


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise R2RUserError(f"Unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise R2RUserError(f"Device {device!r} was requested but CUDA is not available here; use --device cpu.")
    return dev


def make_generator(generator, device="cpu"):
    """``None`` | int seed | ``torch.Generator`` | list of generators -> what randn_tensor takes.

    An int seed makes a CPU generator, so the same seed gives the same noise on any device.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        return [make_generator(g, device) for g in generator]
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise R2RUserError(f"generator must be None, an int seed or a torch.Generator; got {type(generator).__name__}.")
    return torch.Generator(device="cpu").manual_seed(int(generator))


@dataclass
class EncodedComposite:
    """The Clear-VAE encoding of the composite: posterior (for the U-Net latent) + raw skips (for decoding)."""

    posterior: object  # diffusers DiagonalGaussianDistribution, unscaled
    skips: list | None  # 12 raw encoder features; None when dropped to save memory
    scaling_factor: float = 0.18215


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


class R2RPipeline:
    """R2R harmonization: components from :func:`r2r.weights.load_components`."""

    def __init__(self, components, scheduler: str = sampling.DEFAULT_SCHEDULER):
        for name in ("unet", "controller", "clear_vae", "scheduler_config", "prompt_embeds"):
            if not hasattr(components, name):
                raise R2RUserError(f"R2RPipeline needs R2RComponents (from r2r.weights.load_components); missing {name!r}.")
        for name in ("unet", "clear_vae"):
            if getattr(components, name) is None:
                raise R2RUserError(
                    f"R2RPipeline needs the {name} loaded; load_components(..., components=...) left it out. "
                    "Load with the default components=('unet', 'controller', 'clear_vae')."
                )
        self.components = components
        self.unet = components.unet
        self.controller = components.controller
        self.clear_vae = components.clear_vae
        self.scheduler_config = dict(components.scheduler_config)
        self.prompt_embeds = components.prompt_embeds
        self.scheduler_name = scheduler
        sampling.make_scheduler(self.scheduler_config, scheduler)  # validate the name now
        for module in (self.unet, self.controller, self.clear_vae):
            if module is not None:
                module.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path_or_repo_id, torch_dtype=torch.float32, device="cpu", scheduler=sampling.DEFAULT_SCHEDULER,
                        **load_kwargs) -> R2RPipeline:
        """Load a release (hub-layout folder, hub repo id or dict of single files) via ``r2r.weights``."""
        from .weights import load_components

        components = load_components(
            path_or_repo_id, torch_dtype=resolve_dtype(torch_dtype), device=str(resolve_device(device)), **load_kwargs
        )
        return cls(components, scheduler=scheduler)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.clear_vae.config, "scaling_factor", 0.18215))

    def to(self, device=None, dtype=None) -> R2RPipeline:
        device = None if device is None else resolve_device(device)
        dtype = None if dtype is None else resolve_dtype(dtype)
        for module in (self.unet, self.controller, self.clear_vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)
        return self

    def make_scheduler(self, name: str | None = None):
        return sampling.make_scheduler(self.scheduler_config, name or self.scheduler_name)

    # ------------------------------------------------------------------ stages
    def prepare(self, composite, mask, max_side: int = 1024, resize_mode: str = "fit",
                canny_at: str = "original") -> imaging.Prepared:
        """Validate inputs and build the working-resolution tensors (float32, on the pipeline's device)."""
        prepared = imaging.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode, canny_at=canny_at)
        return prepared.to(device=self.device)

    @torch.inference_mode()
    def encode(self, prepared: imaging.Prepared, keep_skips: bool = True) -> EncodedComposite:
        """Clear-VAE encode of the composite: posterior + raw skips (one encoder pass)."""
        x = prepared.composite_pm1.to(device=self.device, dtype=self.clear_vae.dtype)
        # banded ("tiled") encode above the memory budget or on out-of-memory; identical maths otherwise
        posterior, skips = tiling.encode_with_skips_auto(self.clear_vae, x)
        return EncodedComposite(posterior, skips if keep_skips else None, self.scaling_factor)

    def auto_timestep_batch(self, prepared: imaging.Prepared, n_timesteps: int) -> int:
        """How many timesteps to batch through the controller: 1 on CPU, as many as fit in half the free GPU memory."""
        if self.device.type != "cuda" or n_timesteps <= 1:
            return 1
        h, w = prepared.latent_mask.shape[-2:]
        channels = self.controller.config.block_out_channels
        itemsize = torch.finfo(self.controller.dtype).bits // 8
        per_step = prepared.batch_size * h * w * itemsize * (
            4 * channels[0] + 4 * channels[1] / 4 + 4 * channels[2] / 16 + 4 * channels[-1] / 64
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(n_timesteps, (free * 0.5) // (12 * per_step))))

    @torch.inference_mode()
    def residuals(self, prepared: imaging.Prepared, timesteps, timestep_batch: int | None = None, callback=None,
                  offload_device=None) -> list:
        """Harmony Controller residuals for every timestep (before denoising; the controller can then be freed)."""
        dtype = self.controller.dtype
        if timestep_batch is None:
            timestep_batch = self.auto_timestep_batch(prepared, len(timesteps))
        return sampling.controller_residuals(
            self.controller, prepared.hint.to(self.device, dtype), prepared.latent_mask.to(self.device, dtype),
            timesteps, self.prompt_embeds.to(self.device, dtype), timestep_batch=timestep_batch,
            callback=callback, offload_device=offload_device,
        )

    @torch.inference_mode()
    def denoise(self, prepared: imaging.Prepared, encoded: EncodedComposite, residuals, generator=None,
                num_inference_steps: int = 10, scheduler=None, callback=None, draw_decode_noise: bool = True,
                free_residuals: bool = False):
        """The denoising loop (official RNG order); returns float32 latents (scaled)."""
        if scheduler is None or isinstance(scheduler, str):
            scheduler = self.make_scheduler(scheduler)
        return sampling.denoise(
            self.unet, scheduler, encoded.posterior, prepared.latent_mask.to(self.device), self.prompt_embeds,
            residuals, make_generator(generator, self.device), num_inference_steps, callback,
            scaling_factor=encoded.scaling_factor, draw_decode_noise=draw_decode_noise,
            free_residuals=free_residuals,
        )

    @torch.inference_mode()
    def decode(self, latents, encoded: EncodedComposite | None = None, prepared: imaging.Prepared | None = None):
        """Clear-VAE decode with the composite's skips -> ``[B,3,h,w]`` float32 in [0, 1].

        Uses ``encoded.skips``; when they were dropped, re-encodes ``prepared``'s composite.
        """
        vae = self.clear_vae
        skips = encoded.skips if encoded is not None else None
        if skips is None:
            if prepared is None:
                raise R2RUserError("decode needs the composite's encoder skips: pass encoded= (with skips) or prepared=.")
            _, skips = tiling.encode_with_skips_auto(vae, prepared.composite_pm1.to(self.device, vae.dtype))
        z = latents.to(device=self.device, dtype=vae.dtype) / self.scaling_factor
        image = tiling.decode_with_skips_auto(vae, z, skips)
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def restore(self, working_images, prepared: imaging.Prepared, paste_back: bool = True, feather: int | None = None,
                fullres_mode: str = "auto"):
        """Back to the original resolution with the original background pasted back.

        ``fullres_mode="upsample"`` resizes the working-resolution result (:func:`r2r.imaging.restore`);
        ``"color_transform"`` carries the harmonization to the original resolution as a local colour
        transform fitted at the working resolution, so the original foreground detail survives
        (:func:`r2r.fullres.restore_fullres`); ``"auto"`` (default) picks the colour transform when
        the original is larger than the working resolution.
        """
        from .fullres import restore_output

        _check_fullres_mode(fullres_mode)
        return restore_output(working_images, prepared, paste_back=paste_back, feather=feather, mode=fullres_mode)

    # ------------------------------------------------------------------ all in one
    @torch.inference_mode()
    def __call__(self, composite, mask, num_inference_steps: int = 10, generator=None, max_side: int = 1024,
                 paste_back: bool = True, feather: int | None = None, resize_mode: str = "fit",
                 canny_at: str = "original", scheduler: str | None = None, use_controller: bool = True,
                 callback=None, timestep_batch: int | None = None, keep_skips: bool = True,
                 fullres_mode: str = "auto") -> R2ROutput:
        """Harmonize ``composite`` (``[B,3,H,W]`` 0..1 tensor, ``HxWx3`` uint8 array, PIL image) inside ``mask``.

        ``generator``: int seed, ``torch.Generator`` or None. ``feather``: paste-back band
        in original pixels (None = one latent cell, 0 = hard paste with the soft mask).
        ``fullres_mode``: how the result reaches the original resolution (see :meth:`restore`).
        ``keep_skips=False`` re-encodes the composite for decoding (the official way; less
        memory held during denoising, same result). ``callback(step, total)`` after each
        denoising step; raise from it to cancel.
        """
        _check_fullres_mode(fullres_mode)
        prepared = self.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode, canny_at=canny_at)
        sched = self.make_scheduler(scheduler)
        timesteps = sampling.set_timesteps(sched, num_inference_steps, device=self.device)
        if use_controller and self.controller is None:
            raise R2RUserError(
                "This pipeline was loaded without the Harmony Controller; load it (components=('unet', 'controller', "
                "'clear_vae')) or call with use_controller=False."
            )
        residuals = self.residuals(prepared, timesteps, timestep_batch) if use_controller else None
        encoded = self.encode(prepared, keep_skips=keep_skips)
        latents = self.denoise(prepared, encoded, residuals, generator, num_inference_steps, sched, callback,
                               free_residuals=True)
        del residuals
        working = self.decode(latents, encoded, prepared)
        del encoded
        images = self.restore(working, prepared, paste_back=paste_back, feather=feather, fullres_mode=fullres_mode)
        return R2ROutput(images=images, working_images=working, latents=latents, prepared=prepared)


# ---------------------------------------------------------------------- low-memory flow
def _park_skips(skips, device: torch.device):
    """Move the encoder skips out of the way while the controller and U-Net run: host memory on
    an accelerator, a temporary safetensors file on the CPU (lossless either way)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    if device.type != "cpu":
        return [s.to("cpu") for s in skips]
    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="r2r-skips-")
    os.close(fd)
    try:
        save_file({str(i): s.contiguous() for i, s in enumerate(skips)}, path)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _unpark_skips(parked, device: torch.device):
    import os

    from safetensors.torch import load_file

    if isinstance(parked, str):
        try:
            loaded = load_file(parked)
        finally:
            os.unlink(parked)
        return [loaded.pop(str(i)) for i in range(len(loaded))]
    return [s.to(device) for s in parked]


def harmonize_low_memory(source, composite, mask, *, torch_dtype=torch.float32, device="cpu",
                         num_inference_steps: int = 10, generator=None, max_side: int = 1024,
                         resize_mode: str = "fit", paste_back: bool = True, feather: int | None = None,
                         fullres_mode: str = "auto", scheduler: str | None = None, callback=None,
                         park_skips: bool = True, **load_kwargs) -> R2ROutput:
    """The same result as ``R2RPipeline.from_pretrained(source)(composite, mask, ...)`` with at most one
    network in memory at a time.

    Order: Clear-VAE encode (one pass: posterior + skips) -> the VAE is released and the skips parked
    (``park_skips``) -> Harmony Controller residuals for every timestep (the controller never sees the
    noisy latent) -> controller released -> U-Net denoising -> U-Net released -> Clear-VAE decode with
    the composite's skips. Each network is read from ``source`` straight to ``device``/``torch_dtype``
    when its phase starts, so loading time is part of the call: use it for big images or small
    machines, and :class:`R2RPipeline` to harmonize many images with the models kept loaded.
    """
    import gc

    from .fullres import restore_output
    from .weights import load_components

    _check_fullres_mode(fullres_mode)
    dtype, device = resolve_dtype(torch_dtype), resolve_device(device)

    def load(name):
        return load_components(source, torch_dtype=dtype, device=str(device), components=(name,), **load_kwargs)

    def release():
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    prepared = imaging.prepare(composite, mask, max_side=max_side, resize_mode=resize_mode).to(device=device)
    with torch.inference_mode():
        parts = load("clear_vae")
        vae = parts.clear_vae.eval()
        sched = sampling.make_scheduler(parts.scheduler_config, scheduler or sampling.DEFAULT_SCHEDULER)
        timesteps = sampling.set_timesteps(sched, num_inference_steps, device=device)
        text = parts.prompt_embeds.to(device, dtype)
        scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        posterior, skips = tiling.encode_with_skips_auto(vae, prepared.composite_pm1.to(device, dtype))
        parked = _park_skips(skips, device) if park_skips else skips
        del parts, vae, skips
        release()

        controller = load("controller").controller.eval()
        residuals = sampling.controller_residuals(controller, prepared.hint.to(device, dtype),
                                                  prepared.latent_mask.to(device, dtype), timesteps, text)
        del controller
        release()

        unet = load("unet").unet.eval()
        latents = sampling.denoise(unet, sched, posterior, prepared.latent_mask.to(device), text, residuals,
                                   make_generator(generator, device), num_inference_steps, callback,
                                   scaling_factor=scaling_factor, free_residuals=True)
        del unet, residuals
        release()

        vae = load("clear_vae").clear_vae.eval()
        skips = _unpark_skips(parked, device) if park_skips else parked
        z = latents.to(device=device, dtype=vae.dtype) / scaling_factor
        decoded = tiling.decode_with_skips_auto(vae, z, skips, consume_skips=True)
        del vae, skips
    working = (decoded.float() / 2 + 0.5).clamp(0, 1)
    images = restore_output(working, prepared, paste_back=paste_back, feather=feather, mode=fullres_mode)
    return R2ROutput(images=images, working_images=working, latents=latents, prepared=prepared)
