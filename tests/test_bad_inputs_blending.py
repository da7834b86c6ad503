"""Bad and edge inputs to the blending Python API (poisson_blend, solve_poisson, random_poisson_blend,
harmonize_statistics, the diagnostics filter): every bad input is a R2RUserError whose message says how
to fix it, raised before any work, with the inputs left unmodified; the valid edge cases (1-pixel
masks, masks touching the border, alpha = 0, strength = 0) give the correct result."""

import copy

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from r2r.blending import (  # noqa: E402
    filter_rejection,
    harmonize_statistics,
    passes_filter,
    poisson_blend,
    random_poisson_blend,
    rpb_diagnostics,
    solve_poisson,
)
from r2r.blending.poisson_torch import poisson_blend_torch  # noqa: E402
from r2r.errors import R2RUserError  # noqa: E402

H, W = 40, 48


def _images(seed=0):
    rng = np.random.default_rng(seed)
    T = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (5, 5), 1.5)
    S = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (3, 3), 1.0) * 0.8 + 0.1
    return T, S


def _mask():
    m = np.zeros((H, W), bool)
    m[12:28, 14:34] = True
    return m


def _snapshot(values):
    return [v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for v in values]


def _same(a, b):
    if torch.is_tensor(a):
        if a.is_floating_point():
            return a.shape == b.shape and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or a is b or (a != a and b != b)


