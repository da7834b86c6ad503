"""``python -m r2r harmonize``: harmonize one composite image.

    python -m r2r harmonize --composite comp.jpg --mask mask.png --out result.png \
        [--weights models/r2r/region2region | 1243asdad/region2region] [--steps 10] [--seed 0] \
        [--max-side 1024] [--dtype auto|fp32|bf16|fp16] [--device auto|cpu|cuda[:N]|mps] [--no-paste-back] \
        [--feather -1|0|PX] [--method r2r|statistics] [--strength S]

Weights are looked up in ``--weights``, then ``$R2R_WEIGHTS``, then ``./models/r2r/region2region``.
``--method statistics`` needs no weights (the Lab-statistics harmonizer of ``r2r.blending``).

Every argument is checked before any model loads (:func:`check_model_args`, :func:`read_inputs`,
:func:`check_out_file`); a problem is an :class:`~r2r.errors.R2RUserError` (exit code 2, no
traceback). The result is written atomically; if writing fails after the work (disk full, folder
removed), :func:`save_result` keeps it in a fallback file under the temp folder and names it.
Heavy imports (torch, the models) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from ..devices import DTYPE_CHOICES
from ..errors import R2RUserError
from ..fileio import IMAGE_EXTENSIONS
from ..params import (
    DEFAULT_FULLRES_MODE,
    DEFAULT_RESIZE_MODE,
    DEFAULT_SCHEDULER,
    FULLRES_MODES,
    RESIZE_MODES,
    SCHEDULER_NAMES,
)

DEFAULT_WEIGHTS_DIR = Path("models") / "r2r" / "region2region"
WEIGHTS_ENV = "R2R_WEIGHTS"
MAX_STEPS = 1000
MAX_SEED = 2**64 - 1
#: the largest working resolution offered (as the nodes' max_side input); the model was trained at 1024
MAX_SIDE_LIMIT = 4096
#: --feather value meaning "automatic" (one latent cell); the pipeline's feather=None
FEATHER_AUTO = -1
#: the pipeline's upper limit for the controller's conditioning scale
MAX_R2R_STRENGTH = 10.0
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def add_arguments(parser) -> None:
    parser.add_argument("--composite", required=True, metavar="IMAGE", help="the composite image (RGB; any size)")
    parser.add_argument("--mask", required=True, metavar="IMAGE",
                        help="foreground mask, white = the pasted object (greyscale; RGBA: the alpha channel)")
    parser.add_argument("--out", required=True, metavar="IMAGE",
                        help=f"output file ({', '.join(IMAGE_EXTENSIONS)}); an existing file is replaced, an input "
                             "never; missing folders are created")
    add_model_arguments(parser)
    parser.add_argument("--no-paste-back", action="store_true",
                        help="return the model's whole image (default: the original background is pasted back)")
    parser.add_argument("--feather", type=int, default=FEATHER_AUTO, metavar="PX",
                        help="paste-back band outside the mask in original pixels: -1 = automatic (one latent "
                             "cell, default), 0 = hard edge (the mask itself), N = N pixels")
    parser.add_argument("--method", choices=("r2r", "statistics"), default="r2r",
                        help="r2r = the diffusion model (needs weights); statistics = weight-free Lab colour matching")
    parser.add_argument("--strength", type=float, default=1.0,
                        help=f"r2r: the Harmony Controller's conditioning scale, 0..{MAX_R2R_STRENGTH:g} (1 = as trained, "
                             "default; 0 = no controller); statistics: 0 = unchanged .. 1 = full transfer (default)")


def add_model_arguments(parser) -> None:
    """Options shared with ``python -m r2r demo``."""
    parser.add_argument("--weights", default=None, metavar="PATH_OR_REPO",
                        help=f"release folder (hub layout) or hub repo id; default ${WEIGHTS_ENV} or ./{DEFAULT_WEIGHTS_DIR}")
    parser.add_argument("--steps", type=int, default=10, help=f"denoising steps, 1..{MAX_STEPS} (official: 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed, 0..2^64-1 (CPU generator: same result on any device)")
    parser.add_argument("--max-side", type=int, default=1024,
                        help=f"working resolution: longer side, a multiple of 64 from 64 to {MAX_SIDE_LIMIT} (default 1024)")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default=DEFAULT_RESIZE_MODE,
                        help="fit = keep aspect (default), pad = exact aspect + padding, square = official squash")
    parser.add_argument("--low-memory", action="store_true",
                        help="keep only one network in memory at a time (each is loaded for its phase; the "
                             "composite's skips wait in a temp file): about half the peak memory, for big images "
                             "or small machines")
    parser.add_argument("--fullres-mode", choices=FULLRES_MODES, default=DEFAULT_FULLRES_MODE,
                        help="how the result reaches the original resolution: color_transform carries the harmonization "
                             "as a colour transform that keeps every original detail; upsample resizes the "
                             "working-resolution result; auto (default) = color_transform for images larger than "
                             "the working resolution")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=DEFAULT_SCHEDULER,
                        help="sampler (euler_ancestral is the official one)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="model dtype (auto: fp16 on CUDA, fp32 on CPU; fp16/bf16 on a CPU run slower than fp32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


# ----------------------------------------------------------------------------- checks before work


def _check_int(option: str, value, low: int, high: int, fix: str) -> int:
    if not (low <= value <= high):
        raise R2RUserError(f"{option} must be an integer from {low} to {high}; got {value}. {fix}")
    return value


def check_model_args(args) -> None:
    """Check the numeric options shared by ``harmonize`` and ``demo`` (cheap; no torch)."""
    _check_int("--steps", args.steps, 1, MAX_STEPS, "The official setting is 10 (more steps are slower, rarely better).")
    _check_int("--seed", args.seed, 0, MAX_SEED, "Use a non-negative seed, e.g. --seed 0.")
    if not (64 <= args.max_side <= MAX_SIDE_LIMIT) or args.max_side % 64:
        nearest = min(MAX_SIDE_LIMIT, max(64, round(args.max_side / 64) * 64))
        raise R2RUserError(f"--max-side must be a multiple of 64 from 64 to {MAX_SIDE_LIMIT} (e.g. 512, 768 or 1024; "
                           f"the model was trained at 1024); got {args.max_side}. Try --max-side {nearest}; larger "
                           "originals keep their full resolution anyway (--fullres-mode).")


def device_and_dtype(args):
    """``--device`` / ``--dtype`` -> ``(torch.device, torch.dtype)``; prints a one-line note when fp16/bf16
    is asked for on a CPU (it works, but slower than fp32)."""
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    if device.type == "cpu" and args.dtype in ("fp16", "bf16"):
        print(f"note: --dtype {args.dtype} on the CPU runs slower than fp32 (CPUs have no fast half-precision "
              "kernels); use --dtype auto or fp32 for speed.", file=sys.stderr)
    return device, dtype


def resolve_device_dtype(device_arg: str, dtype_arg: str):
    """``--device`` / ``--dtype`` -> ``(torch.device, torch.dtype)`` by the one rule of :mod:`r2r.devices`
    (``auto``: CUDA, else MPS, else CPU; fp16 on CUDA, fp32 elsewhere)."""
    import torch

    from ..devices import resolve_device, resolve_dtype

    text = str(device_arg).strip().lower()
    if not _DEVICE_PATTERN.match(text):
        raise R2RUserError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {device_arg!r}.")
    device = resolve_device(text)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise R2RUserError(f"--device {device_arg} asks for GPU {device.index}, but this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s) (numbered from 0); pick one of them.")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise R2RUserError("--device mps was requested but Apple's MPS backend is not available here; "
                               "use --device cpu (or auto).")
    return device, resolve_dtype(dtype_arg, device)


def check_feather_strength(args) -> None:
    if args.feather < FEATHER_AUTO:
        raise R2RUserError(f"--feather must be -1 (automatic: one latent cell), 0 (hard edge) or a positive number "
                           f"of pixels; got {args.feather}.")
    if args.method == "statistics" and not (math.isfinite(args.strength) and 0.0 <= args.strength <= 1.0):
        raise R2RUserError(f"--strength of --method statistics must be a number from 0 (unchanged) to 1 (full "
                           f"transfer); got {args.strength}.")
    if args.method == "r2r" and not (math.isfinite(args.strength) and 0.0 <= args.strength <= MAX_R2R_STRENGTH):
        raise R2RUserError(f"--strength of --method r2r (the controller's conditioning scale) must be a number from 0 "
                           f"to {MAX_R2R_STRENGTH:g}; got {args.strength}. 1 is the strength the model was trained with.")


def feather_for_pipeline(feather: int):
    """The CLI's -1 (automatic) is the pipeline's ``feather=None``; 0 and N pixels pass through."""
    return None if feather == FEATHER_AUTO else int(feather)


def read_inputs(composite_path, mask_path):
    """Read the composite and the mask files -> ``(HxWx3, HxW)`` uint8 arrays (the error names the option)."""
    from ..fileio import read_image, read_mask

    return _read(read_image, composite_path, "--composite"), _read(read_mask, mask_path, "--mask")


def check_inputs(composite, mask, max_side: int, resize_mode: str) -> None:
    """The pipeline's own input checks (matching sizes, at least 64 px, an empty / full / too small mask),
    run before any model loads."""
    from ..imaging import prepare

    prepare(composite, mask, max_side=max_side, resize_mode=resize_mode)


def _read(reader, path, option: str):
    try:
        return reader(path)
    except R2RUserError as exc:
        raise R2RUserError(f"{option}: {exc}") from None


def check_out_file(path, inputs, option: str = "--out") -> Path:
    """The output file can be written (folder creatable and writable, an image extension, not an input,
    not a read-only file) -- checked before the work that produces it."""
    from ..fileio import check_output_file

    path = Path(path)
    check_output_file(path, inputs=inputs, overwrite=True, extensions=IMAGE_EXTENSIONS, what=f"{option} file")
    if path.exists() and not os.access(path, os.W_OK):
        raise R2RUserError(f"The {option} file {path} exists and is read-only; choose another name or make it "
                           "writable (chmod u+w).")
    return path


def save_result(path, image, what: str = "result") -> Path:
    """Write ``image`` to ``path`` (atomically). If that fails after the work (disk full, folder removed,
    permissions changed), the result goes to a PNG under the temp folder instead and the error names it;
    only when that fails too is the result lost, and the error says so."""
    import tempfile

    from ..fileio import write_image

    path = Path(path)
    try:
        return write_image(path, image)
    except (OSError, R2RUserError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        fallback = None
        try:
            fd, fallback = tempfile.mkstemp(prefix=f"r2r-{path.stem}-", suffix=".png")
            os.close(fd)
            write_image(fallback, image)
        except (OSError, R2RUserError) as exc2:
            if fallback is not None:
                with contextlib.suppress(OSError):
                    os.unlink(fallback)
            raise R2RUserError(
                f"Could not write the {what} to {path} ({reason}), nor to a fallback file in the temp folder "
                f"({getattr(exc2, 'strerror', None) or exc2}); the result is lost. Free some disk space or fix the "
                "permissions, then run again."
            ) from None
        raise R2RUserError(
            f"Could not write the {what} to {path} ({reason}). The result was saved to {fallback} instead; "
            f"move it where you want it, and free some space / fix the folder for the next run."
        ) from None


# ----------------------------------------------------------------------------- model


def resolve_weights(arg):
    """``--weights`` > ``$R2R_WEIGHTS`` > ``./models/r2r/region2region`` (returned even if missing)."""
    if arg:
        return str(arg)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return env
    return str(DEFAULT_WEIGHTS_DIR)


def weights_hint(exc) -> str:
    """The weight loader's message plus where the CLI looked and the weight-free alternative."""
    return (f"{exc}\n(Weights are looked up in --weights, then ${WEIGHTS_ENV}, then ./{DEFAULT_WEIGHTS_DIR}. "
            "Without weights, `--method statistics` runs the weight-free harmonizer.)")


