"""Noise sources: where a sampling run's random numbers come from.

The *order* in which a run draws is written once, in :mod:`r2r.pipeline.sampling` (the official
order: initial noise, the composite's posterior sample, one draw per ancestral step, the
discarded decode draw). A noise source only decides which ``torch.Generator`` (or one per batch
item) those draws come from — the hook that :meth:`R2RPipeline.sample` takes as ``noise=``:

* :class:`Seed` — one generator for the whole batch, as the official script seeds it
  (the default for an int seed);
* :class:`SharedSeed` — every batch item its own generator with the same seed, so identical items
  (e.g. identical video frames) get identical noise and identical results;
* :class:`ItemSeeds` — one seed per batch item (a batch of seeds for one composite);
* :class:`GeneratorNoise` — generators made by the caller.

``device``: ``"cpu"`` draws on the CPU, so a seed gives the same picture on every device
(ComfyUI's convention, the default); ``"device"`` draws on the compute device, as the official
inference script does (``torch.Generator(device=accelerator.device)``), which reproduces its image
for the same seed on a GPU. On a CPU the two are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import R2RUserError
from ..params import check

if TYPE_CHECKING:
    import torch



@runtime_checkable
class NoiseSource(Protocol):
    """Gives a sampling run its generator(s); :mod:`r2r.pipeline.sampling` draws from them in order."""

    def generators(self, batch: int, compute_device: torch.device):
        """One ``torch.Generator`` for the batch, a list of ``batch`` generators, or None (torch's global RNG)."""


def _generator(seed: int, device: str, compute_device):
    import torch

    where = "cpu" if device == "cpu" else compute_device
    return torch.Generator(device=where).manual_seed(int(seed))


@dataclass(frozen=True)
class _SeedNoise:
    seed: int
    device: str = "cpu"

    def __post_init__(self):
        check("seed", self.seed, "seed")
        check("noise_device", self.device, "noise_device")


@dataclass(frozen=True)
class Seed(_SeedNoise):
    """One generator seeded with ``seed`` draws for the whole batch (the official order)."""

    def generators(self, batch: int, compute_device):
        return _generator(self.seed, self.device, compute_device)


@dataclass(frozen=True)
class SharedSeed(_SeedNoise):
    """Every batch item draws from its own generator seeded with the same ``seed``: identical
    items start from identical noise (and identical posterior samples), so they give identical results."""

    def generators(self, batch: int, compute_device):
        return [_generator(self.seed, self.device, compute_device) for _ in range(batch)]


@dataclass(frozen=True)
class ItemSeeds:
    """Batch item ``i`` draws from a generator seeded with ``seeds[i]`` (each item the picture a
    batch-1 run with that seed gives)."""

    seeds: tuple[int, ...]
    device: str = "cpu"

    def __post_init__(self):
        for s in self.seeds:
            check("seed", s, "seed")
        check("noise_device", self.device, "noise_device")

    def generators(self, batch: int, compute_device):
        if len(self.seeds) != batch:
            raise R2RUserError(f"Got {len(self.seeds)} seeds for a batch of {batch} image(s); pass one seed per "
                               "batch item.")
        return [_generator(s, self.device, compute_device) for s in self.seeds]


@dataclass(frozen=True)
class GeneratorNoise:
    """Generators made by the caller: one for the batch, or one per batch item."""

    generator: object

    def generators(self, batch: int, compute_device):
        if isinstance(self.generator, (list, tuple)):
            if len(self.generator) != batch:
                raise R2RUserError(f"Got {len(self.generator)} generators for a batch of {batch} image(s); pass one "
                                   "generator (or seed) per batch item, or a single one for the whole batch.")
            return list(self.generator)
        return self.generator


def noise_source(noise=None, noise_device: str = "cpu") -> NoiseSource:
    """``None`` | int seed | ``torch.Generator`` | list of seeds or generators | a :class:`NoiseSource`
    -> a noise source. An int seed becomes :class:`Seed` (drawn where ``noise_device`` says); a list
    of ints becomes :class:`ItemSeeds`; None draws from torch's global generator."""
    import torch

    check("noise_device", noise_device, "noise_device")
    if noise is None:
        return GeneratorNoise(None)
    if isinstance(noise, torch.Generator):
        return GeneratorNoise(noise)
    if isinstance(noise, NoiseSource) and not isinstance(noise, (int, list, tuple)):
        return noise
    if isinstance(noise, Sequence) and not isinstance(noise, (str, bytes)):
        items = list(noise)
        if items and all(isinstance(g, torch.Generator) for g in items):
            return GeneratorNoise(items)
        for s in items:
            _check_seed_type(s)
        return ItemSeeds(tuple(int(s) for s in items), noise_device)
    _check_seed_type(noise)
    return Seed(int(noise), noise_device)


def _check_seed_type(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise R2RUserError(f"generator must be None, an int seed, a torch.Generator, a list of those or a noise "
                           f"source (r2r.pipeline.noise); got {type(seed).__name__}.")
    if not 0 <= seed < 2**64:
        raise R2RUserError(f"A seed must be an integer from 0 to 2**64 - 1; got {seed}.")
