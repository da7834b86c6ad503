"""``python -m r2r harmonize``: harmonize one composite image.

    python -m r2r harmonize --composite comp.jpg --mask mask.png --out result.png \
        [--weights models/r2r/region2region | 1243asdad/region2region] [--steps 10] [--seed 0] \
        [--max-side 1024] [--dtype auto|fp32|bf16|fp16] [--device auto|cpu|cuda] [--no-paste-back] \
        [--feather PX] [--method r2r|statistics]

Weights are looked up in ``--weights``, then ``$R2R_WEIGHTS``, then ``./models/r2r/region2region``.
``--method statistics`` needs no weights (the Lab-statistics harmonizer of ``r2r.blending``).
Heavy imports happen inside ``run()``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

DEFAULT_WEIGHTS_DIR = Path("models") / "r2r" / "region2region"
WEIGHTS_ENV = "R2R_WEIGHTS"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def add_arguments(parser) -> None:
    parser.add_argument("--composite", required=True, metavar="IMAGE", help="the composite image (RGB; any size)")
    parser.add_argument("--mask", required=True, metavar="IMAGE",
                        help="foreground mask, white = the pasted object (greyscale; RGBA: the alpha channel)")
    parser.add_argument("--out", required=True, metavar="IMAGE", help="output file (.png, .jpg, .webp, ...)")
    add_model_arguments(parser)
    parser.add_argument("--no-paste-back", action="store_true",
                        help="return the model's whole image (default: the original background is pasted back)")
    parser.add_argument("--feather", type=int, default=None, metavar="PX",
                        help="paste-back band outside the mask in original pixels (default: one latent cell; 0 = hard)")
    parser.add_argument("--method", choices=("r2r", "statistics"), default="r2r",
                        help="r2r = the diffusion model (needs weights); statistics = weight-free Lab colour matching")
    parser.add_argument("--strength", type=float, default=1.0, help="statistics method: 0 = unchanged .. 1 = full")


def add_model_arguments(parser) -> None:
    """Options shared with ``python -m r2r demo``."""
    parser.add_argument("--weights", default=None, metavar="PATH_OR_REPO",
                        help=f"release folder (hub layout) or hub repo id; default ${WEIGHTS_ENV} or ./{DEFAULT_WEIGHTS_DIR}")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (official: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (CPU generator: same result on any device)")
    parser.add_argument("--max-side", type=int, default=1024, help="working resolution: longer side, multiple of 64")
    parser.add_argument("--resize-mode", choices=("fit", "pad", "square"), default="fit",
                        help="fit = keep aspect (default), pad = exact aspect + padding, square = official squash")
    parser.add_argument("--low-memory", action="store_true",
                        help="keep only one network in memory at a time (each is loaded for its phase; the "
                             "composite's skips wait in a temp file): about half the peak memory, for big images "
                             "or small machines")
    parser.add_argument("--fullres-mode", choices=("auto", "color_transform", "upsample"), default="auto",
                        help="how the result reaches the original resolution: color_transform carries the harmonization "
                             "as a colour transform that keeps every original detail; upsample resizes the "
                             "working-resolution result; auto (default) = color_transform for images larger than "
                             "the working resolution")
    parser.add_argument("--scheduler", default="euler_ancestral", help="euler_ancestral (official), euler, dpmpp_2m, ddim, unipc, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="model dtype (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")


# ----------------------------------------------------------------------------- image files


def read_image(path) -> object:
    """An image file -> ``HxWx3 uint8`` RGB (16-bit files are scaled, grey is replicated, alpha dropped)."""
    import cv2
    import numpy as np

    from ..errors import R2RUserError

    path = Path(path)
    if not path.is_file():
        raise R2RUserError(f"Image file {path} does not exist; check the path.")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise R2RUserError(f"Could not read {path} as an image; expected PNG, JPEG, WebP, BMP or TIFF.")
    data = _to_uint8(data)
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    elif data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGB)
    elif data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    else:
        raise R2RUserError(f"{path} has {data.shape[2]} channels; expected an RGB (or grey/RGBA) image.")
    return np.ascontiguousarray(data)


def read_mask(path) -> object:
    """A mask file -> ``HxW uint8`` (0..255; white = foreground). RGBA files: the alpha channel;
    RGB files: their grey value."""
    import cv2

    from ..errors import R2RUserError

    path = Path(path)
    if not path.is_file():
        raise R2RUserError(f"Mask file {path} does not exist; check the path.")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise R2RUserError(f"Could not read {path} as an image; expected a greyscale PNG mask (white = foreground).")
    data = _to_uint8(data)
    if data.ndim == 3:
        data = data[..., 3] if data.shape[2] == 4 else cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2GRAY)
    return data


def _to_uint8(data):
    import numpy as np

    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        return (data.astype(np.float64) / 257.0).round().astype(np.uint8)
    if data.dtype.kind == "f":
        return (np.clip(np.nan_to_num(data), 0, 1) * 255).round().astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def write_image(path, rgb_uint8) -> Path:
    """Write ``HxWx3 uint8`` RGB atomically (temp file in the same folder, then ``os.replace``)."""
    import cv2

    from ..errors import R2RUserError

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise R2RUserError(f"Unsupported output extension {path.suffix!r} for {path}; use one of {', '.join(IMAGE_EXTENSIONS)}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb_uint8, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise R2RUserError(f"OpenCV could not encode the result as {ext}; try a .png output.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- model


def resolve_weights(arg):
    """``--weights`` > ``$R2R_WEIGHTS`` > ``./models/r2r/region2region`` (returned even if missing)."""
    if arg:
        return str(arg)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return env
    return str(DEFAULT_WEIGHTS_DIR)


def load_pipeline(args):
    """Build the R2RPipeline from the CLI options (raises R2RWeightsNotFound with what to download)."""
    from ..pipeline import R2RPipeline, resolve_device

    device = resolve_device(args.device)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp16" if device.type == "cuda" else "fp32"
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


def harmonize_with_pipeline(pipe, composite, mask, args, paste_back=True, feather=None, desc="R2R"):
    """Run the pipeline on one image with a tqdm bar; returns ``HxWx3 uint8``."""
    with _step_bar(args.steps, desc) as progress:
        out = pipe(composite, mask, num_inference_steps=args.steps, generator=args.seed, max_side=args.max_side,
                   resize_mode=args.resize_mode, paste_back=paste_back, feather=feather, callback=progress,
                   fullres_mode=getattr(args, "fullres_mode", "auto"))
    return out.to_numpy()[0]


def harmonize_low_memory_cli(composite, mask, args):
    """The low-memory flow (one network resident at a time) with a tqdm bar; returns (``HxWx3 uint8``, source)."""
    from ..pipeline import harmonize_low_memory, resolve_device

    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    source = resolve_weights(args.weights)
    with _step_bar(args.steps, "R2R (low memory)") as progress:
        out = harmonize_low_memory(source, composite, mask, torch_dtype=dtype, device=device,
                                   num_inference_steps=args.steps, generator=args.seed, max_side=args.max_side,
                                   resize_mode=args.resize_mode, paste_back=not args.no_paste_back,
                                   feather=args.feather, fullres_mode=args.fullres_mode, scheduler=args.scheduler,
                                   callback=progress)
    return out.to_numpy()[0], source


def run(args) -> int:
    from ..errors import R2RUserError, R2RWeightsNotFound

    composite = read_image(args.composite)
    mask = read_mask(args.mask)
    out_path = Path(args.out)
    if out_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise R2RUserError(f"Unsupported output extension {out_path.suffix!r} for {out_path}; use one of {', '.join(IMAGE_EXTENSIONS)}.")
    if args.method == "statistics":
        from ..blending import harmonize_statistics
        from ..imaging import prepare

        prepare(composite, mask, max_side=args.max_side)  # the same input checks as the model path
        result = harmonize_statistics(composite, mask, strength=args.strength)
        write_image(out_path, result)
        print(f"wrote {out_path} (weight-free statistics harmonizer)")
        return 0
    try:
        if args.low_memory:
            result, source = harmonize_low_memory_cli(composite, mask, args)
        else:
            pipe = load_pipeline(args)
            source = pipe.components.source
            result = harmonize_with_pipeline(pipe, composite, mask, args, paste_back=not args.no_paste_back,
                                             feather=args.feather)
    except R2RWeightsNotFound as exc:
        raise R2RWeightsNotFound(
            f"{exc}\n(Weights are looked up in --weights, then ${WEIGHTS_ENV}, then ./{DEFAULT_WEIGHTS_DIR}. "
            "Without weights, `--method statistics` runs the weight-free harmonizer.)"
        ) from exc
    write_image(out_path, result)
    print(f"wrote {out_path} (R2R, {args.steps} steps, seed {args.seed}, weights {source})")
    return 0
