"""Loader nodes: the R2R release (U-Net, Clear-VAE, Harmony Controller) and each part alone."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..r2r.errors import R2RWeightsNotFound
from . import _files, _host
from ._schema import R2RClearVAEType, R2RControllerType, R2RModelType, R2RNode, choice
from ._types import R2RModel

DTYPES = ["auto", "fp32", "fp16", "bf16"]
_DTYPE_TIP = ("Weight precision. auto = fp16 on a GPU (as the official release runs), fp32 on the CPU. "
              "bf16 needs a recent GPU; fp16/bf16 on a CPU run several times slower than fp32 (the node warns).")


def _torch_dtype(name: str, node: str = "", node_id=None):
    """The dtype a loader's ``dtype`` widget asks for (``r2r.devices.resolve_dtype``). fp16/bf16 chosen on a
    CPU works but is several times slower than fp32 there: a warning in the log and a text on the node say so."""
    from ..r2r.devices import resolve_dtype, warn_if_slow_dtype

    if name == "auto":
        return _host.auto_dtype()
    dtype = resolve_dtype(name)
    if warn_if_slow_dtype(dtype, _host.compute_device()):
        _host.show_text(f"{node or 'R2R loader'}: dtype {name} on the CPU runs several times slower than fp32 "
                        "(CPUs have no fast half-precision kernels); choose auto or fp32 for speed.", node_id)
    return dtype


def _node_id(cls):
    return cls.hidden.unique_id if cls.hidden else None


def _release_choices() -> list[str]:
    names = _files.scan()["release"]
    if _files.OFFICIAL_NAME not in names:
        names = [_files.OFFICIAL_NAME] + names
    return names


class R2RCheckpointLoader(R2RNode):
    @classmethod
    def define_schema(cls):
        return cls.schema(
            description=(
                "Loads an R2R release from models/r2r/<name>/ (the official Hugging Face layout: "
                "stable-diffusion-inpainting/ + clear_vae/). Gives the R2R model (U-Net, scheduler, cached "
                "empty-prompt embedding), the Clear-VAE and the Harmony Controller. With download_if_missing "
                f"it fetches {_files.OFFICIAL_REPO} into models/r2r/{_files.OFFICIAL_NAME}/ (the only node that "
                "uses the network)."
            ),
            inputs=[
                io.Combo.Input("checkpoint", options=_release_choices(), default=_files.OFFICIAL_NAME,
                               tooltip="A release folder under models/r2r/ in the official hub layout. "
                                       f"'{_files.OFFICIAL_NAME}' is the official release ({_files.OFFICIAL_REPO})."),
                io.Combo.Input("dtype", options=DTYPES, default="auto", tooltip=_DTYPE_TIP),
                io.Boolean.Input("download_if_missing", default=False,
                                 tooltip=f"If the official release is not in models/r2r/{_files.OFFICIAL_NAME}/, "
                                         f"download it from the Hugging Face hub ({_files.OFFICIAL_REPO}, about 5.3 "
                                         "GB; the progress shows on this node, Cancel stops it and the next Run "
                                         "resumes). Off: never touch the network."),
            ],
            outputs=[
                R2RModelType.Output(display_name="model", tooltip="The harmonization U-Net with its scheduler and "
                                                                  "the cached empty-prompt text embedding."),
                R2RClearVAEType.Output(display_name="clear_vae",
                                       tooltip="The Clear-VAE (encoder + skip-injecting decoder)."),
                R2RControllerType.Output(display_name="controller", tooltip="The Harmony Controller with its MACA "
                                                                            "blocks."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, checkpoint):
        # replaces the plain "value not in list" with a message saying what to do; a name that leaves the
        # models folders (absolute, '..') is refused here, before anything runs
        if _files.refused_name(checkpoint) is not None:
            return str(_files.refusal(checkpoint, "checkpoint"))
        if checkpoint == _files.OFFICIAL_NAME or _files.resolve(checkpoint) is not None:
            return True
        return (f"R2R checkpoint '{checkpoint}' is not in models/r2r/ (looked in: "
                f"{', '.join(_host.model_dirs())}). Pick another one or copy the release folder there.")

    @classmethod
    def execute(cls, checkpoint, dtype="auto", download_if_missing=False):
        choice(dtype, DTYPES, "dtype", "Checkpoint Loader")
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
                how = (f"a folder models/r2r/{checkpoint}/ holding {_files.SD_FOLDER}/ and clear_vae/ as in "
                       f"{_files.OFFICIAL_REPO}")
                if checkpoint == _files.OFFICIAL_NAME:
                    how += "; switch download_if_missing on to fetch the official release"
                raise _files.not_found(checkpoint, "release", how)
        components = _load_components(path, _torch_dtype(dtype, "R2R Checkpoint Loader", _node_id(cls)))
        return io.NodeOutput(*_split_components(components))


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


def download_official_release() -> str:
    """Download the official release into the first models/r2r folder (explicit user action), with its
    progress on the node; plain-worded, immediate refusals offline or with no network (nodes/download.py)."""
    from .download import download_official_release as download

    return download(os.path.join(_host.default_download_dir(), _files.OFFICIAL_NAME))


class _PartLoader(R2RNode):
    KIND = ""
    LABEL = ""
    RELEASE_SUBPATH = ""
    OUTPUT_TYPE = None
    OUTPUT_TIP = ""

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
    def _inputs(cls):
        return [
            io.Combo.Input("name", options=cls._choices(),
                           tooltip=f"A {cls.LABEL} under models/r2r/: a diffusers folder (config.json + weights; "
                                   f"e.g. <release>/{cls.RELEASE_SUBPATH}), a .safetensors file or an SD-format "
                                   ".ckpt."),
            io.Combo.Input("dtype", options=DTYPES, default="auto", tooltip=_DTYPE_TIP),
        ]

    @classmethod
    def define_schema(cls):
        return cls.schema(
            inputs=cls._inputs(),
            outputs=[cls.OUTPUT_TYPE.Output(display_name=cls.KIND if cls.KIND != "unet" else "model",
                                            tooltip=cls.OUTPUT_TIP)],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, name):
        if _files.refused_name(name) is not None:
            return str(_files.refusal(name, cls.LABEL))
        if _files.resolve(name) is not None:
            return True
        return (f"R2R {cls.LABEL} '{name}' is not in models/r2r/ (looked in: {', '.join(_host.model_dirs())}). "
                "Copy the folder or file there and refresh.")

    @classmethod
    def execute(cls, name, dtype="auto"):
        choice(dtype, DTYPES, "dtype", cls.display_name().removeprefix("R2R "))
        path = _files.resolve(name)
        if path is None:
            raise _files.not_found(name, cls.LABEL, "a diffusers folder, a .safetensors file or an SD-format .ckpt")
        model = cls._load(path, _torch_dtype(dtype, cls.display_name(), _node_id(cls)))
        return io.NodeOutput(_host.ManagedModel(model, cls.KIND))


class R2RClearVAELoader(_PartLoader):
    """Loads a Clear-VAE on its own (a diffusers folder such as <release>/clear_vae, a .safetensors file or the
    SD-format clear_vae.ckpt) from models/r2r/.
    """

    OUTPUT_TYPE = R2RClearVAEType
    OUTPUT_TIP = "The Clear-VAE."
    KIND = "clear_vae"
    LABEL = "Clear-VAE"
    RELEASE_SUBPATH = "clear_vae"

    @classmethod
    def _load(cls, path, torch_dtype):
        from ..r2r.weights import load_clear_vae

        return _cast(load_clear_vae(path), torch_dtype)


class R2RControllerLoader(_PartLoader):
    """Loads a Harmony Controller (with its MACA blocks) on its own: a diffusers folder such as
    <release>/stable-diffusion-inpainting/controlnet, a .safetensors file or an SD-format .ckpt.
    """

    OUTPUT_TYPE = R2RControllerType
    OUTPUT_TIP = "The Harmony Controller."
    KIND = "controller"
    LABEL = "Harmony Controller"
    RELEASE_SUBPATH = f"{_files.SD_FOLDER}/controlnet"

    @classmethod
    def _load(cls, path, torch_dtype):
        from ..r2r.weights import load_controller

        return _cast(load_controller(path), torch_dtype)


def _cast(model, torch_dtype):
    model = model.to(device=_host.offload_device(), dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    return model


class R2RUNetLoader(_PartLoader):
    """Loads an R2R harmonization U-Net on its own (e.g. a fine-tuned one from the trainer): a diffusers folder
    such as <release>/stable-diffusion-inpainting/unet, a .safetensors file or an SD-format .ckpt. The scheduler
    config and the empty-prompt text embedding come from a release folder (text_embedding_from), so the text
    encoder is not needed again once it is cached there.
    """

    OUTPUT_TYPE = R2RModelType
    OUTPUT_TIP = "The R2R model (U-Net + scheduler + cached empty-prompt embedding)."
    KIND = "unet"
    LABEL = "U-Net"
    RELEASE_SUBPATH = f"{_files.SD_FOLDER}/unet"

    @classmethod
    def _inputs(cls):
        return super()._inputs() + [
            io.Combo.Input("text_embedding_from", options=_release_choices(), default=_files.OFFICIAL_NAME,
                           tooltip="The release folder whose scheduler config and text encoder (or cached "
                                   "empty-prompt embedding) go with this U-Net."),
        ]

    @classmethod
    def validate_inputs(cls, name, text_embedding_from):
        for value, what in ((name, cls.LABEL), (text_embedding_from, "release")):
            if _files.refused_name(value) is not None:
                return str(_files.refusal(value, what))
            if _files.resolve(value) is None:
                return (f"R2R {what} '{value}' is not in models/r2r/ (looked in: {', '.join(_host.model_dirs())}). "
                        "Copy the folder or file there and refresh.")
        return True

    @classmethod
    def execute(cls, name, dtype="auto", text_embedding_from=_files.OFFICIAL_NAME):
        from ..r2r import weights
        from ..r2r.weights import prompt

        choice(dtype, DTYPES, "dtype", "U-Net Loader")
        path = _files.resolve(name)
        if path is None:
            raise _files.not_found(name, cls.LABEL, "a diffusers folder, a .safetensors file or an SD-format .ckpt")
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
        comps = weights.load_components(source, torch_dtype=_torch_dtype(dtype, cls.display_name(), _node_id(cls)),
                                        device=_host.offload_device(),
                                        components=("unet",))
        model = R2RModel(
            unet=_host.ManagedModel(comps.unet, "unet"), scheduler_config=dict(comps.scheduler_config),
            prompt_embeds=comps.prompt_embeds.detach().to("cpu"), source=str(comps.source),
        )
        return io.NodeOutput(model)


NODES = [R2RCheckpointLoader, R2RClearVAELoader, R2RControllerLoader, R2RUNetLoader]
