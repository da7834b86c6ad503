"""The 7-channel hint (ref §a.2), checked against an independent restatement."""

import cv2
import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError
from r2r.imaging.hint import assemble_hint, hint_pre_image, make_hint


def _scene(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    comp = np.zeros((h, w, 3), np.uint8)
    comp[:] = (40, 90, 160)
    comp[20:70, 30:100] = (220, 60, 20)  # a box with strong edges
    comp[40:50, 50:60] = (10, 250, 120)
    comp = np.clip(comp.astype(int) + rng.integers(-3, 4, comp.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:80, 20:110] = True
    return comp, mask


def _reference_pre(comp, mask):
    # independent restatement: white outside, luma with BGR weights applied to RGB, Canny 100/200
    img = comp.astype(np.float64).copy()
    img[~mask] = 255
    gray = np.floor(0.114 * img[..., 0] + 0.587 * img[..., 1] + 0.299 * img[..., 2] + 0.5)
    edges = cv2.Canny(np.clip(gray, 0, 255).astype(np.uint8), 100, 200)
    return np.where(mask[..., None], np.stack([edges] * 3, -1), comp)


def test_pre_image_matches_restatement():
    comp, mask = _scene()
    pre = hint_pre_image(comp, mask)
    ref = _reference_pre(comp, mask)
    # OpenCV's fixed-point luma may differ by one grey level from the float formula on rare pixels,
    # which can move a Canny edge pixel; demand (near) identity.
    assert pre.dtype == np.uint8 and pre.shape == comp.shape
    assert np.mean(pre != ref) < 1e-3
    # outside the mask the composite itself, inside only Canny values
    assert np.array_equal(pre[~mask], comp[~mask])
    assert set(np.unique(pre[mask])) <= {0, 255}
    assert (pre[mask] == 255).any()


def test_uses_bgr_weights_on_rgb_array():
    # The official code feeds RGB to BGR2GRAY: red weighs 0.114, blue 0.299. A pure-red square on black
    # (grey step 29, Sobel ~116 < 200) gives NO edge, a pure-blue one (step 76, ~304 > 200) does.
    # With the "correct" RGB weights it would be the other way round.
    mask = np.ones((64, 64), bool)
    red = np.zeros((64, 64, 3), np.uint8)
    red[16:48, 16:48] = (255, 0, 0)
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[16:48, 16:48] = (0, 0, 255)
    assert hint_pre_image(red, mask).max() == 0
    assert hint_pre_image(blue, mask).max() == 255


def test_make_hint_channels():
    comp, mask = _scene()
    hint = make_hint(comp, mask)
    assert hint.shape == (7, 96, 128) and hint.dtype == torch.float32
    pre = _reference_pre(comp, mask)
    expected_comp = (torch.from_numpy(comp).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(hint[3:6], expected_comp)
    assert torch.equal(hint[6], torch.from_numpy(mask.astype(np.float32)))
    assert set(hint[6].unique().tolist()) == {0.0, 1.0}
    inside = hint[0:3][:, torch.from_numpy(mask)]
    assert set(inside.unique().tolist()) <= {-1.0, 1.0}
    assert hint.min() >= -1 and hint.max() <= 1
    close = (hint[0:3] - (torch.from_numpy(pre).permute(2, 0, 1).float() / 127.5 - 1)).abs() < 1e-6
    assert close.float().mean() > 0.999


def test_assemble_hint_concatenates():
    a, b, m = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8)
    h = assemble_hint(a, b, m)
    assert h.shape == (2, 7, 8, 8) and torch.equal(h[:, :3], a) and torch.equal(h[:, 6:], m)


def test_soft_and_uint8_masks_accepted():
    comp, mask = _scene()
    a = make_hint(comp, mask)
    b = make_hint(comp, mask.astype(np.uint8) * 255)
    c = make_hint(comp, mask.astype(np.float32))
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize(
    "comp,mask,words",
    [
        (np.zeros((64, 64, 3), np.float32), np.ones((64, 64), bool), "uint8"),
        (np.zeros((64, 64, 4), np.uint8), np.ones((64, 64), bool), "alpha"),
        (np.zeros((64, 64), np.uint8), np.ones((64, 64), bool), "HxWx3"),
        (np.zeros((64, 64, 3), np.uint8), np.ones((32, 64), bool), "Resize the mask"),
    ],
)
def test_make_hint_errors(comp, mask, words):
    with pytest.raises(R2RUserError, match=words):
        make_hint(comp, mask)
