"""Loading the R2R networks from every form the weights come in, strictly.

Sources (:func:`load_components`):

* a folder in the hub layout of ``1243asdad/region2region``::

      <root>/stable-diffusion-inpainting/{unet,controlnet,text_encoder,tokenizer,scheduler}/
      <root>/clear_vae/

* the hub repo id itself (``huggingface_hub.snapshot_download`` of only the needed files; honours
  ``HF_HUB_OFFLINE`` / ``local_files_only``, ``cache_dir`` and ``local_dir``);
* a dict of per-component single files (diffusers ``.safetensors``, SD-format ``.ckpt`` such as
  ``clear_vae.ckpt`` in any of its three prefix layouts or the ControlLDM ``diff-base.ckpt``).

Every load is strict: missing or unexpected tensors, wrong shapes or a component of the wrong kind
raise :class:`~r2r.errors.R2RUserError` naming the file, what it looks like and what was expected.
Pickle checkpoints are read with ``torch.load(weights_only=True)``. Weights go straight to their
device and one dtype (the Clear-VAE's float16 filter kernels included).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import R2RUserError, R2RWeightsNotFound

OFFICIAL_REPO = "1243asdad/region2region"
SD_FOLDER = "stable-diffusion-inpainting"
COMPONENT_DIRS = {
    "unet": f"{SD_FOLDER}/unet",
    "controller": f"{SD_FOLDER}/controlnet",
    "clear_vae": "clear_vae",
    "text_encoder": f"{SD_FOLDER}/text_encoder",
    "tokenizer": f"{SD_FOLDER}/tokenizer",
    "scheduler": f"{SD_FOLDER}/scheduler",
}
MODEL_COMPONENTS = ("unet", "controller", "clear_vae")
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
OFFICIAL_CONFIGS = Path(__file__).resolve().parent / "configs" / "official"
CHECKPOINT_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")

_WHAT = {
    "unet": ("R2R U-Net", f"{COMPONENT_DIRS['unet']}/ of {OFFICIAL_REPO} (or diff-base.ckpt, model.diffusion_model.*)"),
    "controller": (
        "R2R Harmony Controller",
        f"{COMPONENT_DIRS['controller']}/ of {OFFICIAL_REPO} (or diff-base.ckpt, control_model.*)",
    ),
    "clear_vae": ("R2R Clear-VAE", f"clear_vae/ of {OFFICIAL_REPO} (or clear_vae.ckpt)"),
}


# ---------------------------------------------------------------------------------------------- types
@dataclass
class R2RComponents:
    """Everything the R2R pipeline needs, loaded."""

    unet: Any = None
    controller: Any = None
    clear_vae: Any = None
    scheduler_config: dict = field(default_factory=dict)
    prompt_embeds: Any = None  # [1, 77, 768] empty-prompt CLIP embedding
    source: str = ""

    def to(self, device=None, dtype=None) -> R2RComponents:
        for name in ("unet", "controller", "clear_vae"):
            m = getattr(self, name)
            if m is not None:
                m.to(device=device, dtype=dtype)
        if self.prompt_embeds is not None:
            self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)
        return self


# ---------------------------------------------------------------------------------------------- helpers
def resolve_torch_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise R2RUserError(f"Unsupported torch_dtype {dtype!r}; expected one of float32, float16, bfloat16.")
    return names[key]


def _env_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE", "")
    if v.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a hard dependency
        return False


def looks_like_repo_id(source) -> bool:
    return (
        isinstance(source, str)
        and not os.path.exists(source)
        and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None
        and not source.startswith((".", "/"))
    )


def official_config(kind: str) -> dict:
    rel = {"unet": f"{SD_FOLDER}/unet/config.json", "controller": f"{SD_FOLDER}/controlnet/config.json",
           "clear_vae": "clear_vae/config.json", "text_encoder": f"{SD_FOLDER}/text_encoder/config.json",
           "scheduler": f"{SD_FOLDER}/scheduler/scheduler_config.json"}[kind]
    return json.loads((OFFICIAL_CONFIGS / rel).read_text())


def find_weights_file(folder: Path, what: str = "weights") -> Path:
    """The weights file of a diffusers/transformers model folder (safetensors preferred)."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if len(others) == 1:
        return others[0]
    raise R2RWeightsNotFound(
        f"No {what} weights in {folder}: expected one of {', '.join(WEIGHT_FILES[:3])} "
        f"(or {WEIGHT_FILES[-2]}). Put the file from {OFFICIAL_REPO} there, or run "
        "`python -m r2r download --to <folder>`."
    )


