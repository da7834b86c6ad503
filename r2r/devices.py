"""The one dtype/device rule of r2r.

* :func:`resolve_dtype` accepts ``fp32``/``float32``/``float``, ``fp16``/``float16``/``half``,
  ``bf16``/``bfloat16``, a ``torch.dtype``, ``None`` (float32) and ``"auto"`` (with a device).
* :func:`auto_dtype`: fp16 on CUDA (as the official release runs), fp32 everywhere else
  (bf16/fp16 convolutions are far slower on CPUs).
* :func:`resolve_device`: ``None``/``"auto"`` -> CUDA when available, else MPS, else CPU.

The ComfyUI nodes use ComfyUI's own device/dtype choice instead (``nodes/_host.py``).
"""

from __future__ import annotations

from .errors import R2RUserError

DTYPE_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}
#: what the CLI offers for --dtype
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device=None):
    """``None`` | ``"auto"`` | ``"cpu"`` | ``"cuda[:N]"`` | ``"mps"`` | ``torch.device`` -> ``torch.device``."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise R2RUserError(f"Unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise R2RUserError(f"Device {device!r} was requested but CUDA is not available here; use cpu (--device cpu).")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise R2RUserError(f"Device {device!r} asks for GPU {dev.index}, but this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s) (numbered from 0); pick one of them.")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise R2RUserError(f"Device {device!r} was requested but Apple's MPS backend is not available here; "
                               "use cpu (--device cpu) or auto.")
    return dev


def auto_dtype(device):
    """fp16 on CUDA, fp32 elsewhere."""
    import torch

    return torch.float16 if resolve_device(device).type == "cuda" else torch.float32


def resolve_dtype(dtype, device=None):
    """A dtype name / ``torch.dtype`` / ``None`` / ``"auto"`` -> one of float32, float16, bfloat16."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float16, torch.bfloat16):
            return dtype
    elif isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key == "auto":
            return auto_dtype(device)
        if key in DTYPE_NAMES:
            return getattr(torch, DTYPE_NAMES[key])
    raise R2RUserError(f"Unsupported dtype {dtype!r}; expected one of fp32, bf16, fp16, auto (or a torch float dtype).")


def wide_float(device):
    """The widest float the device computes in: float64, except on Apple's MPS (no float64 there: float32).
    For accumulations that want the extra precision (Poisson solver dot products)."""
    import torch

    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def auto_max_side(device) -> int:
    """The working resolution that fits the machine: 1024 (what the model was trained at) on an
    accelerator, 512 on a CPU (about 4x faster there)."""
    import logging

    side = 512 if resolve_device(device).type == "cpu" else 1024
    logging.getLogger(__name__).info("max_side auto: %d on %s", side, resolve_device(device).type)
    return side


def resolve_max_side(max_side, device) -> int:
    """``max_side`` checked (:mod:`r2r.params`); 0 (auto) -> :func:`auto_max_side`."""
    from .params import AUTO_MAX_SIDE, check

    value = check("max_side", max_side, "max_side")
    return auto_max_side(device) if value == AUTO_MAX_SIDE else value


def warn_if_slow_dtype(dtype, device) -> bool:
    """Log a warning when a half dtype is chosen on a CPU (it runs several times slower than fp32 there).
    Returns whether it warned."""
    import logging

    import torch

    if resolve_device(device).type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        logging.getLogger(__name__).warning(
            "%s on the CPU runs several times slower than float32 (CPUs have no fast half-precision kernels); "
            "use fp32 (or auto) for speed.", str(dtype).removeprefix("torch."))
        return True
    return False
