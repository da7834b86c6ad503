"""Random Poisson Blending invariants: exact background, preserved foreground gradients,
reproducibility, alpha = 0, reference handling, diagnostics and the filter."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
ndi = pytest.importorskip("scipy.ndimage")
skdata = pytest.importorskip("skimage.data")

from r2r.blending import passes_filter, random_poisson_blend, random_poisson_blend_torch  # noqa: E402
from r2r.errors import R2RUserError  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    real = cv2.resize(skdata.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[:192, :192]
    mask = ((yy - 90) / 50.0) ** 2 + ((xx - 100) / 40.0) ** 2 < 1.0
    pool = [cv2.resize(getattr(skdata, n)(), (160, 200), interpolation=cv2.INTER_AREA)
            for n in ("coffee", "chelsea", "rocket")]
    return real, mask, pool


@pytest.mark.parametrize("kwargs", [{}, {"pool": "POOL"}, {"mode": "masked"}, {"mixed": True},
                                    {"reference": "REF"}, {"alpha": 1.0, "dilate": 0}])
def test_background_bit_exact_and_foreground_changed(scene, kwargs):
    real, mask, pool = scene
    kwargs = {k: (pool if v == "POOL" else pool[0] if v == "REF" else v) for k, v in kwargs.items()}
    res = random_poisson_blend(real, mask, seed=3, **kwargs)
    assert res.composite.dtype == np.uint8 and res.composite.shape == real.shape
    assert np.array_equal(res.composite[~mask], real[~mask])
    assert res.real is not None and np.array_equal(res.real, real)
    assert np.array_equal(res.mask > 0, mask) and res.mask.dtype == np.uint8
    assert res.diagnostics["fmse"] > 1.0  # the foreground really changed
    assert np.abs(res.composite.astype(int) - real)[mask].mean() > 1.0


def test_float_input_keeps_dtype_and_background(scene):
    real, mask, pool = scene
    rf = real.astype(np.float32) / 255
    res = random_poisson_blend(rf, mask.astype(np.float32), seed=1, pool=pool)
    assert res.composite.dtype == np.float32 and res.mask.dtype == np.float32
    assert np.array_equal(res.composite[~mask], rf[~mask])
    assert 0.0 <= res.composite.min() and res.composite.max() <= 1.0


def test_alpha_zero_returns_the_real_image(scene):
    real, mask, pool = scene
    for kw in ({}, {"pool": pool}, {"mode": "masked"}):
        res = random_poisson_blend(real, mask, seed=9, alpha=0.0, **kw)
        assert np.array_equal(res.composite, real)
        assert res.diagnostics["fmse"] == 0.0 and res.diagnostics["alpha"] == 0.0


def test_reproducible_by_seed(scene):
    real, mask, pool = scene
    a = random_poisson_blend(real, mask, seed=42, pool=pool)
    b = random_poisson_blend(real, mask, seed=42, pool=pool)
    c = random_poisson_blend(real, mask, seed=43, pool=pool)
    assert np.array_equal(a.composite, b.composite) and a.diagnostics == b.diagnostics
    assert not np.array_equal(a.composite, c.composite)
    g1 = random_poisson_blend(real, mask, rng=np.random.default_rng(5))
    g2 = random_poisson_blend(real, mask, np.random.default_rng(5))
    assert np.array_equal(g1.composite, g2.composite)


def test_foreground_gradients_are_preserved(scene):
    """composite - real = alpha * (harmonic correction) where the guidance is the foreground's own."""
    real, mask, pool = scene
    rf = real.astype(np.float32) / 255
    for mode in ("box", "masked"):
        res = random_poisson_blend(rf, mask, seed=2, reference=pool[1], alpha=0.8, mode=mode)
        diff = res.composite.astype(np.float64) - rf
        lap = (diff[:-2, 1:-1] + diff[2:, 1:-1] + diff[1:-1, :-2] + diff[1:-1, 2:] - 4 * diff[1:-1, 1:-1])
        inner = ndi.binary_erosion(mask, np.ones((3, 3)), iterations=4)[1:-1, 1:-1]
        unclipped = ndi.minimum_filter((res.composite > 0) & (res.composite < 1), size=(3, 3, 1))[1:-1, 1:-1]
        sel = inner[:, :, None] & unclipped
        assert sel.sum() > 1000
        assert np.abs(lap[sel]).max() < 1e-3, mode  # harmonic: no detail of the reference leaks in
        assert np.abs(diff[mask]).mean() > 0.02  # while the colour did move


def test_colour_comes_from_the_reference(scene):
    real, mask, _ = scene
    blue = np.zeros_like(real)
    blue[..., 2] = 230
    res = random_poisson_blend(real, mask, seed=0, reference=blue, alpha=1.0)
    fg, fr = res.composite[mask].astype(float).mean(0), real[mask].astype(float).mean(0)
    assert fg[2] - fr[2] > 20 and fg[0] < fr[0]
    shift = res.diagnostics["color_shift_rgb_channels"]
    assert shift[2] > 20 and res.diagnostics["reference"] == "image"


def test_reference_region_and_self_reference(scene):
    real, mask, _ = scene
    region = np.zeros(mask.shape, bool)
    region[150:185, 5:60] = True
    res = random_poisson_blend(real, mask, seed=0, reference_mask=region, alpha=1.0)
    assert res.diagnostics["reference"] == "self-region"
    assert res.diagnostics["reference_rect"] == [150, 185, 5, 60]
    target = real[region].astype(float).mean(0)
    before = np.abs(real[mask].astype(float).mean(0) - target).sum()
    after = np.abs(res.composite[mask].astype(float).mean(0) - target).sum()
    assert after < before
    selfres = random_poisson_blend(real, mask, seed=0)
    assert selfres.diagnostics["reference"] == "self"
    y0, y1, x0, x1 = selfres.diagnostics["reference_rect"]
    assert mask[y0:y1, x0:x1].mean() < 0.9  # another region of the same image


