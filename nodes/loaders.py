"""Loader nodes: the R2R release (U-Net, Clear-VAE, Harmony Controller) and each part alone."""

from __future__ import annotations

import os

from ..r2r.errors import R2RUserError, R2RWeightsNotFound
from . import _files, _host
from ._types import R2R_CLEAR_VAE, R2R_CONTROLLER, R2R_MODEL, R2RModel

DTYPES = ["auto", "fp32", "fp16", "bf16"]
_DTYPE_TIP = ("Weight precision. auto = fp16 on a GPU (as the official release runs), fp32 on the CPU. "
              "bf16 needs a recent GPU.")


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return _host.auto_dtype()
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise R2RUserError(f"R2R: dtype must be one of {DTYPES}; got {name!r}.")
    return table[name]


def _release_choices() -> list[str]:
    names = _files.scan()["release"]
    if _files.OFFICIAL_NAME not in names:
        names = [_files.OFFICIAL_NAME] + names
    return names


class R2RCheckpointLoader:
    DESCRIPTION = (
        "Loads an R2R release from models/r2r/<name>/ (the official Hugging Face layout: "
        "stable-diffusion-inpainting/ + clear_vae/). Gives the R2R model (U-Net, scheduler, cached "
        "empty-prompt embedding), the Clear-VAE and the Harmony Controller. With download_if_missing "
        f"it fetches {_files.OFFICIAL_REPO} into models/r2r/{_files.OFFICIAL_NAME}/ (the only node that "
        "uses the network)."
    )
    CATEGORY = "R2R/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (R2R_MODEL, R2R_CLEAR_VAE, R2R_CONTROLLER)
    RETURN_NAMES = ("model", "clear_vae", "controller")
    OUTPUT_TOOLTIPS = (
        "The harmonization U-Net with its scheduler and the cached empty-prompt text embedding.",
        "The Clear-VAE (encoder + skip-injecting decoder).",
        "The Harmony Controller with its MACA blocks.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (_release_choices(), {
                    "default": _files.OFFICIAL_NAME,
                    "tooltip": "A release folder under models/r2r/ in the official hub layout. "
                               f"'{_files.OFFICIAL_NAME}' is the official release ({_files.OFFICIAL_REPO}).",
                }),
                "dtype": (DTYPES, {"default": "auto", "tooltip": _DTYPE_TIP}),
                "download_if_missing": ("BOOLEAN", {
                    "default": False,
                    "tooltip": f"If the official release is not in models/r2r/{_files.OFFICIAL_NAME}/, "
                               f"download it from the Hugging Face hub ({_files.OFFICIAL_REPO}, several GB). "
                               "Off: never touch the network.",
                }),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint):
        # replaces the plain "value not in list" with a message saying what to do
        if checkpoint == _files.OFFICIAL_NAME or _files.resolve(checkpoint) is not None:
            return True
        return (f"R2R checkpoint '{checkpoint}' is not in models/r2r/ (looked in: "
                f"{', '.join(_host.model_dirs())}). Pick another one or copy the release folder there.")

    def load(self, checkpoint, dtype="auto", download_if_missing=False):
        path = _files.resolve(checkpoint)
        if path is None or not _files.is_release(path):
            if checkpoint == _files.OFFICIAL_NAME and download_if_missing:
                path = download_official_release()
            elif path is not None:
                raise R2RWeightsNotFound(
                    f"R2R: '{path}' is not a release folder in the official hub layout (expected "
                    f"{_files.SD_FOLDER}/unet/, {_files.SD_FOLDER}/controlnet/, clear_vae/ inside it). "
                    "Use the Clear-VAE / Controller loaders for single parts."
                )
            else:
                raise _files.not_found(
                    checkpoint, "release",
                    f"a folder models/r2r/{checkpoint}/ holding {_files.SD_FOLDER}/ and clear_vae/ as in "
                    f"{_files.OFFICIAL_REPO}; switch download_if_missing on to fetch the official release",
                )
        components = _load_components(path, _torch_dtype(dtype))
        return _split_components(components)


def _load_components(path, torch_dtype):
    from ..r2r.weights import load_components

    return load_components(path, torch_dtype=torch_dtype, device=_host.offload_device(), local_files_only=True)


def _split_components(components):
    model = R2RModel(
        unet=_host.ManagedModel(components.unet, "unet"),
        scheduler_config=dict(components.scheduler_config),
        prompt_embeds=components.prompt_embeds.detach().to("cpu"),
        source=str(components.source),
    )
    clear_vae = _host.ManagedModel(components.clear_vae, "clear_vae")
    controller = _host.ManagedModel(components.controller, "controller")
    return (model, clear_vae, controller)


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def download_official_release() -> str:
    """Download the official release into the first models/r2r folder (explicit user action)."""
    from ..r2r import weights

    target = os.path.join(_host.default_download_dir(), _files.OFFICIAL_NAME)
    if _offline():
        files = weights.expected_hub_files(weights.MODEL_COMPONENTS + ("text_encoder", "tokenizer", "scheduler"))
        raise R2RWeightsNotFound(
            f"R2R: cannot download {_files.OFFICIAL_REPO}: offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). "
            f"Put these files into {target}: {', '.join(files)} "
            "(or unset offline mode once and run again, or run `python -m r2r download --to "
            f"{target}` on a machine with internet and copy the folder)."
        )
    return str(weights.download_release(target))


