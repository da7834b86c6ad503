"""Make the bundled example clip in r2r/assets/clips/ (run once; the outputs are committed).

    python -m r2r.assets.make_clip [--out r2r/assets/clips]

From the bundled example composites only (see PROVENANCE.md): the astronaut's space suit, cut out of
``astronaut_composite.png`` with ``astronaut_mask.png`` (its colours already shifted: cold and washed
out, the disharmony to fix), pasted into the coffee photo and moved along a gentle arc, with a little
camera noise. 24 frames of 256x256 at 12 fps. Files (``<name>`` = ``drifting_astronaut``):

* ``<name>_frames.jpg`` — the frames, a sprite sheet of 6 columns x 4 rows (JPEG, quality 92);
* ``<name>_masks.png`` — the masks in the same layout (8-bit, 255 = the pasted object);
* ``<name>.json`` — ``frames``, ``fps``, ``columns``, ``size`` (H, W).

Read with :func:`r2r.video.synthetic.read_example_clip`. Deterministic (numpy seeded); needs only
numpy and OpenCV.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

NAME = "drifting_astronaut"
FRAMES, FPS, COLUMNS, SIZE = 24, 12, 6, (256, 256)
OBJECT_HEIGHT = 120


def make(out_dir: Path) -> list[Path]:
    import cv2

    from ..fileio import read_image, read_mask
    from ..video.synthetic import EXAMPLES_DIR, example_photo

    background = example_photo("coffee", SIZE)
    suit = read_image(EXAMPLES_DIR / "astronaut_composite.png").astype(np.float32) / 255.0
    alpha = (read_mask(EXAMPLES_DIR / "astronaut_mask.png") >= 128).astype(np.float32)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    suit = suit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = OBJECT_HEIGHT / suit.shape[0]
    size = (max(1, round(suit.shape[1] * scale)), OBJECT_HEIGHT)
    suit = cv2.resize(suit, size, interpolation=cv2.INTER_AREA)
    alpha = (cv2.resize(alpha, size, interpolation=cv2.INTER_AREA) >= 0.5).astype(np.float32)
    oh, ow = alpha.shape
    h, w = SIZE
    rng = np.random.default_rng(20)
    frames, masks = [], []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        left = round(8 + t * (w - ow - 16))
        top = round(h - oh - 12 - 40 * np.sin(np.pi * t))
        frame = background.copy()
        region = frame[top:top + oh, left:left + ow]
        region[:] = region * (1 - alpha[..., None]) + suit * alpha[..., None]
        frame = np.clip(frame + rng.normal(0, 0.008, frame.shape), 0, 1)
        mask = np.zeros(SIZE, np.float32)
        mask[top:top + oh, left:left + ow] = alpha
        frames.append(np.rint(frame * 255).astype(np.uint8))
        masks.append(np.rint(mask * 255).astype(np.uint8))
    rows_n = -(-FRAMES // COLUMNS)
    sheet = np.zeros((rows_n * h, COLUMNS * w, 3), np.uint8)
    mask_sheet = np.zeros((rows_n * h, COLUMNS * w), np.uint8)
    for i, (f, m) in enumerate(zip(frames, masks)):
        r, c = divmod(i, COLUMNS)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
        mask_sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = m
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{NAME}_frames.jpg", out_dir / f"{NAME}_masks.png", out_dir / f"{NAME}.json"]
    cv2.imwrite(str(paths[0]), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(str(paths[1]), mask_sheet)
    paths[2].write_text(json.dumps({"frames": FRAMES, "fps": FPS, "columns": COLUMNS, "size": list(SIZE)}) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "clips"))
    args = parser.parse_args(argv)
    for path in make(Path(args.out)):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