def _bad_safetensors(path, exc) -> R2RUserError:
    return R2RUserError(
        f"{path} could not be read as safetensors ({exc}); the file is probably truncated or not a "
        "safetensors file: download it again."
    )


def read_state_dict(path, device="cpu") -> dict:
    """Tensors of a .safetensors / sharded index / .ckpt/.bin/.pt file (pickles via weights_only=True)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise R2RWeightsNotFound(f"Weights file {path} does not exist; check the path (or download the weights).")
    name = path.name
    if name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise R2RUserError(f"{path} is not a valid sharded-weights index (no weight_map): {exc}") from exc
        out = {}
        for shard in shards:
            out.update(read_state_dict(path.parent / shard, device))
        return out
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise _bad_safetensors(path, exc) from exc
    if path.suffix in CHECKPOINT_SUFFIXES:
        import pickle

        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as exc:
            raise R2RUserError(
                f"{path} contains pickled Python objects besides tensors, which r2r does not execute "
                "(torch.load weights_only=True). Extract its state_dict in a trusted environment and save it "
                "with safetensors.torch.save_file, then load that file."
            ) from exc
        except Exception as exc:
            raise R2RUserError(f"{path} could not be read as a PyTorch checkpoint ({exc}); download it again.") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # Lightning checkpoint
        if not isinstance(obj, dict):
            raise R2RUserError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors).")
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise R2RUserError(f"{path} holds no tensors (keys: {list(obj)[:5]}); expected a state_dict.")
        if str(device) != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return tensors
    raise R2RUserError(
        f"Unsupported weights file {path}: expected .safetensors, a .safetensors.index.json, or a PyTorch "
        f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})."
    )


def _model_class(kind: str):
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel
    from .models import ClearVAE, HarmonyController

    return {"controller": HarmonyController, "clear_vae": ClearVAE}[kind]


def _clean_config(cls, config: dict) -> dict:
    """Drop stray keys the class does not take (e.g. the controller config's ``sample_size``)."""
    import inspect

    params = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in config.items() if k in params}


def _config_fits(kind: str, cfg: dict) -> bool:
    if kind == "clear_vae":
        return "latent_channels" in cfg and "down_block_types" in cfg
    if kind == "controller":
        return "conditioning_channels" in cfg
    return "in_channels" in cfg and "out_channels" in cfg and "up_block_types" in cfg


def resolve_config(kind: str, path: Path, config=None) -> tuple[dict, str]:
    """(config dict, where it came from) for a component at ``path`` (folder or file)."""
    if isinstance(config, dict):
        return dict(config), "given config"
    if config is not None:
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        try:
            return json.loads(p.read_text()), str(p)
        except (OSError, ValueError) as exc:
            raise R2RUserError(f"Could not read the {kind} config {p}: {exc}") from exc
    path = Path(path)
    if path.is_dir():
        p = path / "config.json"
        if not p.is_file():
            raise R2RWeightsNotFound(
                f"{path} has no config.json; a diffusers model folder needs config.json next to the weights "
                f"(take it from {OFFICIAL_REPO} or r2r/configs/official/)."
            )
        try:
            return json.loads(p.read_text()), str(p)
        except ValueError as exc:
            raise R2RUserError(f"{p} is not valid JSON ({exc}); restore the original config.json.") from exc
    sibling = path.parent / "config.json"
    if sibling.is_file():
        try:
            cfg = json.loads(sibling.read_text())
            if _config_fits(kind, cfg):
                return cfg, str(sibling)
        except ValueError:
            pass
    return official_config(kind), "official config"


