"""Pictures of a training run: the loss curve and sample sheets (drawn with OpenCV, written atomically)."""

from __future__ import annotations

import os

import numpy as np


def write_png(path, rgb_uint8: np.ndarray) -> None:
    """``HxWx3 uint8`` RGB -> PNG, atomically (``r2r.fileio.write_image``); the folder is created."""
    from r2r.fileio import write_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_image(path, np.ascontiguousarray(rgb_uint8))


def draw_loss_curve(path, steps: list[int], losses: list[float], title: str = "training loss",
                    width: int = 800, height: int = 400) -> None:
    """Loss curve PNG: raw loss in light blue, moving average in dark blue."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 40
    pw, ph = width - left - right, height - top - bottom
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    vals = np.asarray(losses, np.float64)
    ok = np.isfinite(vals)
    if ok.sum() >= 1:
        xs, ys = np.asarray(steps, np.float64)[ok], vals[ok]
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
        y0, y1 = ys.min(), ys.max()
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5 * abs(y0 or 1), y1 + 0.5 * abs(y1 or 1)

        def pts(x, y):
            px = left + (x - x0) / (x1 - x0) * pw
            py = top + ph - (y - y0) / (y1 - y0) * ph
            return np.stack([px, py], 1).round().astype(np.int32)

        cv2.polylines(img, [pts(xs, ys)], False, (235, 190, 140), 1, cv2.LINE_AA)
        k = max(1, len(ys) // 20)
        if k > 1:
            avg = np.convolve(ys, np.ones(k) / k, mode="valid")
            cv2.polylines(img, [pts(xs[k - 1:], avg)], False, (150, 60, 20), 2, cv2.LINE_AA)
        for frac in (0.0, 0.5, 1.0):
            y = y0 + frac * (y1 - y0)
            py = int(round(top + ph - frac * ph))
            cv2.putText(img, f"{y:.4g}", (4, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
            cv2.line(img, (left - 4, py), (left, py), (0, 0, 0), 1)
        for frac in (0.0, 0.5, 1.0):
            x = x0 + frac * (x1 - x0)
            px = int(round(left + frac * pw))
            cv2.putText(img, f"{int(round(x))}", (px - 10, top + ph + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(img, "step", (left + pw // 2 - 15, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    write_png(path, img[..., ::-1])  # drawn in BGR


def sample_sheet(rows: list[list[np.ndarray]], labels: list[str], tile: int = 256) -> np.ndarray:
    """Grid of ``HxWx3 uint8`` tiles (one row per example) with column labels on top."""
    import cv2

    cols = max(len(r) for r in rows)
    head = 24
    sheet = np.full((head + tile * len(rows), tile * cols, 3), 255, np.uint8)
    for j, lab in enumerate(labels[:cols]):
        cv2.putText(sheet, lab, (j * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            im = np.asarray(im)
            if im.ndim == 2:
                im = np.repeat(im[..., None], 3, 2)
            if im.shape[:2] != (tile, tile):
                interp = cv2.INTER_AREA if im.shape[0] > tile else cv2.INTER_NEAREST
                im = cv2.resize(im, (tile, tile), interpolation=interp)
            sheet[head + i * tile: head + (i + 1) * tile, j * tile:(j + 1) * tile] = im
    return sheet
