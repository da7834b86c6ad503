"""Building the R2R networks from their files: :func:`load_components` and the single loaders.

Sources of :func:`load_components`:

* a release folder in the hub layout (:mod:`r2r.weights.layout`);
* the hub repo id itself (:func:`r2r.weights.hub.hub_snapshot` fetches only the needed files; honours
  ``HF_HUB_OFFLINE`` / ``local_files_only``, ``cache_dir``, ``local_dir`` and ``revision``);
* a dict of per-component single files (diffusers ``.safetensors``, SD-format ``.ckpt`` such as
  ``clear_vae.ckpt`` in any of its three prefix layouts or the ControlLDM ``diff-base.ckpt``).

Every argument (source, components, dtype, device, configs, paths) is checked before any weights
are read. Every load is strict: missing or unexpected tensors, wrong shapes or a component of the
wrong kind raise :class:`~r2r.errors.R2RUserError` naming the file, what it looks like and what was
expected. Weights go straight to their device and one dtype (the Clear-VAE's float16 filter
kernels included), without a random initialisation first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..devices import resolve_device, resolve_dtype
from ..errors import R2RUserError, R2RWeightsNotFound
from . import prompt
from .hub import check_revision, hub_snapshot, looks_like_repo_id
from .layout import (
    COMPONENT_LABELS,
    COMPONENT_SOURCES,
    MODEL_COMPONENTS,
    OFFICIAL_REPO,
    describe_path,
    find_weights_file,
    official_config,
    read_json,
    read_scheduler_config,
    release_paths,
    require_component_folder,
)
from .statedict import (
    check_weight,
    compare_state,
    detect_format,
    mismatch_error,
    read_state_dict,
    tensor_shapes,
    to_diffusers_state_dict,
)

#: keys a dict source may have
DICT_SOURCE_KEYS = (
    MODEL_COMPONENTS + ("text_encoder", "tokenizer", "prompt_embeds", "scheduler_config")
    + tuple(f"{k}_config" for k in MODEL_COMPONENTS + ("text_encoder",))
)


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
        for name in MODEL_COMPONENTS:
            m = getattr(self, name)
            if m is not None:
                m.to(device=device, dtype=dtype)
        if self.prompt_embeds is not None:
            self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)
        return self


# ---------------------------------------------------------------------------------------------- models
def model_class(kind: str):
    """The class of network ``kind``: diffusers' UNet2DConditionModel, HarmonyController, ClearVAE."""
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel
    from ..models import ClearVAE, HarmonyController

    return {"controller": HarmonyController, "clear_vae": ClearVAE}[kind]


def empty_model(kind: str, config: dict, file):
    """Network ``kind`` built from ``config`` on the meta device (no memory, no random init).

    Config keys the class does not take (e.g. the controller config's ``sample_size``) are dropped.
    """
    import inspect

    from accelerate import init_empty_weights

    cls = model_class(kind)
    params = set(inspect.signature(cls.__init__).parameters)
    try:
        with init_empty_weights():
            return cls.from_config({k: v for k, v in config.items() if k in params})
    except R2RUserError:
        raise
    except Exception as exc:
        raise R2RUserError(
            f"The {COMPONENT_LABELS[kind]} config for {file} is invalid ({type(exc).__name__}: {exc}); "
            "use the config.json that came with the weights (or the official one)."
        ) from exc


def _config_fits(kind: str, cfg: dict) -> bool:
    if kind == "clear_vae":
        return "latent_channels" in cfg and "down_block_types" in cfg
    if kind == "controller":
        return "conditioning_channels" in cfg
    return "in_channels" in cfg and "out_channels" in cfg and "up_block_types" in cfg


def check_config_arg(kind: str, config) -> None:
    """``config`` is None, a dict, a .json file or a folder with config.json (checked before loading)."""
    if config is None or isinstance(config, dict):
        return
    if not isinstance(config, (str, os.PathLike)):
        raise R2RUserError(f"The {kind} config must be a dict or the path of a config.json, "
                           f"got {type(config).__name__}.")
    p = Path(config)
    if p.is_dir() and not (p / "config.json").is_file():
        raise R2RWeightsNotFound(f"The {kind} config folder {p} has no config.json; give the config.json file.")
    if not p.exists():
        raise R2RWeightsNotFound(f"The {kind} config {p} does not exist; give the config.json that came with "
                                 "the weights (or leave it out to use the one beside the weights / the official one).")


