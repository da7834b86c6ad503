"""``python -m r2r demo``: harmonize the bundled example composites and write a before/after sheet.

    python -m r2r demo --out demo_output [--weights PATH_OR_REPO] [--steps 10] [--max-side 512]

Uses R2R when weights are found (``--weights``, ``$R2R_WEIGHTS`` or ``./models/r2r/region2region``);
otherwise it prints exactly what to download and where, and runs the weight-free statistics
harmonizer so the command always produces results. Writes ``<name>_harmonized.png`` per example
and ``contact_sheet.png`` (composite | mask | result, one row per example). Options, every example
and every output file are checked before any model loads, as in ``harmonize``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import R2RUserError
from .common import add_model_arguments

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
SHEET_HEIGHT = 256


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (created)")
    parser.add_argument("--examples", default=None, metavar="DIR",
                        help="folder with <name>_composite.png + <name>_mask.png pairs (default: the bundled ones)")
    parser.add_argument("--method", choices=("auto", "r2r", "statistics"), default="auto",
                        help="auto = R2R if weights are found, else the weight-free harmonizer")
    add_model_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that an earlier demo did not write (its own are replaced)")
    parser.set_defaults(max_side=512)


def find_examples(folder) -> list[tuple[str, Path, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise R2RUserError(f"The --examples folder {folder} {what}; give a folder with <name>_composite.png + "
                           "<name>_mask.png pairs (or leave --examples out to use the bundled ones).")
    pairs = []
    for comp in sorted(folder.glob("*_composite.png")):
        name = comp.name[: -len("_composite.png")]
        mask = folder / f"{name}_mask.png"
        if mask.is_file():
            pairs.append((name, comp, mask))
    if not pairs:
        raise R2RUserError(
            f"No examples in {folder}: expected <name>_composite.png with <name>_mask.png next to it. "
            "Point --examples at such a folder (the bundled ones are in r2r/assets/examples)."
        )
    return pairs


def _label(image, text):
    import cv2
    import numpy as np

    bar = np.full((28, image.shape[1], 3), 255, np.uint8)
    scale = 0.55
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > image.shape[1] - 10:
        scale -= 0.05  # shrink the label until it fits the cell
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, image])


def contact_sheet(rows, method_label: str):
    """rows: (name, composite, mask, result) uint8 arrays -> one RGB sheet."""
    import cv2
    import numpy as np

    lines = []
    for name, comp, mask, result in rows:
        h, w = comp.shape[:2]
        size = (max(1, round(w * SHEET_HEIGHT / h)), SHEET_HEIGHT)
        overlay = comp.copy()
        contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 0), max(1, round(2 * h / SHEET_HEIGHT)))
        cells = [
            _label(cv2.resize(comp, size, interpolation=cv2.INTER_AREA), f"{name}: composite"),
            _label(cv2.resize(overlay, size, interpolation=cv2.INTER_AREA), "mask"),
            _label(cv2.resize(result, size, interpolation=cv2.INTER_AREA), f"result: {method_label}"),
        ]
        line = np.hstack([np.pad(c, ((0, 0), (0, 4), (0, 0)), constant_values=255) for c in cells])
        lines.append(line)
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(ln, ((0, 4), (0, width - ln.shape[1]), (0, 0)), constant_values=255) for ln in lines]
    return np.vstack(lines)


def run(args) -> int:
    from ..devices import resolve_max_side
    from ..errors import R2RWeightsNotFound
    from ..fileio import check_writable_dir
    from .common import (
        check_inputs,
        check_model_args,
        check_out_file,
        device_and_dtype,
        harmonize_with_pipeline,
        load_pipeline,
        read_inputs,
        resolve_weights,
        save_result,
        weights_hint,
    )

    # every check before any model loads: options, every example, every output file
    check_model_args(args)
    examples = find_examples(args.examples or EXAMPLES_DIR)
    inputs = [path for _, comp, mask in examples for path in (comp, mask)]
    loaded = [(name, *read_inputs(comp, mask)) for name, comp, mask in examples]
    device, dtype = device_and_dtype(args) if args.method != "statistics" else (None, None)
    args.max_side = resolve_max_side(args.max_side, device or "cpu")
    for _, composite, mask in loaded:
        check_inputs(composite, mask, args.max_side, args.resize_mode)
    out_dir = check_writable_dir(args.out, what="--out folder")
    outputs = {name: check_out_file(out_dir / f"{name}_harmonized.png", inputs, overwrite=args.overwrite,
                                    marker="demo") for name, _, _ in examples}
    sheet_path = check_out_file(out_dir / "contact_sheet.png", inputs, overwrite=args.overwrite, marker="demo")

    pipe = None
    if args.method in ("auto", "r2r"):
        try:
            pipe = load_pipeline(args, device, dtype)
        except R2RWeightsNotFound as exc:
            if args.method == "r2r":
                raise R2RWeightsNotFound(weights_hint(exc)) from exc
            print(
                "R2R weights not found, so the demo uses the weight-free statistics harmonizer instead.\n"
                f"{exc}\n"
                f"(Looked in --weights, then $R2R_WEIGHTS, then ./models/r2r/region2region; tried "
                f"{resolve_weights(args.weights)}.)\n"
            )
    method_label = "R2R" if pipe is not None else "statistics (no weights)"
    if pipe is not None:
        print(f"R2R weights: {pipe.source} ({pipe.dtype}, {pipe.device}); "
              f"{args.steps} steps at max side {args.max_side}")
    rows = []
    for name, composite, mask in loaded:
        if pipe is not None:
            result = harmonize_with_pipeline(pipe, composite, mask, args, desc=name)
        else:
            from ..blending import harmonize_statistics

            result = harmonize_statistics(composite, mask)
        print(f"wrote {save_result(outputs[name], result, what=f'result of {name}', marker='demo')}")
        rows.append((name, composite, mask, result))
    sheet = save_result(sheet_path, contact_sheet(rows, method_label), what="contact sheet", marker="demo")
    print(f"wrote {sheet} (before/after contact sheet)")
    return 0
