"""Make the Templates-browser thumbnails of example_workflows/ (``<template>.jpg``, 512x512 JPEG).

    .venv/bin/python tools/make_thumbnails.py [--out example_workflows] [--only "Harmonize a pasted object"]

Every thumbnail shows the template's own example picture(s) and says in its caption what made the
"after" picture, because the R2R weights are not bundled: R2R's own result cannot be shown honestly
here. The templates without a model show their real output (the weight-free colour match, Random
Poisson Blend with the template's seed); the R2R templates show the composite and mask the template
starts from and, as a labelled stand-in, the weight-free colour match of the same composite. Pictures
come from r2r/assets/examples (R2R Example Image) and r2r.blending, nothing else. Deterministic.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "r2r" / "assets" / "examples"
SIZE = 512
BG = (32, 32, 36)
FG = (235, 235, 235)
MUTED = (170, 170, 178)
ACCENT = (255, 196, 64)
STAND_IN = "after: weight-free colour match\n(a stand-in: R2R's result needs its weights)"


def font(size: int):
    return ImageFont.load_default(size=size)


def load(name: str):
    """An R2R Example Image output as numpy: RGB uint8 and a bool mask (empty when there is none)."""
    stem = EXAMPLES / name
    path = stem.with_name(f"{name}_composite.png")
    rgb = np.asarray(Image.open(path if path.exists() else stem.with_name(f"{name}_image.png")).convert("RGB"))
    mpath = stem.with_name(f"{name}_mask.png")
    mask = np.asarray(Image.open(mpath).convert("L")) >= 128 if mpath.exists() else np.zeros(rgb.shape[:2], bool)
    return rgb, mask


def weight_free(rgb, mask, reference_mask=None):
    from r2r.blending import harmonize_statistics

    return np.asarray(harmonize_statistics(rgb, mask, strength=1.0, reference_mask=reference_mask))


def outline(rgb, mask, colour=ACCENT, width=2):
    """The picture with the mask's border drawn on it."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(rgb.copy())
    cv2.drawContours(out, contours, -1, colour, width)
    return out


def tint(rgb, region, colour=(80, 200, 255), amount=0.45):
    out = rgb.astype(np.float32)
    out[region] = out[region] * (1 - amount) + np.asarray(colour, np.float32) * amount
    return out.astype(np.uint8)


def canvas():
    return Image.new("RGB", (SIZE, SIZE), BG)


