"""The before/after pictures of harmonizing toward another photo and of several objects in one picture:
docs/images/reference_*.jpg (docs/reference.md) and the thumbnails of the templates "Match the look of
another photo" and "Harmonize several pasted objects" (example_workflows/).

    .venv/bin/python tools/make_reference_pictures.py [--docs docs/images] [--templates example_workflows]

Every "after" is a real run on the bundled examples (r2r/assets/examples, R2R Example Image's pictures):
the weight-free harmonizer (r2r.blending, r2r.pipeline.objects.harmonize_statistics_objects) and R2R's
pipeline on the tiny random-weight release of the tests (tests/tiny.py: the real architecture with
random weights, so its "after" shows WHERE the model works and what stays untouched, not a
harmonization). R2R's real weights are not bundled; each picture says which path made it.
Deterministic (fixed seeds); JPEGs under 100 KB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
EXAMPLES = ROOT / "r2r" / "assets" / "examples"
BG, FG, MUTED, ACCENT = (32, 32, 36), (235, 235, 235), (170, 170, 178), (255, 196, 64)
TINY = "after: R2R, tiny random weights\n(shows where it works, not quality)"
STEPS, SEED, MAX_SIDE = 10, 0, 512


def load(name: str):
    """An R2R Example Image output: RGB uint8 and a bool mask (empty when there is none)."""
    comp = EXAMPLES / f"{name}_composite.png"
    rgb = np.asarray(Image.open(comp if comp.exists() else EXAMPLES / f"{name}_image.png").convert("RGB"))
    mpath = EXAMPLES / f"{name}_mask.png"
    mask = np.asarray(Image.open(mpath).convert("L")) >= 128 if mpath.exists() else np.zeros(rgb.shape[:2], bool)
    return rgb, mask


def outline(rgb, mask, colour=ACCENT, width=2):
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(rgb.copy())
    cv2.drawContours(out, contours, -1, colour, width)
    return out


def boxes(rgb, runs, colour=(80, 200, 255)):
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    for run in runs:
        b = run.box
        cv2.rectangle(out, (b.x0, b.y0), (b.x1 - 1, b.y1 - 1), colour, 2)
    return out


def to_u8(t):
    """[1,3,H,W] float 0..1 (torch) -> HxWx3 uint8."""
    return (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def sheet(panels, width: int = 250, title: str = ""):
    """Pictures side by side, each ``width`` px wide, a caption (``\\n`` allowed) above each."""
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    heights = [round(p.shape[0] * width / p.shape[1]) for p, _ in panels]
    top = 30 if title else 6
    img = Image.new("RGB", (len(panels) * (width + 8) + 8, top + 40 + max(heights) + 8), BG)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 6), title, fill=FG, font=font)
    for i, ((picture, label), h) in enumerate(zip(panels, heights)):
        x = 8 + i * (width + 8)
        for j, line in enumerate(label.split("\n")):
            draw.text((x + width // 2, top + j * 16), line, fill=FG if j == 0 else MUTED, font=small, anchor="ma")
        img.paste(Image.fromarray(picture).resize((width, h), Image.LANCZOS), (x, top + 38))
    return img


def thumbnail(title: str, rows, size: int = 512):
    """A square Templates-browser card: ``title`` over rows of captioned pictures (each row a :func:`sheet`)."""
    parts = [sheet(panels, width=width) for panels, width in rows]
    card = Image.new("RGB", (size, size), BG)
    ImageDraw.Draw(card).text((size // 2, 8), title, fill=FG, font=ImageFont.load_default(size=20), anchor="ma")
    scale = min(1.0, (size - 36) / sum(p.height for p in parts), size / max(p.width for p in parts))
    y = 36 + (size - 36 - round(sum(p.height for p in parts) * scale)) // 2
    for part in parts:
        part = part.resize((round(part.width * scale), round(part.height * scale)), Image.LANCZOS)
        card.paste(part, ((size - part.width) // 2, y))
        y += part.height
    return card


def save_jpeg(img: Image.Image, path: Path, limit: int = 100_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for quality in (88, 80, 72, 64, 56):
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        img.save(tmp, "JPEG", quality=quality, optimize=True)
        if tmp.stat().st_size < limit:
            os.replace(tmp, path)
            print(f"wrote {path} ({path.stat().st_size // 1024} KB, quality {quality})")
            return path
        tmp.unlink()
    raise SystemExit(f"{path}: no JPEG quality keeps it under {limit} bytes")


def tiny_pipeline(folder: Path):

    from tiny import make_tiny_release

    from r2r import R2RPipeline

    return R2RPipeline.from_pretrained(str(make_tiny_release(folder / "tiny_release")))


def tensor(a):
    """HxWx3 uint8 -> [1,3,H,W] float in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--templates", default=str(ROOT / "example_workflows"))
    parser.add_argument("--thumbnails-only", action="store_true", help="only the two templates' thumbnails "
                        "(weight-free; skips the tiny release's runs, which take minutes on a CPU)")
    args = parser.parse_args(argv)
    import torch

    from r2r.blending import harmonize_statistics
    from r2r.pipeline import Reference
    from r2r.pipeline.objects import check_objects, harmonize_statistics_objects

    docs, templates = Path(args.docs), Path(args.templates)
    comp, mask = load("astronaut")
    cat, _ = load("cat_reference")
    objects, union = load("astronaut_objects")
    m, um = (torch.from_numpy(x)[None, None].float() for x in (mask, union))
    photo_wf = np.asarray(harmonize_statistics(comp, mask, 1.0, reference_image=cat))
    crops = to_u8(harmonize_statistics_objects(tensor(objects), um, objects="each", crop="per_object",
                                               max_side=MAX_SIDE))
    runs = check_objects(tensor(objects), um, "each", "per_object", 2.0, MAX_SIDE)
    note = "after: weight-free colour match\n(a stand-in: R2R needs its weights)"
    save_jpeg(thumbnail("Match the look of another photo",
                        [([(outline(comp, mask), "before"), (cat, "reference photo")], 230),
                         ([(photo_wf, note)], 230)]), templates / "Match the look of another photo.jpg")
    save_jpeg(thumbnail("Harmonize several pasted objects",
                        [([(boxes(outline(objects, union), runs), "before (and each object's crop)"),
                           (crops, note)], 240)]), templates / "Harmonize several pasted objects.jpg")
    if args.thumbnails_only:
        return 0

    rocket, _ = load("rocket_background")
    sky = np.zeros(rocket.shape[:2], bool)
    sky[: rocket.shape[0] // 2, rocket.shape[1] // 4: 3 * rocket.shape[1] // 4] = True  # the blue sky, no lights
    region_wf = np.asarray(harmonize_statistics(comp, mask, 1.0, reference_image=rocket, reference_image_mask=sky))
    whole_wf = np.asarray(harmonize_statistics(comp, mask, 1.0, reference_image=rocket))
    together = np.asarray(harmonize_statistics(objects, union, 1.0))
    each = to_u8(harmonize_statistics_objects(tensor(objects), um, objects="each"))
    kw = dict(num_inference_steps=STEPS, generator=SEED, max_side=MAX_SIDE)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_pipeline(Path(tmp))
        photo_tiny = to_u8(pipe(tensor(comp), m, reference=Reference(image=tensor(cat)), **kw).images)
        each_tiny = to_u8(pipe(tensor(objects), um, objects="each", **kw).images)
        crops_tiny = to_u8(pipe(tensor(objects), um, objects="each", crop="per_object", **kw).images)
    save_jpeg(sheet([(outline(comp, mask), "before\n(the composite)"), (cat, "reference photo\n(reference_image)"),
                     (photo_wf, "after: weight-free\n(Lab mean of the photo)"), (photo_tiny, TINY)],
                    title="Match the look of another photo"), docs / "reference_photo.jpg")
    save_jpeg(sheet([(outline(rocket, sky, (80, 200, 255)), "reference photo\nits region: the sky"),
                     (whole_wf, "after: weight-free\nthe whole photo"), (region_wf, "after: weight-free\nonly the region")],
                    title="A region of the reference photo (reference_image_mask)"), docs / "reference_photo_region.jpg")
    save_jpeg(sheet([(outline(objects, union), "before\n(three pasted objects)"),
                     (together, "weight-free, together\n(one object: their union)"),
                     (each, "weight-free, each\n(background without the others)"), (each_tiny, TINY)],
                    title="Several objects: objects = together | each"), docs / "reference_objects.jpg")
    save_jpeg(sheet([(boxes(outline(objects, union), runs), "the crops (context 2)\nat the canvas's aspect"),
                     (crops, "weight-free, per_object\n(each crop's own background)"),
                     (crops_tiny, "after: R2R per_object, tiny\nrandom weights (where it works)")],
                    title="Per-object crops: crop = per_object"), docs / "reference_crops.jpg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
