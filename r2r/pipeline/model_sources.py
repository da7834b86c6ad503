"""Where R2RPipeline's stages get their networks from.

A *model source* hands a stage the network it needs, on the compute device, and is told when
that network's phase is over. :class:`R2RPipeline` runs the same stages over any source:

* :class:`ResidentModels` — the three networks stay loaded (``R2RPipeline.from_pretrained``);
* :class:`PhaseLoadedModels` — each network is read from disk when its phase starts and dropped
  when it ends, so at most one is in memory (``harmonize_low_memory`` / ``--low-memory``);
* the ComfyUI nodes' source (``nodes/flow.py``) asks ComfyUI's model management to load each
  network with an estimate of the memory its phase needs.

Protocol: ``device`` (torch.device), ``scheduler_config`` (dict), ``prompt_embeds`` (``[1,77,768]``),
``source`` (str), ``has(name)``, ``dtype(name)`` (without loading), ``get(name, memory_required=0) ->
module`` (``memory_required``: bytes the phase needs beside the weights) and ``release(name)``, with
``name`` one of ``"unet"``, ``"controller"``, ``"clear_vae"``.
"""

from __future__ import annotations

import gc

from ..errors import R2RUserError

NETWORKS = ("unet", "controller", "clear_vae")
_WHAT = {"unet": "U-Net", "controller": "Harmony Controller", "clear_vae": "Clear-VAE"}


def missing_network(name: str, how_to_fix: str) -> R2RUserError:
    return R2RUserError(f"This R2R pipeline has no {_WHAT[name]} loaded, but this step needs it. {how_to_fix}")


class ResidentModels:
    """The networks of an :class:`r2r.weights.R2RComponents`, kept where they are."""

    def __init__(self, components):
        self.components = components
        self.scheduler_config = dict(components.scheduler_config)
        self.prompt_embeds = components.prompt_embeds
        self.source = str(getattr(components, "source", ""))
        for name in NETWORKS:
            module = getattr(components, name)
            if module is not None:
                module.eval()

    @property
    def device(self):
        for name in NETWORKS:
            module = getattr(self.components, name)
            if module is not None:
                return module.device
        raise missing_network("unet", "Load the release with r2r.weights.load_components.")

    def has(self, name: str) -> bool:
        return getattr(self.components, name) is not None

    def dtype(self, name: str):
        module = getattr(self.components, name)
        return module.dtype if module is not None else self.prompt_embeds.dtype

    def get(self, name: str, memory_required: int = 0):
        module = getattr(self.components, name)
        if module is None:
            raise missing_network(name, "Load it with load_components(..., components=('unet', 'controller', "
                                        "'clear_vae')).")
        return module

    def release(self, name: str) -> None:
        """Resident networks stay loaded."""

    def to(self, device=None, dtype=None) -> None:
        for name in NETWORKS:
            module = getattr(self.components, name)
            if module is not None:
                module.to(device=device, dtype=dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)


class PhaseLoadedModels:
    """Each network is loaded from ``source`` when a stage asks for it and dropped on release."""

    def __init__(self, source, *, torch_dtype, device, **load_kwargs):
        from ..weights import load_components

        self._load = load_components
        self._source = source
        self._dtype = torch_dtype
        self.device = device
        self._kwargs = load_kwargs
        self._loaded: dict = {}
        # the scheduler config and the (cached) empty-prompt embedding come with any component
        first = self._load_one("clear_vae")
        self.scheduler_config = dict(first.scheduler_config)
        self.prompt_embeds = first.prompt_embeds
        self.source = str(first.source)

    def _load_one(self, name: str):
        parts = self._load(self._source, torch_dtype=self._dtype, device=str(self.device), components=(name,),
                           **self._kwargs)
        self._loaded[name] = getattr(parts, name).eval()
        return parts

    def has(self, name: str) -> bool:
        return name in NETWORKS

    def dtype(self, name: str):
        return self._dtype

    def get(self, name: str, memory_required: int = 0):
        if name not in self._loaded:
            self._load_one(name)
        return self._loaded[name]

    def release(self, name: str) -> None:
        if self._loaded.pop(name, None) is None:
            return
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