def panel(img: Image.Image, picture, box, label: str = ""):
    """``picture`` fitted into ``box`` (x, y, w, h) with a label above it."""
    x, y, w, h = box
    draw = ImageDraw.Draw(img)
    top = y
    if label:
        draw.text((x + w // 2, y), label, fill=FG, font=font(17), anchor="ma")
        top += 24
        h -= 24
    pic = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    s = min(w / pic.width, (h) / pic.height)
    pic = pic.resize((max(1, round(pic.width * s)), max(1, round(pic.height * s))), Image.LANCZOS)
    img.paste(pic, (x + (w - pic.width) // 2, top + (h - pic.height) // 2))


def caption(img: Image.Image, text: str):
    draw = ImageDraw.Draw(img)
    draw.multiline_text((SIZE // 2, SIZE - 10), text, fill=MUTED, font=font(18), anchor="md", align="center",
                        spacing=4)


def arrow(img: Image.Image, x: int, y: int, length: int = 18):
    """A small right-pointing arrow centred at (x, y) (drawn: the default font has no arrow glyph)."""
    draw = ImageDraw.Draw(img)
    draw.line((x - length // 2, y, x + length // 2 - 4, y), fill=ACCENT, width=3)
    draw.polygon([(x + length // 2, y), (x + length // 2 - 8, y - 6), (x + length // 2 - 8, y + 6)], fill=ACCENT)


def two_up(left, right, left_label, right_label, text, title=""):
    """Two pictures with labels: side by side when they are square-ish, else one above the other."""
    img = canvas()
    ImageDraw.Draw(img).text((SIZE // 2, 12), title, fill=ACCENT, font=font(19), anchor="ma")
    top, bottom = 40, SIZE - 56
    if left.shape[1] > 1.2 * left.shape[0]:
        h = (bottom - top) // 2
        panel(img, left, (8, top, 496, h), left_label)
        panel(img, right, (8, top + h, 496, h), right_label)
    else:
        panel(img, left, (8, top, 242, bottom - top), left_label)
        panel(img, right, (262, top, 242, bottom - top), right_label)
    caption(img, text)
    return img


def boxes(img: Image.Image, labels, y: int):
    """A row of node boxes joined by arrows: what the graph does."""
    draw = ImageDraw.Draw(img)
    f = font(15)
    widths = [int(draw.textlength(t, font=f)) + 16 for t in labels]
    gap = 26
    x = (SIZE - sum(widths) - gap * (len(labels) - 1)) // 2
    for i, (t, w) in enumerate(zip(labels, widths)):
        draw.rounded_rectangle((x, y, x + w, y + 28), radius=6, fill=(58, 58, 66), outline=(120, 120, 130))
        draw.text((x + w // 2, y + 14), t, fill=FG, font=f, anchor="mm")
        x += w
        if i < len(labels) - 1:
            arrow(img, x + gap // 2, y + 14, length=gap - 6)
            x += gap


# ----------------------------------------------------------------------------- one function per template
def starter():
    rgb, mask = load("astronaut")
    img = canvas()
    ImageDraw.Draw(img).text((SIZE // 2, 12), "start here: the R2R chain, step by step", fill=ACCENT, font=font(19),
                             anchor="ma")
    panel(img, rgb, (8, 40, 242, 210), "composite")
    panel(img, np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2), (262, 40, 242, 210),
          "mask: white = pasted object")
    panel(img, weight_free(rgb, mask), (136, 252, 240, 200), "after*")
    caption(img, "* " + STAND_IN)
    return img


def reference_region():
    rgb, mask = load("motorcycle")
    region = np.zeros(mask.shape, bool)
    region[:, :70] = True  # the template's strip: Solid Mask 70 px wide at x = 0
    return two_up(tint(outline(rgb, mask), region), weight_free(rgb, mask, region),
                  "object + reference region (blue)", "after*",
                  "* " + STAND_IN.replace("match", "match\nfrom the region", 1).replace("\n(a", " (a", 1),
                  title="colours from one region of the scene")


CROP = (4 * 150, 4 * 150)  # (y, x) of the 1:1 detail in the 4x picture: the cup's rim, handle and spoon


def large_picture():
    rgb, mask = load("coffee")
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 4, rgb.shape[0] * 4), Image.LANCZOS))
    big_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (mask.shape[1] * 4, mask.shape[0] * 4), Image.NEAREST)) >= 128
    after = weight_free(big, big_mask)
    y, x = CROP
    crop = after[y : y + 240, x : x + 640]
    return two_up(rgb, crop, "the 1792 px picture (shown small)", "after*: a detail at full size (1:1)",
                  "* " + STAND_IN, title="every original pixel kept at full size")


def ksampler():
    rgb, mask = load("astronaut")
    img = canvas()
    ImageDraw.Draw(img).text((SIZE // 2, 12), "R2R through ComfyUI's own KSampler", fill=ACCENT, font=font(19),
                             anchor="ma")
    boxes(img, ["R2R Model for KSampler", "KSampler"], 44)
    boxes(img, ["R2R Conditioning", "KSampler", "R2R Clear-VAE Decode"], 84)
    panel(img, outline(rgb, mask), (8, 124, 242, 330), "composite + mask (outlined)")
    panel(img, weight_free(rgb, mask), (262, 124, 242, 330), "after*")
    caption(img, "* " + STAND_IN)
    return img


def training_set():
    from r2r.blending import random_poisson_blend

    rgb, mask = load("motorcycle")
    res = random_poisson_blend(rgb.astype(np.float32) / 255.0, mask, seed=0, alpha=0.75)
    comp = (np.clip(np.asarray(res.composite), 0, 1) * 255).round().astype(np.uint8)
    img = canvas()
    ImageDraw.Draw(img).text((SIZE // 2, 12), "Random Poisson Blend -> dataset folder", fill=ACCENT, font=font(19),
                             anchor="ma")
    panel(img, rgb, (8, 40, 242, 190), "input photo (the example)")
    panel(img, np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2), (262, 40, 242, 190), "object mask")
    panel(img, comp, (8, 236, 496, 220), "new training composite (object recoloured)")
    caption(img, "the template's real output (Random Poisson Blend,\nseed 0, strength 0.75); no model needed")
    return img


def weight_free_template():
    rgb, mask = load("coffee")
    return two_up(outline(rgb, mask), weight_free(rgb, mask), "composite + mask (outlined)", "after",
                  "the template's real output: the weight-free\ncolour match (no model, no download)",
                  title="instant colour statistics, no model")


def paste():
    bg, _ = load("rocket_background")
    cup, cup_mask = load("cup_cutout")
    x, y = 272, 150  # the template's x and y
    comp = bg.copy()
    h, w = cup_mask.shape
    comp[y : y + h, x : x + w][cup_mask] = cup[cup_mask]
    placed = np.zeros(bg.shape[:2], bool)
    placed[y : y + h, x : x + w] = cup_mask
    img = canvas()
    ImageDraw.Draw(img).text((SIZE // 2, 14), "build the composite in the graph", fill=ACCENT, font=font(19),
                             anchor="ma")
    cut = np.where(cup_mask[..., None], cup, np.uint8(60))
    panel(img, cut, (8, 40, 150, 190), "cut-out")
    arrow(img, 172, 140, length=22)
    panel(img, bg, (188, 40, 316, 190), "background (x 272, y 150)")
    panel(img, comp, (8, 240, 242, 200), "composite (before)")
    panel(img, weight_free(comp, placed), (262, 240, 242, 200), "after*")
    caption(img, "* " + STAND_IN)
    return img


TEMPLATES = {
    "Harmonize a pasted object": starter,
    "Harmonize using a reference region": reference_region,
    "Harmonize a large picture, keep every detail": large_picture,
    "Harmonize with KSampler": ksampler,
    "Make a harmonization training set": training_set,
    "Quick colour match, no model": weight_free_template,
    "Paste an object onto a photo and harmonize it": paste,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "example_workflows"))
    p.add_argument("--only", action="append", choices=sorted(TEMPLATES), help="just this template (repeatable)")
    args = p.parse_args(argv)
    for name in args.only or TEMPLATES:
        path = Path(args.out) / f"{name}.jpg"
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        TEMPLATES[name]().save(tmp, "JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
