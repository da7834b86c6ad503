"""Make the bundled example composites in r2r/assets/examples/ (run once; the outputs are committed).

    python -m r2r.assets.make_examples [--out r2r/assets/examples]

Each example is a real photo from scikit-image's bundled data (see PROVENANCE.md), a foreground
mask derived from the photo itself, and a *composite* made by shifting the foreground's colour
and illumination (as iHarmony4's composites are made), so the foreground no longer matches the
scene. Files per example: ``<name>_composite.png`` and ``<name>_mask.png`` (white = foreground);
``--with-real`` also writes ``<name>_real.png`` (the untouched photo = the ground truth; not
bundled, to keep the package small). Longer side 448 px.

For building a composite in the graph (the template "Paste an object onto a photo and harmonize it")
there are also a cut-out and a background, untouched photos: ``cup_cutout_image.png`` +
``cup_cutout_mask.png`` (the cup, saucer and spoon of the coffee photo, cropped to the mask's
bounding box and scaled to CUTOUT_WIDTH px) and ``rocket_background_image.png`` (the rocket photo, longer side
448 px; no mask: nothing is pasted in it yet).

For several objects in one picture (the template "Harmonize several pasted objects"):
``astronaut_objects_composite.png`` + ``astronaut_objects_mask.png``, the astronaut photo with three
separate objects (the mission patch, the helmet, the model's fuel tank), each given its own colour
shift; the mask holds the three as separate parts. For matching the look of another photo (the
template "Match the look of another photo"): ``cat_reference_image.png``, the cat photo (warm light),
longer side 448 px, untouched (no mask: the whole photo is the reference).

Needs scikit-image (a development dependency); deterministic (OpenCV's RNG is seeded for GrabCut).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

MAX_SIDE = 448  # keeps every PNG under 400 KB
CUTOUT_WIDTH = 150  # the cut-out pasted into the 448-px background: about an eighth of its area


def _largest_component(mask):
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if n <= 1:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _fill_holes(mask):
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, -1)
    return out.astype(bool)


def motorcycle_mask(disparity):
    """The motorcycle: near pixels of the stereo disparity map, the floor strip cut off."""
    import cv2

    d = np.where(np.isfinite(disparity), disparity, 0)
    near = d > 45
    near[int(0.87 * d.shape[0]) :] = False  # the floor in front of the bike is as near as the bike
    near = cv2.morphologyEx(near.astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 1), np.uint8))  # thin floor line
    near = cv2.morphologyEx(near, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    return _fill_holes(_largest_component(near))


def coffee_mask(rgb):
    """Cup + saucer: GrabCut seeded with two hand-placed ellipses (probable fg) inside a wider band."""
    import cv2

    init = np.full(rgb.shape[:2], cv2.GC_BGD, np.uint8)
    band = np.zeros(rgb.shape[:2], np.uint8)
    cv2.ellipse(band, (280, 250), (225, 165), -8, 0, 360, 1, -1)
    cv2.ellipse(band, (290, 110), (140, 105), 0, 0, 360, 1, -1)
    init[band > 0] = cv2.GC_PR_BGD
    seed = np.zeros(rgb.shape[:2], np.uint8)
    cv2.ellipse(seed, (275, 255), (190, 125), -8, 0, 360, 1, -1)
    cv2.ellipse(seed, (290, 110), (115, 85), 0, 0, 360, 1, -1)
    init[seed > 0] = cv2.GC_PR_FGD
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), init, None, bgd, fgd, 8, cv2.GC_INIT_WITH_MASK)
    return _largest_component((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD))


def astronaut_mask(rgb):
    """The orange space suit: an HSV threshold, closed, largest component, holes filled."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    m = (hsv[..., 0] >= 3) & (hsv[..., 0] <= 20) & (hsv[..., 1] > 110) & (hsv[..., 2] > 90)
    m[:150] = False  # skin and hair above the collar share the hue
    m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    m = _fill_holes(_largest_component(m))
    return cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0


def shift_foreground(rgb, mask, gain, gamma, saturation):
    """Colour/illumination shift of the foreground only: per-channel gain, gamma, saturation scale."""
    x = rgb.astype(np.float64) / 255.0
    fg = np.clip(x * np.asarray(gain), 0, 1) ** gamma
    grey = fg.mean(axis=2, keepdims=True)
    fg = np.clip(grey + (fg - grey) * saturation, 0, 1)
    out = np.where(mask[..., None], fg, x)
    return (out * 255.0).round().astype(np.uint8)


def _resize(rgb, mask):
    import cv2

    h, w = mask.shape
    s = MAX_SIDE / max(h, w)
    size = (round(w * s), round(h * s))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    return rgb, m


def examples():
    """(name, real RGB uint8, mask bool, foreground shift) for every example, at <= MAX_SIDE px."""
    from skimage import data

    left, _, disparity = data.stereo_motorcycle()
    coffee = data.coffee()
    astronaut = data.astronaut()
    return [
        ("motorcycle", *_resize(left, motorcycle_mask(disparity)), dict(gain=(0.72, 0.88, 1.2), gamma=1.35, saturation=0.8)),
        ("coffee", *_resize(coffee, coffee_mask(coffee)), dict(gain=(0.85, 1.15, 0.95), gamma=0.75, saturation=0.7)),
        ("astronaut", *_resize(astronaut, astronaut_mask(astronaut)), dict(gain=(0.8, 0.95, 1.25), gamma=1.2, saturation=0.55)),
    ]


