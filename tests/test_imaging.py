"""Preprocessing geometry, mask conventions, error paths and the paste-back."""

import cv2
import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError
from r2r.imaging import (
    compute_geometry,
    latent_mask_from,
    prepare,
    to_image_tensor,
    to_mask_tensor,
)
from r2r.imaging.pasteback import feather_alpha
from r2r.imaging.pasteback import upsample_and_paste as restore


def _inputs(h=120, w=200, seed=0, b=None):
    rng = np.random.default_rng(seed)
    comp = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 255
    return comp, mask


@pytest.mark.parametrize("h,w", [(64, 64), (120, 200), (1000, 333), (4000, 3000), (719, 1281), (65, 900)])
@pytest.mark.parametrize("mode", ["fit", "pad", "square"])
def test_geometry(h, w, mode):
    g = compute_geometry(h, w, 512, mode)
    wh, ww = g.working_size
    assert wh % 64 == 0 and ww % 64 == 0 and 64 <= min(wh, ww) and max(wh, ww) <= 512
    if mode == "square":
        assert g.working_size == (512, 512)
    elif mode == "fit":
        assert max(wh, ww) == 512
        # aspect kept up to rounding each side to a multiple of 64 (<= 32 px off, unless clamped at 64)
        assert abs(wh - h * 512 / max(h, w)) <= 32 or wh == 64
        assert abs(ww - w * 512 / max(h, w)) <= 32 or ww == 64
    else:
        ch, cw = g.content_size
        assert max(ch, cw) == 512 and abs(ch / cw - h / w) < 0.02 + 2 / min(ch, cw)
        top, bottom, left, right = g.padding
        assert top + ch + bottom == wh and left + cw + right == ww and min(g.padding) >= 0


def test_prepare_shapes_and_latent_mask():
    comp, mask = _inputs()
    p = prepare(comp, mask, max_side=256)
    assert p.geometry.working_size == (128, 256)
    assert p.composite_pm1.shape == (1, 3, 128, 256) and p.hint.shape == (1, 7, 128, 256)
    assert p.mask.shape == (1, 1, 128, 256) and p.latent_mask.shape == (1, 1, 16, 32)
    assert set(p.mask.unique().tolist()) == {0.0, 1.0}
    assert p.composite_pm1.min() >= -1 and p.composite_pm1.max() <= 1
    # latent mask = nearest with top-left sampling: pixel (8i, 8j)
    assert torch.equal(p.latent_mask, p.mask[..., ::8, ::8])
    assert torch.equal(latent_mask_from(p.mask), p.latent_mask)
    assert torch.equal(p.hint[:, 3:6], p.composite_pm1) and torch.equal(p.hint[:, 6:], p.mask)
    assert p.original_composite.shape == (1, 3, 120, 200) and p.original_mask.shape == (1, 1, 120, 200)


def test_no_resize_when_already_working_size():
    comp, mask = _inputs(128, 192)
    p = prepare(comp, mask, max_side=192)
    assert p.geometry.working_size == (128, 192)
    expected = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
    assert torch.equal((p.composite_pm1 + 1) / 2, (expected - 0.5) / 0.5 / 2 + 0.5)
    # the identity round trip restores the original exactly
    out = restore((p.composite_pm1 + 1) / 2, p, paste_back=False)
    assert torch.allclose(out, expected, atol=1e-6)


def test_canny_order_options():
    comp, mask = _inputs(200, 300)
    a = prepare(comp, mask, max_side=512, canny_at="original")
    b = prepare(comp, mask, max_side=512, canny_at="working")
    assert a.hint.shape == b.hint.shape
    assert torch.equal(a.hint[:, 3:], b.hint[:, 3:])
    assert not torch.equal(a.hint[:, :3], b.hint[:, :3])
    # working-resolution Canny keeps binary edges inside the mask; the resized one is blurred
    inside_b = b.hint[:, :3][b.mask.expand(-1, 3, -1, -1) > 0]
    assert set(inside_b.unique().tolist()) <= {-1.0, 1.0}
    inside_a = a.hint[:, :3][a.mask.expand(-1, 3, -1, -1) > 0]
    assert len(inside_a.unique()) > 2


