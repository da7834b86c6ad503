"""r2r.imaging.fullres: carrying a working-resolution harmonization to full resolution."""

import cv2
import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError
from r2r.imaging.fullres import fit_color_transform, transfer_harmonization


def _scene(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # smooth colours + fine texture (the detail the colour transform must keep)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 37), 0.4 + 0.3 * np.cos(yy / 29), 0.5 + 0.2 * np.sin((xx + yy) / 53)], -1)
    img = np.clip(base + 0.08 * rng.standard_normal((h, w, 3)).astype(np.float32), 0, 1).astype(np.float32)
    mask = (((xx - w / 2) / (w / 4)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 < 1).astype(np.float32)
    return img, mask


def _harmonize(img, mask):
    """A known 'true' harmonization: spatially smooth affine colour change inside the mask."""
    h, w = mask.shape
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    t = img @ np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.1], [0.05, 0.0, 0.7]], np.float32) + 0.05 + 0.1 * xx
    t = np.clip(t, 0, 1)
    return img + mask[..., None] * (t - img)


def _down(x, s):
    return cv2.resize(x, (x.shape[1] // s, x.shape[0] // s), interpolation=cv2.INTER_AREA)


def test_color_transform_keeps_detail_and_beats_upsample():
    img, mask = _scene()
    truth = _harmonize(img, mask)
    low = _down(truth, 4)
    fg = mask > 0
    errs = {}
    for mode in ("color_transform", "upsample"):
        out = transfer_harmonization(img, low, mask, mode=mode)
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.array_equal(out[~fg], img[~fg])  # background bit-exact
        errs[mode] = float(np.abs(out - truth)[fg].mean())
    # the fine texture survives only through the colour transform
    assert errs["color_transform"] < 0.02
    assert errs["color_transform"] < errs["upsample"] / 3


def test_colour_agreement_with_working_resolution():
    img, mask = _scene(seed=1)
    truth = _harmonize(img, mask)
    low = _down(truth, 4)
    out = transfer_harmonization(img, low, mask)
    m_low = _down(mask, 4) > 0.99
    assert np.abs(_down(out, 4) - low)[m_low].mean() < 0.01


def test_global_transform_recovered_from_fit():
    img, mask = _scene(seed=2)
    a = np.array([[1.1, 0.0, 0.05], [0.1, 0.9, 0.0], [0.0, 0.0, 0.8]], np.float32)
    target = img @ a + 0.03
    coef = fit_color_transform(img, target, mask, eps=1e-5)
    inside = cv2.erode(mask, np.ones((41, 41), np.uint8)) > 0
    x = coef[..., :9].reshape(*mask.shape, 3, 3)
    assert np.abs(x[inside] - a).max() < 0.05
    assert np.abs(coef[..., 9:][inside] - 0.03).max() < 0.02


def test_uint8_and_torch_paths_match():
    img, mask = _scene(h=128, w=192, seed=3)
    truth = _harmonize(img, mask)
    low = _down(truth, 2)
    img8 = np.rint(img * 255).astype(np.uint8)
    mask8 = (mask * 255).astype(np.uint8)
    out8 = transfer_harmonization(img8, np.rint(low * 255).astype(np.uint8), mask8)
    assert out8.dtype == np.uint8 and np.array_equal(out8[mask == 0], img8[mask == 0])
    t_img = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    t_low = torch.from_numpy(low).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    t_mask = torch.from_numpy(mask)[None, None].repeat(2, 1, 1, 1)
    out_t = transfer_harmonization(t_img, t_low, t_mask)
    out_np = transfer_harmonization(img, low, mask)
    assert out_t.shape == t_img.shape
    assert torch.equal(out_t[:, :, mask == 0], t_img[:, :, mask == 0])
    assert np.abs(out_t[1].permute(1, 2, 0).numpy() - out_np).max() < 1e-6
    up_t = transfer_harmonization(t_img, t_low, t_mask, mode="upsample")
    assert up_t.shape == t_img.shape


def test_band_processing_is_seamless():
    from r2r.imaging import fullres

    img, mask = _scene(h=200, w=160, seed=4)
    low = _down(_harmonize(img, mask), 4)
    a = transfer_harmonization(img, low, mask)
    old = fullres._BAND_ROWS
    try:
        fullres._BAND_ROWS = 7
        b = fullres.transfer_harmonization(img, low, mask)
    finally:
        fullres._BAND_ROWS = old
    assert np.abs(a - b).max() < 1e-6


def test_bad_inputs_raise_user_errors():
    img, mask = _scene(h=64, w=64)
    low = _down(img, 2)
    with pytest.raises(R2RUserError, match="mode must be one of"):
        transfer_harmonization(img, low, mask, mode="sharpen")
    with pytest.raises(R2RUserError, match="resize the mask"):
        transfer_harmonization(img, low, mask[:32])
    with pytest.raises(R2RUserError, match="HxWx3"):
        transfer_harmonization(img[..., :2], low, mask)
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(R2RUserError, match="NaN"):
        transfer_harmonization(bad, low, mask)
    with pytest.raises(R2RUserError, match="batch sizes differ"):
        transfer_harmonization(torch.zeros(2, 3, 64, 64), torch.zeros(1, 3, 32, 32), torch.zeros(2, 1, 64, 64))
    with pytest.raises(R2RUserError, match="composite_low"):
        transfer_harmonization(img, low, mask, composite_low=img)
    with pytest.raises(R2RUserError, match="eps"):
        transfer_harmonization(img, low, mask, eps=0)


def test_color_transform_and_paste_with_prepared():
    from r2r import imaging
    from r2r.imaging import pasteback
    from r2r.imaging.fullres import color_transform_and_paste

    img, mask = _scene(h=300, w=500, seed=5)
    truth = _harmonize(img, mask)
    img8 = np.rint(img * 255).astype(np.uint8)
    prepared = imaging.prepare(img8, (mask * 255).astype(np.uint8), max_side=256, resize_mode="pad")
    h, w = prepared.geometry.working_size
    # the "model output": the true harmonization brought onto the working canvas
    t_truth = torch.from_numpy(truth).permute(2, 0, 1)[None]
    working = imaging.to_working(t_truth, prepared.geometry)
    assert tuple(working.shape[-2:]) == (h, w)
    out = color_transform_and_paste(working, prepared, mode="color_transform")
    assert out.shape == (1, 3, 300, 500)
    orig = prepared.original_composite
    far = pasteback.feather_alpha(prepared.original_mask, pasteback.default_feather(prepared.geometry)) == 0
    assert torch.equal(out[far.expand_as(out)], orig[far.expand_as(orig)])
    fg = torch.from_numpy(cv2.erode(mask, np.ones((9, 9), np.uint8)) > 0)
    err_ct = (out[0].permute(1, 2, 0) - t_truth[0].permute(1, 2, 0))[fg].abs().mean()
    up = color_transform_and_paste(working, prepared, mode="upsample")
    err_up = (up[0].permute(1, 2, 0) - t_truth[0].permute(1, 2, 0))[fg].abs().mean()
    assert err_ct < err_up
    assert torch.equal(color_transform_and_paste(working, prepared, mode="auto"), out)  # 500 px original > 256 working
    with pytest.raises(R2RUserError, match="working resolution"):
        color_transform_and_paste(working[..., :64, :64], prepared)
    with pytest.raises(R2RUserError, match="mode must be"):
        color_transform_and_paste(working, prepared, mode="sharp")