def load_pipeline(args, device, dtype):
    """Build the R2RPipeline from the CLI options (raises R2RWeightsNotFound with what to download)."""
    from ..pipeline import R2RPipeline

    return R2RPipeline.from_pretrained(resolve_weights(args.weights), torch_dtype=dtype, device=device,
                                       scheduler=args.scheduler)


@contextmanager
def _step_bar(steps: int, desc: str):
    """A tqdm bar over denoising steps; yields the pipeline's ``callback(step, total)``."""
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        def progress(step, total):
            bar.total = total
            bar.update(step - bar.n)

        yield progress


def harmonize_with_pipeline(pipe, composite, mask, args, paste_back=True, feather=None, strength=1.0, desc="R2R"):
    """Run the pipeline on one image with a tqdm bar; returns ``HxWx3 uint8``."""
    with _step_bar(args.steps, desc) as progress:
        out = pipe(composite, mask, num_inference_steps=args.steps, generator=args.seed, max_side=args.max_side,
                   resize_mode=args.resize_mode, paste_back=paste_back, feather=feather, strength=strength,
                   callback=progress, fullres_mode=args.fullres_mode)
    return out.to_numpy()[0]


def harmonize_low_memory_cli(composite, mask, args, device, dtype):
    """The low-memory flow (one network resident at a time) with a tqdm bar; returns (``HxWx3 uint8``, source)."""
    from ..pipeline import harmonize_low_memory

    source = resolve_weights(args.weights)
    with _step_bar(args.steps, "R2R (low memory)") as progress:
        out = harmonize_low_memory(source, composite, mask, torch_dtype=dtype, device=device,
                                   num_inference_steps=args.steps, generator=args.seed, max_side=args.max_side,
                                   resize_mode=args.resize_mode, paste_back=not args.no_paste_back,
                                   feather=feather_for_pipeline(args.feather), strength=args.strength,
                                   fullres_mode=args.fullres_mode, scheduler=args.scheduler, callback=progress)
    return out.to_numpy()[0], source