def _detect_format(kind: str, keys) -> tuple[str, str]:
    """(format, prefix) of a state_dict for component ``kind``: 'diffusers' or 'sd'."""
    from . import convert

    keys = list(keys)
    if kind == "clear_vae":
        prefix = convert.detect_vae_prefix(keys)
        if any(re.match(re.escape(prefix) + r"(encoder\.down\.|decoder\.up\.|encoder\.mid\.)", k) for k in keys):
            return "sd", prefix
        return "diffusers", ""
    if kind == "unet":
        if any(k.startswith(convert.UNET_PREFIX) for k in keys):
            return "sd", convert.UNET_PREFIX
        if any(k.startswith("input_blocks.") for k in keys) and not any(k.startswith("input_hint_block.") for k in keys):
            return "sd", ""
        return "diffusers", ""
    if any(k.startswith(convert.CONTROLLER_PREFIX) for k in keys):
        return "sd", convert.CONTROLLER_PREFIX
    if any(k.startswith("input_hint_block.") for k in keys):
        return "sd", ""
    return "diffusers", ""


def to_diffusers_state_dict(kind: str, state: dict, config: dict) -> tuple[dict, list[str], str]:
    """(diffusers-format dict, keys that fit no rule, 'diffusers'|'sd')."""
    from . import convert

    fmt, prefix = _detect_format(kind, state)
    if fmt == "diffusers":
        return state, [], fmt
    L = int(config.get("layers_per_block", 2))
    if kind == "clear_vae":
        out, unmatched = convert.clear_vae_to_diffusers(state, len(config.get("block_out_channels", [0] * 4)))
    elif kind == "unet":
        out, unmatched = convert.unet_to_diffusers(state, L, prefix)
    else:
        hint = len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) * 2
        out, unmatched = convert.controller_to_diffusers(state, L, prefix, hint)
    if not out:
        unmatched = list(state)
    return out, unmatched, fmt


def _mismatch_error(kind: str, file, state_keys, missing, unexpected, bad_shapes) -> R2RUserError:
    from .convert import describe_sd_keys

    what, hint = _WHAT[kind]
    looks = describe_sd_keys(state_keys)
    lines = [f"{file} does not match the {what}."]
    special = None
    if kind == "clear_vae" and missing and all(k.startswith("filters.") or "skip_connect" in k for k in missing):
        special = (
            "It is a stock Stable Diffusion VAE, not the Clear-VAE: it has no AdaptiveFilters (filters.*) "
            "and no decoder skip convs (skip_connect / lora)."
        )
    elif kind == "controller" and missing and all(k.startswith("PCCAs.") for k in missing):
        special = "It is a stock ControlNet without the MACA modules (PCCAs.*) of the Harmony Controller."
    elif kind == "unet" and any("controlnet_" in k or "input_hint_block" in k for k in unexpected):
        special = "It is a ControlNet / Harmony Controller, not the U-Net."
    elif kind == "controller" and any(k.startswith(("up_blocks.", "output_blocks.")) for k in unexpected):
        special = "It is a U-Net, not the Harmony Controller."
    elif kind in ("unet", "controller") and any(k.startswith(("encoder.", "decoder.")) for k in unexpected):
        special = "It is a VAE, not the " + what + "."
    elif kind == "clear_vae" and any(k.startswith(("down_blocks.", "input_blocks.")) for k in unexpected):
        special = "It is a U-Net or ControlNet, not the Clear-VAE."
    if special:
        lines.append(special)
    lines.append(f"It looks like: {looks}.")
    if missing:
        lines.append(f"Missing {len(missing)} tensors, e.g. {', '.join(missing[:4])}.")
    if unexpected:
        lines.append(f"Unexpected {len(unexpected)} tensors, e.g. {', '.join(unexpected[:4])}.")
    if bad_shapes:
        ex = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad_shapes[:3])
        lines.append(f"{len(bad_shapes)} tensors have the wrong shape ({ex}).")
        if kind == "unet" and any(k == "conv_in.weight" for k, _, _ in bad_shapes):
            lines.append("R2R needs the 9-input-channel SD-1.5-inpainting U-Net, not a text-to-image U-Net.")
        else:
            lines.append("The config does not fit these weights (pass the config.json that came with them).")
    lines.append(f"Expected: {hint}.")
    return R2RUserError(" ".join(lines))


