"""Memory estimates and the placement rule for what waits between stages.

Estimates (bytes) are used in two places: the ComfyUI nodes pass them to ComfyUI's model
management (``load_models_gpu(..., memory_required=...)``) so it frees other models before an
R2R network runs, and the placement rule below decides where the controller residuals and the
Clear-VAE skips wait.

* U-Net / controller activations follow ComfyUI's own SD1.5 factor (0.01 MiB per latent pixel
  per byte of dtype per batch item; the controller, half a U-Net, is counted as 0.6 of it).
* Clear-VAE activations come from :func:`r2r.imaging.tiling.estimate_vae_memory` (calibrated on measured
  peaks).
* Residual and skip sizes are exact element counts from the configs (or the tensors).

Placement (``placement`` = ``"auto" | "device" | "host" | "recompute"``, see
:data:`r2r.params.PLACEMENTS`):

* ``device``: keep it on the compute device (fastest);
* ``host``: keep it in CPU RAM and move each piece to the device when used;
* ``recompute``: do not keep it (residuals: the controller runs inside the denoising loop; skips:
  the composite is encoded again for decoding, as the official code does);
* ``auto``: on the CPU, ``device`` (the device *is* host RAM) unless it would take more than
  :data:`HOST_SHARE` (a quarter) of the available RAM, then ``recompute``; on an accelerator,
  ``device`` when it takes at most :data:`DEVICE_SHARE` (10 %) of the free device memory the model
  source reports (ComfyUI's own figure inside ComfyUI), else ``host`` when it takes at most a
  quarter of the available RAM, else ``recompute``. Every choice is logged (logger ``r2r.pipeline.memory``).

Batched seeds (:func:`seeds_per_forward`), the Clear-VAE band budget (:func:`vae_budget_bytes`) and
the frames of a clip per batch (:func:`frames_per_chunk`, :mod:`r2r.video`) are sized from the same
free-memory figure.
"""

from __future__ import annotations

import logging

from ..params import PLACEMENTS, check_choice

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: auto placement: keep on the accelerator what takes at most this share of its free memory
DEVICE_SHARE = 0.10
#: ... else in host RAM what takes at most this share of the available RAM (else recompute)
HOST_SHARE = 0.25
#: batched seeds: their U-Net activations may take this share of the free memory
SEED_BATCH_SHARE = 0.5
#: a Clear-VAE pass on an accelerator may take this share of the free memory before it is banded
VAE_SHARE = 0.6
#: the smallest Clear-VAE budget (below it the bands would be too thin to be efficient)
MIN_VAE_BUDGET = 256 * MIB
#: clips: one chunk of frames may take this share of the free device memory (of the available RAM on the CPU)
FRAME_CHUNK_SHARE = 0.5
#: ... and never more than this many frames: a chunk's peak is the run's peak, whatever the clip's length
MAX_FRAMES_PER_CHUNK = 16
#: what each placement means, for the log
PLACEMENT_WORDS = {"device": "the compute device", "host": "host RAM", "recompute": "nothing (recomputed)"}


