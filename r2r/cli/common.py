"""What the image commands share (``harmonize``, ``demo``, ``harmonize-video``): the model options made
from the parameter table (:mod:`r2r.params`), their checks, device/dtype, reading inputs, checking and
writing outputs, loading the pipeline.

Weights are looked up in ``--weights``, then ``$R2R_WEIGHTS``, then ``./models/r2r/region2region``.
Every argument is checked before any model loads (:func:`check_model_args`, :func:`read_inputs`,
:func:`check_out_file`); a problem is an :class:`~r2r.errors.R2RUserError` (exit code 2, no
traceback). Results are written atomically; if writing fails after the work (disk full, folder
removed), :func:`save_result` keeps the result in a fallback file under the temp folder and names it.
Heavy imports (torch, the models) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import re
from contextlib import contextmanager
from pathlib import Path

from ..devices import DTYPE_CHOICES
from ..errors import R2RUserError
from ..params import AUTO_MAX_SIDE, add_cli_argument, check

DEFAULT_WEIGHTS_DIR = Path("models") / "r2r" / "region2region"
WEIGHTS_ENV = "R2R_WEIGHTS"
#: --feather value meaning "automatic" (one latent cell); the pipeline's feather=None
FEATHER_AUTO = -1
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def add_harmonize_arguments(parser, background: str = "the composite's background") -> None:
    """The options harmonize and harmonize-video share: paste-back feather, method, strength, reference photo."""
    parser.add_argument("--feather", type=int, default=FEATHER_AUTO, metavar="PX",
                        help="paste-back band outside the mask in original pixels: -1 = automatic (one latent "
                             "cell, default), 0 = hard edge (the mask itself), N = N pixels (up to 256)")
    parser.add_argument("--method", choices=("r2r", "statistics"), default="r2r",
                        help="r2r = the diffusion model (needs weights); statistics = weight-free Lab colour matching")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="r2r: the Harmony Controller's conditioning scale, 0..2 (1 = as trained, default; 0 = no "
                             "controller); statistics: 0 = unchanged .. 1 = full transfer (default)")
    parser.add_argument("--reference", default=None, metavar="PHOTO",
                        help=f"harmonize toward this other photo (any size) instead of {background}")
    parser.add_argument("--reference-mask", default=None, metavar="MASK",
                        help="with --reference: the region of that photo to take the colours from (white = use; "
                             "default: the whole photo)")


def add_model_arguments(parser) -> None:
    """Options shared by the image commands (``harmonize``, ``demo``, ``harmonize-video``), from r2r.params."""
    parser.add_argument("--weights", default=None, metavar="PATH_OR_REPO",
                        help=f"release folder (hub layout) or hub repo id; default ${WEIGHTS_ENV} or ./{DEFAULT_WEIGHTS_DIR}")
    add_cli_argument(parser, "steps")
    add_cli_argument(parser, "seed")
    add_cli_argument(parser, "noise_device")
    add_cli_argument(parser, "max_side", default=1024,
                     help=f"working resolution: the longer side the model runs at ({AUTO_MAX_SIDE} = automatic: "
                          "1024 on a GPU, 512 on a CPU)")
    add_cli_argument(parser, "resize_mode", help="fit = keep aspect, pad = exact aspect + padding, square = official "
                                                 "squash")
    parser.add_argument("--low-memory", action="store_true",
                        help="keep only one network in memory at a time (each is loaded for its phase and dropped "
                             "after it; the composite is encoded again for decoding): about half the peak memory, for "
                             "big images or small machines")
    add_cli_argument(parser, "fullres_mode", help="how the result reaches the original resolution: color_transform "
                                                  "carries the harmonization as a colour transform that keeps every "
                                                  "original detail; upsample resizes the working-resolution result; "
                                                  "auto = color_transform for images larger than the working size")
    add_cli_argument(parser, "scheduler")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="model dtype (auto: fp16 on CUDA, fp32 on CPU; fp16/bf16 on a CPU run slower than fp32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def check_model_args(args) -> None:
    """Check the options shared by the image commands against the parameter table (cheap; no torch)."""
    check("steps", args.steps, "--steps")
    check("seed", args.seed, "--seed")
    check("max_side", args.max_side, "--max-side")
    check("noise_device", args.noise_device, "--noise-device")


def device_and_dtype(args):
    """``--device`` / ``--dtype`` -> ``(torch.device, torch.dtype)``; a logged warning when fp16/bf16 is asked
    for on a CPU (it works, but slower than fp32)."""
    from ..devices import warn_if_slow_dtype

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    warn_if_slow_dtype(dtype, device)
    return device, dtype


def resolve_device_dtype(device_arg: str, dtype_arg: str):
    """``--device`` / ``--dtype`` -> ``(torch.device, torch.dtype)`` by the one rule of :mod:`r2r.devices`
    (``auto``: CUDA, else MPS, else CPU; fp16 on CUDA, fp32 elsewhere)."""

    from ..devices import resolve_device, resolve_dtype

    text = str(device_arg).strip().lower()
    if not _DEVICE_PATTERN.match(text):
        raise R2RUserError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {device_arg!r}.")
    device = resolve_device(text)  # also refuses a GPU index or MPS this machine does not have
    return device, resolve_dtype(dtype_arg, device)


def check_feather_strength(args) -> None:
    check("feather", args.feather, "--feather")
    if args.method == "statistics":
        check("statistics_strength", args.strength, "--strength of --method statistics")
    else:
        check("strength", args.strength, "--strength of --method r2r (the controller's conditioning scale)")


def feather_for_pipeline(feather: int):
    """The CLI's -1 (automatic) is the pipeline's ``feather=None``; 0 and N pixels pass through."""
    return None if feather == FEATHER_AUTO else int(feather)


def read_inputs(composite_path, mask_path):
    """Read the composite and the mask files -> ``(HxWx3, HxW)`` uint8 arrays (the error names the option)."""
    from ..fileio import read_image, read_mask

    return _read(read_image, composite_path, "--composite"), _read(read_mask, mask_path, "--mask")


def read_reference(photo_path, region_path):
    """``--reference PHOTO [--reference-mask MASK]`` -> an ``r2r.pipeline.Reference`` or None."""
    from ..errors import R2RUserError
    from ..fileio import read_image, read_mask

    if photo_path is None:
        if region_path is not None:
            raise R2RUserError("--reference-mask needs the photo it belongs to: add --reference PHOTO.")
        return None
    from ..pipeline.reference import Reference

    photo = _read(read_image, photo_path, "--reference")
    region = None if region_path is None else _read(read_mask, region_path, "--reference-mask")
    return Reference(image=photo, image_mask=region)


def check_inputs(composite, mask, max_side: int, resize_mode: str, reference=None) -> None:
    """The pipeline's own input checks (matching sizes, at least 64 px, an empty / full / too small mask,
    the reference photo and its region), run before any model loads."""
    from ..imaging import prepare
    from ..pipeline.reference import prepare_reference

    prepared = prepare(composite, mask, max_side=max_side, resize_mode=resize_mode)
    if reference is not None:
        try:
            prepare_reference(reference, prepared)
        except R2RUserError as exc:
            raise R2RUserError(f"--reference: {exc}") from None


def _read(reader, path, option: str):
    try:
        return reader(path)
    except R2RUserError as exc:
        raise R2RUserError(f"{option}: {exc}") from None


def check_out_file(path, inputs, option: str = "--out", *, overwrite: bool = False, marker: str = "harmonize") -> Path:
    """The output file can be written (folder creatable and writable, an image extension, not an input,
    not a read-only file, not an existing file other than this command's own earlier result unless
    ``overwrite``) -- checked before the work that produces it. ``marker``: the command whose earlier
    results (recognised by the marker :func:`save_result` writes into them) may be replaced."""
    from ..fileio import IMAGE_EXTENSIONS, check_output_file
    from ..own_outputs import is_own_image

    path = Path(path)
    check_output_file(path, inputs=inputs, overwrite=overwrite, replaceable=lambda p: is_own_image(p, marker),
                      extensions=IMAGE_EXTENSIONS, what=f"{option} file")
    if path.exists() and not os.access(path, os.W_OK):
        raise R2RUserError(f"The {option} file {path} exists and is read-only; choose another name or make it "
                           "writable (chmod u+w).")
    return path


def save_result(path, image, what: str = "result", marker: str = "harmonize") -> Path:
    """Write ``image`` to ``path`` (atomically). If that fails after the work (disk full, folder removed,
    permissions changed), the result goes to a PNG under the temp folder instead and the error names it;
    only when that fails too is the result lost, and the error says so."""
    import tempfile

    from ..fileio import write_image

    path = Path(path)
    try:
        return write_image(path, image, marker=marker)
    except (OSError, R2RUserError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        fallback = None
        try:
            fd, fallback = tempfile.mkstemp(prefix=f"r2r-{path.stem}-", suffix=".png")
            os.close(fd)
            write_image(fallback, image, marker=marker)
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


def call_options(args, paste_back: bool = True, feather=None, strength: float = 1.0) -> dict:
    """The pipeline call's keyword arguments from the shared options (``R2RPipeline.__call__`` and
    ``harmonize_low_memory``)."""
    return dict(num_inference_steps=args.steps, generator=args.seed, noise_device=args.noise_device,
                max_side=args.max_side, resize_mode=args.resize_mode, paste_back=paste_back, feather=feather,
                strength=strength, fullres_mode=args.fullres_mode, scheduler=args.scheduler)


@contextmanager
def _step_bar(steps: int, desc: str):
    """A tqdm bar over denoising steps; yields the pipeline's ``callback(step, total)``."""
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        def progress(step, total):
            bar.total = total
            bar.update(step - bar.n)

        yield progress


def harmonize_with_pipeline(pipe, composite, mask, args, paste_back=True, feather=None, strength=1.0, desc="R2R",
                            **extra):
    """Run the pipeline on one image with a tqdm bar; returns ``HxWx3 uint8`` (``extra``: more call options,
    e.g. ``reference=``)."""
    with _step_bar(args.steps, desc) as progress:
        out = pipe(composite, mask, callback=progress, **call_options(args, paste_back, feather, strength), **extra)
    return out.to_numpy()[0]


def harmonize_low_memory_cli(composite, mask, args, device, dtype, **extra):
    """The low-memory flow (one network resident at a time) with a tqdm bar; returns (``HxWx3 uint8``, source)."""
    from ..pipeline import harmonize_low_memory

    source = resolve_weights(args.weights)
    with _step_bar(args.steps, "R2R (low memory)") as progress:
        out = harmonize_low_memory(source, composite, mask, torch_dtype=dtype, device=device, callback=progress,
                                   **call_options(args, not args.no_paste_back, feather_for_pipeline(args.feather),
                                                  args.strength), **extra)
    return out.to_numpy()[0], source
