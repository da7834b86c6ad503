"""Import the pack root as a package, the way ComfyUI does (a synthetic module name,
relative imports inside), without ComfyUI.

    from tests.comfy_pack import load_pack
    pack = load_pack()
    pack.NODE_CLASS_MAPPINGS["R2RHarmonize"]
    pack.nodes.harmonize  # submodules are reachable as attributes after import

The pack's ``r2r`` is then ``<PACK_NAME>.r2r`` (a second copy of the library, as inside
ComfyUI), so compare exceptions through ``pack_module("r2r.errors")``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui_r2r_pack"


def load_pack():
    """Import (once) and return the pack's root package."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, os.path.join(PACK_ROOT, "__init__.py"), submodule_search_locations=[PACK_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


def pack_module(dotted: str):
    """A submodule of the loaded pack, e.g. ``pack_module("nodes.harmonize")``."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{dotted}")
