"""r2r: Region-to-Region (R2R) generative image harmonization, without ComfyUI.

The heavy model stack (torch, diffusers, transformers) is imported lazily, so
``import r2r`` is cheap and the image-processing parts (Poisson blending, the
weight-free harmonizer, the dataset writer) work without the diffusion models.

    from r2r import R2RPipeline
    pipe = R2RPipeline.from_pretrained("path/or/1243asdad/region2region")
    result = pipe(composite, mask)
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "R2RPipeline": ".pipeline",
    "R2ROutput": ".pipeline",
    "harmonize_low_memory": ".pipeline",
    "ClearVAE": ".models",
    "HarmonyController": ".models",
    "MACA": ".models",
    "AdaptiveFilters": ".models",
    "R2RUserError": ".errors",
    "Reference": ".pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