def test_pool_of_paths_and_pairs(scene, tmp_path):
    real, mask, pool = scene
    p = tmp_path / "ref.png"
    cv2.imwrite(str(p), cv2.cvtColor(pool[2], cv2.COLOR_RGB2BGR))
    region = np.zeros(pool[0].shape[:2], np.uint8)
    region[20:80, 30:90] = 255
    res = random_poisson_blend(real, mask, seed=4, pool=[str(p), (pool[0], region)])
    assert res.diagnostics["reference"] in ("pool[0]", "pool[1]")
    with pytest.raises(R2RUserError, match="cannot read"):
        random_poisson_blend(real, mask, seed=4, pool=[str(tmp_path / "missing.png")])


def test_filter_retries_and_reports(scene):
    real, mask, pool = scene
    res = random_poisson_blend(real, mask, seed=1, pool=pool, min_fmse=1e9, max_tries=3)
    assert res.diagnostics["accepted"] is False and res.diagnostics["tries"] == 3
    ok = random_poisson_blend(real, mask, seed=1, pool=pool, min_fmse=1.0, max_fmse=1e6)
    assert ok.diagnostics["accepted"] is True and ok.diagnostics["tries"] == 1
    d = ok.diagnostics
    assert passes_filter(d, min_fmse=d["fmse"] - 1) and not passes_filter(d, max_fmse=d["fmse"] - 1)
    assert not passes_filter(d, min_color_shift_lab=d["color_shift_lab"] + 1)
    # fMSE exactly as the official metric (0..255 scale, 3 channels)
    err = (ok.composite.astype(np.float64) - real)[mask]
    assert d["fmse"] == pytest.approx((err**2).sum() / (3 * mask.sum()), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask="EMPTY"), "mask is empty"),
        (dict(mask="FULL"), "covers the whole image"),
        (dict(alpha=(0.9, 0.2)), "alpha must lie in"),
        (dict(alpha="strong"), "alpha must be"),
        (dict(seed="abc"), "seed must be"),
        (dict(real="GREY"), "RGB"),
        (dict(pool=[]), "pool must be"),
        (dict(placement="left"), "placement"),
        (dict(reference_mask="EMPTY"), "reference_mask is empty"),
    ],
)
def test_bad_input(scene, kwargs, match):
    real, mask, _ = scene
    subs = {"EMPTY": np.zeros(mask.shape, bool), "FULL": np.ones(mask.shape, bool), "GREY": real[..., 0]}
    kwargs = {k: subs.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    args = dict(real=real, mask=mask)
    args.update(kwargs)
    with pytest.raises(R2RUserError, match=match):
        random_poisson_blend(args.pop("real"), args.pop("mask"), **args)


def test_torch_batch_wrapper(scene):
    torch = pytest.importorskip("torch")
    real, mask, pool = scene
    rt = torch.from_numpy(real).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) / 255
    mt = torch.from_numpy(mask)[None, None].float().repeat(2, 1, 1, 1)
    comp, m, r, diags = random_poisson_blend_torch(rt, mt, seed=7, pool=pool)
    comp2, *_ = random_poisson_blend_torch(rt, mt, seed=7, pool=pool)
    assert comp.shape == rt.shape and m.shape == mt.shape and len(diags) == 2
    assert torch.equal(comp, comp2)
    assert torch.equal(comp[:, :, ~torch.from_numpy(mask)], rt[:, :, ~torch.from_numpy(mask)])
    assert not torch.equal(comp[0], comp[1])  # one generator across the batch


def test_diagnostics_units_and_consistency(scene):
    """rpb_diagnostics follows its documented definitions (0..255 scale, Lab Delta E of the mean colours),
    for uint8 and float triplets alike, and RPB's own (windowed) diagnostics agree with it."""
    from r2r.blending import rpb_diagnostics

    real, mask, pool = scene
    res = random_poisson_blend(real, mask, seed=6, pool=pool)
    c, r = res.composite.astype(np.float64), real.astype(np.float64)
    fg = mask
    mean_c, mean_r = c[fg].mean(0), r[fg].mean(0)
    lab = cv2.cvtColor((np.stack([mean_c, mean_r]) / 255).astype(np.float32)[:, None], cv2.COLOR_RGB2Lab)[:, 0]
    expect = {
        "fmse": ((c - r)[fg] ** 2).mean(),
        "mse": ((c - r) ** 2).mean(),
        "color_shift_rgb": np.linalg.norm(mean_c - mean_r),
        "color_shift_lab": np.linalg.norm(lab[0].astype(np.float64) - lab[1]),
        "fg_ratio": fg.mean(),
    }
    for d in (rpb_diagnostics(res.composite, real, mask),
              rpb_diagnostics(res.composite.astype(np.float32) / 255, real.astype(np.float32) / 255, mask),
              res.diagnostics):
        for k, v in expect.items():
            assert d[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
        np.testing.assert_allclose(d["color_shift_rgb_channels"], mean_c - mean_r, rtol=1e-4, atol=1e-6)
        assert d["psnr"] == pytest.approx(10 * np.log10(255**2 / expect["mse"]), rel=1e-5)
    assert res.diagnostics["rejection"] is None
