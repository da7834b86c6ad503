"""Poisson blending, Random Poisson Blending and the weight-free harmonizer (numpy-first).

    from r2r.blending import poisson_blend, random_poisson_blend, harmonize_statistics

No diffusers import; torch is only imported for torch inputs.
"""

from .harmonizer import harmonize_statistics, harmonize_statistics_torch
from .poisson import MODES, PoissonSolution, poisson_blend, poisson_residual, solve_poisson
from .rpb import RPBResult, passes_filter, random_poisson_blend, random_poisson_blend_torch, rpb_diagnostics

__all__ = [
    "MODES",
    "harmonize_statistics",
    "harmonize_statistics_torch",
    "PoissonSolution",
    "RPBResult",
    "passes_filter",
    "poisson_blend",
    "poisson_residual",
    "random_poisson_blend",
    "random_poisson_blend_torch",
    "rpb_diagnostics",
    "solve_poisson",
]
