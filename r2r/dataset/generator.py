"""The composite generator of ``make-dataset``: loading it from ``module:function`` and checking
it (and its ``--gen-arg`` arguments) once, up front, before any file is written.

A generator is called as ``f(real, mask, seed=..., **kwargs)`` with ``real`` HxWx3 uint8 RGB and
``mask`` HxW bool, and returns the composite (HxWx3 uint8) or an object with ``.composite`` (and
optionally ``.mask`` and ``.diagnostics``), as :func:`r2r.blending.random_poisson_blend` does.
"""

from __future__ import annotations

import difflib
import inspect
from importlib import import_module

import numpy as np

from ..errors import R2RUserError

#: side of the synthetic image the generator is tried on before a run
TRIAL_SIZE = 64


def resolve_generator(spec):
    """A callable from a callable or a ``"module:function"`` string."""
    if callable(spec):
        return spec
    mod, sep, attr = str(spec).partition(":")
    if not sep or not mod or not attr:
        raise R2RUserError(f"the composite generator {spec!r} is not of the form 'module:function' "
                           "(e.g. r2r.blending:random_poisson_blend)")
    try:
        obj = import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise R2RUserError(
            f"cannot load the composite generator {spec!r} ({exc}); expected 'module:function'"
        ) from exc
    if not callable(obj):
        raise R2RUserError(f"the composite generator {spec!r} is a {type(obj).__name__}, not a function")
    return obj


def unpack_result(out, real: np.ndarray, mask: np.ndarray, spec: str):
    """``(composite HxWx3 uint8, mask HxW bool, generator diagnostics)`` of one generator call;
    a result of the wrong shape or type is an R2RUserError naming the generator."""
    comp = np.asarray(getattr(out, "composite", out))
    out_mask = getattr(out, "mask", None)
    used_mask = mask if out_mask is None else np.asarray(out_mask).astype(bool)
    if comp.shape != real.shape or comp.dtype != np.uint8 or used_mask.shape != mask.shape:
        raise R2RUserError(
            f"the generator {spec} returned a composite {comp.shape} {comp.dtype} / mask {used_mask.shape} "
            f"for an image {real.shape}; it must return HxWx3 uint8 of the image's size (or an object with "
            ".composite)"
        )
    return comp, used_mask, getattr(out, "diagnostics", None) or {}


def _check_signature(gen, spec: str, kwargs: dict) -> None:
    try:
        sig = inspect.signature(gen)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the trial call below still checks it
    try:
        sig.bind(None, None, seed=0, **kwargs)
    except TypeError as exc:
        names = [p for p in sig.parameters if p not in ("seed",)][2:]
        unknown = [k for k in kwargs if k not in sig.parameters]
        hint = ""
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        raise R2RUserError(
            f"the generator {spec} does not accept these arguments ({exc}){hint} Its keyword arguments are: "
            f"{', '.join(names) or 'none'}. Fix the --gen-arg KEY=VALUE (or --alpha) options"
        ) from None


def check_generator(gen, spec: str, kwargs: dict, with_reference: bool) -> None:
    """Bind ``kwargs`` to the generator's signature and run it once on a synthetic
    ``TRIAL_SIZE`` px image, so a wrong argument name or value is reported before the run
    starts instead of failing every image."""
    _check_signature(gen, spec, kwargs)
    yy, xx = np.mgrid[0:TRIAL_SIZE, 0:TRIAL_SIZE]
    real = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    mask = np.zeros((TRIAL_SIZE, TRIAL_SIZE), bool)
    mask[16:48, 20:44] = True
    call = dict(kwargs)
    if with_reference:
        call["reference"] = real[::-1].copy()
    try:
        out = gen(real, mask, seed=0, **call)
    except R2RUserError as exc:
        raise R2RUserError(f"the generator {spec} rejects its arguments {kwargs}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure here is reported before the run, with its type
        raise R2RUserError(
            f"the generator {spec} failed on a {TRIAL_SIZE}x{TRIAL_SIZE} test image with the arguments {kwargs}: "
            f"{type(exc).__name__}: {exc}. Check the --gen-arg values"
        ) from None
    unpack_result(out, real, mask, spec)
