"""Input checks shared by the blending functions (numpy arrays and torch tensors).

Every check runs before any work and raises :class:`R2RUserError` saying what was
expected, what was given and how to fix it. The rules, the same for every public
function of ``r2r.blending``:

- images: numpy ``HxWxC`` / ``HxW`` (C = 1..4; RGB where the function needs colour),
  ``uint8`` 0..255 or float; torch ``[B,C,H,W]`` / ``[C,H,W]`` float tensors. Float
  values must be finite, and in [0, 1] wherever the result is clipped to [0, 1]
  (values up to 1e-3 outside are tolerated: rounding noise);
- masks: ``HxW`` (or ``HxWx1`` / ``1xHxW``) of the image's size: bool, ``uint8``
  0..255, other integers 0/1 or 0..255, float 0..1. A binary use thresholds at 0.5 of
  the range (uint8 > 127); soft uses take the value as a weight.

Nothing here modifies its input; torch is imported only for torch inputs.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import R2RUserError

UNIT_SLACK = 1e-3  # float values this far outside [0, 1] are rounding noise, not another scale


def is_torch(x) -> bool:
    """True for torch tensors (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def describe(x) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return type(x).__name__
    return f"{type(x).__name__} of shape {tuple(shape)} and dtype {dtype}"


# ----------------------------------------------------------------------------- numbers


def whole_number(value, name: str, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum``; bools, fractions, NaN and non-numbers are refused."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        try:
            ok = int(value) == value and int(value) >= minimum
        except (OverflowError, ValueError):  # inf / nan
            ok = False
    if not ok:
        raise R2RUserError(f"{name} must be a whole number >= {minimum}; got {value!r}. {hint}")
    return int(value)


def _real_or_nan(value) -> float:
    """A real number (not a bool) as float, anything else as NaN."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def fraction(value, name: str, hint: str) -> float:
    """``value`` as a float in [0, 1] (NaN, bools, strings and other non-numbers refused)."""
    v = _real_or_nan(value)
    if not (0.0 <= v <= 1.0):
        raise R2RUserError(f"{name} must be a number in [0, 1]; got {value!r}. {hint}")
    return v


def optional_threshold(value, name: str, hint: str) -> float | None:
    """None, or a finite number >= 0."""
    if value is None:
        return None
    v = _real_or_nan(value)
    if not (np.isfinite(v) and v >= 0.0):
        raise R2RUserError(f"{name} must be None or a finite number >= 0; got {value!r}. {hint}")
    return v


# ----------------------------------------------------------------------------- value ranges


def check_finite(x, name: str) -> None:
    """Refuse NaN / infinite values in a float numpy array or torch tensor."""
    if is_torch(x):
        import torch

        bad = x.is_floating_point() and not bool(torch.isfinite(x).all())
    else:
        bad = np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all()
    if bad:
        raise R2RUserError(
            f"{name} contains NaN or infinite values; clean it first (e.g. np.nan_to_num(x, nan=0.0))."
        )


def check_unit_range(x, name: str) -> None:
    """Refuse float data outside [0, 1] (beyond ``UNIT_SLACK``), naming the likely scale."""
    if (x.numel() if is_torch(x) else x.size) == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo >= -UNIT_SLACK and hi <= 1.0 + UNIT_SLACK:
        return
    if hi > 1.5 and lo >= -UNIT_SLACK:
        hint = "It looks like 0..255 values: divide by 255 (or pass the image as uint8)."
    elif lo < -0.5 and hi <= 1.0 + UNIT_SLACK:
        hint = "It looks like [-1, 1] values: use (x + 1) / 2."
    else:
        hint = "Rescale it to [0, 1] (or clip it with np.clip(x, 0, 1))."
    raise R2RUserError(f"{name} must hold float values in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]. {hint}")


# ----------------------------------------------------------------------------- numpy images and masks


def image_hwc(x, name: str, *, rgb: bool = False, unit_range: bool = False) -> np.ndarray:
    """A numpy image as ``HxWxC`` (HxW gets C = 1), uint8 or float, finite, non-empty.

    ``rgb`` requires C = 3; ``unit_range`` requires float data in [0, 1]. Returns a view
    (never a modified copy) of the input.
    """
    if is_torch(x):
        raise R2RUserError(
            f"{name} is a torch tensor but this function takes numpy HxWxC arrays; use "
            "x.permute(1, 2, 0).cpu().numpy(), or the torch variant of the function."
        )
    if isinstance(x, (str, bytes)) or x is None:
        raise R2RUserError(f"{name} must be an image array (HxWxC); got {describe(x)}. Load the file first.")
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise R2RUserError(
            f"{name} must be an HxW or HxWxC image (C = 1..4); got shape {tuple(np.shape(x))}. "
            "Pass an RGB array such as the one PIL/cv2 returns (channels last)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise R2RUserError(f"{name} is empty (shape {tuple(np.shape(x))}); pass an image of at least 1x1 pixel.")
    if rgb and arr.shape[2] != 3:
        raise R2RUserError(
            f"{name} must be an RGB image (HxWx3); got {arr.shape[2]} channel(s). "
            "Convert it with PIL's .convert('RGB') or cv2.cvtColor first."
        )
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise R2RUserError(
            f"{name} must be uint8 (0..255) or float (0..1); got dtype {arr.dtype}. "
            "Convert it with .astype(np.uint8), or .astype(np.float32) / 255 for 0..255 data."
        )
    check_finite(arr, name)
    if unit_range and arr.dtype != np.uint8:
        check_unit_range(arr, name)
    return arr


def same_kind(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    """Refuse a uint8 image paired with a float one (their scales differ by 255)."""
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise R2RUserError(
            f"{names[0]} is {a.dtype} but {names[1]} is {b.dtype}; pass both as uint8 (0..255) or both as float "
            "(0..1), e.g. x.astype(np.float32) / 255."
        )


def _mask_2d(mask, hw, name) -> np.ndarray:
    if is_torch(mask):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise R2RUserError(
            f"{name} must be a single-channel HxW array; got shape {tuple(np.shape(mask))}. "
            "Pass one channel of the mask (e.g. mask[..., 0])."
        )
    if hw is not None and tuple(m.shape) != tuple(hw):
        raise R2RUserError(
            f"{name} size {tuple(m.shape)} does not match the image size {tuple(hw)}; "
            "resize the mask to the image (nearest-neighbour) first."
        )
    if m.dtype == bool or m.dtype == np.uint8:
        return m
    if np.issubdtype(m.dtype, np.integer):
        if m.size and (int(m.min()) < 0 or int(m.max()) > 255):
            raise R2RUserError(
                f"{name} holds integers in [{int(m.min())}, {int(m.max())}]; integer masks must be 0/1 or 0..255. "
                "Pass a bool mask (mask > 0) instead."
            )
        return m
    if not np.issubdtype(m.dtype, np.floating):
        raise R2RUserError(f"{name} must be bool, uint8, integer or float; got dtype {m.dtype}.")
    check_finite(m, name)
    check_unit_range(m, name)
    return m


def bool_mask_hw(mask, hw, name: str = "mask") -> np.ndarray:
    """A mask as an HxW bool array: uint8 / 0..255 integers > 127, 0/1 integers > 0, float > 0.5.

    ``hw`` = the required (H, W), or None to accept any size.
    """
    m = _mask_2d(mask, hw, name)
    if m.dtype == bool:
        return m
    if m.dtype == np.uint8:
        return m > 127
    if np.issubdtype(m.dtype, np.integer):
        return m > (127 if m.size and int(m.max()) > 1 else 0)
    return m > 0.5


def mask_weights_hw(mask, hw, name: str = "mask") -> np.ndarray:
    """A (soft) mask as HxW float32 weights in [0, 1] (uint8 and 0..255 integers / 255)."""
    m = _mask_2d(mask, hw, name)
    if m.dtype == bool:
        return m.astype(np.float32)
    if m.dtype == np.uint8 or (np.issubdtype(m.dtype, np.integer) and m.size and int(m.max()) > 1):
        return m.astype(np.float32) / 255.0
    return np.clip(m.astype(np.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------- torch


def image_bchw(x, name: str, *, channels: int | None = None, unit_range: bool = False):
    """A torch image as ``[B,C,H,W]`` (``[C,H,W]`` gets B = 1): float, finite, non-empty."""
    import torch

    if not torch.is_tensor(x):
        raise R2RUserError(
            f"{name} must be a torch tensor when the other inputs are tensors; got {describe(x)}. "
            "Pass every image and mask as tensors (or all as numpy arrays)."
        )
    t = x[None] if x.ndim == 3 else x
    if t.ndim != 4 or (channels is not None and t.shape[1] != channels):
        want = f"[B,{channels},H,W]" if channels else "[B,C,H,W] or [C,H,W]"
        raise R2RUserError(
            f"{name} must be a {want} tensor; got shape {tuple(x.shape)}. "
            "Permute channels-last HxWxC images with .permute(2, 0, 1)."
        )
    if t.numel() == 0:
        raise R2RUserError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one image of 1x1 pixel.")
    if not t.is_floating_point():
        raise R2RUserError(
            f"{name} must be a float tensor (0..1); got {t.dtype}. Convert it with x.float() / 255."
        )
    check_finite(t, name)
    if unit_range:
        check_unit_range(t, name)
    return t


def mask_weights_b1hw(mask, batch: int, hw, name: str = "mask", device=None):
    """A torch (or numpy) mask as float32 ``[batch,1,H,W]`` weights in [0, 1].

    Accepts ``[B,1,H,W]``, ``[B,H,W]`` or ``[H,W]`` with B = 1 or ``batch``; dtype rules as
    :func:`mask_weights_hw`.
    """
    import torch

    t = mask if torch.is_tensor(mask) else torch.as_tensor(np.asarray(mask))
    shape = tuple(t.shape)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or tuple(t.shape[-2:]) != tuple(hw) or t.shape[0] not in (1, batch):
        raise R2RUserError(
            f"{name} must be [B,1,H,W], [B,H,W] or [H,W] matching the image ({batch} x {hw[0]}x{hw[1]}); "
            f"got shape {shape}. Resize the mask to the image first."
        )
    if t.dtype == torch.bool:
        w = t.float()
    elif t.dtype == torch.uint8:
        w = t.float() / 255.0
    elif not t.is_floating_point():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi > 255:
            raise R2RUserError(
                f"{name} holds integers in [{lo}, {hi}]; integer masks must be 0/1 or 0..255. "
                "Pass a bool mask (mask > 0) instead."
            )
        w = t.float() / 255.0 if hi > 1 else t.float()
    else:
        check_finite(t, name)
        check_unit_range(t, name)
        w = t.float().clamp(0.0, 1.0)
    return w.to(device if device is not None else t.device).expand(batch, 1, *hw)
