"""Checks of what arrives on the pack's sockets, before any work: the right object in each socket,
and LATENTs whose R2R state belongs to the samples they carry.

Every LATENT that carries R2R state carries the fingerprint of its composite (``state.key``: the
composite, the mask, the working size and the batch). R2R Sampler records the fingerprint of the
samples it produced (``state.sampled``) and this module remembers which composite produced them, so
Clear-VAE Decode can tell "these samples were made for another composite" from "these samples were
edited by a latent node" (the first is refused, the second only warned about when the values leave
the range a sampler produces). The KSampler path checks its pairing at sampling time (nodes/harmony_control.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from ..r2r.errors import R2RUserError
from ._types import LATENT_KEY, R2RLatentState, R2RModel

log = logging.getLogger("r2r.nodes")

#: where each socket type comes from, for messages
SOURCES = {
    "R2R_MODEL": "an R2R_MODEL from the R2R Checkpoint Loader or the R2R U-Net Loader",
    "R2R_CLEAR_VAE": "an R2R_CLEAR_VAE from the R2R Checkpoint Loader or the R2R Clear-VAE Loader",
    "R2R_CONTROLLER": "an R2R_CONTROLLER from the R2R Checkpoint Loader or the R2R Controller Loader",
}
_MANAGED = {"R2R_CLEAR_VAE": "clear_vae", "R2R_CONTROLLER": "controller"}
_WORDS = {"unet": "the R2R U-Net", "clear_vae": "the Clear-VAE (R2R_CLEAR_VAE)",
          "controller": "the Harmony Controller (R2R_CONTROLLER)"}
#: a decoded latent whose largest magnitude exceeds this many times the composite's is reported
RANGE_FACTOR = 10.0
#: fingerprints of recently sampled latents -> the composite they were sampled for
_SAMPLED: OrderedDict[str, str] = OrderedDict()
_SAMPLED_MAX = 64


def describe(obj) -> str:
    name = getattr(obj, "name", None)
    if name in _WORDS and hasattr(obj, "load"):
        return _WORDS[name]
    if isinstance(obj, R2RModel):
        return "an R2R_MODEL"
    if isinstance(obj, dict) and "samples" in obj:
        return "a LATENT"
    return "None (nothing connected)" if obj is None else f"a {type(obj).__name__}"


def check_kind(obj, kind: str, input_name: str, node: str):
    """``obj`` is what socket type ``kind`` carries, or a clear error naming what it is instead."""
    ok = isinstance(obj, R2RModel) if kind == "R2R_MODEL" else (
        hasattr(obj, "load") and getattr(obj, "name", None) == _MANAGED[kind])
    if not ok:
        raise R2RUserError(f"R2R {node}: '{input_name}' must be {SOURCES[kind]}; got {describe(obj)}. Connect the "
                           f"matching output of the loader to '{input_name}'.")
    return obj


def check_device(t, name: str, node: str):
    """A tensor on a real device (``meta`` tensors hold no data)."""
    if getattr(t, "device", None) is not None and t.device.type == "meta":
        raise R2RUserError(f"R2R {node}: '{name}' is a tensor on the 'meta' device (shape only, no data); give it a "
                           "real tensor (on the CPU or the GPU).")
    return t


def latent_state(latent, node: str) -> R2RLatentState:
    """The R2R state a LATENT carries (from Clear-VAE Encode, R2R Sampler, R2R Conditioning or KSampler on the R2R path)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise R2RUserError(f"R2R {node}: 'latent' must be a LATENT; got {describe(latent)}.")
    state = latent.get(LATENT_KEY)
    if not isinstance(state, R2RLatentState):
        raise R2RUserError(
            f"R2R {node}: this LATENT did not come from 'R2R Clear-VAE Encode' (it lacks the R2R state: the "
            "composite, its mask and its Clear-VAE posterior). Encode the composite with R2R Clear-VAE Encode and "
            "connect its LATENT here (directly, or through R2R Sampler / KSampler)."
        )
    check_device(latent["samples"], "latent", node)
    return state


def check_shape(z, state: R2RLatentState, node: str) -> None:
    expected = state.latent_shape
    if list(z.shape[1:]) != expected[1:] or z.shape[0] % expected[0]:
        raise R2RUserError(
            f"R2R {node}: the LATENT samples are {list(z.shape)} but the composite it carries ({state.describe()}, "
            f"from {state.origin}) needs {expected}: the LATENT was changed after R2R Clear-VAE Encode. Latent "
            "upscaling/cropping/batching nodes cannot be used between R2R nodes: connect the LATENT of R2R "
            "Clear-VAE Encode / R2R Sampler directly."
        )


