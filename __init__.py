"""ComfyUI-R2R: ComfyUI entry point (V3 node API: ``comfy_entrypoint`` returns the extension).

ComfyUI imports this folder as a package under a synthetic name, so every import inside the
pack is relative. Importing the pack root does not import ComfyUI (or torch): the node modules
(``nodes/``) are imported by ``comfy_entrypoint``, which ComfyUI calls when it loads the pack.
"""


#: served under /extensions/<pack folder>/: docs/<NodeId>.md are the nodes' help pages in the UI
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import make_extension

    return make_extension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
