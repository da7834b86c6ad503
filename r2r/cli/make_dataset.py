"""``python -m r2r make-dataset``: Random-Poisson-Blending training data in the RPHarmony layout.

    python -m r2r make-dataset --images DUTS-TR/DUTS-TR-Image --masks DUTS-TR/DUTS-TR-Mask \
        --out data/MyHarmony --subset R-DUTS --per-image 2 --workers 4 --seed 0
"""

from __future__ import annotations

import re
import sys

#: what ``--shard`` accepts as its value even when it starts with "-" (so "-1/2" gets a clear message)
_SHARD_VALUE = re.compile(r"^-?\d+/-?\d+$")


def _shard(text: str):
    import argparse

    if not _SHARD_VALUE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4 (this machine's share i of n), got {text!r}")
    i, n = (int(x) for x in text.strip().split("/"))
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"needs 0 <= i < n, got {text!r}; e.g. --shard 0/4 ... --shard 3/4")
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


def _gen_args(pairs) -> dict:
    from ..errors import R2RUserError

    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise R2RUserError(f"--gen-arg {key}=... is given twice ({out[key]!r} and {value!r}); keep one")
        out[key] = value
    return out


def add_arguments(p) -> None:
    # argparse reads "-1/2" as an unknown option ("expected one argument"); let values of that form
    # through so --shard can say what is wrong with them
    matcher = getattr(p, "_negative_number_matcher", None)
    if matcher is not None:
        p._negative_number_matcher = re.compile(f"{matcher.pattern}|{_SHARD_VALUE.pattern}")
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
    g.add_argument("--min-color-shift-lab", "--min-color-shift", dest="min_color_shift_lab", type=float, default=None,
                   help="reject composites whose foreground's mean colour moved less than this in CIE Lab (Delta E "
                   "1976; about 2.3 is just noticeable, 5-10 clearly visible). --min-color-shift is an alias")
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
    from dataclasses import fields

    from ..dataset.config import DEFAULT_GENERATOR
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
    special = {"images", "masks", "mask_type", "alpha", "generator", "generator_kwargs"}
    same_name = {f.name for f in fields(MakeConfig)} & set(vars(args)) - special
    cfg = MakeConfig(
        **{name: getattr(args, name) for name in same_name},
        images=images,
        masks=masks,
        mask_type=mask_type or "binary",
        alpha=tuple(args.alpha) if args.alpha else None,
        generator=args.generator or DEFAULT_GENERATOR,
        generator_kwargs=_gen_args(args.gen_arg),
    )
    report = make_dataset(cfg)
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 1 if report.failed else 0