def test_mask_conventions_equivalent():
    comp, mask = _inputs()
    ref = prepare(comp, mask, max_side=256)
    variants = [
        mask > 0,
        (mask > 0).astype(np.uint8),  # 0/1 label map
        mask.astype(np.float32) / 255,
        torch.from_numpy(mask.astype(np.float32) / 255),  # [H,W]
        torch.from_numpy(mask.astype(np.float32) / 255)[None],  # [B,H,W] (ComfyUI MASK)
        torch.from_numpy(mask.astype(np.float32) / 255)[None, None],
    ]
    for m in variants:
        p = prepare(comp, m, max_side=256)
        assert torch.equal(p.mask, ref.mask) and torch.equal(p.hint, ref.hint)


def test_image_input_types_equivalent():
    PIL = pytest.importorskip("PIL.Image")
    comp, mask = _inputs()
    ref = prepare(comp, mask, max_side=256)
    t = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
    for c, m in [(t, mask), (t[0], mask), (PIL.fromarray(comp), PIL.fromarray(mask)), ([comp], [mask]),
                 (torch.from_numpy(comp).permute(2, 0, 1), mask)]:
        p = prepare(c, m, max_side=256)
        assert torch.allclose(p.composite_pm1, ref.composite_pm1, atol=1e-6)
        assert torch.equal(p.mask, ref.mask)