def check_unsampled(latent, state: R2RLatentState, node: str) -> None:
    """R2R Sampler starts from Encode's LATENT (the posterior mean), not from an already sampled one."""
    import torch

    z = latent["samples"]
    mean = state.encoded.mean
    if tuple(z.shape) != tuple(mean.shape) or not torch.equal(z.to(torch.float32), mean.to(z.device, torch.float32)):
        check_shape(z, state, node)
        raise R2RUserError(
            f"R2R {node}: this LATENT was changed after R2R Clear-VAE Encode (or is already sampled). Connect the "
            "LATENT of R2R Clear-VAE Encode directly; the sampler starts from noise and the composite's posterior."
        )


def sampled_state(state: R2RLatentState, samples, origin: str) -> R2RLatentState:
    """The state for a sampler's output: it remembers the samples' fingerprint and their composite."""
    import dataclasses

    from ..r2r.imaging import fingerprint

    key = fingerprint(samples)
    remember_sampled(key, state.key)
    return dataclasses.replace(state.expand(int(samples.shape[0])), sampled=key, origin=origin)


def remember_sampled(samples_key: str, composite_key: str) -> None:
    _SAMPLED[samples_key] = composite_key
    _SAMPLED.move_to_end(samples_key)
    while len(_SAMPLED) > _SAMPLED_MAX:
        _SAMPLED.popitem(last=False)


def check_decodable(latent, state: R2RLatentState, node: str, show=None):
    """The samples Decode gets: the right shape, finite, made for this composite; a warning (log and
    ``show(text)`` on the node) when they are far outside what a sampler produces. Returns them."""
    import torch

    from ..r2r.imaging import fingerprint

    z = latent["samples"]
    check_shape(z, state, node)
    bad = int((~torch.isfinite(z)).sum())
    if bad:
        raise R2RUserError(f"R2R {node}: the LATENT holds {bad} NaN/Inf values; an image decoded from it would be "
                           "garbage. Check the sampler settings (cfg 1.0, steps) and any latent node in between.")
    key = fingerprint(z)
    made_for = _SAMPLED.get(key)
    if made_for is not None and made_for != state.key:
        raise R2RUserError(
            f"R2R {node}: these samples were sampled for another composite than the one this LATENT carries "
            f"({state.describe()}, from {state.origin}). A LATENT's samples and its R2R state must come from the "
            "same R2R Clear-VAE Encode: connect the sampler's own LATENT output to Decode.")
    if state.sampled is None and state.origin == "R2R Clear-VAE Encode" and tuple(z.shape) == tuple(
            state.encoded.mean.shape) and torch.equal(z.to(torch.float32), state.encoded.mean.to(z.device, torch.float32)):
        text = (f"R2R {node}: this LATENT comes straight from R2R Clear-VAE Encode (not sampled), so the picture is "
                "the composite itself, not harmonized. Connect R2R Sampler's (or KSampler's) output LATENT here.")
        log.warning(text)
        if show is not None:
            show(text)
    peak, reference = float(z.abs().max()), float(state.encoded.mean.abs().max())
    if peak > RANGE_FACTOR * max(reference, 1.0):
        text = (f"R2R {node}: the latent's values reach {peak:.1f}, far outside what a sampler produces for this "
                f"composite (about {max(reference, 1.0):.1f}); the picture will look wrong. Was the LATENT scaled or "
                "edited by another node?")
        log.warning(text)
        if show is not None:
            show(text)
    return z


def check_legacy_inputs(state: R2RLatentState, image=None, mask=None, invert_mask=False, node: str = "") -> None:
    """The version-1 nodes' image input (ignored, with its mask and invert_mask: the LATENT carries the
    composite): when it is connected, it must show the LATENT's composite, or the user is told that it was not
    used."""
    import torch

    if image is None:
        return
    from . import _convert

    comp = _convert.image_to_nchw(image, "image", node=node)
    original = state.prepared.original_composite
    same = tuple(comp.shape[-2:]) == tuple(original.shape[-2:]) and (
        comp.shape[0] in (1, original.shape[0])) and torch.allclose(comp.to(original.device), original[:comp.shape[0]],
                                                                    atol=1 / 255)
    if not same:
        raise R2RUserError(
            f"R2R {node}: the 'image' connected here is not the composite this LATENT carries ({state.describe()}); "
            "the LATENT's composite and mask are what is decoded (the 'image'/'mask' inputs are not used). "
            "Connect the LATENT that comes from this image's R2R Clear-VAE Encode, or disconnect 'image'.")
