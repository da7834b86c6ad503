"""ComfyUI-R2R: ComfyUI entry point.

ComfyUI imports this folder as a package under a synthetic name, so every import
inside the pack is relative. Importing it without ComfyUI works too (the nodes
only touch ComfyUI's modules while they execute).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
