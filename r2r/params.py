"""The one table of user-facing parameters: name, type, default, range or choices, help.

The CLI's argparse options (:func:`add_cli_argument`), the ComfyUI nodes' V3 inputs
(``nodes/_schema.py``) and the pipeline's checks (:func:`check`) are all made from :data:`PARAMS`,
so a range is written once. Importing this module is cheap (no torch).

``check(name, value, label)`` returns the value (ints as ``int``, floats as ``float``) or raises
:class:`~r2r.errors.R2RUserError` saying what was expected, what was given and how to fix it;
``label`` is how the caller names the value (``"--steps"``, ``"R2R Sampler: steps"``,
``"num_inference_steps"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import R2RUserError

#: how an image becomes the working canvas (r2r.imaging.geometry)
RESIZE_MODES = ("fit", "pad", "square")
DEFAULT_RESIZE_MODE = "fit"
#: how the working-resolution result reaches the original size (r2r.imaging.fullres.to_original_size)
FULLRES_MODES = ("auto", "color_transform", "upsample")
DEFAULT_FULLRES_MODE = "auto"
#: the official sampler and the diffusers schedulers offered beside it (r2r.pipeline.sampling.SCHEDULERS)
SCHEDULER_NAMES = ("euler_ancestral", "euler", "euler_karras", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde",
                   "ddim", "unipc", "heun")
DEFAULT_SCHEDULER = "euler_ancestral"
#: where the controller residuals and the Clear-VAE skips wait between stages (rule: r2r.pipeline.memory)
PLACEMENTS = ("auto", "device", "host", "recompute")
DEFAULT_PLACEMENT = "auto"
#: where an int seed's generator draws: "cpu" (the same picture on every device, ComfyUI's convention)
#: or "device" (the compute device, as the official inference script does)
NOISE_DEVICES = ("cpu", "device")
DEFAULT_NOISE_DEVICE = "cpu"
#: max_side value meaning "fit the machine": 1024 on an accelerator, 512 on a CPU (r2r.devices.auto_max_side)
AUTO_MAX_SIDE = 0
#: how several objects in one picture are harmonized (r2r.pipeline.objects)
OBJECT_MODES = ("together", "each")
#: whether each object is harmonized in a crop around it (r2r.pipeline.objects)
CROP_MODES = ("none", "per_object")
#: how the frames of a clip are tied together (r2r.video)
TEMPORAL_MODES = ("independent", "shared_noise", "smoothed", "keyframes")
#: what happens to a frame whose mask is empty (r2r.video)
EMPTY_FRAME_MODES = ("skip", "stop")


@dataclass(frozen=True)
class Param:
    """One user-facing parameter."""

    name: str
    kind: type  # int | float | bool | str
    default: object
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiple_of: int | None = None
    choices: tuple | None = None
    #: a value accepted besides the range (e.g. max_side 0 = automatic), with its meaning
    special: tuple[object, str] | None = None
    fix: str = ""

    def widget_range(self) -> tuple[float, float]:
        """(lowest, highest) value a widget offers: the range, extended to the special value."""
        if self.minimum is None or self.maximum is None:
            raise ValueError(f"parameter {self.name!r} has no numeric range")
        low = self.minimum if self.special is None else min(self.minimum, float(self.special[0]))  # type: ignore[arg-type]
        return low, self.maximum

    def describe(self) -> str:
        """The accepted values, in words."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = "an integer" if self.kind is int else ("true or false" if self.kind is bool else "a number")
        text = kind
        if self.minimum is not None and self.maximum is not None:
            text += f" from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        elif self.minimum is not None:
            text += f" >= {_fmt(self.minimum)}"
        if self.multiple_of:
            text = f"a multiple of {self.multiple_of} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.special is not None:
            text += f" (or {self.special[0]} = {self.special[1]})"
        return text

    def check(self, value, label: str | None = None):
        label = label or self.name
        if self.special is not None and value == self.special[0] and not isinstance(value, bool):
            return self.special[0]
        if self.choices is not None:
            if value not in self.choices:
                raise R2RUserError(f"{label} must be {self.describe()}; got {value!r}.{_fix(self.fix)}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise R2RUserError(f"{label} must be true or false; got {value!r}.")
            return value
        integral = isinstance(value, int) or (type(value).__module__ == "numpy" and hasattr(value, "is_integer")
                                              and float(value).is_integer() and self.kind is int)
        numeric = isinstance(value, (int, float)) or type(value).__module__ == "numpy"
        if isinstance(value, bool) or not numeric or (self.kind is int and not integral):
            raise R2RUserError(f"{label} must be {self.describe()}; got {value!r} ({type(value).__name__}).")
        value = int(value) if self.kind is int else float(value)
        bad = not math.isfinite(value)
        bad = bad or (self.minimum is not None and value < self.minimum)
        bad = bad or (self.maximum is not None and value > self.maximum)
        bad = bad or bool(self.multiple_of and value % self.multiple_of)
        if bad:
            hint = ""
            if self.multiple_of and math.isfinite(value):
                near = min(self.maximum, max(self.minimum, round(value / self.multiple_of) * self.multiple_of))
                hint = f" Try {label.split(':')[-1].strip().strip(chr(39))} {_fmt(near)}."
            raise R2RUserError(f"{label} must be {self.describe()}; got {value!r}.{hint}{_fix(self.fix)}")
        return value


def _fmt(x) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return "2^64 - 1" if x == 2**64 - 1 else str(x)


def _fix(text: str) -> str:
    return f" {text}" if text else ""


SEED_MAX = 2**64 - 1

PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("steps", int, 10, "Denoising steps (the release was tuned for 10).", 1, 1000, 1,
          fix="The official setting is 10 (more steps are slower, rarely better)."),
    Param("seed", int, 0, "Random seed.", 0, SEED_MAX, 1, fix="Use a non-negative seed, e.g. 0."),
    Param("strength", float, 1.0, "Harmony Controller strength: 1 = as trained, 0 = no controller (the U-Net alone).",
          0.0, 2.0, 0.05, fix="1 is the strength the model was trained with."),
    Param("max_side", int, 1024, "Working resolution: the longer side the model runs at (a multiple of 64).",
          64, 4096, 64, multiple_of=64, special=(AUTO_MAX_SIDE, "automatic: 1024 on a GPU, 512 on a CPU"),
          fix="The model was trained at 1024; 512 is about 4x faster. Larger originals keep their full "
              "resolution anyway (fullres_mode)."),
    Param("feather", int, -1, "Width in original pixels of the soft paste-back edge outside the mask: -1 = "
                              "automatic (one latent cell), 0 = hard edge.", -1, 256, 1),
    Param("resize_mode", str, DEFAULT_RESIZE_MODE, "How the picture becomes the working canvas.",
          choices=RESIZE_MODES),
    Param("fullres_mode", str, DEFAULT_FULLRES_MODE, "How the result reaches the original resolution.",
          choices=FULLRES_MODES),
    Param("scheduler", str, DEFAULT_SCHEDULER, "Sampler (euler_ancestral is the official one).",
          choices=SCHEDULER_NAMES),
    Param("noise_device", str, DEFAULT_NOISE_DEVICE,
          "Where the seed's random numbers are drawn: cpu = the same picture on every device (default); "
          "device = on the GPU, as the official inference script does (same image as the official script "
          "for the same seed).", choices=NOISE_DEVICES),
    Param("placement", str, DEFAULT_PLACEMENT, "Where residuals / skips wait between stages.", choices=PLACEMENTS),
    Param("seed_batch", int, 1, "How many variations in one run: seeds seed, seed+1, ... (batched through the "
                                "U-Net where memory allows); each is the image its seed gives alone.", 1, 64, 1),
    Param("timestep_batch", int, 1, "Timesteps per controller forward.", 1, 1000, 1),
    Param("statistics_strength", float, 1.0, "Weight-free harmonizer: 0 = unchanged .. 1 = full colour transfer.",
          0.0, 1.0, 0.05),
    Param("objects", str, "together", "together = one harmonization for the whole mask; each = every object "
                                      "(a mask of a MASK batch for one picture, or a separate part of the mask) on "
                                      "its own, against the background without the other objects; the results are "
                                      "composed (later masks win).",
          choices=OBJECT_MODES),
    Param("crop", str, "none", "none = the whole picture at max_side; per_object = each object in a crop around "
                               "it run at max_side and pasted back at full resolution (more model pixels for "
                               "small objects; the crop's own background sets the colours).", choices=CROP_MODES),
    Param("context", float, 2.0, "per_object crops: the object's box grown by this factor (1 = tight, 2 = twice "
                                 "its width and height), then to the working canvas's aspect ratio; clamped to "
                                 "the picture.", 1.0, 8.0, 0.25),
    Param("temporal", str, "independent", "How the frames of a clip are tied together.", choices=TEMPORAL_MODES),
    Param("keyframe_interval", int, 8, "keyframes mode: the model runs on every N-th frame (and at shot cuts).",
          1, 1000, 1, fix="Use 1 to run every frame."),
    Param("empty_frames", str, "skip", "A frame whose mask is empty: skip = pass it through unchanged (logged); "
                                       "stop = refuse the clip.", choices=EMPTY_FRAME_MODES),
    Param("smoothing", float, 3.0, "smoothed mode: the standard deviation, in frames, of the zero-phase Gaussian "
                                   "that smooths the colour transform within each shot (0 = no smoothing).",
          0.0, 100.0, 0.5),
    Param("cut_threshold", float, 0.25, "Shot-cut detection: a colour-histogram distance (0..1) between consecutive "
                                        "frames above this starts a new shot (1 = never).", 0.0, 1.0, 0.05),
)}