def run(args) -> int:
    from ..errors import R2RWeightsNotFound

    # every check before any model loads: numbers and choices, the inputs, the output destination
    check_model_args(args)
    check_feather_strength(args)
    composite, mask = read_inputs(args.composite, args.mask)
    device, dtype = device_and_dtype(args) if args.method == "r2r" else (None, None)
    check_inputs(composite, mask, args.max_side, args.resize_mode)
    out_path = check_out_file(args.out, inputs=(args.composite, args.mask))

    if args.method == "statistics":
        from ..blending import harmonize_statistics

        result = harmonize_statistics(composite, mask, strength=args.strength)
        save_result(out_path, result)
        print(f"wrote {out_path} (weight-free statistics harmonizer)")
        return 0
    try:
        if args.low_memory:
            result, source = harmonize_low_memory_cli(composite, mask, args, device, dtype)
        else:
            pipe = load_pipeline(args, device, dtype)
            source = pipe.source
            result = harmonize_with_pipeline(pipe, composite, mask, args, paste_back=not args.no_paste_back,
                                             feather=feather_for_pipeline(args.feather), strength=args.strength)
    except R2RWeightsNotFound as exc:
        raise R2RWeightsNotFound(weights_hint(exc)) from exc
    save_result(out_path, result)
    print(f"wrote {out_path} (R2R, {args.steps} steps, seed {args.seed}, weights {source})")
    return 0