class _PartLoader:
    CATEGORY = "R2R/loaders"
    FUNCTION = "load"
    KIND = ""
    LABEL = ""
    RELEASE_SUBPATH = ""

    @classmethod
    def _choices(cls):
        found = _files.scan()
        names = list(found[cls.KIND])
        for rel in found["release"]:
            sub = f"{rel}/{cls.RELEASE_SUBPATH}"
            if sub not in names:
                names.append(sub)
        names += found["file"]
        return names or ["(no files in models/r2r)"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "name": (cls._choices(), {
                    "tooltip": f"A {cls.LABEL} under models/r2r/: a diffusers folder (config.json + weights; "
                               f"e.g. <release>/{cls.RELEASE_SUBPATH}), a .safetensors file or an SD-format .ckpt.",
                }),
                "dtype": (DTYPES, {"default": "auto", "tooltip": _DTYPE_TIP}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        if _files.resolve(name) is not None:
            return True
        return (f"R2R {cls.LABEL} '{name}' is not in models/r2r/ (looked in: {', '.join(_host.model_dirs())}). "
                "Copy the folder or file there and refresh.")

    def load(self, name, dtype="auto"):
        path = _files.resolve(name)
        if path is None:
            raise _files.not_found(name, self.LABEL, "a diffusers folder, a .safetensors file or an SD-format .ckpt")
        model = self._load(path, _torch_dtype(dtype))
        return (_host.ManagedModel(model, self.KIND),)


class R2RClearVAELoader(_PartLoader):
    DESCRIPTION = ("Loads a Clear-VAE on its own (a diffusers folder such as <release>/clear_vae, a .safetensors "
                   "file or the SD-format clear_vae.ckpt) from models/r2r/.")
    RETURN_TYPES = (R2R_CLEAR_VAE,)
    RETURN_NAMES = ("clear_vae",)
    OUTPUT_TOOLTIPS = ("The Clear-VAE.",)
    KIND = "clear_vae"
    LABEL = "Clear-VAE"
    RELEASE_SUBPATH = "clear_vae"

    def _load(self, path, torch_dtype):
        from ..r2r.weights import load_clear_vae

        return _cast(load_clear_vae(path), torch_dtype)


class R2RControllerLoader(_PartLoader):
    DESCRIPTION = ("Loads a Harmony Controller (with its MACA blocks) on its own: a diffusers folder such as "
                   "<release>/stable-diffusion-inpainting/controlnet, a .safetensors file or an SD-format .ckpt.")
    RETURN_TYPES = (R2R_CONTROLLER,)
    RETURN_NAMES = ("controller",)
    OUTPUT_TOOLTIPS = ("The Harmony Controller.",)
    KIND = "controller"
    LABEL = "Harmony Controller"
    RELEASE_SUBPATH = f"{_files.SD_FOLDER}/controlnet"

    def _load(self, path, torch_dtype):
        from ..r2r.weights import load_controller

        return _cast(load_controller(path), torch_dtype)


def _cast(model, torch_dtype):
    model = model.to(device=_host.offload_device(), dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    return model


class R2RUNetLoader(_PartLoader):
    DESCRIPTION = ("Loads an R2R harmonization U-Net on its own (e.g. a fine-tuned one from the trainer): a diffusers "
                   "folder such as <release>/stable-diffusion-inpainting/unet, a .safetensors file or an SD-format "
                   ".ckpt. The scheduler config and the empty-prompt text embedding come from a release folder "
                   "(text_embedding_from), so the text encoder is not needed again once it is cached there.")
    RETURN_TYPES = (R2R_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The R2R model (U-Net + scheduler + cached empty-prompt embedding).",)
    KIND = "unet"
    LABEL = "U-Net"
    RELEASE_SUBPATH = f"{_files.SD_FOLDER}/unet"

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"]["text_embedding_from"] = (_release_choices(), {
            "default": _files.OFFICIAL_NAME,
            "tooltip": "The release folder whose scheduler config and text encoder (or cached empty-prompt "
                       "embedding) go with this U-Net.",
        })
        return spec

    @classmethod
    def VALIDATE_INPUTS(cls, name, text_embedding_from):
        for value, what in ((name, cls.LABEL), (text_embedding_from, "release")):
            if _files.resolve(value) is None:
                return (f"R2R {what} '{value}' is not in models/r2r/ (looked in: {', '.join(_host.model_dirs())}). "
                        "Copy the folder or file there and refresh.")
        return True

    def load(self, name, dtype="auto", text_embedding_from=_files.OFFICIAL_NAME):
        from ..r2r import prompt, weights

        path = _files.resolve(name)
        if path is None:
            raise _files.not_found(name, self.LABEL, "a diffusers folder, a .safetensors file or an SD-format .ckpt")
        release = _files.resolve(text_embedding_from)
        if release is None or not _files.is_release(release):
            raise _files.not_found(text_embedding_from, "release (for the text embedding)",
                                   f"a release folder holding {_files.SD_FOLDER}/text_encoder, tokenizer, scheduler")
        paths = weights.release_paths(release)
        source = {"unet": path, "scheduler_config": str(paths["scheduler"])}
        cached = os.path.join(release, prompt.CACHE_NAME)
        if os.path.isfile(cached):
            source["prompt_embeds"] = cached
        else:
            source.update(text_encoder=str(paths["text_encoder"]), tokenizer=str(paths["tokenizer"]))
        comps = weights.load_components(source, torch_dtype=_torch_dtype(dtype), device=_host.offload_device(),
                                        components=("unet",))
        model = R2RModel(
            unet=_host.ManagedModel(comps.unet, "unet"), scheduler_config=dict(comps.scheduler_config),
            prompt_embeds=comps.prompt_embeds.detach().to("cpu"), source=str(comps.source),
        )
        return (model,)
