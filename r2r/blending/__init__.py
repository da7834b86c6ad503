"""Poisson blending, Random Poisson Blending and the weight-free harmonizer (numpy-first).

    from r2r.blending import poisson_blend, random_poisson_blend, harmonize_statistics

No diffusers import; torch is only imported for torch inputs. Layout:
``poisson`` (public Poisson entry point) over ``poisson_setup`` / ``poisson_stencils``
(shared by both backends) and ``poisson_numpy`` / ``poisson_torch`` (the backends);
``rpb`` (Random Poisson Blending) with ``diagnostics`` (triplet figures and the sample
filter); ``harmonizer`` (Lab statistics transfer); ``inputs`` (the input checks).
"""

from .diagnostics import filter_rejection, passes_filter, rpb_diagnostics
from .harmonizer import harmonize_statistics, harmonize_statistics_torch
from .poisson import MODES, PoissonSolution, poisson_blend, poisson_residual, solve_poisson
from .rpb import RPBResult, random_poisson_blend, random_poisson_blend_torch

__all__ = [
    "MODES",
    "PoissonSolution",
    "RPBResult",
    "filter_rejection",
    "harmonize_statistics",
    "harmonize_statistics_torch",
    "passes_filter",
    "poisson_blend",
    "poisson_residual",
    "random_poisson_blend",
    "random_poisson_blend_torch",
    "rpb_diagnostics",
    "solve_poisson",
]
