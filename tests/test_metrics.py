"""r2r.metrics against hand-computed values and scikit-image (the official script's library)."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from r2r import metrics
from r2r.cli import main
from r2r.errors import R2RUserError

skm = pytest.importorskip("skimage.metrics")


def _rand_pair(rng, shape=(48, 64, 3), noise=15.0):
    gt = rng.integers(0, 256, shape).astype(np.float32)
    out = np.clip(gt + rng.normal(0, noise, shape), 0, 255).astype(np.float32)
    return out, gt


# ----------------------------------------------------------------------------- hand-computed


def test_constant_images_hand_computed():
    gt = np.full((16, 16, 3), 100.0, np.float32)
    out = np.full((16, 16, 3), 110.0, np.float32)
    assert metrics.mse(out, gt) == pytest.approx(100.0)
    assert metrics.psnr(gt, out) == pytest.approx(10 * math.log10(255.0**2 / 100.0))
    # SSIM of constants: variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) with the
    # official quirk data_range = out.max() - gt.min() = 10 -> C1 = (0.01 * 10)^2
    c1 = (0.01 * 10.0) ** 2
    assert metrics.ssim(out, gt) == pytest.approx((2 * 110 * 100 + c1) / (110**2 + 100**2 + c1), rel=1e-9)
    # with the usual data_range = 255 the value differs
    c1b = (0.01 * 255.0) ** 2
    assert metrics.ssim(out, gt, data_range=255) == pytest.approx((22000 + c1b) / (22100 + c1b), rel=1e-9)


def test_fmse_hand_computed_and_gt_background():
    gt = np.zeros((10, 10, 3), np.float32)
    out = np.zeros((10, 10, 3), np.float32)
    m = np.zeros((10, 10), np.float32)
    m[2:6, 2:7] = 1  # 20 foreground pixels
    out[2:6, 2:7] = [3.0, 6.0, 9.0]  # squared errors 9, 36, 81 -> mean 42
    out[0, 0] = 50.0  # background error, ignored by fMSE
    assert metrics.fmse(out, gt, m) == pytest.approx(42.0)
    assert metrics.mse(out, gt) == pytest.approx((20 * (9 + 36 + 81) + 3 * 2500) / 300)
    r = metrics.image_metrics(out, gt, m, use_gt_bg=True)
    assert r["fmse"] == pytest.approx(42.0)
    assert r["mse"] == pytest.approx(42.0 * 0.2)  # background pasted -> only the 20% foreground counts
    assert r["fg_ratio"] == pytest.approx(0.2)
    assert math.isnan(metrics.fmse(out, gt, np.zeros((10, 10))))


def test_identical_images():
    rng = np.random.default_rng(1)
    _, gt = _rand_pair(rng)
    assert metrics.mse(gt, gt) == 0.0
    assert metrics.psnr(gt, gt) == math.inf
    assert metrics.ssim(gt, gt) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- scikit-image


@pytest.mark.parametrize("shape", [(48, 64, 3), (7, 7, 3), (256, 256, 3), (33, 20, 3)])
def test_against_scikit_image(shape):
    rng = np.random.default_rng(sum(shape))
    out, gt = _rand_pair(rng, shape)
    dr = out.max() - gt.min()
    assert metrics.ssim(out, gt) == pytest.approx(
        skm.structural_similarity(out, gt, data_range=dr, channel_axis=-1), abs=2e-6
    )
    assert metrics.psnr(gt, out) == pytest.approx(skm.peak_signal_noise_ratio(gt, out, data_range=255), abs=1e-5)
    assert metrics.mse(out, gt) == pytest.approx(skm.mean_squared_error(out, gt), rel=1e-6)


def test_fmse_equals_official_formula_and_gt_bg_against_skimage():
    rng = np.random.default_rng(3)
    out, gt = _rand_pair(rng, (40, 50, 3), noise=30)
    m = np.zeros((40, 50, 1), np.float32)
    m[5:30, 10:35] = 1
    official = skm.mean_squared_error(out * m, gt * m) * 40 * 50 / m.sum()
    assert metrics.fmse(out, gt, m) == pytest.approx(official, rel=1e-6)
    pasted = out * m + gt * (1 - m)
    r = metrics.image_metrics(out, gt, m, use_gt_bg=True)
    dr = pasted.max() - gt.min()
    assert r["ssim"] == pytest.approx(skm.structural_similarity(pasted, gt, data_range=dr, channel_axis=-1), abs=2e-6)
    assert r["psnr"] == pytest.approx(skm.peak_signal_noise_ratio(gt, pasted, data_range=255), abs=1e-5)


def test_bad_inputs():
    a = np.zeros((8, 8, 3))
    with pytest.raises(R2RUserError, match="same shape"):
        metrics.mse(a, np.zeros((8, 9, 3)))
    with pytest.raises(R2RUserError, match="at least 7x7"):
        metrics.ssim(np.zeros((5, 9, 3)), np.zeros((5, 9, 3)))
    with pytest.raises(R2RUserError, match="mask"):
        metrics.image_metrics(a, a, np.zeros((4, 4)))


# ----------------------------------------------------------------------------- aggregation


def test_ratio_bins_boundaries():
    assert metrics.ratio_bin(0.0) == "0-5%"
    assert metrics.ratio_bin(0.0499) == "0-5%"
    assert metrics.ratio_bin(0.05) == "5-15%"
    assert metrics.ratio_bin(0.15) == "15-100%"
    assert metrics.ratio_bin(0.9999) == "15-100%"
    assert metrics.ratio_bin(1.0) is None  # the official bins are all half-open: a full mask is in none


def test_bmse_hand_computed():
    gt = np.zeros((10, 10, 3), np.float32)
    out = np.zeros((10, 10, 3), np.float32)
    m = np.zeros((10, 10), np.float32)
    m[0:2, :] = 1  # 20 foreground pixels, 80 background pixels
    out[5, 5] = [4.0, 8.0, 0.0]  # one background pixel: squared error 16 + 64 + 0 = 80
    out[0, 0] = [30.0, 30.0, 30.0]  # foreground error, ignored by bMSE
    assert metrics.bmse(out, gt, m) == pytest.approx(80 / (3 * 80))
    # the official formula: MSE(out*(1-m), gt*(1-m)) * H*W / sum(1-m)
    b = (1 - m)[..., None]
    assert metrics.bmse(out, gt, m) == pytest.approx(float(np.mean((out * b - gt * b) ** 2)) * 100 / b.sum())
    r = metrics.image_metrics(out, gt, m)
    assert r["bmse"] == pytest.approx(1 / 3) and r["fmse"] == pytest.approx(2700 / 60)
    assert metrics.image_metrics(out, gt, m, use_gt_bg=True)["bmse"] == 0.0  # background pasted from gt
    assert math.isnan(metrics.bmse(out, gt, np.ones((10, 10))))  # no background


def test_full_mask_is_in_no_bin_and_out_of_the_bmse_mean():
    def row(name, subset, ratio, bmse):
        return {"file_name": name, "subset": subset, "mse": 1.0, "fmse": 2.0, "bmse": bmse, "psnr": 40.0,
                "ssim": 0.9, "fg_ratio": ratio}

    rows = [row("A/a", "A", 0.01, 3.0), row("A/b", "A", 0.2, 5.0), row("A/full", "A", 1.0, math.nan),
            row("B/c", "B", 0.1, 7.0)]
    rep = metrics.summarize(rows)
    assert [rep.ratio_bins[k]["n"] for k in ("0-5%", "5-15%", "15-100%")] == [1, 1, 1]  # 3 of 4 images binned
    assert rep.overall["n"] == 4 and rep.subsets["A"]["n"] == 3  # ... but all count in subsets and overall
    assert rep.overall["bmse"] == pytest.approx(5.0)  # (3 + 5 + 7) / 3: the full mask has no background
    assert rep.subsets["A"]["bmse"] == pytest.approx(4.0)
    assert rep.ratio_bins["15-100%"]["bmse"] == pytest.approx(5.0)
    assert rep.subset_ratio_bins["A"]["15-100%"]["n"] == 1
    assert rep.full_masks == ["A/full"]
    table = metrics.format_table(rep)
    assert "bMSE" in table and "ratio exactly 1.0 is in no bin" in table and "1 such image(s)" in table


def test_summary_is_per_image_mean_not_mean_of_subsets():
    rows = [
        {"file_name": "A/x", "subset": "A", "mse": 1.0, "fmse": 10.0, "bmse": 0.5, "psnr": 40.0, "ssim": 1.0,
         "fg_ratio": 0.01},
        {"file_name": "A/y", "subset": "A", "mse": 3.0, "fmse": 30.0, "bmse": 1.5, "psnr": 30.0, "ssim": 0.9,
         "fg_ratio": 0.10},
        {"file_name": "B/z", "subset": "B", "mse": 8.0, "fmse": math.nan, "bmse": 4.0, "psnr": 20.0, "ssim": 0.5,
         "fg_ratio": 0.5},
    ]
    rep = metrics.summarize(rows)
    assert rep.overall["n"] == 3
    assert rep.overall["mse"] == pytest.approx(4.0)  # (1 + 3 + 8) / 3, not ((1+3)/2 + 8) / 2 = 5
    assert rep.subsets["A"]["mse"] == pytest.approx(2.0)
    assert rep.overall["fmse"] == pytest.approx(20.0)  # the empty-mask image is left out of fMSE only
    assert rep.empty_masks == ["B/z"]
    assert rep.ratio_bins["0-5%"]["n"] == 1 and rep.ratio_bins["5-15%"]["n"] == 1
    assert rep.ratio_bins["15-100%"]["mse"] == pytest.approx(8.0)
    assert "all" in metrics.format_table(rep)


# ----------------------------------------------------------------------------- whole split


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def tiny_eval(tmp_path):
    """Two subsets (one by folder, one by RPHarmony name prefix), 300x200 images, PNG predictions."""
    rng = np.random.default_rng(5)
    data, pred = tmp_path / "data", tmp_path / "pred"
    lines = []
    for subset, name in (("HCOCO", "c1"), ("HCOCO", "c2"), ("R-DUTS", "rdx")):
        real = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
        m = np.zeros((200, 300), np.uint8)
        m[40:120, 50:200] = 255
        comp = real.copy()
        comp[m > 0] = (comp[m > 0] * 0.5).astype(np.uint8)
        _save(data / subset / "real_images" / f"{name}.jpg", real)
        _save(data / subset / "masks" / f"{name}_1.png", m)
        _save(data / subset / "composite_images" / f"{name}_1_1.jpg", comp)
        out = np.clip(real.astype(int) + rng.integers(-9, 10, real.shape), 0, 255).astype(np.uint8)
        _save(pred / f"{name}_1_1.png", out)
        lines.append(json.dumps({"file_name": f"{subset}/composite_images/{name}_1_1.jpg", "text": ""}))
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    return data, pred


def test_evaluate_matches_manual_pipeline(tiny_eval):
    data, pred = tiny_eval
    rep = metrics.evaluate(pred, data, split="test", resolution=256, use_gt_bg=True)
    assert rep.overall["n"] == 3 and set(rep.subsets) == {"HCOCO", "R-DUTS"}
    # manual: PIL bilinear to 256x256, mask "1" + nearest, paste background, scikit-image metrics
    out = np.asarray(Image.open(pred / "c1_1_1.png").convert("RGB").resize((256, 256), Image.BILINEAR), np.float32)
    gt = np.asarray(
        Image.open(data / "HCOCO/real_images/c1.jpg").convert("RGB").resize((256, 256), Image.BILINEAR), np.float32
    )
    m = np.asarray(Image.open(data / "HCOCO/masks/c1_1.png").convert("1").resize((256, 256), Image.NEAREST), np.float32)
    m = m[..., None]
    out = out * m + gt * (1 - m)
    row = next(r for r in rep.per_image if r["file_name"].endswith("c1_1_1.jpg"))
    assert row["subset"] == "HCOCO"
    assert row["mse"] == pytest.approx(skm.mean_squared_error(out, gt), rel=1e-5)
    assert row["psnr"] == pytest.approx(skm.peak_signal_noise_ratio(gt, out, data_range=255), abs=1e-4)
    assert row["ssim"] == pytest.approx(
        skm.structural_similarity(out, gt, data_range=out.max() - gt.min(), channel_axis=-1), abs=2e-6
    )
    assert row["fmse"] == pytest.approx(skm.mean_squared_error(out * m, gt * m) * 256 * 256 / m.sum(), rel=1e-5)
    assert row["bmse"] == 0.0  # --use-gt-bg pastes the ground truth's background
    nobg = metrics.evaluate(pred, data, split="test", resolution=256)
    out_raw = np.asarray(Image.open(pred / "c1_1_1.png").convert("RGB").resize((256, 256), Image.BILINEAR), np.float32)
    raw = next(r for r in nobg.per_image if r["file_name"].endswith("c1_1_1.jpg"))
    b = 1 - m
    assert raw["bmse"] == pytest.approx(skm.mean_squared_error(out_raw * b, gt * b) * 256 * 256 / b.sum(), rel=1e-5)
    assert row["fg_ratio"] == pytest.approx(m.mean())
    full = metrics.evaluate(pred, data, resolution=None)
    assert full.settings["resolution"] == "full" and full.overall["mse"] > rep.overall["mse"]


def test_evaluate_missing_and_duplicate_predictions(tiny_eval):
    data, pred = tiny_eval
    (pred / "c2_1_1.png").unlink()
    with pytest.raises(R2RUserError, match=r"1 of 3 composites .* no prediction .* c2_1_1"):
        metrics.evaluate(pred, data)
    _save(pred / "c2_1_1.png", np.zeros((8, 8, 3), np.uint8))
    _save(pred / "sub" / "c2_1_1.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(R2RUserError, match="appear twice"):
        metrics.evaluate(pred, data)
    with pytest.raises(R2RUserError, match="no list of the 'val' split"):
        metrics.evaluate(pred, data, split="val")


def test_evaluate_cli_json(tiny_eval, tmp_path, capsys):
    data, pred = tiny_eval
    out_json = tmp_path / "res" / "r.json"
    rc = main(["evaluate", "--pred", str(pred), "--data", str(data), "--use-gt-bg", "--json", str(out_json),
               "--no-progress", "--workers", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "bMSE" in text and "HCOCO" in text and "15-100%" in text and "in no bin" in text
    res = json.loads(out_json.read_text())
    assert res["settings"]["use_gt_bg"] is True and res["overall"]["n"] == 3 and len(res["per_image"]) == 3
    assert res["overall"]["bmse"] == 0.0 and "no bin" in res["settings"]["ratio_bins"]
    single = metrics.evaluate(pred, data, use_gt_bg=True)  # the worker processes give the same numbers
    assert [r["ssim"] for r in single.per_image] == [r["ssim"] for r in res["per_image"]]
    rc = main(["evaluate", "--pred", str(tmp_path / "nope"), "--data", str(data)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
