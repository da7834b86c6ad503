"""Draws web/icon.png (the registry icon, 256x256 RGBA): a composite region (disc) whose left half is
pasted as-is (mismatched, hard edge) and whose right half is harmonized into the scene's light (the R2R idea), on a warm-to-cool gradient.

    python tools/make_icon.py   # from the repository root
"""
import numpy as np
from PIL import Image, ImageDraw


def draw_icon(path: str = "web/icon.png") -> None:
    S = 1024  # drawn at 4x, reduced to 256 for clean edges
    yy, xx = np.mgrid[0:S, 0:S] / (S - 1)
    t = np.clip(0.55 * xx + 0.45 * yy, 0, 1)[..., None]
    top = np.array([255, 176, 92]) / 255    # warm sunset orange
    bottom = np.array([70, 56, 140]) / 255  # dusk violet
    bg = (1 - t) * top + t * bottom
    # soft light from the upper left
    light = np.exp(-(((xx - 0.2) ** 2 + (yy - 0.15) ** 2) / 0.12))[..., None]
    bg = np.clip(bg + 0.18 * light, 0, 1)

    cx, cy, r = 0.5, 0.54, 0.27
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    disc = d < r
    left = disc & (xx < cx)
    right = disc & (xx >= cx)
    teal = np.array([64, 214, 190]) / 255
    img = bg.copy()
    img[left] = teal  # the pasted foreground: a cold flat teal that does not belong
    # the harmonized half: the same teal re-lit by the scene (multiplied into the local background colour)
    harm = np.clip(0.35 * teal + 0.75 * bg * (0.9 + 0.3 * teal), 0, 1)
    shade = np.clip(1.05 - 0.5 * (yy - (cy - r)) / (2 * r), 0.7, 1.05)[..., None]
    harm = np.clip(harm * shade, 0, 1)
    img[right] = harm[right]
    out = Image.fromarray((img * 255).round().astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(out)
    x0, y0, x1, y1 = (cx - r) * S, (cy - r) * S, (cx + r) * S, (cy + r) * S
    draw.arc([x0, y0, x1, y1], 90, 270, fill=(255, 255, 255), width=int(0.012 * S))  # the hard paste edge
    draw.line([cx * S, y0 + 0.03 * S, cx * S, y1 - 0.03 * S], fill=(255, 255, 255), width=int(0.008 * S))

    # rounded-square mask with transparent corners
    mask = Image.new("L", (S, S), 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, S - 1, S - 1], radius=int(0.2 * S), fill=255)
    out.putalpha(mask)
    out = out.resize((256, 256), Image.LANCZOS)
    out.save(path, optimize=True)


if __name__ == "__main__":
    draw_icon()
