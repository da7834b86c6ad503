"""Trainer configuration: YAML -> nested dataclasses, strictly validated.

Every key has a default (see ``docs/training.md`` for the reference); unknown keys and wrong types
raise :class:`r2r.errors.R2RUserError` naming the key, what was given and what is expected.
``--set section.key=value`` overrides are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

from r2r.errors import R2RUserError

STAGES = ("clear_vae", "unet", "controller")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
#: diffusers LR schedules usable with (warmup, max_steps) only
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
#: the release sub-folder each stage writes (the hub layout the loader reads)
STAGE_COMPONENT_DIR = {
    "clear_vae": "clear_vae",
    "unet": "stable-diffusion-inpainting/unet",
    "controller": "stable-diffusion-inpainting/controlnet",
}


@dataclass
class InitConfig:
    #: R2R release folder in hub layout (stable-diffusion-inpainting/..., clear_vae/) or hub repo id;
    #: gives the VAE, the empty-prompt embedding, the scheduler and the untrained components.
    release: str | None = None
    #: the network this stage starts from: a diffusers folder, a .safetensors file or an SD-format .ckpt.
    #: clear_vae: an SD VAE (AutoencoderKL folder / SD-format file) or an existing Clear-VAE;
    #: unet: SD-1.5-inpainting (pipeline folder or its unet/) or DiffHarmony-style weights;
    #: controller: an existing controller (default: built from the U-Net's encoder half).
    weights: str | None = None
    #: unet/controller: the U-Net to use (default: the release's); controller stage only.
    unet: str | None = None
    #: unet/controller: the VAE used to make latents (default: the release's clear_vae, whose encoder is the SD VAE's)
    vae: str | None = None


@dataclass
class SourceConfig:
    #: "layout" (iHarmony4 / RPHarmony jsonl or txt lists) or "folder" (images + masks, composites made with RPB)
    type: str = "layout"
    #: layout: the dataset root (holding <split>.jsonl / <split>.txt); folder: the folder with images
    root: str | None = None
    #: layout: the split name (train, test, ...) or a list file path relative to root
    split: str = "train"
    #: folder: the folder with masks (default: <root>/masks when it exists)
    masks: str | None = None
    #: how many times this source is seen per epoch (fractional values take a random subset)
    repeat: float = 1.0
    #: use at most this many items (0 = all)
    limit: int = 0


@dataclass
class CropConfig:
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_foreground: float = 0.01
    tries: int = 5


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    #: training resolution (square, a multiple of 64); the reference uses 256 for clear_vae, 512 otherwise
    resolution: int = 512
    flip: bool = True
    #: random-resized crop keeping >= min_foreground of foreground (ref §f.3); set enabled false to only resize
    crop_enabled: bool = True
    crop: CropConfig = field(default_factory=CropConfig)
    num_workers: int = 2
    #: number of validation items (0 = all of data.val)
    val_limit: int = 8


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999
    update_after_step: int = 0
    use_ema_warmup: bool = False
    #: write the EMA weights (not the raw ones) as the stage output
    use_for_output: bool = True


@dataclass
class TrainConfig:
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    #: optimizer steps (after accumulation)
    max_steps: int = 1000
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    #: 0 disables clipping
    max_grad_norm: float = 1.0
    #: "auto" (bf16 on GPUs that support it, else fp16; fp32 on CPUs; a resumed run keeps its precision),
    #: "no", "fp16" or "bf16" (accelerate); see training/speed.py
    mixed_precision: str = "auto"
    #: true, false or "auto" (off when the step's memory estimate fits the free device memory; training/speed.py)
    gradient_checkpointing: bool | str = "auto"
    #: torch.compile the trained network (the first steps are slower while it compiles)
    compile: bool = False
    #: probability of drawing the timestep from [0, low_timestep_max) instead of [0, 1000) (ref §c.5)
    low_timestep_prob: float = 0.3
    low_timestep_max: int = 500
    ema: EMAConfig = field(default_factory=EMAConfig)


@dataclass
class LossConfig:
    #: clear_vae: weight of the contrastive regularisation (0 disables it, no VGG needed)
    cr_weight: float = 0.3
    #: clear_vae: path of torchvision's vgg16-397923af.pth or a .safetensors copy
    vgg16: str | None = None


@dataclass
class LogConfig:
    every: int = 10
    checkpoint_every: int = 500
    #: keep at most this many checkpoints (0 = all)
    checkpoints_total_limit: int = 3
    sample_every: int = 500
    validate_every: int = 1000
    #: denoising steps for samples and validation (unet/controller)
    inference_steps: int = 10
    progress_bar: bool = True


@dataclass
class OutputConfig:
    #: where checkpoints, logs and the trained component go
    dir: str = "outputs/training"
    #: also write/update a full release folder (hub layout) holding the trained component
    release: str | None = None


@dataclass
class TrainingConfig:
    stage: str = "unet"
    seed: int = 0
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainingConfig:
        def bad(key, expected, given):
            raise R2RUserError(f"config {key}: expected {expected}, got {given!r}. Fix it in the YAML or with --set {key}=...")

        if self.stage not in STAGES:
            bad("stage", f"one of {', '.join(STAGES)}", self.stage)
        if not (0 <= self.seed < 2**63):
            bad("seed", "an integer in 0 .. 2**63-1", self.seed)
        if not self.output.dir or not str(self.output.dir).strip():
            bad("output.dir", "the folder for checkpoints, logs and the trained component", self.output.dir)
        r = self.data.resolution
        if r < 64 or r % 64:
            bad("data.resolution", "a multiple of 64, at least 64 (e.g. 256 or 512)", r)
        if not self.data.train:
            raise R2RUserError(
                "config data.train is empty: list at least one source, e.g.\n"
                "  data:\n    train:\n      - {type: layout, root: data/iHarmony4, split: train}\n"
                "      - {type: folder, root: my_images, masks: my_masks}"
            )
        for section in ("train", "val"):
            for i, src in enumerate(getattr(self.data, section)):
                key = f"data.{section}[{i}]"
                if src.type not in ("layout", "folder"):
                    bad(f"{key}.type", "'layout' or 'folder'", src.type)
                if not src.root:
                    bad(f"{key}.root", "the dataset folder", src.root)
                if src.repeat < 0:
                    bad(f"{key}.repeat", "a number >= 0", src.repeat)
                if src.limit < 0:
                    bad(f"{key}.limit", "an integer >= 0 (0 = all items)", src.limit)
        c = self.data.crop
        if not (0 < c.scale[0] <= c.scale[1] <= 1):
            bad("data.crop.scale", "[min, max] with 0 < min <= max <= 1", list(c.scale))
        if not (0 < c.ratio[0] <= c.ratio[1]):
            bad("data.crop.ratio", "[min, max] with 0 < min <= max", list(c.ratio))
        if not (0 <= c.min_foreground <= 1):
            bad("data.crop.min_foreground", "a fraction in [0, 1]", c.min_foreground)
        if c.tries < 1:
            bad("data.crop.tries", "an integer >= 1", c.tries)
        for key in ("num_workers", "val_limit"):
            if getattr(self.data, key) < 0:
                bad(f"data.{key}", "an integer >= 0", getattr(self.data, key))
        t = self.train
        for key in ("batch_size", "gradient_accumulation_steps", "max_steps"):
            if getattr(t, key) < 1:
                bad(f"train.{key}", "an integer >= 1", getattr(t, key))
        if not t.learning_rate > 0:  # also refuses NaN
            bad("train.learning_rate", "a positive number", t.learning_rate)
        for key in ("weight_decay", "max_grad_norm", "lr_warmup_steps"):
            if not getattr(t, key) >= 0:
                bad(f"train.{key}", "a number >= 0", getattr(t, key))
        for key in ("adam_beta1", "adam_beta2"):
            if not (0 <= getattr(t, key) < 1):
                bad(f"train.{key}", "a number in [0, 1)", getattr(t, key))
        if not t.adam_epsilon > 0:
            bad("train.adam_epsilon", "a positive number", t.adam_epsilon)
        if t.lr_scheduler not in LR_SCHEDULERS:
            bad("train.lr_scheduler", f"one of {', '.join(LR_SCHEDULERS)}", t.lr_scheduler)
        if t.mixed_precision not in MIXED_PRECISIONS:
            bad("train.mixed_precision", "'auto', 'no', 'fp16' or 'bf16'", t.mixed_precision)
        if not isinstance(t.gradient_checkpointing, bool) and t.gradient_checkpointing != "auto":
            bad("train.gradient_checkpointing", "true, false or auto", t.gradient_checkpointing)
        if not (0 <= t.low_timestep_prob <= 1):
            bad("train.low_timestep_prob", "a probability in [0, 1]", t.low_timestep_prob)
        if not (1 <= t.low_timestep_max <= 1000):
            bad("train.low_timestep_max", "an integer in 1..1000", t.low_timestep_max)
        if not (0 < t.ema.decay < 1):
            bad("train.ema.decay", "a number in (0, 1)", t.ema.decay)
        if self.loss.cr_weight < 0:
            bad("loss.cr_weight", "a number >= 0", self.loss.cr_weight)
        if self.log.inference_steps < 1:
            bad("log.inference_steps", "an integer >= 1 (denoising steps for samples and validation)",
                self.log.inference_steps)
        for key in ("every", "checkpoint_every", "checkpoints_total_limit", "sample_every", "validate_every"):
            if getattr(self.log, key) < 0:
                bad(f"log.{key}", "an integer >= 0 (0 disables)", getattr(self.log, key))
        if self.stage in ("unet", "controller") and not self.init.release:
            bad(
                "init.release",
                "an R2R release folder in hub layout (or hub repo id) that provides the VAE, the text encoder and "
                "the scheduler config -- e.g. the output of `python -m r2r download`",
                self.init.release,
            )
        if self.stage == "clear_vae" and not (self.init.weights or self.init.release):
            bad(
                "init.weights",
                "the SD VAE (diffusers folder or SD-format file) or an existing Clear-VAE to start from",
                self.init.weights,
            )
        return self


# ---------------------------------------------------------------------- parsing
def _coerce(value, tp, key):
    origin = getattr(tp, "__origin__", None)
    tname = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    if set(getattr(tp, "__args__", ()) or ()) == {bool, str}:  # e.g. true / false / "auto"
        if isinstance(value, (bool, str)):
            return value
        raise R2RUserError(f"config {key}: expected true, false or a word such as auto, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise R2RUserError(f"config {key}: expected a mapping of settings, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is list:
        (inner,) = tp.__args__
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise R2RUserError(f"config {key}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(tp.__args__):
            raise R2RUserError(f"config {key}: expected a list of {len(tp.__args__)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, tp.__args__))
    if tp is bool or tname == "bool":
        if isinstance(value, bool):
            return value
        raise R2RUserError(f"config {key}: expected true or false, got {value!r}")
    if tp is int or tname == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise R2RUserError(f"config {key}: expected an integer, got {value!r}")
        return value
    if tp is float or tname == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):  # YAML reads 1e-5 as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            raise R2RUserError(f"config {key}: expected a number, got {value!r}")
        return float(value)
    # str or str | None
    if value is None:
        return None
    if value is False and key.endswith("mixed_precision"):
        return "no"  # YAML 1.1 reads a bare `no` as false
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise R2RUserError(f"config {key}: expected a string, got {value!r}")


def _from_dict(cls, data: dict, prefix: str = ""):
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"config section {prefix!r}" if prefix else "config"
        raise R2RUserError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        # unwrap Optional[X]
        args = getattr(tp, "__args__", None)
        if args and type(None) in args and getattr(tp, "__origin__", None) is not list:
            if value is None:
                kwargs[name] = None
                continue
            tp = next(a for a in args if a is not type(None))
        kwargs[name] = _coerce(value, tp, f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise R2RUserError(f"--set {dotted}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_config(path: str | os.PathLike | None, stage: str | None = None, overrides: list[str] | None = None) -> TrainingConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, check it and return it.

    Relative paths in the config stay relative to the working directory (as on the command line).
    """
    import yaml

    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise R2RUserError(
                f"config file {os.fspath(path)!r} not found; pass an existing YAML file with --config "
                "(examples: training/configs/clear_vae.yaml, unet.yaml, controller.yaml)"
            )
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise R2RUserError(f"config file {os.fspath(path)!r} is not valid YAML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise R2RUserError(f"config file {os.fspath(path)!r} cannot be read as YAML text ({exc}); pass a "
                               "readable .yaml file with --config") from exc
        if not isinstance(data, dict):
            raise R2RUserError(f"config file {os.fspath(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise R2RUserError(f"--set expects key=value (e.g. train.max_steps=100), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise R2RUserError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); quote lists "
                               "and mappings, e.g. --set 'data.train=[{type: layout, root: data/x}]'") from exc
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise R2RUserError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
        _set_path(data, key.strip(), value)
    if stage is not None:
        if data.get("stage") not in (None, stage):
            raise R2RUserError(
                f"the config {os.fspath(path)!r} is for stage {data['stage']!r} but the command asked for {stage!r}; "
                "use the matching config or remove 'stage' from it"
            )
        data["stage"] = stage
    cfg = _from_dict(TrainingConfig, data)
    return cfg.validate()
