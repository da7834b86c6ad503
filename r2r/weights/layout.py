"""Where the R2R files live: the release layout of ``1243asdad/region2region`` and the official configs.

A release folder (what ``python -m r2r download`` writes, ComfyUI's ``models/r2r/region2region/``)::

    <root>/stable-diffusion-inpainting/{unet,controlnet,text_encoder,tokenizer,scheduler}/
    <root>/clear_vae/
    <root>/r2r_empty_prompt.safetensors        (written by r2r.weights.prompt on first load)

This module only names paths and reads small JSON files; it never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import R2RUserError, R2RWeightsNotFound

OFFICIAL_REPO = "1243asdad/region2region"
SD_FOLDER = "stable-diffusion-inpainting"
#: component -> folder inside a release (and inside the hub repo)
COMPONENT_DIRS = {
    "unet": f"{SD_FOLDER}/unet",
    "controller": f"{SD_FOLDER}/controlnet",
    "clear_vae": "clear_vae",
    "text_encoder": f"{SD_FOLDER}/text_encoder",
    "tokenizer": f"{SD_FOLDER}/tokenizer",
    "scheduler": f"{SD_FOLDER}/scheduler",
}
#: the three networks r2r builds
MODEL_COMPONENTS = ("unet", "controller", "clear_vae")
#: everything a release holds (the text encoder and tokenizer only until the empty prompt is cached)
RELEASE_COMPONENTS = MODEL_COMPONENTS + ("text_encoder", "tokenizer", "scheduler")
#: weights file names of a diffusers / transformers model folder, in order of preference
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
#: copies of the release's config files (and the CLIP tokenizer) that ship with r2r
OFFICIAL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "official"
_OFFICIAL_CONFIG_FILES = {
    "unet": f"{SD_FOLDER}/unet/config.json",
    "controller": f"{SD_FOLDER}/controlnet/config.json",
    "clear_vae": "clear_vae/config.json",
    "text_encoder": f"{SD_FOLDER}/text_encoder/config.json",
    "scheduler": f"{SD_FOLDER}/scheduler/scheduler_config.json",
}
#: human names of the networks (error messages)
COMPONENT_LABELS = {
    "unet": "R2R U-Net",
    "controller": "R2R Harmony Controller",
    "clear_vae": "R2R Clear-VAE",
    "text_encoder": "CLIP text encoder",
    "tokenizer": "CLIP tokenizer",
    "scheduler": "scheduler config",
}
#: where each network comes from (error messages)
COMPONENT_SOURCES = {
    "unet": f"{COMPONENT_DIRS['unet']}/ of {OFFICIAL_REPO} (or diff-base.ckpt, model.diffusion_model.*)",
    "controller": f"{COMPONENT_DIRS['controller']}/ of {OFFICIAL_REPO} (or diff-base.ckpt, control_model.*)",
    "clear_vae": f"clear_vae/ of {OFFICIAL_REPO} (or clear_vae.ckpt)",
}


def describe_path(path) -> str:
    """``"<path> does not exist"`` / ``"<path> is a folder"`` / ``"<path> is a file"`` (for messages)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder"
    if path.exists():
        return f"{path} is a file"
    return f"{path} does not exist"


