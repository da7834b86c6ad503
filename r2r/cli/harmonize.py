"""``python -m r2r harmonize``: harmonize one composite image.

    python -m r2r harmonize --composite comp.jpg --mask mask.png --out result.png \\
        [--weights models/r2r/region2region | 1243asdad/region2region] [--steps 10] [--seed 0] \\
        [--noise-device cpu|device] [--max-side 1024] [--dtype auto|fp32|bf16|fp16] \\
        [--device auto|cpu|cuda[:N]|mps] [--no-paste-back] [--feather -1|0|PX] [--method r2r|statistics] \\
        [--strength S] [--reference PHOTO [--reference-mask MASK]] \\
        [--objects together|each] [--crop none|per_object] [--context X]

``--method statistics`` needs no weights (the Lab-statistics harmonizer of ``r2r.blending``).
``--reference`` harmonizes toward another photo (its region ``--reference-mask``, default the whole
photo) instead of the composite's own background. ``--objects each`` harmonizes every separate part of
the mask on its own, ``--crop per_object`` each in a crop around it (:mod:`r2r.pipeline.objects`; with
either method). The options shared with the other image commands (and every check) live in
:mod:`r2r.cli.common`.
"""

from __future__ import annotations

from ..fileio import IMAGE_EXTENSIONS
from ..params import add_cli_argument, check
from .common import (
    add_harmonize_arguments,
    add_model_arguments,
    check_feather_strength,
    check_inputs,
    check_model_args,
    check_out_file,
    device_and_dtype,
    feather_for_pipeline,
    harmonize_low_memory_cli,
    harmonize_with_pipeline,
    load_pipeline,
    read_inputs,
    read_reference,
    save_result,
    weights_hint,
)


def add_arguments(parser) -> None:
    parser.add_argument("--composite", required=True, metavar="IMAGE", help="the composite image (RGB; any size)")
    parser.add_argument("--mask", required=True, metavar="IMAGE",
                        help="foreground mask, white = the pasted object (greyscale; RGBA: the alpha channel)")
    parser.add_argument("--out", required=True, metavar="IMAGE",
                        help=f"output file ({', '.join(IMAGE_EXTENSIONS)}); missing folders are created; an input is "
                             "never replaced, another existing file only with --overwrite (an earlier result of "
                             "this command is replaced)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_model_arguments(parser)
    parser.add_argument("--no-paste-back", action="store_true",
                        help="return the model's whole image (default: the original background is pasted back)")
    add_harmonize_arguments(parser)
    add_cli_argument(parser, "objects")
    add_cli_argument(parser, "crop")
    add_cli_argument(parser, "context")


def run(args) -> int:
    from ..devices import resolve_max_side
    from ..errors import R2RWeightsNotFound

    # every check before any model loads: numbers and choices, the inputs, the output destination
    check_model_args(args)
    check_feather_strength(args)
    composite, mask = read_inputs(args.composite, args.mask)
    reference = read_reference(args.reference, args.reference_mask)
    device, dtype = device_and_dtype(args) if args.method == "r2r" else (None, None)
    args.max_side = resolve_max_side(args.max_side, device or "cpu")
    check_inputs(composite, mask, args.max_side, args.resize_mode, reference)
    args.context = check("context", args.context, "--context")
    several = (args.objects, args.crop) != ("together", "none")
    if several:
        from ..pipeline.objects import check_objects

        check_objects(composite, mask, args.objects, args.crop, args.context, args.max_side, args.resize_mode,
                      None if args.method == "statistics" else feather_for_pipeline(args.feather),
                      model_grid=args.method == "r2r")
    inputs = [p for p in (args.composite, args.mask, args.reference, args.reference_mask) if p]
    out_path = check_out_file(args.out, inputs=inputs, overwrite=args.overwrite)

    if args.method == "statistics":
        from ..blending import harmonize_statistics

        kw = {} if reference is None else {"reference_image": reference.image,
                                           "reference_image_mask": reference.image_mask}
        if several:
            from ..pipeline.objects import harmonize_statistics_objects

            out = harmonize_statistics_objects(composite, mask, args.strength, objects=args.objects, crop=args.crop,
                                               context=args.context, max_side=args.max_side, **kw)
            result = (out[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        else:
            result = harmonize_statistics(composite, mask, strength=args.strength, **kw)
        save_result(out_path, result)
        print(f"wrote {out_path} (weight-free statistics harmonizer)")
        return 0
    extra = {} if reference is None else {"reference": reference}
    if several:
        extra.update(objects=args.objects, crop=args.crop, context=args.context)
    try:
        if args.low_memory:
            result, source = harmonize_low_memory_cli(composite, mask, args, device, dtype, **extra)
        else:
            pipe = load_pipeline(args, device, dtype)
            source = pipe.source
            result = harmonize_with_pipeline(pipe, composite, mask, args, paste_back=not args.no_paste_back,
                                             feather=feather_for_pipeline(args.feather), strength=args.strength,
                                             **extra)
    except R2RWeightsNotFound as exc:
        raise R2RWeightsNotFound(weights_hint(exc)) from exc
    save_result(out_path, result)
    print(f"wrote {out_path} (R2R, {args.steps} steps, seed {args.seed}, weights {source})")
    return 0
