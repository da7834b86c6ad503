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
* ``auto``: on the CPU, ``device`` (the device *is* host RAM) unless it would take more than a
  quarter of the available RAM, then ``recompute``; on an accelerator, ``device`` when it takes at
  most 10 % of the free device memory, else ``host`` when it takes at most a quarter of the
  available RAM, else ``recompute``.
"""

from __future__ import annotations

from ..params import PLACEMENTS, check_choice

MIB = 1024 * 1024
DEVICE_SHARE = 0.10
HOST_SHARE = 0.25


def dtype_size(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


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


def _free_device_bytes(device) -> int | None:
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def available_host_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with ComfyUI and accelerate; be safe without it
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_placement(requested: str, nbytes: int, device, what: str) -> str:
    """Where ``nbytes`` of ``what`` (residuals / skips) should wait: see the module docstring."""
    check_choice(requested, PLACEMENTS, f"{what} placement")
    if requested != "auto":
        return requested
    host = available_host_bytes()
    if device.type == "cpu":
        return "device" if nbytes <= HOST_SHARE * host else "recompute"
    free = _free_device_bytes(device)
    if free is not None and nbytes <= DEVICE_SHARE * free:
        return "device"
    if nbytes <= HOST_SHARE * host:
        return "host"
    return "recompute"
