"""Bad and edge inputs to the node classes (issue 11.3): every bad IMAGE/MASK/number/choice ends in an
R2RUserError whose message names the node and says how to fix it, BEFORE any model work (the model
arguments here are None: a check that ran late would fail differently); valid edge cases give the
right result. Nothing is written by a refused dataset save.
"""

from __future__ import annotations

import pytest
import torch
from comfy_pack import node_classes, pack_module

NODES = node_classes()
R2RUserError = pack_module("r2r.errors").R2RUserError


def _scene(b=1, h=48, w=64):
    g = torch.Generator().manual_seed(0)
    img = 0.2 + 0.6 * torch.rand(b, h, w, 3, generator=g)
    mask = torch.zeros(b, h, w)
    mask[:, 12:36, 16:48] = 1.0
    img = torch.where(mask[..., None] > 0, img * torch.tensor([1.2, 0.7, 0.6]), img).clamp(0, 1)
    return img, mask


IMG, MASK = _scene()


def wf(image=IMG, mask=MASK, strength=1.0, invert_mask=False, reference_mask=None):
    return NODES["R2RWeightFreeHarmonize"].execute(image, mask, strength, invert_mask, reference_mask)


def rpb(image=IMG, mask=MASK, seed=0, strength=0.75, **kw):
    return NODES["R2RRandomPoissonBlend"].execute(image, mask, seed, strength, False, **kw)


BAD = [
    # (id, call, expected message fragments)
    ("uint8_image", lambda: wf(image=(IMG * 255).to(torch.uint8)), ["R2R Color Match (weight-free)", "uint8", "255"]),
    ("0_255_float_image", lambda: wf(image=IMG * 255), ["divide by 255"]),
    ("minus1_1_image", lambda: wf(image=IMG * 2 - 1), ["(x + 1) / 2"]),
    ("nan_image", lambda: wf(image=torch.where(MASK[..., None] > 0, float("nan"), IMG)), ["NaN"]),
    ("inf_image", lambda: wf(image=IMG.clone().index_fill_(1, torch.tensor([0]), float("inf"))), ["infinite"]),
    ("channels_first_image", lambda: wf(image=IMG.permute(0, 3, 1, 2)), ["channels-first", "permute"]),
    ("two_channel_image", lambda: wf(image=IMG[..., :2]), ["1|3|4 channels"]),
    ("empty_batch_image", lambda: wf(image=IMG[:0]), ["empty"]),
    ("list_image", lambda: wf(image=IMG.tolist()), ["IMAGE tensor", "list"]),
    ("int64_image", lambda: wf(image=(IMG * 255).long()), ["int64", "255"]),
    ("mask_0_255", lambda: wf(mask=MASK * 255), ["'mask'", "divide by 255"]),
    ("uint8_mask", lambda: wf(mask=(MASK * 255).to(torch.uint8)), ["'mask'", "uint8"]),
    ("nan_mask", lambda: wf(mask=MASK + float("nan")), ["NaN"]),
    ("image_into_mask", lambda: wf(mask=IMG), ["IMAGE", "Convert Image to Mask"]),
    ("negative_mask", lambda: wf(mask=MASK - 1), ["0..1"]),
    ("reference_mask_0_255", lambda: wf(reference_mask=MASK * 255), ["reference_mask", "divide by 255"]),
    ("negative_strength_wf", lambda: wf(strength=-0.5), ["strength", "0.0..1.0"]),
    ("nan_strength_wf", lambda: wf(strength=float("nan")), ["strength", "number"]),
    ("negative_strength_rpb", lambda: rpb(strength=-1.0), ["Random Poisson Blend", "strength"]),
    ("negative_seed_rpb", lambda: rpb(seed=-1), ["seed"]),
    ("float_seed_rpb", lambda: rpb(seed=1.5), ["seed", "integer"]),
    ("rpb_reference_image_255", lambda: rpb(reference_image=IMG * 255), ["reference_image", "divide by 255"]),
    ("maca_negative_strength",
     lambda: NODES["R2RMACAControllerApply"].execute(None, None, -0.1), ["MACA Controller Apply", "strength"]),
    ("maca_reference_mask_uint8",
     lambda: NODES["R2RMACAControllerApply"].execute(None, None, 1.0, reference_mask=(MASK * 255).byte()),
     ["reference_mask", "uint8"]),
    ("sampler_zero_steps", lambda: NODES["R2RSampler"].execute(None, None, 0, 0, "euler"), ["Sampler", "steps"]),
    ("sampler_bad_name", lambda: NODES["R2RSampler"].execute(None, None, 0, 2, "k_lms"), ["sampler", "euler_ancestral"]),
    ("sampler_seed_too_big", lambda: NODES["R2RSampler"].execute(None, None, 2**64, 2, "euler"), ["seed"]),
    ("decode_feather", lambda: NODES["R2RClearVAEDecode"].execute(None, None, feather=-2), ["feather", "from -1 to 256"]),
    ("decode_fullres", lambda: NODES["R2RClearVAEDecode"].execute(None, None, fullres_mode="big"), ["fullres_mode"]),
    ("encode_max_side", lambda: NODES["R2RClearVAEEncode"].execute(None, IMG, MASK, 32), ["max_side", "from 64 to 4096"]),
    ("encode_resize_mode", lambda: NODES["R2RClearVAEEncode"].execute(None, IMG, MASK, 64, False, "crop"),
     ["resize_mode", "fit"]),
    ("harmonize_negative_strength",
     lambda: NODES["R2RHarmonize"].execute(None, None, None, IMG, MASK, strength=-1.0), ["Harmonize", "strength"]),
    ("example_unknown", lambda: NODES["R2RExampleImage"].execute("teapot"), ["example", "astronaut"]),
]


