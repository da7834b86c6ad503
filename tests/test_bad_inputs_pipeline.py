"""Bad inputs on the Python API: ``R2RPipeline(components)(composite, mask, ...)``.

Each must raise :class:`r2r.errors.R2RUserError` whose message carries the fix, and must do so
BEFORE any network runs (the Clear-VAE encoder is the first network; a sentinel in its place
fails the test if it is reached). Runs on the tiny components of tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError
from r2r.pipeline import R2RPipeline

H, W = 64, 96


class WorkStarted(AssertionError):
    """Raised by the sentinel encoder: the bad input was not found before the networks ran."""


@pytest.fixture()
def pipe(tiny_components, monkeypatch):
    p = R2RPipeline(tiny_components)

    def encode_sentinel(*args, **kwargs):
        raise WorkStarted("the encoder ran before the bad input was reported")

    monkeypatch.setattr(p, "encode", encode_sentinel)
    return p


def _inputs():
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 24:72] = 255
    return comp, mask


def _tensor(comp):
    return torch.from_numpy(comp).permute(2, 0, 1)[None].float() / 255


def _case(name):
    """(composite, mask, call kwargs) for the named bad input."""
    comp, mask = _inputs()
    t = _tensor(comp)
    kw = {"num_inference_steps": 1, "max_side": 64}
    if name == "channels-last-tensor":
        return t.permute(0, 2, 3, 1), mask, kw
    if name == "int32-tensor":
        return (t * 255).to(torch.int32), mask, kw
    if name == "uint16-array":
        return comp.astype(np.uint16) * 257, mask, kw
    if name == "0-255-floats":
        return t * 255, mask, kw
    if name == "minus-one-to-one":
        return t * 2 - 1, mask, kw
    if name == "nan-in-composite":
        t[0, 1, 5, 5] = float("nan")
        return t, mask, kw
    if name == "rgba-array":
        return np.concatenate([comp, np.full((H, W, 1), 255, np.uint8)], -1), mask, kw
    if name == "grey-2d-array":
        return comp[..., 0], mask, kw
    if name == "image-too-small":
        return comp[:32, :32], mask[:32, :32], kw
    if name == "mixed-size-list":
        return [comp, comp[:, :80]], mask, kw
    if name == "empty-list":
        return [], mask, kw
    if name == "unsupported-type":
        return "composite.png", mask, kw
    if name == "mask-size-mismatch":
        return comp, mask[:, :80], kw
    if name == "mask-empty":
        return comp, np.zeros_like(mask), kw
    if name == "mask-full":
        return comp, np.full_like(mask, 255), kw
    if name == "mask-0-255-floats":
        return comp, mask.astype(np.float32), kw
    if name == "mask-three-channels":
        return comp, np.repeat(mask[..., None], 3, -1), kw
    if name == "mask-nan":
        m = mask.astype(np.float32) / 255
        m[0, 0] = np.nan
        return comp, m, kw
    if name == "batch-mismatch":
        return t.repeat(2, 1, 1, 1), torch.from_numpy(mask)[None, None].repeat(3, 1, 1, 1).float() / 255, kw
    if name.startswith("generator-"):
        value = {"generator-string": "seed", "generator-float": 1.5, "generator-bool": True,
                 "generator-negative-seed": -1, "generator-seed-too-big": 2**64,
                 "generator-list-wrong-length": [0, 1, 2]}[name]
        return comp, mask, {**kw, "generator": value}
    if name.startswith("steps-"):
        value = {"steps-zero": 0, "steps-too-many": 1001, "steps-float": 2.5, "steps-bool": True}[name]
        return comp, mask, {**kw, "num_inference_steps": value}
    if name == "unknown-scheduler":
        return comp, mask, {**kw, "scheduler": "euler_a"}
    if name == "max-side-not-multiple":
        return comp, mask, {**kw, "max_side": 100}
    if name == "unknown-resize-mode":
        return comp, mask, {**kw, "resize_mode": "crop"}
    if name == "unknown-fullres-mode":
        return comp, mask, {**kw, "fullres_mode": "lanczos"}
    if name == "strength-negative":
        return comp, mask, {**kw, "strength": -0.5}
    if name == "strength-nan":
        return comp, mask, {**kw, "strength": float("nan")}
    if name == "feather-below-minus-one":
        return comp, mask, {**kw, "feather": -2}
    if name == "callback-not-callable":
        return comp, mask, {**kw, "callback": 5}
    if name == "reference-mask-wrong-size":
        return comp, mask, {**kw, "reference_mask": mask[:, :80]}
    raise KeyError(name)


# (name, words the message must contain: what was expected / given and the fix)
BAD = [
    ("channels-last-tensor", ["[B,3,H,W]", "permute(0, 3, 1, 2)"]),
    ("int32-tensor", ["float in [0, 1] or uint8", "torch.int32"]),
    ("uint16-array", ["float in [0, 1] or uint8", "uint16"]),
    ("0-255-floats", ["in [0, 1]", "divide by 255"]),
    ("minus-one-to-one", ["in [0, 1]", "(x + 1) / 2"]),
    ("nan-in-composite", ["NaN", "replace NaNs"]),
    ("rgba-array", ["HxWx3", "drop alpha"]),
    ("grey-2d-array", ["HxWx3", "np.repeat"]),
    ("image-too-small", ["at least 64x64", "Upscale"]),
    ("mixed-size-list", ["same size", "one call at a time"]),
    ("empty-list", ["list is empty", "at least one image"]),
    ("unsupported-type", ["Unsupported composite type", "numpy array"]),
    ("mask-size-mismatch", ["does not match the composite size", "Resize the mask"]),
    ("mask-empty", ["is empty", "white = the object"]),
    ("mask-full", ["covers the whole image", "inverted"]),
    ("mask-0-255-floats", ["[0, 1]", "divide by 255"]),
    ("mask-three-channels", ["single-channel", "mask[..., 0]"]),
    ("mask-nan", ["NaN"]),
    ("batch-mismatch", ["Batch sizes do not match", "composite 2, mask 3"]),
    ("generator-string", ["generator must be None, an int seed, a torch.Generator", "str"]),
    ("generator-float", ["generator must be", "float"]),
    ("generator-bool", ["generator must be", "bool"]),
    ("generator-negative-seed", ["seed must be an integer from 0 to 2**64 - 1", "-1"]),
    ("generator-seed-too-big", ["seed must be an integer from 0 to 2**64 - 1"]),
    ("generator-list-wrong-length", ["3", "batch"]),
    ("steps-zero", ["num_inference_steps must be an integer from 1 to 1000", "0"]),
    ("steps-too-many", ["num_inference_steps must be an integer from 1 to 1000", "1001"]),
    ("steps-float", ["num_inference_steps must be an integer", "2.5"]),
    ("steps-bool", ["num_inference_steps must be an integer", "True"]),
    ("unknown-scheduler", ["scheduler", "euler_ancestral", "'euler_a'"]),
    ("max-side-not-multiple", ["multiple of 64", "100"]),
    ("unknown-resize-mode", ["resize_mode", "fit", "'crop'"]),
    ("unknown-fullres-mode", ["fullres_mode", "color_transform", "'lanczos'"]),
    ("strength-negative", ["strength", "from 0 to 2", "-0.5"]),
    ("strength-nan", ["strength", "nan"]),
    ("feather-below-minus-one", ["feather", "-2"]),
    ("reference-mask-wrong-size", ["reference", "size"]),
    ("callback-not-callable", ["callback", "callable"]),
]

@pytest.mark.parametrize("name,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_work(name, words, pipe):
    composite, mask, kw = _case(name)
    with pytest.raises(R2RUserError) as info:
        pipe(composite, mask, **kw)
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)


def test_the_sentinel_is_reached_by_valid_input(pipe):
    """Guard for the refusal tests: a valid call does reach the encoder (so a refusal there came first)."""
    comp, mask = _inputs()
    with pytest.raises(WorkStarted):
        pipe(comp, mask, num_inference_steps=1, max_side=64, generator=0)


def test_unknown_scheduler_refused_at_construction(tiny_components):
    with pytest.raises(R2RUserError, match="scheduler must be one of .*euler_ancestral.*got 'k_euler'"):
        R2RPipeline(tiny_components, scheduler="k_euler")


def test_not_components_refused_at_construction():
    with pytest.raises(R2RUserError, match="load_components"):
        R2RPipeline({"unet": None})


def test_valid_edge_inputs_give_the_same_image(tiny_components):
    """The accepted spellings of one input give one result: uint8 array == float tensor == PIL image,
    0/255 mask == 0/1 mask == bool mask == PIL 'L' mask, and a batch of one == a list of one."""
    from PIL import Image

    pipe = R2RPipeline(tiny_components)
    comp, mask = _inputs()

    def run(c, m):
        return pipe(c, m, num_inference_steps=1, max_side=64, generator=3).images

    ref = run(comp, mask)
    assert ref.shape == (1, 3, H, W)
    for c, m in [(_tensor(comp), mask), (Image.fromarray(comp), mask), (comp, mask > 0), (comp, mask // 255),
                 (comp, Image.fromarray(mask)), ([comp], [mask]), (comp, torch.from_numpy(mask).float() / 255)]:
        assert torch.equal(run(c, m), ref)


def test_opaque_rgba_mask_file_is_read_by_its_grey_value(tmp_path):
    """A mask saved as a fully opaque RGBA PNG: the alpha says nothing, the grey value is the mask."""
    import cv2

    from r2r.fileio import read_mask

    grey = np.zeros((32, 48), np.uint8)
    grey[8:24, 10:30] = 255
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    cv2.imwrite(str(tmp_path / "m.png"), rgba)
    assert np.array_equal(read_mask(tmp_path / "m.png"), grey)
    cutout = rgba.copy()
    cutout[..., 3] = 255 - grey  # a real alpha channel still wins
    cv2.imwrite(str(tmp_path / "a.png"), cutout)
    assert np.array_equal(read_mask(tmp_path / "a.png"), 255 - grey)