def cutout(real, mask, width: int = CUTOUT_WIDTH):
    """A cut-out: the photo and its mask (holes filled: the spoon belongs to the cup) cropped to the mask's
    bounding box, scaled to ``width`` px."""
    import cv2

    mask = _fill_holes(mask)
    ys, xs = np.nonzero(mask)
    rgb = real[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    m = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    size = (width, round(rgb.shape[0] * width / rgb.shape[1]))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    return rgb, m


def cutouts_and_backgrounds():
    """(file stem, RGB uint8, mask bool or None) for the cut-out and the background photo."""
    import cv2
    from skimage import data

    coffee = next(e for e in examples() if e[0] == "coffee")
    cup, cup_mask = cutout(coffee[1], coffee[2])
    rocket = data.rocket()
    s = MAX_SIDE / max(rocket.shape[:2])
    rocket = cv2.resize(rocket, (round(rocket.shape[1] * s), round(rocket.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return [("cup_cutout", cup, cup_mask), ("rocket_background", rocket, None)]


def _grabcut(rgb, init):
    """GrabCut from an initial label map (OpenCV's GC_* labels) -> its foreground, largest part, holes filled."""
    import cv2

    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), init, None, bgd, fgd, 8, cv2.GC_INIT_WITH_MASK)
    return _fill_holes(_largest_component((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)))


def astronaut_object_masks(rgb):
    """Three separate objects of the 512-px astronaut photo, each by GrabCut from a hand-placed shape: the
    round mission patch and the model's fuel tank (rectangles), the helmet (an ellipse, so the dark table
    beside it stays out)."""
    import cv2

    masks = []
    for x, y, w, h in ((130, 345, 82, 82), (350, 0, 125, 290)):
        init = np.full(rgb.shape[:2], cv2.GC_BGD, np.uint8)
        init[y:y + h, x:x + w] = cv2.GC_PR_FGD
        masks.append(_grabcut(rgb, init))
    init = np.full(rgb.shape[:2], cv2.GC_BGD, np.uint8)
    cv2.ellipse(init, (392, 455), (124, 124), 0, 0, 360, int(cv2.GC_PR_BGD), -1)
    cv2.ellipse(init, (392, 455), (112, 112), 0, 0, 360, int(cv2.GC_PR_FGD), -1)
    patch, tank = masks
    return [patch, _grabcut(rgb, init), tank]


#: the colour shift of each object of astronaut_objects (patch, helmet, fuel tank)
OBJECT_SHIFTS = (dict(gain=(1.3, 1.15, 0.6), gamma=0.8, saturation=1.0),
                 dict(gain=(0.85, 1.0, 1.5), gamma=0.6, saturation=1.0),
                 dict(gain=(0.75, 1.2, 0.85), gamma=1.2, saturation=0.7))


def objects_example():
    """("astronaut_objects", real, composite, union mask): three objects, each with its own colour shift."""
    from skimage import data

    astronaut = data.astronaut()
    real, comp, union = None, None, None
    for mask, shift in zip(astronaut_object_masks(astronaut), OBJECT_SHIFTS):
        small_real, small_mask = _resize(astronaut, mask)
        real = small_real
        comp = shift_foreground(small_real if comp is None else comp, small_mask, **shift)
        union = small_mask if union is None else union | small_mask
    return "astronaut_objects", real, comp, union


def reference_photos():
    """(file stem, RGB uint8) of the untouched photos offered as reference photos."""
    import cv2
    from skimage import data

    cat = data.chelsea()
    s = MAX_SIDE / max(cat.shape[:2])
    cat = cv2.resize(cat, (round(cat.shape[1] * s), round(cat.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return [("cat_reference", cat)]


def _write_png(path: Path, array):
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "examples"))
    parser.add_argument("--with-real", action="store_true", help="also write the untouched photos (ground truth)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, real, mask, shift in examples():
        comp = shift_foreground(real, mask, **shift)
        if args.with_real:
            _write_png(out / f"{name}_real.png", real)
        _write_png(out / f"{name}_mask.png", mask.astype(np.uint8) * 255)
        _write_png(out / f"{name}_composite.png", comp)
        print(f"{name}: {real.shape[1]}x{real.shape[0]}, foreground {mask.mean():.1%}")
    for stem, rgb, mask in cutouts_and_backgrounds():
        _write_png(out / f"{stem}_image.png", rgb)
        if mask is not None:
            _write_png(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        print(f"{stem}: {rgb.shape[1]}x{rgb.shape[0]}" + ("" if mask is None else f", object {mask.mean():.1%}"))
    name, real, comp, mask = objects_example()
    if args.with_real:
        _write_png(out / f"{name}_real.png", real)
    _write_png(out / f"{name}_mask.png", mask.astype(np.uint8) * 255)
    _write_png(out / f"{name}_composite.png", comp)
    print(f"{name}: {real.shape[1]}x{real.shape[0]}, three objects, {mask.mean():.1%}")
    for stem, rgb in reference_photos():
        _write_png(out / f"{stem}_image.png", rgb)
        print(f"{stem}: {rgb.shape[1]}x{rgb.shape[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