def param(name: str) -> Param:
    return PARAMS[name]


def check(name: str, value, label: str | None = None):
    """``value`` checked against the table's entry ``name`` (see the module docstring)."""
    return PARAMS[name].check(value, label)


def check_choice(value, choices, name: str):
    """Return ``value`` if it is one of ``choices``; otherwise a clear :class:`R2RUserError`."""
    if value not in choices:
        raise R2RUserError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


def add_cli_argument(parser, name: str, flag: str | None = None, *, default=None, help: str | None = None,
                     choices_in_parser: bool = True) -> None:
    """An argparse option for the table's entry ``name``: its type, default and help with the range.

    Ranges are checked by :func:`check` when the command runs (exit 2 with the fix), not by argparse."""
    p = PARAMS[name]
    flag = flag or "--" + name.replace("_", "-")
    text = help or p.help
    value = p.default if default is None else default
    kwargs: dict = {"default": value}
    if p.choices is not None:
        if choices_in_parser:
            kwargs["choices"] = p.choices
        text += f" ({'|'.join(map(str, p.choices))}; default {value})"
    elif p.kind is bool:
        kwargs = {"action": "store_true"}
    else:
        kwargs["type"] = p.kind
        kwargs["metavar"] = "N" if p.kind is int else "X"
        text += f" ({p.describe()}; default {value})"
    parser.add_argument(flag, help=text.replace("%", "%%"), **kwargs)