@pytest.mark.parametrize("call,fragments", [(c, f) for _, c, f in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_is_a_user_error_with_the_fix(call, fragments):
    with pytest.raises(R2RUserError) as exc:
        call()
    text = str(exc.value)
    assert text.startswith("R2R")
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_bad_image_through_the_encoder_is_refused_before_the_model():
    enc = NODES["R2RClearVAEEncode"]
    with pytest.raises(R2RUserError, match="divide by 255"):
        enc.execute(None, IMG * 255, MASK, 64)
    with pytest.raises(R2RUserError, match=r"\(x \+ 1\) / 2"):
        enc.execute(None, IMG * 2 - 1, MASK, 64)
    with pytest.raises(R2RUserError, match="uint8"):
        enc.execute(None, IMG, (MASK * 255).byte(), 64)
    with pytest.raises(R2RUserError, match="divide by 255"):
        NODES["R2RHarmonize"].execute(None, None, None, IMG * 255, MASK)


def test_refused_dataset_save_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_OUTPUT_DIR", str(tmp_path))
    save = NODES["R2RSaveHarmonizationDataset"]
    with pytest.raises(R2RUserError, match="Save Harmonization Dataset.*divide by 255"):
        save.execute(IMG * 255, MASK, IMG, "ds/Bad", "R-Test", "train", "png")
    with pytest.raises(R2RUserError, match="split"):
        save.execute(IMG, MASK, IMG, "ds/Bad", "R-Test", "val", "png")
    with pytest.raises(R2RUserError, match="image_format"):
        save.execute(IMG, MASK, IMG, "ds/Bad", "R-Test", "train", "tiff")
    with pytest.raises(R2RUserError, match="'real'.*NaN"):
        save.execute(IMG, MASK, IMG + float("nan"), "ds/Bad", "R-Test", "train", "png")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- valid edge cases


def test_values_within_tolerance_are_clamped_not_refused():
    over = IMG.clone()
    over[0, 0, 0] = 1.0005  # resampling overshoot
    over[0, 0, 1] = -0.0005
    out = wf(image=over)[0]
    ref = wf(image=over.clamp(0, 1))[0]
    assert torch.equal(out, ref)


def test_layout_variants_give_the_same_result():
    base = wf()[0]
    assert torch.equal(wf(image=IMG[0])[0], base)  # [H,W,3] without batch
    assert torch.equal(wf(mask=MASK[0])[0], base)  # [H,W] mask
    assert torch.equal(wf(mask=MASK[:, None])[0], base)  # [B,1,H,W] mask
    assert torch.equal(wf(mask=MASK > 0.5)[0], base)  # boolean mask
    rgba = torch.cat([IMG, torch.ones_like(IMG[..., :1])], -1)
    assert torch.equal(wf(image=rgba)[0], base)  # alpha dropped
    assert torch.equal(wf(image=IMG.double())[0], base)  # float64 is still 0..1
    grey = IMG[..., :1]
    out = wf(image=grey)[0]
    assert out.shape == IMG.shape  # one channel expanded to RGB
    # a half-size mask with the same aspect ratio is resized
    small = torch.nn.functional.interpolate(MASK[:, None], size=(24, 32))[:, 0]
    assert wf(mask=small)[0].shape == IMG.shape


def test_zero_strength_and_boundary_values():
    assert torch.allclose(wf(strength=0.0)[0], IMG, atol=1 / 255)
    comp, m, real = rpb(strength=0.0, seed=0xFFFFFFFFFFFFFFFF - 5)
    assert torch.allclose(comp, IMG, atol=1 / 255) and torch.equal(real, IMG) and torch.equal(m, MASK)


def test_example_image_outputs_a_valid_composite_and_mask():
    for name in ("astronaut", "coffee", "motorcycle"):
        image, mask = NODES["R2RExampleImage"].execute(name).args
        assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[-1] == 3
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert mask.shape == image.shape[:3] and set(mask.unique().tolist()) == {0.0, 1.0}
        fg = float(mask.mean())
        assert 0.02 < fg < 0.8  # a real object on a real background
        out = wf(image=image, mask=mask)[0]  # it feeds the other nodes as it is (no invert_mask)
        assert out.shape == image.shape
