"""The R2R diffusion core: :class:`R2RPipeline` and its stages (ref §a).

* :mod:`~r2r.pipeline.stages` — the stages every caller runs (prepare, plan, encode, residuals,
  sample, decode, restore) and the rule that callers only call them;
* :mod:`~r2r.pipeline.harmonize` — :class:`R2RPipeline` (``pipe(...)``, ``variations``) and
  :func:`harmonize_low_memory`;
* :mod:`~r2r.pipeline.sampling` — schedulers, :class:`SamplingPlan`, the controller residuals and the
  U-Net loop in the official random-number order (the only place that order is written);
* :mod:`~r2r.pipeline.noise` — noise sources (which generator a run draws from);
* :mod:`~r2r.pipeline.reference` — :class:`Reference`: where MACA's colour statistics come from;
* :mod:`~r2r.pipeline.residuals` — controller residuals between stages and their cache;
* :mod:`~r2r.pipeline.memory` — memory estimates and the placement rule;
* :mod:`~r2r.pipeline.model_sources` — the :class:`ModelSource` protocol and its implementations;
* :mod:`~r2r.pipeline.values` — :class:`EncodedComposite`, :class:`R2ROutput`.
"""

from __future__ import annotations

from .harmonize import R2RPipeline, harmonize_low_memory
from .model_sources import ModelSource, PhaseLoadedModels, ResidentModels
from .noise import GeneratorNoise, ItemSeeds, NoiseSource, Seed, SharedSeed, noise_source
from .reference import PreparedReference, Reference
from .residuals import ResidualCache, Residuals
from .sampling import SCHEDULERS, SamplingPlan
from .values import EncodedComposite, R2ROutput

__all__ = [
    "SCHEDULERS",
    "EncodedComposite",
    "GeneratorNoise",
    "ItemSeeds",
    "ModelSource",
    "NoiseSource",
    "PhaseLoadedModels",
    "PreparedReference",
    "R2ROutput",
    "R2RPipeline",
    "Reference",
    "ResidentModels",
    "ResidualCache",
    "Residuals",
    "SamplingPlan",
    "Seed",
    "SharedSeed",
    "harmonize_low_memory",
    "noise_source",
]
