"""Import the pack root as a package, the way ComfyUI does (a synthetic module name,
relative imports inside), with ComfyUI's source tree importable but no ComfyUI server.

    from comfy_pack import load_pack, node_classes
    pack = load_pack()
    NODES = node_classes()          # {node_id: V3 class}, what the pack's comfy_entrypoint registers
    NODES["R2RHarmonize"].execute(...)

The node modules import ``comfy_api.v0_0_2`` (ComfyUI's V3 node API), so the ComfyUI source
tree goes on ``sys.path`` (appended: its top-level ``nodes``/``utils`` never shadow anything):
``$COMFYUI_DIR`` if set, else ``<repo>/.cache/ComfyUI`` (the test environment extracts ComfyUI
0.3.64 there). Only ``comfy_api`` and what it imports (``comfy.cli_args``, ``folder_paths``,
``comfy_execution``) are loaded, not ``comfy.model_management``, so the pack's host layer stays in
plain mode (no ComfyUI devices or model management) unless a test imports that itself.

The pack's ``r2r`` is then ``<PACK_NAME>.r2r`` (a second copy of the library, as inside
ComfyUI), so compare exceptions through ``pack_module("r2r.errors")``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui_r2r_pack"


def comfyui_dir() -> str:
    """The ComfyUI source tree the tests use."""
    return os.path.abspath(os.environ.get("COMFYUI_DIR") or os.path.join(PACK_ROOT, ".cache", "ComfyUI"))


def _add_comfyui_to_path() -> None:
    path = comfyui_dir()
    if not os.path.isfile(os.path.join(path, "comfy_api", "v0_0_2", "__init__.py")):
        raise RuntimeError(
            f"ComfyUI's source tree was not found at {path} (needed for the node tests: the nodes use "
            "comfy_api.v0_0_2). Run the README's test command (it extracts ComfyUI 0.3.64 into .cache/ComfyUI) "
            "or set COMFYUI_DIR to a ComfyUI source tree."
        )
    if path not in sys.path:
        sys.path.append(path)


def load_pack():
    """Import (once) and return the pack's root package."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    _add_comfyui_to_path()
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


def node_classes() -> dict:
    """``{node_id: class}`` for every node the pack's extension registers (as ComfyUI sees them)."""
    import asyncio

    ext = asyncio.run(load_pack().comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(ext.get_node_list())}


def run_node(node_id: str, *args, **kwargs) -> tuple:
    """Execute a node class the way ComfyUI does; its outputs as a tuple."""
    return tuple(_registered()[node_id].execute(*args, **kwargs).args)


@functools.cache
def _registered() -> dict:
    return node_classes()


@contextlib.contextmanager
def models_folder(release, root):
    """``root`` made the nodes' models/r2r folder (``R2R_MODELS_DIR``) with ``release`` linked in as
    'region2region', for as long as the ``with`` lasts."""
    os.symlink(release, os.path.join(root, "region2region"))
    old = os.environ.get("R2R_MODELS_DIR")
    os.environ["R2R_MODELS_DIR"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("R2R_MODELS_DIR", None)
        else:
            os.environ["R2R_MODELS_DIR"] = old


def comfy_sampling_in_process():
    """ComfyUI's own sampling code in this process, set up as ``main.py --cpu`` does, for the modules that
    run KSampler in-process; returns ComfyUI's ``nodes`` module (KSampler & co.). The ComfyUI tree goes
    first on ``sys.path`` (``import nodes`` must find ComfyUI's nodes.py, not this repository's nodes/
    package) and ``--cpu`` is set before ``comfy.model_management`` is imported. Skips the calling module
    when there is no ComfyUI tree (under CI=true tests/conftest.py turns that skip into a failure)."""
    tree = comfyui_dir()
    if not os.path.isfile(os.path.join(tree, "comfy", "model_management.py")):
        import pytest

        pytest.skip(f"no ComfyUI source tree at {tree} (set COMFYUI_DIR)", allow_module_level=True)
    if sys.path[:1] != [tree]:
        sys.path.insert(0, tree)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    importlib.import_module("comfy.model_management")
    return importlib.import_module("nodes")


def box_scene(h: int = 80, w: int = 112):
    """A composite IMAGE ``[1,H,W,3]`` (a smooth gradient with a colour-cast box pasted in) and its MASK
    ``[1,H,W]``, as ComfyUI passes them to a node."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx], -1)[None]
    mask = torch.zeros(1, h, w)
    mask[:, 20:60, 37:74] = 1.0
    return torch.where(mask[..., None] > 0, img * torch.tensor([1.3, 0.7, 0.6]), img).clamp(0, 1), mask