def read_json(path, what: str) -> dict:
    """A JSON object from ``path``; unreadable files and invalid JSON are user errors naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise R2RWeightsNotFound(f"The {what} {path} does not exist; check the path.") from exc
    except IsADirectoryError as exc:
        raise R2RUserError(f"The {what} {path} is a folder; give the .json file.") from exc
    except OSError as exc:
        raise R2RUserError(f"Cannot read the {what} {path}: {exc.strerror or exc}; check its permissions.") from exc
    except ValueError as exc:
        raise R2RUserError(f"The {what} {path} is not valid JSON ({exc}); restore the original file.") from exc
    if not isinstance(data, dict):
        raise R2RUserError(f"The {what} {path} holds a JSON {type(data).__name__}, expected an object {{...}}.")
    return data


def official_config(kind: str) -> dict:
    """The official config of ``kind`` (unet, controller, clear_vae, text_encoder, scheduler)."""
    return json.loads((OFFICIAL_CONFIGS / _OFFICIAL_CONFIG_FILES[kind]).read_text(encoding="utf-8"))


def find_weights_file(folder, what: str = "weights") -> Path:
    """The weights file of a diffusers/transformers model folder (:data:`WEIGHT_FILES` order, else its
    only ``*.safetensors``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise R2RWeightsNotFound(
            f"No {what} weights: {describe_path(folder)}, expected a model folder holding "
            f"{WEIGHT_FILES[0]} (or {WEIGHT_FILES[2]}). Run `python -m r2r download --to <folder>`."
        )
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    found = f"; it holds {len(others)} other .safetensors files ({', '.join(p.name for p in others[:4])}), " \
            "so r2r cannot tell which one" if others else ""
    raise R2RWeightsNotFound(
        f"No {what} weights in {folder}: expected one of {', '.join(WEIGHT_FILES[:3])} "
        f"(or {WEIGHT_FILES[-2]}){found}. Put the file from {OFFICIAL_REPO} there, or run "
        "`python -m r2r download --to <folder>`."
    )


def release_paths(root) -> dict[str, Path]:
    """Component folders of a release folder in the hub layout (also accepts the SD folder itself,
    with ``clear_vae/`` inside it or beside it)."""
    root = Path(root)
    if not root.is_dir():
        problem = (f"{root} is a file, not a folder" if root.exists()
                   else f"R2R release folder {root} does not exist")
        raise R2RWeightsNotFound(
            f"{problem}. Give the folder that holds {SD_FOLDER}/ and clear_vae/ (the layout of {OFFICIAL_REPO}), "
            f"or download it with `python -m r2r download --to {root if not root.exists() else '<folder>'}`."
        )
    if (root / SD_FOLDER).is_dir():
        sd, vae = root / SD_FOLDER, root / "clear_vae"
    elif (root / "unet").is_dir() or (root / "controlnet").is_dir():
        sd = root
        vae = root / "clear_vae" if (root / "clear_vae").is_dir() else root.parent / "clear_vae"
    else:
        raise R2RWeightsNotFound(
            f"{root} exists but is not an R2R release folder: expected {SD_FOLDER}/{{unet,controlnet,text_encoder,"
            f"tokenizer,scheduler}}/ and clear_vae/ inside it (the layout of {OFFICIAL_REPO}). Download with "
            f"`python -m r2r download --to {root}`, or give the folder that holds them."
        )
    return {
        "unet": sd / "unet", "controller": sd / "controlnet", "clear_vae": vae,
        "text_encoder": sd / "text_encoder", "tokenizer": sd / "tokenizer", "scheduler": sd / "scheduler",
    }


def require_component_folder(kind: str, folder: Path, root) -> Path:
    """The weights file of the network ``kind`` in its release folder; missing pieces are named."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = f"the folder {folder} is missing" if not folder.exists() else f"{folder} is a file, not a folder"
    elif not (folder / "config.json").is_file():
        problem = f"{folder} exists but has no config.json"
    else:
        return find_weights_file(folder, COMPONENT_LABELS[kind])
    raise R2RWeightsNotFound(
        f"{COMPONENT_LABELS[kind]} missing: {problem}. It needs config.json and diffusion_pytorch_model.safetensors "
        f"(from {COMPONENT_DIRS[kind]}/ of {OFFICIAL_REPO}). Put them there, or run "
        f"`python -m r2r download --to {root}`."
    )


def read_scheduler_config(folder) -> dict:
    """``<folder>/scheduler_config.json``; the official one when the release has none."""
    if folder is not None and (Path(folder) / "scheduler_config.json").is_file():
        return read_json(Path(folder) / "scheduler_config.json", "scheduler config")
    return official_config("scheduler")


def expected_hub_files(kinds) -> list[str]:
    """Repo-relative files a release needs for ``kinds`` (the names the hub release uses)."""
    out = []
    for kind in kinds:
        d = COMPONENT_DIRS[kind]
        if kind == "tokenizer":
            out += [f"{d}/{n}" for n in TOKENIZER_FILES]
        elif kind == "scheduler":
            out.append(f"{d}/scheduler_config.json")
        elif kind == "text_encoder":
            out += [f"{d}/config.json", f"{d}/model.safetensors"]
        else:
            out += [f"{d}/config.json", f"{d}/diffusion_pytorch_model.safetensors"]
    return out


def missing_release_files(root, kinds) -> list[str]:
    """Files of ``kinds`` absent from the release folder ``root`` ([] when complete; the scheduler
    config is optional, the official one is bundled)."""
    root = Path(root)
    missing = []
    for kind in kinds:
        d = root / COMPONENT_DIRS[kind]
        if kind == "scheduler":
            continue
        if kind == "tokenizer":
            if not (d / "vocab.json").is_file():
                missing.append(f"{COMPONENT_DIRS[kind]}/vocab.json")
            continue
        if not (d / "config.json").is_file():
            missing.append(f"{COMPONENT_DIRS[kind]}/config.json")
        try:
            find_weights_file(d)
        except R2RWeightsNotFound:
            name = "model.safetensors" if kind == "text_encoder" else WEIGHT_FILES[0]
            missing.append(f"{COMPONENT_DIRS[kind]}/{name}")
    return missing
