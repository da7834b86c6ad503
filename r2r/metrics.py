"""MSE, fMSE, PSNR and SSIM exactly as the official R2R evaluation script computes them.

Reference: ``inference/scripts/evaluate/main.py`` of the official code (ref §f.4):

* images are float32 arrays in 0..255, the mask ``m`` is {0, 1} of shape HxWx1;
* ``use_gt_bg``: ``out = out * m + gt * (1 - m)`` before every metric;
* MSE  = mean over H*W*3 of ``(out - gt)**2``;
* PSNR = ``10 * log10(255**2 / MSE)`` (``inf`` for a perfect image, as scikit-image);
* fMSE = ``MSE(out*m, gt*m) * H*W / sum(m)`` = squared error summed over the foreground and
  the 3 channels / (3 * foreground pixels); bMSE the same over the background (``1 - m``; 0
  with ``use_gt_bg``);
* SSIM = scikit-image ``structural_similarity(out, gt, channel_axis=-1)`` with its defaults
  (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, border of 3 px cropped, mean
  over channels) and the script's odd ``data_range = out.max() - gt.min()``;
* results are per-image means (per subset and over all images, not a mean of subset
  means) plus a breakdown by foreground ratio: [0, 5%), [5%, 15%), [15%, 100%) -- all three
  half-open as in the script, so an image whose mask covers it entirely (ratio 1.0) is in no
  bin (it still counts in its subset and overall).

Loading/resizing (``load_triplet``): prediction and ground truth read as RGB, the mask with
PIL ``convert("1")``; anything not at ``resolution`` x ``resolution`` is resized with PIL
(images bilinear with antialiasing, the mode-"1" mask nearest), as torchvision's resize on
PIL images does. ``resolution=None`` is the script's ``--full_resolution``: the prediction is
resized to the ground truth's size, mask and ground truth are left as they are.

SSIM and PSNR are implemented here in numpy (no scikit-image at runtime); the tests check
them against scikit-image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import R2RUserError
from .fileio import IMAGE_EXTENSIONS, TEMP_MARKER, check_input_file, read_input_bytes

#: foreground-ratio bins [lo, hi) of the official script (ratio 1.0 falls in none of them)
RATIO_BINS = ((0.0, 0.05, "0-5%"), (0.05, 0.15, "5-15%"), (0.15, 1.0, "15-100%"))
BINNING_NOTE = ("foreground-ratio bins [0,5%), [5%,15%), [15%,100%) as the official script: an image with ratio "
                "exactly 1.0 is in no bin")
METRICS = ("mse", "fmse", "bmse", "psnr", "ssim")


# ----------------------------------------------------------------------------- single metrics


def _as_float(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise R2RUserError(f"{what}: expected an HxWxC image, got shape {tuple(a.shape)}")
    return a.astype(np.float64)


def _check_pair(out: np.ndarray, gt: np.ndarray) -> None:
    if out.shape != gt.shape:
        raise R2RUserError(
            f"prediction {tuple(out.shape)} and ground truth {tuple(gt.shape)} must have the same shape; "
            "resize the prediction (evaluate() does this for you)"
        )


def mse(out, gt) -> float:
    """Mean squared error over all pixels and channels (images in 0..255)."""
    o, g = _as_float(out, "prediction"), _as_float(gt, "ground truth")
    _check_pair(o, g)
    return float(np.mean((o - g) ** 2))


def psnr(gt, out, data_range: float = 255.0) -> float:
    """``10 log10(data_range**2 / MSE)``; ``inf`` when the images are equal (as scikit-image)."""
    err = mse(out, gt)
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10((data_range**2) / err))


def fmse(out, gt, mask) -> float:
    """Foreground MSE: squared error over foreground pixels and channels / (channels * fg pixels).
    ``nan`` when the mask is empty (the official script divides by zero there)."""
    o, g = _as_float(out, "prediction"), _as_float(gt, "ground truth")
    _check_pair(o, g)
    m = _as_float(mask, "mask")
    if m.shape[:2] != o.shape[:2] or m.shape[2] != 1:
        raise R2RUserError(f"mask {tuple(m.shape)} must be HxW or HxWx1 matching the image {tuple(o.shape)}")
    fg = float(m.sum())
    if fg == 0.0:
        return math.nan
    # MSE(out*m, gt*m) * H*W / sum(m), written without the cancelling factors
    return float(np.sum(((o - g) * m) ** 2) / (o.shape[2] * fg))


def bmse(out, gt, mask) -> float:
    """Background MSE: as :func:`fmse` over the background (``1 - mask``). ``nan`` when the mask
    covers the whole image."""
    m = _as_float(mask, "mask")
    return fmse(out, gt, 1.0 - m)


def _box_mean_valid(a: np.ndarray, win: int) -> np.ndarray:
    """Mean over every full ``win x win`` window (the 'valid' part of a uniform filter) per channel.
    The border handling of the filter does not matter: the border is cropped."""
    import cv2

    pad = (win - 1) // 2
    f = cv2.boxFilter(a, cv2.CV_64F, (win, win), normalize=True, borderType=cv2.BORDER_REFLECT)
    if f.ndim == 2:
        f = f[..., None]
    return f[pad:-pad, pad:-pad]


def ssim(out, gt, data_range: float | None = None, win_size: int = 7) -> float:
    """SSIM as scikit-image ``structural_similarity(out, gt, data_range=..., channel_axis=-1)``.

    ``data_range=None`` uses the official evaluation's quirk ``out.max() - gt.min()``.
    """
    o, g = _as_float(out, "prediction"), _as_float(gt, "ground truth")
    _check_pair(o, g)
    if win_size % 2 != 1 or win_size < 3:
        raise R2RUserError(f"win_size must be odd and >= 3, got {win_size}")
    if min(o.shape[:2]) < win_size:
        raise R2RUserError(
            f"SSIM needs images of at least {win_size}x{win_size} px, got {o.shape[1]}x{o.shape[0]}"
        )
    if data_range is None:
        data_range = float(o.max() - g.min())
    k1, k2 = 0.01, 0.03
    n = win_size * win_size
    cov_norm = n / (n - 1.0)  # sample covariance, as scikit-image's default
    ux, uy = _box_mean_valid(o, win_size), _box_mean_valid(g, win_size)
    uxx, uyy, uxy = (_box_mean_valid(o * o, win_size), _box_mean_valid(g * g, win_size), _box_mean_valid(o * g, win_size))
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux**2 + uy**2 + c1) * (vx + vy + c2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = num / den
    # the 'valid' windows are exactly scikit-image's map cropped by (win_size - 1) // 2
    return float(np.mean(s.mean(axis=(0, 1))))


def image_metrics(out, gt, mask, use_gt_bg: bool = False) -> dict:
    """All metrics of one image (0..255 HxWx3 arrays, mask HxW(x1) in {0,1}) plus ``fg_ratio``:
    ``mse``, ``fmse``, ``bmse``, ``psnr``, ``ssim``."""
    o = _as_float(out, "prediction")
    g = _as_float(gt, "ground truth")
    _check_pair(o, g)
    m = _as_float(mask, "mask")
    if m.shape != (o.shape[0], o.shape[1], 1):
        raise R2RUserError(f"mask {tuple(np.shape(mask))} must be HxW matching the image {tuple(o.shape)}")
    if use_gt_bg:
        o = o * m + g * (1.0 - m)
    return {
        "mse": mse(o, g),
        "fmse": fmse(o, g, m),
        "bmse": bmse(o, g, m),
        "psnr": psnr(g, o, data_range=255.0),
        "ssim": ssim(o, g),
        "fg_ratio": float(m.mean()),
    }


# ----------------------------------------------------------------------------- loading


def _open(path, what: str):
    import io
    import stat

    from PIL import Image, UnidentifiedImageError

    # a pipe (or <(...)) is read once into memory; folders, devices and a pipe nobody writes to are refused
    src = path if stat.S_ISREG(check_input_file(path, what).st_mode) else io.BytesIO(read_input_bytes(path, what))
    try:
        img = Image.open(src)
        img.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise R2RUserError(f"cannot read the {what} {path} ({exc}); re-save it as PNG/JPEG or regenerate it") from exc
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
        # PIL would turn NaN/inf into black or white without a word (r2r.fileio.read_image refuses them too)
        raise R2RUserError(f"the {what} {path} contains NaN or infinite values; save it as an 8- or 16-bit image "
                           "(or replace the invalid pixels) and try again")
    return img


def load_triplet(pred_path, mask_path, gt_path, resolution: int | None = 256):
    """(out, gt, m) float32 arrays (HxWx3, HxWx3, HxWx1) prepared as the official script does."""
    from PIL import Image

    out = _open(pred_path, "prediction").convert("RGB")
    mask = _open(mask_path, "mask").convert("1")
    gt = _open(gt_path, "ground truth").convert("RGB")
    if resolution:
        size = (int(resolution), int(resolution))
        if out.size != size:
            out = out.resize(size, Image.Resampling.BILINEAR)
        if gt.size != size:
            gt = gt.resize(size, Image.Resampling.BILINEAR)
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)  # PIL forces nearest for mode "1" anyway
    else:
        if mask.size != gt.size:
            raise R2RUserError(
                f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but the ground truth {gt_path} is "
                f"{gt.size[0]}x{gt.size[1]}; they must match at full resolution"
            )
        if out.size != gt.size:
            out = out.resize(gt.size, Image.Resampling.BILINEAR)
    o = np.asarray(out, dtype=np.float32)
    g = np.asarray(gt, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None]
    return o, g, m


# ----------------------------------------------------------------------------- a whole split


@dataclass
class EvalReport:
    per_image: list = field(default_factory=list)  # dicts: file_name, subset, metrics, fg_ratio
    subsets: dict = field(default_factory=dict)  # subset -> {"n", metrics...}
    overall: dict = field(default_factory=dict)
    ratio_bins: dict = field(default_factory=dict)  # bin label -> {"n", metrics...} (all images)
    subset_ratio_bins: dict = field(default_factory=dict)  # subset -> bin label -> {...}
    settings: dict = field(default_factory=dict)
    empty_masks: list = field(default_factory=list)  # file names whose mask is empty at eval size
    full_masks: list = field(default_factory=list)  # file names whose mask covers the image (no bin, no bMSE)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "overall": self.overall,
            "subsets": self.subsets,
            "ratio_bins": self.ratio_bins,
            "subset_ratio_bins": self.subset_ratio_bins,
            "empty_masks": self.empty_masks,
            "full_masks": self.full_masks,
            "per_image": self.per_image,
        }


def _mean_block(rows: list) -> dict:
    out: dict[str, float] = {"n": len(rows)}
    for k in METRICS:
        vals = [r[k] for r in rows if not (isinstance(r[k], float) and math.isnan(r[k]))]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def ratio_bin(fg_ratio: float) -> str | None:
    """The label of the official foreground-ratio bin of ``fg_ratio``; None for 1.0 (no bin)."""
    for lo, hi, label in RATIO_BINS:
        if lo <= fg_ratio < hi:
            return label
    return None


def summarize(rows: list) -> EvalReport:
    """Per-subset, overall and foreground-ratio means of per-image rows (dicts with metrics,
    ``subset`` and ``fg_ratio``)."""
    rep = EvalReport(per_image=rows)
    subsets = sorted({r["subset"] for r in rows})
    rep.subsets = {s: _mean_block([r for r in rows if r["subset"] == s]) for s in subsets}
    rep.overall = _mean_block(rows)
    for _, _, label in RATIO_BINS:
        rep.ratio_bins[label] = _mean_block([r for r in rows if ratio_bin(r["fg_ratio"]) == label])
    for s in subsets:
        rs = [r for r in rows if r["subset"] == s]
        rep.subset_ratio_bins[s] = {
            label: _mean_block([r for r in rs if ratio_bin(r["fg_ratio"]) == label]) for _, _, label in RATIO_BINS
        }
    rep.empty_masks = [r["file_name"] for r in rows if isinstance(r["fmse"], float) and math.isnan(r["fmse"])]
    rep.full_masks = [r["file_name"] for r in rows if ratio_bin(r["fg_ratio"]) is None]
    return rep


def index_predictions(pred_dir) -> dict[str, Path]:
    """stem -> prediction file under ``pred_dir`` (recursive); duplicate stems are an error."""
    from .dataset.layouts import check_folder

    pred_dir = check_folder(pred_dir, "prediction folder", "pass the folder of harmonized images with --pred")
    found: dict[str, Path] = {}
    dups = []
    for p in sorted(pred_dir.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or TEMP_MARKER in p.name or not p.is_file():
            continue
        if p.stem in found:
            dups.append((found[p.stem], p))
            continue
        found[p.stem] = p
    if dups:
        a, b = dups[0]
        raise R2RUserError(
            f"{len(dups)} prediction name(s) appear twice under {pred_dir}, e.g. {a} and {b}; predictions are "
            "matched to composites by file stem, so keep one file per composite"
        )
    return found


def _eval_one(job) -> dict:
    pred, mask, real, file_name, subset, resolution, use_gt_bg = job
    out, gt, m = load_triplet(pred, mask, real, resolution)
    return {"file_name": file_name, "subset": subset, **image_metrics(out, gt, m, use_gt_bg=use_gt_bg)}


def evaluate(pred_dir, data_root, split: str = "test", resolution: int | None = 256, use_gt_bg: bool = False,
             progress: bool = False, workers: int = 1) -> EvalReport:
    """Evaluate the predictions in ``pred_dir`` (named like the composites: ``<name>_<k>_<j>.png``)
    against the dataset at ``data_root`` (its ``<split>.jsonl``/``.txt`` list)."""
    from .dataset.layouts import read_split

    samples = read_split(data_root, split)
    preds = index_predictions(pred_dir)
    missing = [s.stem for s in samples if s.stem not in preds]
    if missing:
        raise R2RUserError(
            f"{len(missing)} of {len(samples)} composites of the {split!r} split have no prediction in {pred_dir} "
            f"(matched by file stem), e.g. {', '.join(missing[:10])}. Run the harmonizer on the whole split or "
            "evaluate a list with only the images you have (--split path/to/list.jsonl)"
        )
    jobs = [(str(preds[s.stem]), str(s.mask), str(s.real), s.file_name, s.subset, resolution, use_gt_bg)
            for s in samples]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluate", unit="img")
    rows = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            for row in pool.map(_eval_one, jobs, chunksize=16):
                rows.append(row)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            rows.append(_eval_one(job))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rep = summarize(rows)
    rep.settings = {
        "pred": str(pred_dir),
        "data": str(data_root),
        "split": split,
        "resolution": resolution if resolution else "full",
        "use_gt_bg": bool(use_gt_bg),
        "ratio_bins": BINNING_NOTE,
        "n": len(rows),
    }
    return rep


def format_table(rep: EvalReport) -> str:
    """A readable table: one row per subset, 'all', then the foreground-ratio breakdown."""

    def row(label, b):
        def f(v, nd):
            return "nan" if isinstance(v, float) and math.isnan(v) else ("inf" if v == math.inf else f"{v:.{nd}f}")

        return (f"{label:<14} {b['n']:>6} {f(b['psnr'], 3):>8} {f(b['mse'], 3):>9} {f(b['fmse'], 3):>10} "
                f"{f(b['bmse'], 3):>9} {f(b['ssim'], 4):>7}")

    head = f"{'subset':<14} {'n':>6} {'PSNR':>8} {'MSE':>9} {'fMSE':>10} {'bMSE':>9} {'SSIM':>7}"
    lines = [head, "-" * len(head)]
    for s, b in rep.subsets.items():
        lines.append(row(s, b))
    lines.append(row("all", rep.overall))
    lines.append("")
    lines.append("by foreground ratio (all images)")
    lines.append(head.replace("subset", "fg ratio"))
    lines.append("-" * len(head))
    for label, b in rep.ratio_bins.items():
        lines.append(row(label, b))
    lines.append(f"({BINNING_NOTE}: {len(rep.full_masks)} such image(s) here)")
    st = rep.settings
    if st:
        lines.append("")
        lines.append(
            f"resolution {st.get('resolution')}, background from ground truth: {'yes' if st.get('use_gt_bg') else 'no'}"
        )
    if rep.empty_masks:
        lines.append(
            f"note: {len(rep.empty_masks)} image(s) have an empty mask at this resolution; their fMSE is undefined "
            f"and left out of the fMSE means (e.g. {rep.empty_masks[0]})"
        )
    if rep.full_masks:
        lines.append(
            f"note: {len(rep.full_masks)} image(s) have a mask covering the whole image; their bMSE is undefined "
            f"and left out of the bMSE means, and they are in no foreground-ratio bin (e.g. {rep.full_masks[0]})"
        )
    return "\n".join(lines)