def test_soft_mask_binarised_for_model_soft_for_pasteback():
    comp, mask = _inputs(128, 128)
    soft = mask.astype(np.float32) / 255 * 0.7  # everything "foreground" at 0.7
    soft[:, :10] = 0.3  # below threshold
    soft = np.where(mask > 0, soft, 0).astype(np.float32)
    p = prepare(comp, soft, max_side=128)
    assert set(p.mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(p.mask[0, 0], torch.from_numpy(soft >= 0.5).float())
    white = torch.ones(1, 3, 128, 128)
    out = restore(white, p, feather=0)
    orig = p.original_composite
    expected = white * 0.7 + orig * 0.3
    inside = torch.from_numpy(soft >= 0.5)
    assert torch.allclose(out[0][:, inside], expected[0][:, inside], atol=1e-6)


def test_batches_and_broadcast():
    comp, mask = _inputs(96, 96)
    comps = torch.stack([torch.from_numpy(comp).permute(2, 0, 1).float() / 255] * 3)
    p = prepare(comps, mask, max_side=128)  # one mask for three images
    assert p.composite_pm1.shape[0] == 3 and p.mask.shape[0] == 3 and p.hint.shape[0] == 3
    masks = torch.from_numpy(np.stack([mask] * 2)).float() / 255
    p = prepare(comp, masks, max_side=128)  # one image, two masks
    assert p.batch_size == 2
    with pytest.raises(R2RUserError, match="Batch sizes do not match"):
        prepare(comps, masks, max_side=128)


def test_paste_back_background_bit_exact():
    comp, mask = _inputs(150, 230)
    p = prepare(comp, mask, max_side=256)
    result = torch.rand(1, 3, *p.geometry.working_size)
    for feather in (None, 0, 3, 12):
        out = restore(result, p, feather=feather)
        orig = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
        alpha = feather_alpha(p.original_mask, 0 if feather is None else feather)
        # pixels farther than the band keep the original bit for bit
        dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        band = feather if feather is not None else max(1, round(8 * 230 / 256))
        outside = torch.from_numpy(dist > band)
        assert torch.equal(out[0][:, outside], orig[0][:, outside])
        # and the uint8 round trip returns the original file bytes there
        u8 = (out * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(u8[outside.numpy()], comp[outside.numpy()])
        # inside the (binary) mask the result is used as is
        inside = torch.from_numpy(mask > 0)
        res_orig = restore(result, p, paste_back=False)
        assert torch.allclose(out[0][:, inside], res_orig[0][:, inside])
        assert alpha.shape == (1, 1, 150, 230)
    # the band really blends (neither original nor result) right next to the mask
    out = restore(result, p, feather=12)
    ring = torch.from_numpy((dist > 0) & (dist <= 6))
    assert not torch.equal(out[0][:, ring], orig[0][:, ring])


def test_no_paste_back_returns_resized_result():
    comp, mask = _inputs()
    p = prepare(comp, mask, max_side=256)
    res = torch.full((1, 3, *p.geometry.working_size), 0.25)
    out = restore(res, p, paste_back=False)
    assert out.shape == (1, 3, 120, 200) and torch.allclose(out, torch.full_like(out, 0.25))


def test_pad_mode_round_trip():
    comp, mask = _inputs(100, 300)
    p = prepare(comp, mask, max_side=320, resize_mode="pad")
    assert p.geometry.content_size == (107, 320) and p.geometry.working_size == (128, 320)
    top = p.geometry.padding[0]
    assert p.mask[..., :top, :].sum() == 0  # padding is background
    out = restore((p.composite_pm1 + 1) / 2, p, paste_back=False)
    orig = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
    assert out.shape == orig.shape
    smooth_orig = torch.nn.functional.avg_pool2d(orig, 5, 1, 2)
    smooth_out = torch.nn.functional.avg_pool2d(out, 5, 1, 2)
    assert (smooth_out - smooth_orig).abs().mean() < 0.05


def _err(words, *args, **kwargs):
    with pytest.raises(R2RUserError, match=words):
        prepare(*args, **kwargs)


def test_error_paths():
    comp, mask = _inputs()
    _err("does not match the composite size", comp, mask[:, :100])
    _err("is empty", comp, np.zeros_like(mask))
    _err("covers the whole image", comp, np.full_like(mask, 255))
    _err("at least 64x64", comp[:50], mask[:50])
    nan = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
    nan[0, 0, 5, 5] = float("nan")
    _err("NaN", nan, mask)
    nan_mask = torch.from_numpy(mask).float() / 255
    nan_mask[3, 3] = float("nan")
    _err("NaN", comp, nan_mask)
    _err("alpha", torch.rand(1, 4, 120, 200), mask)
    _err("greyscale", torch.rand(1, 1, 120, 200), mask)
    _err("channels-last", torch.rand(1, 120, 200, 3), mask)
    _err("3 channel|greyscale|drop alpha", np.zeros((120, 200, 4), np.uint8), mask)
    _err("0..255", torch.rand(1, 3, 120, 200) * 255, mask)
    _err(r"\[-1, 1\]", torch.rand(1, 3, 120, 200) * 2 - 1, mask)
    _err("0..255", comp, mask.astype(np.float32))
    _err("single-channel", comp, np.zeros((120, 200, 3), np.uint8))
    _err("multiple of 64", comp, mask, max_side=1000)
    _err("resize_mode", comp, mask, resize_mode="crop")
    _err("canny_at", comp, mask, canny_at="later")
    _err("Unsupported composite type", "image.png", mask)
    # a mask that vanishes at the working/latent resolution
    tiny = np.zeros((1000, 1000), np.uint8)
    tiny[501:503, 501:503] = 255
    _err("too small|too thin", np.zeros((1000, 1000, 3), np.uint8), tiny, max_side=256)


def test_image_tensor_conversions():
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(to_image_tensor(u8), u8.float() / 255)
    assert to_mask_tensor(np.zeros((64, 64), bool)).shape == (1, 1, 64, 64)
    # k/255*255 rounds back to k for every uint8 value (the paste-back relies on it)
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal((to_image_tensor(k.view(1, 1, 16, 16).repeat(1, 3, 1, 1)) * 255).round().to(torch.uint8)[0, 0],
                       k.view(16, 16))


def test_resize_matches_official_pil_resize_within_one_grey_level():
    PIL = pytest.importorskip("PIL.Image")
    from r2r.imaging import resize

    comp, _ = _inputs(150, 230, seed=4)
    comp = cv2.GaussianBlur(comp, (0, 0), 2)  # photo-like content
    t = torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255
    for size in [(64, 128), (320, 448), (150, 230)]:
        pil = np.asarray(PIL.fromarray(comp).resize((size[1], size[0]), PIL.BILINEAR)).astype(np.float64)
        ours = resize(t, size)[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - pil).max() <= 1.0 + 1e-3


def test_working_size_above_the_table_is_refused_here_too():
    """imaging.compute_geometry uses the parameter table's range: what pipe(...) refuses, prepare refuses."""
    with pytest.raises(R2RUserError, match="from 64 to 4096"):
        compute_geometry(100, 100, 8192)
    assert compute_geometry(100, 100, 4096).working_size
