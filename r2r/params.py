"""Named choices shared by the pipeline, the CLI and the nodes (one list each), and their check.

Keeping them here (no heavy imports) lets the CLI and the node schemas offer exactly what the
core accepts.
"""

from __future__ import annotations

from .errors import R2RUserError

#: how an image becomes the working canvas (r2r.imaging.prepare)
RESIZE_MODES = ("fit", "pad", "square")
DEFAULT_RESIZE_MODE = "fit"
#: how the working-resolution result reaches the original size (r2r.imaging.fullres.restore_output)
FULLRES_MODES = ("auto", "color_transform", "upsample")
DEFAULT_FULLRES_MODE = "auto"
#: the official sampler and the diffusers schedulers offered beside it (r2r.pipeline.sampling.SCHEDULERS)
SCHEDULER_NAMES = ("euler_ancestral", "euler", "euler_karras", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde",
                   "ddim", "unipc", "heun")
DEFAULT_SCHEDULER = "euler_ancestral"
#: where the controller residuals and the Clear-VAE skips wait during denoising
#: (device = on the compute device; host = CPU RAM; recompute = dropped and computed again when needed;
#: auto = the documented rule in r2r.flow)
PLACEMENTS = ("auto", "device", "host", "recompute")
DEFAULT_PLACEMENT = "auto"


def check_choice(value, choices, name: str):
    """Return ``value`` if it is one of ``choices``; otherwise a clear :class:`R2RUserError`."""
    if value not in choices:
        raise R2RUserError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value
