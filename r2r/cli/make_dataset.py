"""``python -m r2r make-dataset``: Random-Poisson-Blending training data in the RPHarmony layout.

    python -m r2r make-dataset --images DUTS-TR/DUTS-TR-Image --masks DUTS-TR/DUTS-TR-Mask \
        --out data/MyHarmony --subset R-DUTS --per-image 2 --workers 4 --seed 0
"""

from __future__ import annotations

import sys


def _shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    return i, n


def _kv(text: str):
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import json

    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(p) -> None:
    src = p.add_argument_group("sources")
    src.add_argument("--images", help="folder of real images (searched recursively)")
    src.add_argument("--masks", help="folder of masks matched to the images by file stem")
    src.add_argument(
        "--source",
        help="instead of --images/--masks: a folder in a known layout (DUTS X-Image/X-Mask, ADE20K "
        "images/annotations, iHarmony4 real_images/masks, images/masks)",
    )
    src.add_argument(
        "--mask-type",
        choices=("binary", "labels"),
        default=None,
        help="binary masks (white = foreground, default) or label maps (one region per label, e.g. ADE20K)",
    )
    src.add_argument("--masks-per-image", type=int, default=1, help="label maps: regions used per image (largest first)")
    src.add_argument("--label-min-area", type=float, default=0.01, help="label maps: smallest region (fraction of the image)")
    src.add_argument("--label-max-area", type=float, default=0.8, help="label maps: largest region (fraction of the image)")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="dataset root to write (RPHarmony layout)")
    o.add_argument("--subset", default="R-Custom", help="subset folder name (default R-Custom)")
    o.add_argument("--per-image", type=int, default=1, help="composites per image and mask (default 1)")
    o.add_argument("--test-fraction", type=float, default=0.1, help="fraction of source images put in the test split")
    o.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")
    o.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg",
                   help="real/composite file format (jpg = the official names, quality --jpeg-quality; png = lossless)")
    o.add_argument("--jpeg-quality", type=int, default=100, help="JPEG quality 1-100 (default 100, 4:4:4 chroma)")
    o.add_argument("--name-prefix", default="auto",
                   help="prefix of output names; 'auto' = 'rd-' for *DUTS* subsets, 'r-' for *ADE* (official subset rule)")
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, default=0, help="global seed; per-composite seeds derive from it and the file")
    g.add_argument("--alpha", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="transfer-strength range of Random Poisson Blending (default: the blender's)")
    g.add_argument("--reference", choices=("self", "other"), default="self",
                   help="where the foreground's new colours come from: another region of the same image (self, "
                   "default) or another source image at the same place (other, as the official prototype)")
    g.add_argument("--min-fmse", type=float, default=None, help="reject composites with foreground MSE below this")
    g.add_argument("--max-fmse", type=float, default=None, help="reject composites with foreground MSE above this")
    g.add_argument("--min-color-shift", type=float, default=None, help="reject composites whose mean Lab shift is below this")
    g.add_argument("--max-tries", type=int, default=5, help="draws per composite before it counts as rejected")
    g.add_argument("--generator", default=None, metavar="MODULE:FUNCTION",
                   help="composite generator (default r2r.blending:random_poisson_blend); called as "
                   "f(real, mask, seed=..., alpha=..., **gen_args) -> result with .composite (or an image)")
    g.add_argument("--gen-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for the blender (JSON value), repeatable")
    r = p.add_argument_group("running")
    r.add_argument("--workers", type=int, default=1, help="worker processes (0 = one per CPU)")
    r.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: this machine's share (union of shards = one run)")
    r.add_argument("--keep-going", dest="keep_going", action="store_true", default=True,
                   help="record bad images and go on (default); the exit status is 1 if any failed")
    r.add_argument("--stop-on-error", dest="keep_going", action="store_false",
                   help="stop at the first bad image (default: record it and keep going)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    from ..dataset.layouts import detect_layout
    from ..dataset.make import MakeConfig, make_dataset
    from ..errors import R2RUserError

    images, masks, mask_type = args.images, args.masks, args.mask_type
    if args.source:
        if images or masks:
            raise R2RUserError("pass either --source or --images/--masks, not both")
        images, masks, detected = detect_layout(args.source)
        mask_type = mask_type or detected
    if not images or not masks:
        raise R2RUserError("pass the source folders with --images DIR --masks DIR (or --source DIR)")
    cfg = MakeConfig(
        out=args.out,
        images=images,
        masks=masks,
        subset=args.subset,
        per_image=args.per_image,
        seed=args.seed,
        alpha=tuple(args.alpha) if args.alpha else None,
        test_fraction=args.test_fraction,
        min_fmse=args.min_fmse,
        max_fmse=args.max_fmse,
        min_color_shift=args.min_color_shift,
        max_tries=args.max_tries,
        max_side=args.max_side,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        mask_type=mask_type or "binary",
        masks_per_image=args.masks_per_image,
        label_min_area=args.label_min_area,
        label_max_area=args.label_max_area,
        name_prefix=args.name_prefix,
        reference=args.reference,
        workers=args.workers,
        shard=args.shard,
        keep_going=args.keep_going,
        progress=args.progress,
        generator_kwargs=dict(args.gen_arg),
    )
    if args.generator:
        cfg.generator = args.generator
    report = make_dataset(cfg)
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 1 if report.failed else 0