def build_model(kind: str, config: dict, state: dict, *, file, torch_dtype=None, device="cpu", fetch=None):
    """Instantiate ``kind`` from ``config`` on the meta device and load ``state`` strictly (assign).

    ``state`` may hold meta tensors (shapes only) when ``fetch(key)`` reads each tensor on demand:
    then only one source tensor at a time exists besides the converted weights.
    """
    from accelerate import init_empty_weights

    torch_dtype = resolve_torch_dtype(torch_dtype)
    cls = _model_class(kind)
    try:
        with init_empty_weights():
            model = cls.from_config(_clean_config(cls, config))
    except R2RUserError:
        raise
    except Exception as exc:
        raise R2RUserError(f"The {_WHAT[kind][0]} config for {file} is invalid ({exc}); use the official config.json.") from exc
    state, unmatched, _fmt = to_diffusers_state_dict(kind, state, config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = unmatched + [k for k in state if k not in expected]
    bad = [(k, tuple(state[k].shape), tuple(expected[k].shape))
           for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise _mismatch_error(kind, file, list(state) + unmatched, missing, unexpected, bad)
    sd = {}
    state = dict(state)  # drop our references while converting (keeps peak memory low)
    for k in list(state):
        v = fetch(k) if fetch is not None else state.pop(k)
        sd[k] = v.to(device=device, dtype=torch_dtype) if v.is_floating_point() else v.to(device=device)
        del v
    model.load_state_dict(sd, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # pragma: no cover - would be a bug in r2r, not a user error
        raise RuntimeError(f"tensors left uninitialised after loading {file}: {leftovers[:5]}")
    return model.eval()


def _load_component(kind: str, path, *, config=None, torch_dtype=None, device="cpu", state_cache=None):
    path = Path(path)
    if not path.exists():
        what, hint = _WHAT[kind]
        raise R2RWeightsNotFound(f"{what} not found at {path}; expected {hint}. Check the path or download the weights.")
    cfg, _ = resolve_config(kind, path, config)
    file = find_weights_file(path, _WHAT[kind][0]) if path.is_dir() else path
    key = str(file.resolve())
    if file.suffix == ".safetensors" and (state_cache is None or key not in state_cache):
        shapes = tensor_shapes(file)
        if _detect_format(kind, shapes)[0] == "diffusers":  # the release format: stream tensor by tensor
            from safetensors import safe_open

            with safe_open(str(file), framework="pt", device=str(device)) as f:
                return build_model(kind, cfg, shapes, file=file, torch_dtype=torch_dtype, device=device,
                                   fetch=f.get_tensor)
    if state_cache is not None and key in state_cache:
        state = state_cache[key]
    else:
        state = read_state_dict(file, "cpu")
        if state_cache is not None:
            state_cache[key] = state
    return build_model(kind, cfg, state, file=file, torch_dtype=torch_dtype, device=device)


def load_clear_vae(path, *, config=None, torch_dtype=None, device="cpu"):
    """Clear-VAE from a diffusers folder, a .safetensors file or ``clear_vae.ckpt`` (any prefix layout)."""
    return _load_component("clear_vae", path, config=config, torch_dtype=torch_dtype, device=device)


def load_controller(path, *, config=None, torch_dtype=None, device="cpu"):
    """Harmony Controller from a diffusers folder, a .safetensors file or a ControlLDM ``.ckpt``."""
    return _load_component("controller", path, config=config, torch_dtype=torch_dtype, device=device)


def load_unet(path, *, config=None, torch_dtype=None, device="cpu"):
    """R2R U-Net from a diffusers folder, a .safetensors file or an SD/ControlLDM ``.ckpt``."""
    return _load_component("unet", path, config=config, torch_dtype=torch_dtype, device=device)


# ---------------------------------------------------------------------------------------------- layouts
def release_paths(root) -> dict[str, Path]:
    """Component folders of a release folder in the hub layout (also accepts the SD folder itself)."""
    root = Path(root)
    if not root.is_dir():
        raise R2RWeightsNotFound(
            f"R2R release folder {root} does not exist. Download it with `python -m r2r download --to {root}` "
            f"(files from {OFFICIAL_REPO}), or give the folder that holds {SD_FOLDER}/ and clear_vae/."
        )
    if (root / SD_FOLDER).is_dir():
        sd, vae = root / SD_FOLDER, root / "clear_vae"
    elif (root / "unet").is_dir() or (root / "controlnet").is_dir():
        sd = root
        vae = root / "clear_vae" if (root / "clear_vae").is_dir() else root.parent / "clear_vae"
    else:
        raise R2RWeightsNotFound(
            f"{root} is not an R2R release folder: expected {SD_FOLDER}/{{unet,controlnet,text_encoder,tokenizer,"
            f"scheduler}}/ and clear_vae/ inside it (the layout of {OFFICIAL_REPO}). Download with "
            f"`python -m r2r download --to {root}`."
        )
    return {
        "unet": sd / "unet", "controller": sd / "controlnet", "clear_vae": vae,
        "text_encoder": sd / "text_encoder", "tokenizer": sd / "tokenizer", "scheduler": sd / "scheduler",
    }


def _require_folder(kind: str, folder: Path, root) -> None:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise R2RWeightsNotFound(
            f"{_WHAT[kind][0]} missing: {folder} needs config.json and diffusion_pytorch_model.safetensors "
            f"(from {COMPONENT_DIRS[kind]}/ of {OFFICIAL_REPO}). Put them there, or run "
            f"`python -m r2r download --to {root}`."
        )
    find_weights_file(folder, _WHAT[kind][0])


def _scheduler_config(folder: Path | None) -> dict:
    if folder is not None and (folder / "scheduler_config.json").is_file():
        try:
            return json.loads((folder / "scheduler_config.json").read_text())
        except ValueError as exc:
            raise R2RUserError(f"{folder / 'scheduler_config.json'} is not valid JSON ({exc}).") from exc
    return official_config("scheduler")


# ---------------------------------------------------------------------------------------------- hub
def _hub_files_for(files: list[str], kinds) -> tuple[list[str], list[str]]:
    """(files to download, kinds without weights in the repo) from a repo listing."""
    wanted, absent = [], []
    fileset = set(files)
    for kind in kinds:
        d = COMPONENT_DIRS[kind]
        if kind == "tokenizer":
            got = [f"{d}/{n}" for n in TOKENIZER_FILES if f"{d}/{n}" in fileset]
            wanted += got
            if not got:
                absent.append(kind)
            continue
        if kind == "scheduler":
            if f"{d}/scheduler_config.json" in fileset:
                wanted.append(f"{d}/scheduler_config.json")
            continue
        if f"{d}/config.json" in fileset:
            wanted.append(f"{d}/config.json")
        for name in WEIGHT_FILES:
            if f"{d}/{name}" in fileset:
                wanted.append(f"{d}/{name}")
                if name.endswith(".index.json"):
                    wanted.append(f"{d}/*.safetensors")
                break
        else:
            absent.append(kind)
    return wanted, absent


def _has_components(root: Path, kinds) -> bool:
    for kind in kinds:
        d = root / COMPONENT_DIRS[kind]
        if kind == "scheduler":
            continue
        if kind == "tokenizer":
            if not (d / "vocab.json").is_file():
                return False
            continue
        if not (d / "config.json").is_file():
            return False
        try:
            find_weights_file(d)
        except R2RWeightsNotFound:
            return False
    return True


def expected_hub_files(kinds) -> list[str]:
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


def hub_snapshot(repo_id: str = OFFICIAL_REPO, kinds=MODEL_COMPONENTS + ("text_encoder", "tokenizer", "scheduler"), *,
                 cache_dir=None, local_dir=None, local_files_only=None, revision=None) -> Path:
    """Download (or find in the cache) only the files of ``kinds``; returns the snapshot/local folder."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    offline = _env_offline() if local_files_only is None else bool(local_files_only) or _env_offline()
    kinds = list(kinds)
    target = local_dir or cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    if offline:
        def not_found(exc=None):
            return R2RWeightsNotFound(
                f"The R2R weights of {repo_id} are not available offline (HF_HUB_OFFLINE / local_files_only is set "
                f"and {target} has no copy). Needed: {', '.join(expected_hub_files(kinds))}. Either go online once "
                "(unset HF_HUB_OFFLINE) and run `python -m r2r download --to DIR`, or copy these files into a folder "
                "DIR with this layout (ComfyUI: models/r2r/region2region/) and pass DIR as the source."
            )

        if local_dir is not None:
            if _has_components(Path(local_dir), kinds):
                return Path(local_dir)
            raise not_found()
        try:
            path = huggingface_hub.snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                allow_patterns=[f"{COMPONENT_DIRS[k]}/*" for k in kinds],
            )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.HFValidationError, FileNotFoundError, OSError) as exc:
            raise not_found() from exc
        if not _has_components(Path(path), kinds):
            raise not_found()
        return Path(path)
    try:
        files = huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision)
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise R2RUserError(f"Hugging Face repo {repo_id!r} (revision {revision or 'main'}) not found: {exc}") from exc
    except Exception as exc:
        raise R2RWeightsNotFound(
            f"Could not reach the Hugging Face hub to list {repo_id} ({exc}). Check the connection, or download "
            f"{', '.join(expected_hub_files(kinds))} by hand into a folder and pass that folder."
        ) from exc
    wanted, absent = _hub_files_for(files, kinds)
    if absent:
        raise R2RWeightsNotFound(
            f"{repo_id} has no weights for {', '.join(absent)} (looked for {', '.join(WEIGHT_FILES[:3])} under "
            f"{', '.join(COMPONENT_DIRS[k] for k in absent)}). Is this the R2R release ({OFFICIAL_REPO})?"
        )
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir, allow_patterns=wanted
        )
    except Exception as exc:
        raise R2RWeightsNotFound(
            f"Downloading {', '.join(wanted)} from {repo_id} into {target} failed ({exc}). Retry, or download the "
            "files by hand into that layout."
        ) from exc
    return Path(path)


def download_release(to, repo_id: str = OFFICIAL_REPO, *, kinds=None, revision=None, local_files_only=None,
                     cache_prompt: bool = True) -> Path:
    """Download the release into ``to`` (hub layout) and cache the empty-prompt embedding there."""
    from . import prompt

    kinds = list(kinds or MODEL_COMPONENTS + ("text_encoder", "tokenizer", "scheduler"))
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    root = hub_snapshot(repo_id, kinds, local_dir=to, local_files_only=local_files_only, revision=revision)
    if cache_prompt and {"text_encoder", "tokenizer"} <= set(kinds):
        paths = release_paths(root)
        prompt.empty_prompt_embeds(root, paths["text_encoder"], paths["tokenizer"])
    return root


# ---------------------------------------------------------------------------------------------- main entry
def load_components(source=OFFICIAL_REPO, *, torch_dtype=None, device="cpu", components=MODEL_COMPONENTS,
                    cache_dir=None, local_files_only=None, local_dir=None, revision=None) -> R2RComponents:
    """Load the R2R networks + scheduler config + empty-prompt embedding.

    Args:
        source: a release folder (hub layout), a hub repo id, or a dict of single files with keys
            ``unet``, ``controller``, ``clear_vae`` (folders, .safetensors or SD-format .ckpt) and optionally
            ``text_encoder``, ``tokenizer``, ``prompt_embeds`` (a cached .safetensors), ``scheduler_config``,
            ``unet_config``, ``controller_config``, ``clear_vae_config``, ``text_encoder_config``.
        components: which of unet/controller/clear_vae to load (others are None).
    """
    from . import prompt

    torch_dtype = resolve_torch_dtype(torch_dtype)
    components = tuple(components)
    bad = [c for c in components if c not in MODEL_COMPONENTS]
    if bad:
        raise R2RUserError(f"Unknown component(s) {bad}; choose from {list(MODEL_COMPONENTS)}.")
    out = R2RComponents()

    if isinstance(source, dict):
        return _load_from_dict(source, out, components, torch_dtype, device)

    if isinstance(source, (str, os.PathLike)) and looks_like_repo_id(str(source)):
        repo = str(source)
        cached = prompt.find_cached_prompt(None, key=f"hub:{repo}")
        kinds = list(components) + ["scheduler"] + ([] if cached is not None else ["text_encoder", "tokenizer"])
        root = hub_snapshot(repo, kinds, cache_dir=cache_dir, local_dir=local_dir,
                            local_files_only=local_files_only, revision=revision)
        out.source = repo
        prompt_key, writable_root = f"hub:{repo}", local_dir is not None
    elif isinstance(source, (str, os.PathLike)):
        root = Path(source)
        out.source = str(root)
        prompt_key, writable_root = None, True
    else:
        raise R2RUserError(
            f"load_components source must be a folder, a hub repo id like {OFFICIAL_REPO!r} or a dict of files, "
            f"got {type(source).__name__}."
        )

    paths = release_paths(root)
    for kind in components:
        _require_folder(kind, paths[kind], root)
    for kind in components:
        setattr(out, kind, _load_component(kind, paths[kind], torch_dtype=torch_dtype, device=device))
    out.scheduler_config = _scheduler_config(paths["scheduler"])
    emb = prompt.empty_prompt_embeds(
        root, paths["text_encoder"], paths["tokenizer"], key=prompt_key, write_to_root=writable_root
    )
    out.prompt_embeds = emb.to(device=device, dtype=torch_dtype)
    return out


def _load_from_dict(source: dict, out: R2RComponents, components, torch_dtype, device) -> R2RComponents:
    from . import prompt

    known = set(MODEL_COMPONENTS) | {"text_encoder", "tokenizer", "prompt_embeds", "scheduler_config"} | {
        f"{k}_config" for k in MODEL_COMPONENTS + ("text_encoder",)
    }
    unknown = sorted(set(source) - known)
    if unknown:
        raise R2RUserError(f"Unknown keys {unknown} in the source dict; allowed: {sorted(known)}.")
    cache: dict = {}
    for kind in components:
        if not source.get(kind):
            raise R2RWeightsNotFound(
                f"The source dict has no {kind!r} entry; give the {_WHAT[kind][0]} file or folder ({_WHAT[kind][1]})."
            )
        setattr(out, kind, _load_component(kind, source[kind], config=source.get(f"{kind}_config"),
                                           torch_dtype=torch_dtype, device=device, state_cache=cache))
    cache.clear()
    sc = source.get("scheduler_config")
    if isinstance(sc, dict):
        out.scheduler_config = dict(sc)
    elif sc:
        p = Path(sc)
        out.scheduler_config = _scheduler_config(p if p.is_dir() else p.parent) if p.exists() else None
        if out.scheduler_config is None:
            raise R2RWeightsNotFound(f"scheduler_config {p} does not exist.")
    else:
        out.scheduler_config = official_config("scheduler")
    out.prompt_embeds = prompt.prompt_embeds_from_files(
        source.get("text_encoder"), source.get("tokenizer"), source.get("prompt_embeds"), source.get("text_encoder_config")
    ).to(device=device, dtype=torch_dtype)
    out.source = json.dumps({k: str(v) for k, v in source.items() if not isinstance(v, dict)}, sort_keys=True)
    return out


# ---------------------------------------------------------------------------------------------- checking
def tensor_shapes(file) -> dict:
    """{key: meta tensor with the file's shape and dtype}, reading only headers where possible."""
    import torch

    file = Path(file)
    if file.name.endswith(".index.json"):
        index = json.loads(file.read_text())
        out = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            out.update(tensor_shapes(file.parent / shard))
        return out
    if file.name.endswith(".safetensors"):
        from safetensors import safe_open

        dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                  "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
        out = {}
        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=dtypes.get(sl.get_dtype(), torch.float32), device="meta")
        except Exception as exc:
            raise _bad_safetensors(file, exc) from exc
        return out
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in read_state_dict(file).items()}


def check_component(kind: str, path, config=None) -> dict:
    """Verify one component's files against its config without loading weights; returns a report row."""
    from accelerate import init_empty_weights

    path = Path(path)
    row = {"component": kind, "path": str(path), "ok": False, "file": None, "format": None,
           "tensors": 0, "expected": 0, "dtypes": [], "problem": ""}
    try:
        if path.is_dir():
            _require_folder(kind, path, path.parent)
        cfg, _ = resolve_config(kind, path, config)
        file = find_weights_file(path, _WHAT[kind][0]) if path.is_dir() else path
        row["file"] = str(file)
        shapes = tensor_shapes(file)
        state, unmatched, fmt = to_diffusers_state_dict(kind, shapes, cfg)
        row["format"] = fmt
        cls = _model_class(kind)
        with init_empty_weights():
            model = cls.from_config(_clean_config(cls, cfg))
        expected = model.state_dict()
        row["tensors"], row["expected"] = len(state), len(expected)
        row["dtypes"] = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
        missing = [k for k in expected if k not in state]
        unexpected = unmatched + [k for k in state if k not in expected]
        bad = [(k, tuple(state[k].shape), tuple(expected[k].shape))
               for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or bad:
            row["problem"] = str(_mismatch_error(kind, file, list(state) + unmatched, missing, unexpected, bad))
        else:
            row["ok"] = True
    except R2RUserError as exc:
        row["problem"] = str(exc)
    return row


def check_release(root) -> list[dict]:
    """Rows for unet/controller/clear_vae (+ scheduler, empty prompt) of a release folder."""
    from . import prompt

    paths = release_paths(root)
    rows = [check_component(kind, paths[kind]) for kind in MODEL_COMPONENTS]
    sched = paths["scheduler"] / "scheduler_config.json"
    rows.append({"component": "scheduler", "path": str(sched), "ok": True,
                 "problem": "" if sched.is_file() else "absent: the official scheduler config bundled with r2r is used"})
    cached = prompt.find_cached_prompt(root, None, paths["text_encoder"])
    te_ok = (paths["text_encoder"] / "config.json").is_file() and (paths["tokenizer"] / "vocab.json").is_file()
    rows.append({
        "component": "empty prompt", "path": str(Path(root) / prompt.CACHE_NAME), "ok": cached is not None or te_ok,
        "problem": "" if cached is not None else (
            "not cached yet: computed from text_encoder/ on first load" if te_ok else
            "neither the cached embedding nor text_encoder/ + tokenizer/ are present"),
    })
    return rows
