"""Weight-free harmonizer: moves the foreground's statistics toward the background, strength 0 is
the identity, the background is untouched, soft masks blend, torch agrees with numpy."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from r2r.blending import harmonize_statistics, harmonize_statistics_torch  # noqa: E402
from r2r.errors import R2RUserError  # noqa: E402


@pytest.fixture(scope="module")
def composite():
    rng = np.random.default_rng(0)
    H, W = 96, 128
    img = np.empty((H, W, 3), np.float32)
    img[:] = (0.55, 0.45, 0.35)  # warm background with texture
    img += rng.normal(0, 0.06, (H, W, 3)).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[30:70, 40:90] = True
    img[mask] = np.array([0.2, 0.3, 0.75], np.float32) + rng.normal(0, 0.02, (mask.sum(), 3)).astype(np.float32)
    return np.clip(img, 0, 1), mask


def lab_stats(img, sel):
    lab = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2Lab)[sel]
    return lab.mean(0), lab.std(0)


def test_moves_foreground_stats_toward_background(composite):
    img, mask = composite
    out = harmonize_statistics(img, mask)
    mb, sb = lab_stats(img, ~mask)
    mf0, sf0 = lab_stats(img, mask)
    mf1, sf1 = lab_stats(out, mask)
    assert np.linalg.norm(mf1 - mb) < 0.1 * np.linalg.norm(mf0 - mb)
    assert np.abs(sf1 - sb).sum() < np.abs(sf0 - sb).sum()
    half = harmonize_statistics(img, mask, strength=0.5)
    mh, _ = lab_stats(half, mask)
    assert np.linalg.norm(mf1 - mb) < np.linalg.norm(mh - mb) < np.linalg.norm(mf0 - mb)


def test_strength_zero_is_identity_and_background_untouched(composite):
    img, mask = composite
    assert np.array_equal(harmonize_statistics(img, mask, strength=0.0), img)
    out = harmonize_statistics(img, mask, strength=1.0)
    assert out.dtype == img.dtype and np.array_equal(out[~mask], img[~mask])
    u8 = (img * 255).round().astype(np.uint8)
    out8 = harmonize_statistics(u8, mask.astype(np.uint8) * 255)
    assert out8.dtype == np.uint8 and np.array_equal(out8[~mask], u8[~mask])
    assert np.abs(out8.astype(int) - out * 255).mean() < 1.0  # uint8 input quantises the stats slightly


def test_soft_mask_blends(composite):
    img, mask = composite
    soft = mask.astype(np.float32)
    soft[30:70, 40:50] = 0.5
    full = harmonize_statistics(img, mask)
    out = harmonize_statistics(img, soft)
    assert np.array_equal(out[~mask], img[~mask])
    # at mask 0.5 the result lies halfway between the input and a full recolouring
    mid = out[40:60, 42:48]
    assert np.all(np.abs(mid - img[40:60, 42:48]) < np.abs(full[40:60, 42:48] - img[40:60, 42:48]) + 1e-6)
    assert np.abs(mid - img[40:60, 42:48]).mean() > 0.05


def test_reference_mask(composite):
    img, mask = composite
    img = img.copy()
    ref = np.zeros(mask.shape, bool)
    ref[:10, :20] = True
    img[ref] = (0.1, 0.8, 0.1)
    out = harmonize_statistics(img, mask, reference_mask=ref)
    mr, _ = lab_stats(img, ref)
    mf, _ = lab_stats(out, mask)
    assert np.linalg.norm(mf - mr) < 3.0
    assert np.array_equal(out[~mask], img[~mask])


def test_large_image_is_handled(composite):
    img, mask = composite
    big = cv2.resize(img, (1024, 768), interpolation=cv2.INTER_NEAREST)
    bm = cv2.resize(mask.astype(np.uint8), (1024, 768), interpolation=cv2.INTER_NEAREST) > 0
    out = harmonize_statistics(big, bm)
    small = harmonize_statistics(img, mask)
    assert np.abs(lab_stats(out, bm)[0] - lab_stats(small, mask)[0]).max() < 1.0


def test_torch_variant_matches_numpy(composite):
    torch = pytest.importorskip("torch")
    img, mask = composite
    soft = mask.astype(np.float32) * 0.8
    t = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    m = torch.from_numpy(soft)[None, None].repeat(2, 1, 1, 1)
    out = harmonize_statistics_torch(t, m, strength=0.7)
    ref = harmonize_statistics(img, soft, strength=0.7)
    np.testing.assert_allclose(out[1].permute(1, 2, 0).numpy(), ref, atol=1e-2)
    assert torch.equal(out[:, :, ~torch.from_numpy(mask)], t[:, :, ~torch.from_numpy(mask)])
    assert torch.equal(harmonize_statistics(t, m, strength=0.0), t)  # dispatch + identity


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strength=1.5), "strength must be"),
        (dict(mask="EMPTY"), "mask is empty"),
        (dict(mask="FULL"), "reference region is empty"),
        (dict(reference_mask="EMPTY"), "reference region is empty"),
        (dict(mask="SMALL"), "does not match the image size"),
        (dict(mask="NEG"), "values in"),
        (dict(composite="GREY"), "HxWx3"),
    ],
)
def test_bad_input(composite, kwargs, match):
    img, mask = composite
    subs = {"EMPTY": np.zeros(mask.shape, bool), "FULL": np.ones(mask.shape, bool),
            "SMALL": np.ones((4, 4), bool), "NEG": mask.astype(np.float32) - 0.5, "GREY": img[..., 0]}
    kwargs = {k: subs.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    args = dict(composite=img, mask=mask)
    args.update(kwargs)
    with pytest.raises(R2RUserError, match=match):
        harmonize_statistics(args.pop("composite"), args.pop("mask"), **args)
