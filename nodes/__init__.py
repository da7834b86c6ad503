"""The node registry: every node class of the pack (ComfyUI V3 API, ``comfy_api.v0_0_2``).

Node ids are frozen once shipped: never rename one; add ``<Id>V2`` and keep the old class.
Importing this package needs ComfyUI's ``comfy_api`` (the pack root's ``comfy_entrypoint``
imports it only when ComfyUI loads the pack).
"""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension

from . import _host, chain, data, examples, harmonize, loaders, video

try:
    # the KSampler path (R2R Conditioning ...) lives in its own module; a pack without it still loads
    from .ksampler_path import NODES as KSAMPLER_NODES
except ModuleNotFoundError as exc:
    if exc.name != f"{__name__}.ksampler_path":
        raise
    KSAMPLER_NODES = []

NODE_CLASSES = [*loaders.NODES, *examples.NODES, *video.NODES, *chain.NODES, *harmonize.NODES, *KSAMPLER_NODES,
                *data.NODES]


class R2RExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODE_CLASSES)


def make_extension() -> R2RExtension:
    """Register the models/r2r folder with ComfyUI, list the templates starter first, return the extension."""
    _host.register_model_folder()
    _host.order_templates(examples.TEMPLATE_ORDER)
    return R2RExtension()
