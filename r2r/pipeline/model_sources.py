"""Where R2RPipeline's stages get their networks from: the :class:`ModelSource` protocol.

A *model source* hands a stage the network it needs, on the compute device, and is told when
that network's phase is over. :class:`~r2r.pipeline.R2RPipeline` runs the same stages over any
source:

* :class:`ResidentModels` — the three networks stay loaded (``R2RPipeline.from_pretrained``);
* :class:`PhaseLoadedModels` — each network is read from disk when its phase starts and dropped
  when it ends, so at most one is in memory (``harmonize_low_memory`` / ``--low-memory``);
* the ComfyUI nodes' ``ComfyModels`` (``nodes/flow.py``) asks ComfyUI's model management to load
  each network with an estimate of the memory its phase needs, and reports ComfyUI's free-memory
  figure.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import R2RUserError

if TYPE_CHECKING:
    import torch

NetworkName = Literal["unet", "controller", "clear_vae"]
NETWORKS: tuple[NetworkName, ...] = ("unet", "controller", "clear_vae")
_WHAT = {"unet": "U-Net", "controller": "Harmony Controller", "clear_vae": "Clear-VAE"}


@runtime_checkable
class ModelSource(Protocol):
    """What a stage needs from wherever the networks live."""

    #: the compute device every stage runs on
    device: torch.device
    #: the release's scheduler config (diffusers format)
    scheduler_config: dict
    #: the cached empty-prompt CLIP embedding ``[1, 77, 768]``
    prompt_embeds: torch.Tensor
    #: where the weights came from (for messages)
    source: str

    def has(self, name: NetworkName) -> bool:
        """Whether this source can give ``name`` at all."""

    def dtype(self, name: NetworkName) -> torch.dtype:
        """The dtype ``name`` runs in (without loading it)."""

    def config(self, name: NetworkName) -> Mapping:
        """The network's config (for memory estimates; without loading its weights)."""

    def get(self, name: NetworkName, memory_required: int = 0) -> Any:
        """``name`` on the compute device (a diffusers model: its attributes are dynamic, so typed ``Any``);
        ``memory_required``: bytes the phase needs beside the weights."""

    def release(self, name: NetworkName) -> None:
        """The phase that used ``name`` is over (a source may unload it)."""

    def free_memory(self) -> int | None:
        """Bytes free on the compute device for what waits between stages; None on the CPU."""


def missing_network(name: str, how_to_fix: str) -> R2RUserError:
    return R2RUserError(f"This R2R pipeline has no {_WHAT[name]} loaded, but this step needs it. {how_to_fix}")


def cuda_free_memory(device) -> int | None:
    """``torch.cuda.mem_get_info``'s free bytes (plus what torch's cache holds) on a CUDA device, capped by a
    per-process limit (``r2r.pipeline.memory.capped_free_bytes``); None elsewhere."""
    import torch

    from .memory import capped_free_bytes

    if getattr(device, "type", "cpu") != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    reusable = stats.get("reserved_bytes.all.current", 0) - stats.get("allocated_bytes.all.current", 0)
    return capped_free_bytes(device, int(free + max(0, reusable)))


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

    def has(self, name: NetworkName) -> bool:
        return getattr(self.components, name) is not None

    def dtype(self, name: NetworkName):
        module = getattr(self.components, name)
        return module.dtype if module is not None else self.prompt_embeds.dtype

    def config(self, name: NetworkName) -> Mapping:
        module = getattr(self.components, name)
        if module is None:
            from ..weights.layout import official_config

            return official_config(name)
        return module.config

    def get(self, name: NetworkName, memory_required: int = 0):
        module = getattr(self.components, name)
        if module is None:
            raise missing_network(name, "Load it with load_components(..., components=('unet', 'controller', "
                                        "'clear_vae')).")
        return module

    def release(self, name: NetworkName) -> None:
        """Resident networks stay loaded."""

    def free_memory(self) -> int | None:
        return cuda_free_memory(self.device)

    def to(self, device=None, dtype=None) -> None:
        for name in NETWORKS:
            module = getattr(self.components, name)
            if module is not None:
                module.to(device=device, dtype=dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)


class PhaseLoadedModels:
    """Each network is loaded from ``source`` when a stage asks for it and dropped on release."""

    def __init__(self, source, *, torch_dtype, device, **load_kwargs) -> None:
        from ..weights import load_components

        self._load = load_components
        self._source = source
        self._dtype = torch_dtype
        self.device = device
        self._kwargs = load_kwargs
        self._loaded: dict = {}
        self._configs: dict = {}
        # the scheduler config and the (cached) empty-prompt embedding come with any component
        first = self._load_one("clear_vae")
        self.scheduler_config = dict(first.scheduler_config)
        self.prompt_embeds = first.prompt_embeds
        self.source = str(first.source)

    def _load_one(self, name: NetworkName):
        parts = self._load(self._source, torch_dtype=self._dtype, device=str(self.device), components=(name,),
                           **self._kwargs)
        module = getattr(parts, name).eval()
        self._loaded[name] = module
        self._configs[name] = dict(module.config)
        return parts

    def has(self, name: NetworkName) -> bool:
        return name in NETWORKS

    def dtype(self, name: NetworkName):
        return self._dtype

    def config(self, name: NetworkName) -> Mapping:
        if name not in self._configs:
            from ..weights.layout import official_config

            return official_config(name)
        return self._configs[name]

    def get(self, name: NetworkName, memory_required: int = 0):
        if name not in self._loaded:
            self._load_one(name)
        return self._loaded[name]

    def release(self, name: NetworkName) -> None:
        if self._loaded.pop(name, None) is None:
            return
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def free_memory(self) -> int | None:
        return cuda_free_memory(self.device)
