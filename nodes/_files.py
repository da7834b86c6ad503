"""What the loader combos list under ``models/r2r/`` (every registered folder).

* releases: folders in the official hub layout (``<name>/stable-diffusion-inpainting/``
  with ``unet/``, ``controlnet/``, ... and ``<name>/clear_vae/``);
* component folders: diffusers model folders (``config.json`` + weights) for the
  Clear-VAE or the controller, inside a release or on their own;
* single files: ``.safetensors`` / ``.ckpt`` / ``.bin`` / ``.pt`` / ``.pth`` / ``.sft``.
"""

from __future__ import annotations

import json
import os
import re

from ..r2r.errors import R2RUserError, R2RWeightsNotFound
from . import _host

OFFICIAL_REPO = "1243asdad/region2region"
OFFICIAL_NAME = "region2region"
SD_FOLDER = "stable-diffusion-inpainting"
_MAX_DEPTH = 4
_NOT_MODELS = {"r2r_empty_prompt.safetensors"}  # the cached text embedding r2r writes next to a release


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _walk(root: str):
    """os.walk limited in depth, skipping hidden folders and HF cache folders."""
    root = os.path.abspath(root)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if dirpath.count(os.sep) - base_depth >= _MAX_DEPTH:
            dirnames[:] = []
        yield dirpath, dirnames, sorted(filenames)


def is_release(path: str) -> bool:
    return os.path.isdir(os.path.join(path, SD_FOLDER, "unet"))


def _config_kind(folder: str) -> str | None:
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        return None
    try:
        with open(cfg, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    name = str(config.get("_class_name", ""))
    blocks = " ".join(str(b) for b in config.get("down_block_types", []) or [])
    if name in ("ClearVAE", "AutoencoderKL_Skip") or "Skip" in blocks:
        return "clear_vae"
    if name in ("HarmonyController", "ControlNetModel") or config.get("conditioning_channels") == 7 or (
            os.path.basename(folder) == "controlnet" and "cross_attention_dim" in config):
        return "controller"
    if name == "UNet2DConditionModel" and config.get("in_channels") == 9:
        return "unet"
    return None


def scan() -> dict[str, list[str]]:
    """{"release": [...], "clear_vae": [...], "controller": [...], "unet": [...], "file": [...]} as names
    relative to the models folders (first folder wins on duplicates)."""
    found: dict[str, list[str]] = {"release": [], "clear_vae": [], "controller": [], "unet": [], "file": []}
    seen = set()
    for root in _host.model_dirs():
        if not os.path.isdir(root):
            continue
        for dirpath, _dirnames, filenames in _walk(root):
            rel = _rel(dirpath, root)
            if dirpath != os.path.abspath(root):
                if is_release(dirpath):
                    key = ("release", rel)
                    if key not in seen:
                        seen.add(key)
                        found["release"].append(rel)
                kind = _config_kind(dirpath)
                if kind is not None and (kind, rel) not in seen:
                    seen.add((kind, rel))
                    found[kind].append(rel)
            for fn in filenames:
                if fn in _NOT_MODELS:
                    continue
                if os.path.splitext(fn)[1].lower() in _host.MODEL_EXTENSIONS:
                    frel = _rel(os.path.join(dirpath, fn), root)
                    # files inside diffusers folders are loaded through their folder
                    if _config_kind(dirpath) is not None or os.path.basename(os.path.dirname(
                            os.path.join(dirpath, fn))) in ("unet", "text_encoder", "vae", "safety_checker"):
                        continue
                    if ("file", frel) not in seen:
                        seen.add(("file", frel))
                        found["file"].append(frel)
    return found


def refused_name(name) -> str | None:
    """Why ``name`` is not a name inside the models folders (absolute, '..', a drive, a NUL byte), or None.

    Loader names are relative to ``models/r2r`` (every registered folder), as ComfyUI's own loaders
    treat theirs (``folder_paths.get_full_path``): a client of the server must not make it read any file
    on the disk. Symbolic links placed *inside* a models folder are followed, as ComfyUI does (that is
    how shared model storage is usually linked in; only someone with access to the folder can make one).
    """
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not a name"
    if "\x00" in name:
        return "it contains a NUL byte"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "it climbs out with '..'"
    return None


def refusal(name, what: str = "model") -> R2RUserError:
    """The error for a refused name (see :func:`refused_name`): the name, why, and what to pick instead."""
    return R2RUserError(
        f"R2R: the {what} name {name!r} is refused ({refused_name(name)}): loaders read only names inside the "
        f"models/r2r folders ({', '.join(_host.model_dirs())}), as ComfyUI's own loaders do. Pick one from the "
        "list, or copy (or link) the files into models/r2r and refresh."
    )


def resolve(name: str) -> str | None:
    """Full path of a listed name, or None; a name that would leave the models folders (absolute, '..')
    raises :func:`refusal`."""
    if not name:
        return None
    if refused_name(name) is not None:
        raise refusal(name)
    for root in _host.model_dirs():
        path = os.path.join(root, *re.split(r"[\\/]+", name))
        if os.path.exists(path):
            return path
    return None


def not_found(name: str, what: str, expected: str) -> R2RWeightsNotFound:
    dirs = _host.model_dirs()
    return R2RWeightsNotFound(
        f"R2R: {what} '{name}' was not found. Looked in: {', '.join(dirs)}. "
        f"Expected {expected}. Put the files there (or add a folder under 'r2r:' in "
        "extra_model_paths.yaml), then press R (refresh) in the UI."
    )