def resolve_config(kind: str, path, config=None) -> tuple[dict, str]:
    """(config dict, where it came from) for a component at ``path`` (folder or file).

    An explicit ``config`` (dict, file or folder) wins; a folder needs its config.json; a single file
    uses a fitting config.json beside it, else the official config.
    """
    if isinstance(config, dict):
        return dict(config), "given config"
    if config is not None:
        check_config_arg(kind, config)
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        return read_json(p, f"{kind} config"), str(p)
    path = Path(path)
    if path.is_dir():
        p = path / "config.json"
        if not p.is_file():
            raise R2RWeightsNotFound(
                f"{path} has no config.json; a diffusers model folder needs config.json next to the weights "
                f"(take it from {OFFICIAL_REPO} or r2r/configs/official/)."
            )
        return read_json(p, f"{kind} config"), str(p)
    sibling = path.parent / "config.json"
    if sibling.is_file():
        try:
            cfg = read_json(sibling, f"{kind} config")
        except R2RUserError:
            cfg = {}  # a broken config.json beside a single file belongs to something else
        if _config_fits(kind, cfg):
            return cfg, str(sibling)
    return official_config(kind), "official config"


def build_model(kind: str, config: dict, state: dict, *, file, torch_dtype=None, device="cpu", fetch=None):
    """Instantiate ``kind`` from ``config`` on the meta device and load ``state`` strictly (assign).

    ``state`` may hold meta tensors (shapes only) when ``fetch(key)`` reads each tensor on demand:
    then only one source tensor at a time exists besides the converted weights.
    """
    torch_dtype = resolve_dtype(torch_dtype, device)
    model = empty_model(kind, config, file)
    state, unmatched, _fmt = to_diffusers_state_dict(kind, state, config)
    expected = model.state_dict()
    missing, unexpected, bad = compare_state(expected, state, unmatched)
    if missing or unexpected or bad:
        raise mismatch_error(kind, file, list(state) + unmatched, missing, unexpected, bad)
    sd = {}
    state = dict(state)  # drop our references while converting (keeps peak memory low)
    for k in list(state):
        v = fetch(k) if fetch is not None else state.pop(k)
        out = v.to(device=device, dtype=torch_dtype) if v.is_floating_point() else v.to(device=device)
        check_weight(file, k, v, expected[k], COMPONENT_LABELS[kind], loaded=out)  # dtype + one isfinite pass
        sd[k] = out
        del v, out
    model.load_state_dict(sd, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # pragma: no cover - would be a bug in r2r, not a user error
        raise RuntimeError(f"tensors left uninitialised after loading {file}: {leftovers[:5]}")
    return model.eval()


def _component_file(kind: str, path) -> Path:
    """The weights file of a component given as a folder or a file (checked, nothing read yet)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise R2RUserError(f"The {COMPONENT_LABELS[kind]} must be given as a folder or file path, got {path!r}; "
                           f"expected {COMPONENT_SOURCES[kind]}.")
    path = Path(path)
    if not path.exists():
        raise R2RWeightsNotFound(f"{COMPONENT_LABELS[kind]} not found at {path}; expected {COMPONENT_SOURCES[kind]}. "
                                 "Check the path or download the weights.")
    return find_weights_file(path, COMPONENT_LABELS[kind]) if path.is_dir() else path


def load_component(kind: str, path, *, config=None, torch_dtype=None, device="cpu", state_cache=None):
    """Network ``kind`` from a diffusers folder, a .safetensors file or an SD-format checkpoint.

    ``state_cache`` (a dict) shares one read of a checkpoint that holds several networks.
    """
    if kind not in MODEL_COMPONENTS:
        raise R2RUserError(f"Unknown component {kind!r}; choose from {list(MODEL_COMPONENTS)}.")
    torch_dtype = resolve_dtype(torch_dtype, device)
    device = resolve_device(device)
    check_config_arg(kind, config)
    file = _component_file(kind, path)
    cfg, _ = resolve_config(kind, path, config)
    key = str(file.resolve())
    if file.suffix == ".safetensors" and (state_cache is None or key not in state_cache):
        shapes = tensor_shapes(file)
        if detect_format(kind, shapes)[0] == "diffusers":  # the release format: stream tensor by tensor
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
    return load_component("clear_vae", path, config=config, torch_dtype=torch_dtype, device=device)


def load_controller(path, *, config=None, torch_dtype=None, device="cpu"):
    """Harmony Controller from a diffusers folder, a .safetensors file or a ControlLDM ``.ckpt``."""
    return load_component("controller", path, config=config, torch_dtype=torch_dtype, device=device)


def load_unet(path, *, config=None, torch_dtype=None, device="cpu"):
    """R2R U-Net from a diffusers folder, a .safetensors file or an SD/ControlLDM ``.ckpt``."""
    return load_component("unet", path, config=config, torch_dtype=torch_dtype, device=device)


# ---------------------------------------------------------------------------------------------- main entry
def _check_components(components) -> tuple[str, ...]:
    if isinstance(components, str):
        components = (components,)
    try:
        components = tuple(dict.fromkeys(components))  # keep the order, drop repeats
    except TypeError as exc:
        raise R2RUserError(f"components must be a list of {list(MODEL_COMPONENTS)}, got {components!r}.") from exc
    bad = [c for c in components if c not in MODEL_COMPONENTS]
    if bad:
        raise R2RUserError(f"Unknown component(s) {bad}; choose from {list(MODEL_COMPONENTS)}.")
    return components


def _check_folder_arg(name: str, value) -> None:
    if value is not None and Path(value).exists() and not Path(value).is_dir():
        raise R2RUserError(f"{name}={value} is a file; give a folder (or leave {name} out).")


def load_components(source=OFFICIAL_REPO, *, torch_dtype=None, device="cpu", components=MODEL_COMPONENTS,
                    cache_dir=None, local_files_only=None, local_dir=None, revision=None) -> R2RComponents:
    """Load the R2R networks + scheduler config + empty-prompt embedding.

    Args:
        source: a release folder (hub layout), a hub repo id, or a dict of single files with keys
            ``unet``, ``controller``, ``clear_vae`` (folders, .safetensors or SD-format .ckpt) and optionally
            ``text_encoder``, ``tokenizer``, ``prompt_embeds`` (a cached .safetensors), ``scheduler_config``,
            ``unet_config``, ``controller_config``, ``clear_vae_config``, ``text_encoder_config``.
        torch_dtype: fp32/fp16/bf16/auto or a torch dtype (:func:`r2r.devices.resolve_dtype`).
        components: which of unet/controller/clear_vae to load (the others stay None).
        cache_dir, local_dir, revision: hub repo ids only (where the snapshot goes, which revision).
        local_files_only: never touch the network (also set by ``HF_HUB_OFFLINE``).
    """
    if isinstance(source, str) and not source.strip():
        raise R2RUserError(f"load_components got an empty source; give a release folder, a hub repo id like "
                           f"{OFFICIAL_REPO!r} or a dict of files.")
    components = _check_components(components)
    torch_dtype = resolve_dtype(torch_dtype, device)
    device = resolve_device(device)
    out = R2RComponents()
    is_repo = looks_like_repo_id(source)  # a str only: a Path is always a folder
    if not is_repo:
        given = [n for n, v in (("cache_dir", cache_dir), ("local_dir", local_dir), ("revision", revision)) if v]
        if given:
            what = "a dict of files" if isinstance(source, dict) else repr(str(source))
            raise R2RUserError(f"{', '.join(given)} only apply to a Hugging Face repo id; the source {what} is "
                               f"not one (leave them out, or give a repo id like {OFFICIAL_REPO!r}).")

    if isinstance(source, dict):
        return _load_from_dict(source, out, components, torch_dtype, device)

    if is_repo:
        repo = str(source)
        _check_folder_arg("cache_dir", cache_dir)
        _check_folder_arg("local_dir", local_dir)
        check_revision(revision)
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
    for kind in components:  # every file is found before any is read
        require_component_folder(kind, paths[kind], root)
    out.scheduler_config = read_scheduler_config(paths["scheduler"])
    prompt.require_prompt_source(root, paths["text_encoder"], key=prompt_key)
    for kind in components:
        setattr(out, kind, load_component(kind, paths[kind], torch_dtype=torch_dtype, device=device))
    emb = prompt.empty_prompt_embeds(
        root, paths["text_encoder"], paths["tokenizer"], key=prompt_key, write_to_root=writable_root
    )
    out.prompt_embeds = emb.to(device=device, dtype=torch_dtype)
    return out


def _check_dict_source(source: dict, components) -> None:
    """Every entry of a dict source exists and has the right kind, before anything is read."""
    unknown = sorted(str(k) for k in set(source) - set(DICT_SOURCE_KEYS))
    if unknown:
        raise R2RUserError(f"Unknown keys {unknown} in the source dict; allowed: {sorted(DICT_SOURCE_KEYS)}.")
    for kind in components:
        if not source.get(kind):
            raise R2RWeightsNotFound(
                f"The source dict has no {kind!r} entry; give the {COMPONENT_LABELS[kind]} file or folder "
                f"({COMPONENT_SOURCES[kind]})."
            )
        _component_file(kind, source[kind])
        check_config_arg(kind, source.get(f"{kind}_config"))
    for name in ("text_encoder", "prompt_embeds", "tokenizer", "scheduler_config"):
        value = source.get(name)
        if value is None or (name == "scheduler_config" and isinstance(value, dict)):
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise R2RUserError(f"The source dict's {name!r} must be a path, got {type(value).__name__}.")
        p = Path(value)
        if not p.exists() or (name == "tokenizer" and not p.is_dir()) or (name == "prompt_embeds" and p.is_dir()):
            need = {"tokenizer": "a tokenizer folder", "prompt_embeds": "a cached empty-prompt .safetensors file",
                    "text_encoder": "a text_encoder folder or weights file",
                    "scheduler_config": "a scheduler_config.json or the folder holding it"}[name]
            raise R2RWeightsNotFound(f"The source dict's {name!r}: {describe_path(p)}; expected {need}.")
        if name == "scheduler_config" and p.is_dir() and not (p / "scheduler_config.json").is_file():
            raise R2RWeightsNotFound(f"The source dict's 'scheduler_config' folder {p} has no scheduler_config.json.")
    check_config_arg("text_encoder", source.get("text_encoder_config"))
    if source.get("prompt_embeds") is None and source.get("text_encoder") is None:
        raise prompt.no_prompt_source_error()


def _load_from_dict(source: dict, out: R2RComponents, components, torch_dtype, device) -> R2RComponents:
    _check_dict_source(source, components)
    sc = source.get("scheduler_config")
    if isinstance(sc, dict):
        out.scheduler_config = dict(sc)
    elif sc:
        p = Path(sc)
        out.scheduler_config = read_json(p / "scheduler_config.json" if p.is_dir() else p, "scheduler config")
    else:
        out.scheduler_config = official_config("scheduler")
    cache: dict = {}
    for kind in components:
        setattr(out, kind, load_component(kind, source[kind], config=source.get(f"{kind}_config"),
                                          torch_dtype=torch_dtype, device=device, state_cache=cache))
    cache.clear()
    out.prompt_embeds = prompt.prompt_embeds_from_files(
        source.get("text_encoder"), source.get("tokenizer"), source.get("prompt_embeds"),
        source.get("text_encoder_config"),
    ).to(device=device, dtype=torch_dtype)
    out.source = json.dumps({k: str(v) for k, v in source.items() if not isinstance(v, dict)}, sort_keys=True)
    return out