def expect_user_error(fn, args, kwargs, match, *fix_words):
    """``fn(*args, **kwargs)`` raises R2RUserError matching ``match`` and naming a fix; inputs unchanged."""
    before_args, before_kwargs = _snapshot(args), _snapshot(list(kwargs.values()))
    with pytest.raises(R2RUserError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for word in fix_words:
        assert word in msg, (word, msg)
    assert all(_same(a, b) for a, b in zip(args, before_args))
    assert all(_same(a, b) for a, b in zip(kwargs.values(), before_kwargs))
    return msg


# ----------------------------------------------------------------------------- poisson_blend / solve_poisson

T0, S0 = _images()
M0 = _mask()
POISSON_BAD = [
    # (id, args, kwargs, match, fix words)
    ("float_0_255_target", (T0 * 255, S0 * 255, M0), {}, r"values in \[0, 1\]", "divide by 255"),
    ("uint8_target_float_source", ((T0 * 255).astype(np.uint8), S0, M0), {}, "both as uint8", "/ 255"),
    ("minus1_1_source", (T0, S0 * 2 - 1, M0), {}, r"\[-1, 1\]", "(x + 1) / 2"),
    ("nan_mask", (T0, S0, np.where(M0, np.nan, 0.0)), {}, "NaN", "nan_to_num"),
    ("mask_3_channels", (T0, S0, np.repeat(M0[:, :, None], 3, 2)), {}, "single-channel", "mask[..., 0]"),
    ("int_mask_out_of_range", (T0, S0, M0.astype(np.int32) * 300), {}, "integer masks", "mask > 0"),
    ("mask_wrong_size", (T0, S0, M0[:20]), {}, "does not match the image size", "resize"),
    ("empty_mask", (T0, S0, np.zeros((H, W), bool)), {}, "mask is empty", "white"),
    ("empty_image", (T0[:0], S0[:0], M0[:0]), {}, "is empty", "1x1"),
    ("int32_image", ((T0 * 255).astype(np.int32), (S0 * 255).astype(np.int32), M0), {}, "uint8", "astype"),
    ("string_image", ("target.png", S0, M0), {}, "image array", "Load the file"),
    ("tol_zero", (T0, S0, M0), {"mode": "masked", "tol": 0}, "tol must be", "5e-4"),
    ("tol_text", (T0, S0, M0), {"tol": "small"}, "tol must be", "5e-4"),
    ("max_iter_fraction", (T0, S0, M0), {"mode": "masked", "max_iter": 2.5}, "max_iter must be a whole", "2000"),
    ("max_iter_zero", (T0, S0, M0), {"max_iter": 0}, "max_iter must be a whole", "2000"),
    ("margin_fraction", (T0, S0, M0), {"margin": 1.5}, "margin must be a whole", "defaults"),
    ("erode_bool", (T0, S0, M0), {"erode": True}, "erode must be a whole", "defaults"),
    ("mode_unknown", (T0, S0, M0), {"mode": "poisson"}, "mode must be one of", "'box'"),
]


@pytest.mark.parametrize("case", POISSON_BAD, ids=[c[0] for c in POISSON_BAD])
def test_poisson_blend_bad_input(case):
    _, args, kwargs, match, *words = case
    expect_user_error(poisson_blend, args, kwargs, match, *words)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


TORCH_BAD = [
    ("uint8_tensor", ((_t(T0) * 255).to(torch.uint8), _t(S0), torch.from_numpy(M0)), {}, "float tensor",
     "x.float() / 255"),
    ("numpy_source_with_tensor_target", (_t(T0), S0, torch.from_numpy(M0)), {}, "must be a torch tensor",
     "all as numpy"),
    ("mask_0_255_float", (_t(T0), _t(S0), torch.from_numpy(M0).float() * 255), {}, r"values in \[0, 1\]",
     "divide by 255"),
    ("nan_target", (_t(np.where(M0[:, :, None], np.nan, T0).astype(np.float32)), _t(S0), torch.from_numpy(M0)), {},
     "NaN", "nan_to_num"),
    ("batch_mismatch", (_t(T0).repeat(2, 1, 1, 1), _t(S0).repeat(3, 1, 1, 1), torch.from_numpy(M0)), {},
     "same channels and size", "repeat"),
    ("empty_item_mask", (_t(T0).repeat(2, 1, 1, 1), _t(S0), torch.stack([torch.from_numpy(M0),
                                                                         torch.zeros(H, W, dtype=torch.bool)])),
     {}, "batch item 1 is empty", "white"),
    ("bad_backend", (_t(T0), _t(S0), torch.from_numpy(M0)), {"backend": "cuda"}, "backend must be", "'auto'"),
]


@pytest.mark.parametrize("case", TORCH_BAD, ids=[c[0] for c in TORCH_BAD])
def test_poisson_blend_torch_bad_input(case):
    _, args, kwargs, match, *words = case
    expect_user_error(poisson_blend_torch, args, kwargs, match, *words)


def test_solve_poisson_refuses_tensors_with_the_fix():
    expect_user_error(solve_poisson, (_t(T0)[0], _t(S0)[0], M0), {}, "torch tensor", "permute(1, 2, 0)")


# ----------------------------------------------------------------------------- random_poisson_blend

REAL = (T0 * 255).round().astype(np.uint8)
RPB_BAD = [
    ("seed_negative", {"seed": -1}, "seed must be >= 0", "seed=1234"),
    ("seed_float", {"seed": 1.5}, "seed must be None, an int", "seed=1234"),
    ("alpha_nan", {"alpha": float("nan")}, "alpha must lie in", "alpha=(0.5, 1.0)"),
    ("alpha_one_value_tuple", {"alpha": (0.2,)}, "alpha must be a number or", "alpha=(0.5, 1.0)"),
    ("alpha_reversed", {"alpha": (0.9, 0.1)}, "low <= high", "alpha=(0.5, 1.0)"),
    ("dilate_fraction", {"dilate": 1.5}, "dilate must be a whole", "default is 1"),
    ("dilate_text", {"dilate": "one"}, "dilate must be a whole", "default is 1"),
    ("max_tries_zero", {"max_tries": 0}, "max_tries must be a whole", "default is 8"),
    ("min_over_max_fmse", {"min_fmse": 500, "max_fmse": 100}, "larger than max_fmse", "Swap"),
    ("negative_colour_shift", {"min_color_shift_lab": -2}, "min_color_shift_lab must be", "Delta E"),
    ("nan_fmse", {"max_fmse": float("nan")}, "max_fmse must be", "0..255"),
    ("reference_mask_wrong_size", {"reference_mask": np.ones((10, 10), bool)}, "region at that image's size",
     "give the region"),
    ("reference_float_255", {"reference": REAL.astype(np.float32)}, r"values in \[0, 1\]", "divide by 255"),
    ("pool_missing_file", {"pool": ["/nonexistent/ref.png"]}, "cannot read", "Check the path"),
    ("pool_grey_image", {"pool": [REAL[..., 0]]}, "RGB", "convert('RGB')"),
    ("pool_pair_bad_region", {"pool": [(REAL, np.zeros((H, W), bool))]}, "region_mask is empty", "white"),
    ("placement_unknown", {"placement": "middle"}, "placement must be one of", "'auto'"),
]


@pytest.mark.parametrize("case", RPB_BAD, ids=[c[0] for c in RPB_BAD])
def test_random_poisson_blend_bad_input(case):
    _, kwargs, match, *words = case
    expect_user_error(random_poisson_blend, (REAL, M0), kwargs, match, *words)


def test_random_poisson_blend_bad_images():
    pm1 = np.tile(np.linspace(-1, 1, W, dtype=np.float32)[None, :, None], (H, 1, 3))
    expect_user_error(random_poisson_blend, (pm1, M0), {}, r"\[-1, 1\]", "(x + 1) / 2")
    expect_user_error(random_poisson_blend, (REAL, np.ones((H, W), bool)), {}, "covers the whole image",
                      "leaves part")
    expect_user_error(random_poisson_blend, (REAL[..., :2], M0), {}, "RGB", "convert('RGB')")


# ----------------------------------------------------------------------------- harmonize_statistics, filter

HARM_BAD = [
    ("strength_nan", (REAL, M0), {"strength": float("nan")}, "strength must be", "full statistics transfer"),
    ("strength_bool", (REAL, M0), {"strength": True}, "strength must be", "0 = unchanged"),
    ("composite_float_255", (REAL.astype(np.float32), M0), {}, r"values in \[0, 1\]", "divide by 255"),
    ("composite_nan_strength_0", (np.full((H, W, 3), np.nan, np.float32), M0), {"strength": 0.0}, "NaN",
     "nan_to_num"),
    ("reference_mask_wrong_size", (REAL, M0), {"reference_mask": np.ones((4, 4), bool)}, "does not match",
     "resize"),
    ("torch_mask_0_255", (_t(T0), torch.from_numpy(M0).float()[None] * 255), {}, r"values in \[0, 1\]",
     "divide by 255"),
    ("torch_composite_uint8", ((_t(T0) * 255).to(torch.uint8), torch.from_numpy(M0)[None]), {}, "float tensor",
     "x.float() / 255"),
]


@pytest.mark.parametrize("case", HARM_BAD, ids=[c[0] for c in HARM_BAD])
def test_harmonize_statistics_bad_input(case):
    _, args, kwargs, match, *words = case
    expect_user_error(harmonize_statistics, args, kwargs, match, *words)


def test_filter_and_diagnostics_bad_input():
    expect_user_error(passes_filter, ({"psnr": 30.0},), {"min_fmse": 10}, "'fmse'", "rpb_diagnostics")
    expect_user_error(filter_rejection, ({"fmse": 10.0},), {"min_color_shift_lab": 5}, "color_shift_lab",
                      "rpb_diagnostics")
    expect_user_error(rpb_diagnostics, (REAL, REAL[:20], M0), {}, "same shape", "as generated")
    expect_user_error(rpb_diagnostics, (REAL, T0, M0), {}, "both as uint8", "/ 255")


# ----------------------------------------------------------------------------- valid edge cases


def test_one_pixel_mask():
    T, S = _images(3)
    M = np.zeros((H, W), bool)
    M[9, 30] = True
    # masked mode: the closed form f = mean over the 4 neighbours of (T_q + S_p - S_q)
    expect = sum(T[q] + S[9, 30] - S[q] for q in [(8, 30), (10, 30), (9, 29), (9, 31)]) / 4
    for out in (poisson_blend(T, S, M, mode="masked", clip=False),
                poisson_blend_torch(_t(T), _t(S), torch.from_numpy(M), mode="masked", clip=False,
                                    backend="torch")[0].permute(1, 2, 0).numpy()):
        np.testing.assert_allclose(out[9, 30], expect, atol=1e-5)
        assert np.array_equal(out[~M], T[~M])
    # box mode erodes the mask by 3 px like OpenCV: nothing of the source survives, the result is the target
    T8, S8 = (T * 255).round().astype(np.uint8), (S * 255).round().astype(np.uint8)
    assert np.array_equal(poisson_blend(T8, S8, M), T8)
    # RPB with a one-pixel foreground works and changes nothing outside it
    res = random_poisson_blend(T8, M, seed=0, alpha=1.0)
    assert np.array_equal(res.composite[~M], T8[~M])


@pytest.mark.parametrize("mode", ["box", "masked"])
def test_mask_touching_the_border(mode):
    """Source = target + a constant: identical gradients, so the exact answer is the target itself,
    which needs the outside-the-image pixels to be handled consistently for both images."""
    T, _ = _images(4)
    S = T + 0.05
    M = np.zeros((H, W), bool)
    M[:15, :20] = True  # a corner
    M[H - 6:, 10:W] = True  # the bottom edge
    out = poisson_blend(T, S, M, mode=mode, erode=0, clip=False)
    np.testing.assert_allclose(out, T, atol=1e-5)
    tout = poisson_blend_torch(_t(T), _t(S), torch.from_numpy(M), mode=mode, erode=0, clip=False, backend="torch")
    np.testing.assert_allclose(tout[0].permute(1, 2, 0).numpy(), T, atol=1e-5)


def test_alpha_zero_and_strength_zero_return_the_input():
    real = REAL.copy()
    res = random_poisson_blend(real, M0, seed=5, alpha=0.0, min_fmse=None)
    assert np.array_equal(res.composite, REAL) and res.composite is not real
    assert res.diagnostics["fmse"] == 0.0 and res.diagnostics["color_shift_lab"] == 0.0
    assert res.diagnostics["accepted"] is True and res.diagnostics["rejection"] is None
    # with a filter alpha = 0 can never pass: the result says so and why
    res = random_poisson_blend(real, M0, seed=5, alpha=0.0, min_fmse=1.0, max_tries=3)
    assert res.diagnostics["accepted"] is False and "min_fmse" in res.diagnostics["rejection"]
    assert res.diagnostics["tries"] == 3  # a random region of the image is redrawn each try
    res = random_poisson_blend(real, M0, seed=5, alpha=0.0, min_fmse=1.0, max_tries=3, reference=real[::-1])
    assert res.diagnostics["tries"] == 1  # same place of a given reference, fixed alpha: nothing to redraw
    out = harmonize_statistics(real, M0, strength=0.0)
    assert np.array_equal(out, REAL) and out is not real
    assert np.array_equal(real, REAL)


def test_valid_mask_encodings_agree():
    T, S = _images(6)
    ref = poisson_blend(T, S, M0)
    for m in (M0.astype(np.uint8) * 255, M0.astype(np.float32), M0.astype(np.int64), M0.astype(np.int64) * 255,
              M0[None], M0[:, :, None]):
        assert np.array_equal(poisson_blend(T, S, m), ref)


def test_torch_rpb_wrapper_and_thread_setting_bad_input():
    from r2r.blending import random_poisson_blend_torch
    from r2r.blending.poisson import set_num_threads

    real = _t(T0)
    expect_user_error(random_poisson_blend_torch, (real * 255, torch.from_numpy(M0)[None]), {"seed": 1},
                      r"values in \[0, 1\]", "divide by 255")
    expect_user_error(random_poisson_blend_torch, (real, torch.from_numpy(M0)[None].float() * 255), {"seed": 1},
                      r"values in \[0, 1\]", "divide by 255")
    expect_user_error(random_poisson_blend_torch, (real, torch.from_numpy(M0[:10])[None]), {"seed": 1},
                      "matching the image", "Resize")
    expect_user_error(set_num_threads, ("four",), {}, "whole number >= 1", "None")
