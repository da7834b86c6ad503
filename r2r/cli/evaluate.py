"""``python -m r2r evaluate``: MSE / fMSE / bMSE / PSNR / SSIM exactly as the official R2R script.

    python -m r2r evaluate --pred outputs/ --data data/iHarmony4 --split test --resolution 256 \
        --use-gt-bg --json results.json
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--pred", required=True, help="folder of predictions named like the composites (<name>_<k>_<j>.png)")
    p.add_argument("--data", required=True, help="dataset root (holds test.jsonl/test.txt and the subset folders)")
    p.add_argument("--split", default="test", help="'test', 'train' or a path to a .jsonl/.txt list (default test)")
    p.add_argument("--resolution", type=int, default=256,
                   help="evaluate at RES x RES (default 256, the official setting)")
    p.add_argument("--full-resolution", action="store_true",
                   help="evaluate at the ground truth's size (prediction resized to it), as --full_resolution")
    p.add_argument("--use-gt-bg", action="store_true",
                   help="paste the ground-truth background before measuring (out*m + gt*(1-m)), as the official runs")
    p.add_argument("--json", dest="json_out", default=None,
                   help="write all results (incl. per image) to this .json file; an existing file is replaced only "
                   "when it is an earlier evaluate report, or with --overwrite (never an input)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --json to replace an existing file that is not an evaluate report (never one of the "
                   "split's lists, ground truths, masks, composites or predictions)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


#: what the JSON reports of this command carry under r2r.own_outputs.REPORT_KEY
TOOL = "python -m r2r evaluate"


def check_args(args) -> None:
    """Every argument, before any image is read: folders exist, numbers are in range, and the
    JSON destination can be written, is not one of the inputs (the split's list and images, the
    predictions) and replaces no file but an earlier report unless ``--overwrite``."""
    from ..dataset.layouts import check_folder, find_split_file, read_split
    from ..errors import R2RUserError
    from ..fileio import check_output_file
    from ..metrics import index_predictions
    from ..own_outputs import is_own_report

    if not args.full_resolution and args.resolution < 7:
        raise R2RUserError(f"--resolution must be >= 7 (the SSIM window), got {args.resolution}")
    if args.workers < 1:
        raise R2RUserError(f"--workers must be >= 1, got {args.workers}")
    check_folder(args.pred, "--pred", "pass the folder of harmonized images")
    check_folder(args.data, "--data", "pass the dataset root (the folder that holds test.jsonl)")
    list_file = find_split_file(args.data, args.split)
    if args.json_out:
        inputs = [list_file]
        inputs += [p for s in read_split(args.data, args.split, check_files=False) for p in (s.composite, s.mask,
                                                                                               s.real)]
        inputs += list(index_predictions(args.pred).values())
        check_output_file(args.json_out, inputs=inputs, overwrite=getattr(args, "overwrite", False),
                          replaceable=lambda p: is_own_report(p, TOOL), extensions=(".json",), what="--json file")


def run(args) -> int:
    import json

    from ..fileio import atomic_write_text
    from ..metrics import evaluate, format_table
    from ..own_outputs import report_marker

    check_args(args)
    rep = evaluate(
        args.pred,
        args.data,
        split=args.split,
        resolution=None if args.full_resolution else args.resolution,
        use_gt_bg=args.use_gt_bg,
        progress=args.progress,
        workers=args.workers,
    )
    print(format_table(rep))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps({**report_marker(TOOL), **rep.to_dict()}, indent=1) + "\n",
                          what="--json report")
        print(f"results written to {args.json_out}")
    return 0