def dtype_size(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def tensors_bytes(tensors) -> int:
    """Bytes of a (nested) list/tuple of tensors."""
    if tensors is None:
        return 0
    if isinstance(tensors, (list, tuple)):
        return sum(tensors_bytes(t) for t in tensors)
    return tensors.numel() * tensors.element_size()


def unet_activation_bytes(batch: int, latent_hw, dtype) -> int:
    """ComfyUI's SD1.5 estimate for one U-Net forward at ``latent_hw``."""
    h, w = latent_hw
    return int(batch * h * w * dtype_size(dtype) * 0.01 * MIB)


def controller_activation_bytes(batch: int, latent_hw, dtype, timestep_batch: int = 1) -> int:
    return int(0.6 * unet_activation_bytes(batch * timestep_batch, latent_hw, dtype))


def residual_bytes_per_step(controller_config, batch: int, latent_hw, dtype) -> int:
    """Bytes of one timestep's controller residuals (12 down + mid), from the controller config."""
    channels = list(controller_config["block_out_channels"])
    layers = int(controller_config.get("layers_per_block", 2))
    h, w = latent_hw
    elements = channels[0] * h * w  # conv_in
    scale = 1
    for i, c in enumerate(channels):
        elements += layers * c * (h // scale) * (w // scale)
        if i < len(channels) - 1:
            scale *= 2
            elements += c * (h // scale) * (w // scale)
    elements += channels[-1] * (h // scale) * (w // scale)  # mid block
    return int(batch * elements * dtype_size(dtype))


def vae_activation_bytes(working_hw, batch: int, dtype, vae_config, which: str) -> int:
    from ..imaging.tiling import estimate_vae_memory

    est = estimate_vae_memory(working_hw[0], working_hw[1], batch=batch, dtype=dtype,
                              block_out_channels=tuple(vae_config["block_out_channels"]))
    return int(est[which])


def available_host_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with ComfyUI and accelerate; be safe without it
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def capped_free_bytes(device, free: int | None) -> int | None:
    """``free`` (a model source's free-memory figure) capped by what this process may still allocate on a
    CUDA device when a per-process limit is set (``torch.cuda.set_per_process_memory_fraction``: the
    allocator refuses more than ``fraction x total``, whatever the card has free)."""
    if free is None or getattr(device, "type", "cpu") != "cuda":
        return free
    import torch

    try:
        fraction = float(torch.cuda.get_per_process_memory_fraction(device))
    except (AttributeError, RuntimeError):  # older torch: no getter
        return free
    if fraction >= 1.0:
        return free
    allowed = int(fraction * torch.cuda.get_device_properties(device).total_memory) - torch.cuda.memory_allocated(device)
    return max(0, min(int(free), allowed))


def choose_placement(requested: str, nbytes: int, device, what: str, free_device_bytes: int | None = None) -> str:
    """Where ``nbytes`` of ``what`` (residuals / skips) should wait: see the module docstring.

    ``free_device_bytes``: the model source's free-memory figure for the compute device (ComfyUI's
    own estimate inside ComfyUI; ``torch.cuda.mem_get_info`` elsewhere); None on the CPU."""
    check_choice(requested, PLACEMENTS, f"{what} placement")
    if requested != "auto":
        chosen, why = requested, "requested"
    else:
        host = available_host_bytes()
        if device.type == "cpu":
            chosen = "device" if nbytes <= HOST_SHARE * host else "recompute"
            why = f"{_mib(nbytes)} vs {HOST_SHARE:.0%} of {_mib(host)} available RAM"
        elif free_device_bytes is not None and nbytes <= DEVICE_SHARE * free_device_bytes:
            chosen, why = "device", f"{_mib(nbytes)} <= {DEVICE_SHARE:.0%} of {_mib(free_device_bytes)} free"
        elif nbytes <= HOST_SHARE * host:
            chosen, why = "host", f"{_mib(nbytes)} > {DEVICE_SHARE:.0%} of the free device memory"
        else:
            chosen, why = "recompute", f"{_mib(nbytes)} fits neither the device nor {HOST_SHARE:.0%} of the RAM"
    log.info("%s: %s wait on %s (%s)", what, _mib(nbytes), PLACEMENT_WORDS[chosen], why)
    return chosen


def seeds_per_forward(n_seeds: int, bytes_per_seed: int, device, free_device_bytes: int | None) -> int:
    """How many seeds of one composite go through one batched U-Net forward: as many as fit in
    :data:`SEED_BATCH_SHARE` of the free device memory (of the available RAM on the CPU), at least 1."""
    budget = available_host_bytes() if device.type == "cpu" or free_device_bytes is None else free_device_bytes
    fit = int(SEED_BATCH_SHARE * budget // max(1, bytes_per_seed))
    n = max(1, min(int(n_seeds), fit))
    if n < n_seeds:
        log.info("seeds: %d per U-Net forward (%s each, budget %s)", n, _mib(bytes_per_seed), _mib(budget))
    return n


def clip_frame_bytes(models, working_hw, latent_hw, frame_hw, steps: int, controller: bool) -> int:
    """What one frame of a clip's chunk adds to the peak (:mod:`r2r.video`): its U-Net activations, its
    controller residuals for every step, its Clear-VAE pass (capped at the band budget) and its
    full-resolution float32 buffers (frame, mask, result)."""
    dtype = models.dtype("unet")
    total = unet_activation_bytes(1, latent_hw, dtype)
    if controller and models.has("controller"):
        total += steps * residual_bytes_per_step(models.config("controller"), 1, latent_hw,
                                                 models.dtype("controller"))
    from ..imaging.tiling import memory_budget_bytes

    vae = vae_activation_bytes(working_hw, 1, models.dtype("clear_vae"), models.config("clear_vae"), "decode")
    total += min(vae, vae_budget_bytes(models.free_memory(), memory_budget_bytes()))
    return int(total + 3 * 4 * 4 * int(frame_hw[0]) * int(frame_hw[1]))


def frames_per_chunk(bytes_per_frame: int, device, free_device_bytes: int | None,
                     cap: int = MAX_FRAMES_PER_CHUNK) -> int:
    """How many frames of a clip go through the networks together: as many as fit in
    :data:`FRAME_CHUNK_SHARE` of the free device memory (of the available RAM on the CPU), at most
    ``cap`` (:data:`MAX_FRAMES_PER_CHUNK`), at least 1. Logged."""
    budget = available_host_bytes() if device.type == "cpu" or free_device_bytes is None else free_device_bytes
    n = int(max(1, min(int(cap), FRAME_CHUNK_SHARE * budget // max(1, bytes_per_frame))))
    log.info("clip: %d frame(s) per chunk (%s each, budget %s)", n, _mib(bytes_per_frame), _mib(budget))
    return n


def vae_budget_bytes(free_device_bytes: int | None, default: int) -> int:
    """The activation budget of one Clear-VAE pass: above it the pass runs in bands
    (:mod:`r2r.imaging.tiling`). On an accelerator, :data:`VAE_SHARE` of the free memory the model
    source reports (never more than ``default``); on the CPU, ``default``."""
    if free_device_bytes is None:
        return default
    return int(max(MIN_VAE_BUDGET, min(default, VAE_SHARE * free_device_bytes)))


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"
