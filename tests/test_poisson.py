"""Poisson solvers: against independent scipy sparse solves, against cv2.seamlessClone on real
images, mixed gradients, border / multi-component / one-pixel / near-full masks, torch path."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sp = pytest.importorskip("scipy.sparse")
spl = pytest.importorskip("scipy.sparse.linalg")
ndi = pytest.importorskip("scipy.ndimage")
skdata = pytest.importorskip("skimage.data")

from r2r.blending import poisson_blend, poisson_residual, solve_poisson  # noqa: E402
from r2r.errors import R2RUserError  # noqa: E402

# ----------------------------------------------------------------------------- helpers


def blob_mask(H, W, seed, frac=0.2, rough=0.03):
    """A smooth random blob covering ``frac`` of the image, centred (not touching the border)."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((H, W)), min(H, W) / 12)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = rng.uniform(0.4, 0.6) * H, rng.uniform(0.4, 0.6) * W
    f = -np.hypot((yy - cy) / H, (xx - cx) / W) + noise / noise.std() * rough
    m = f > np.quantile(f, 1 - frac)
    lab, n = ndi.label(m)
    return lab == 1 + np.argmax(ndi.sum(m, lab, range(1, n + 1)))


def random_images(H, W, C=3, seed=0):
    rng = np.random.default_rng(seed)
    T = ndi.gaussian_filter(rng.random((H, W, C)), (2, 2, 0)).astype(np.float32)
    S = ndi.gaussian_filter(rng.random((H, W, C)), (1, 1, 0)).astype(np.float32) * 0.8 + 0.1
    return T, S


def edge_padded(T):
    return np.pad(T.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")


def scipy_masked(T, S, M, mixed=False):
    """Textbook Perez system built pixel by pixel (outside-image neighbours = edge copies of T)."""
    Tp, Sp, Mp = edge_padded(T), edge_padded(S), np.pad(M, 1)
    ys, xs = np.nonzero(Mp)
    n = len(ys)
    idx = -np.ones(Mp.shape, int)
    idx[ys, xs] = np.arange(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    b = np.zeros((n, T.shape[2]))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        g = Sp[ys, xs] - Sp[qy, qx]
        if mixed:
            gt = Tp[ys, xs] - Tp[qy, qx]
            g = np.where(np.abs(g) > np.abs(gt), g, gt)
        b += g
        inside = Mp[qy, qx]
        rows.append(np.flatnonzero(inside))
        cols.append(idx[qy, qx][inside])
        vals.append(-np.ones(inside.sum()))
        b[~inside] += Tp[qy, qx][~inside]
    A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    x = spl.spsolve(A, b)
    out = T.astype(np.float64).copy()
    out[ys - 1, xs - 1] = x.reshape(n, -1)
    return out


def scipy_box(T, S, M, erode=3):
    """OpenCV's box problem on the mask's bounding box, assembled independently as a sparse system:
    Delta f = div v on the box interior, f = T on the box border, v = forward differences of S on
    edges leaving a pixel of the eroded mask, of T elsewhere."""
    ys, xs = np.nonzero(M)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    Tb = T[y0:y1, x0:x1].astype(np.float64)
    Sb = S[y0:y1, x0:x1].astype(np.float64)
    Me = ndi.binary_erosion(M[y0:y1, x0:x1], np.ones((3, 3)), iterations=erode, border_value=0) if erode \
        else M[y0:y1, x0:x1]
    h, w = Tb.shape[:2]
    C = Tb.shape[2]
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = True
    idx = -np.ones((h, w), int)
    iy, ix = np.nonzero(interior)
    n = len(iy)
    idx[iy, ix] = np.arange(n)

    def v(py, px, dy, dx):  # guidance on edge p -> p + (dy, dx)
        src = Me[py, px][:, None]
        gs = Sb[py + dy, px + dx] - Sb[py, px]
        gt = Tb[py + dy, px + dx] - Tb[py, px]
        return np.where(src, gs, gt)

    div = v(iy, ix, 0, 1) - v(iy, ix - 1, 0, 1) + v(iy, ix, 1, 0) - v(iy - 1, ix, 1, 0)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, -4.0)]
    b = div.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = iy + dy, ix + dx
        inner = interior[qy, qx]
        rows.append(np.flatnonzero(inner))
        cols.append(idx[qy, qx][inner])
        vals.append(np.ones(inner.sum()))
        b[~inner] -= Tb[qy, qx][~inner]
    A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    x = spl.spsolve(A, b).reshape(n, C)
    out = Tb.copy()
    out[iy, ix] = x
    full = T.astype(np.float64).copy()
    full[y0:y1, x0:x1] = out
    return full


def cv2_in_place(T, S, M, flag):
    """cv2.seamlessClone with the source's mask box landing where it came from."""
    m = M.astype(np.uint8) * 255
    inner = m.copy()
    inner[0, :] = inner[-1, :] = 0
    inner[:, 0] = inner[:, -1] = 0
    x, y, w, h = cv2.boundingRect(inner)
    return cv2.seamlessClone(S, T, m, (x + w // 2, y + h // 2), flags=flag)


@pytest.fixture(scope="module")
def real_pairs():
    pairs = []
    for i, (a, b) in enumerate([("astronaut", "coffee"), ("chelsea", "rocket"), ("coffee", "astronaut"),
                                ("rocket", "chelsea")]):
        A = getattr(skdata, a)()
        B = cv2.resize(getattr(skdata, b)(), (A.shape[1], A.shape[0]), interpolation=cv2.INTER_AREA)
        pairs.append((B, A, blob_mask(*A.shape[:2], i)))
    return pairs


# ----------------------------------------------------------------------------- against scipy


def test_masked_matches_scipy_sparse_solve():
    T, S = random_images(48, 56, seed=1)
    M = blob_mask(48, 56, 3, frac=0.3, rough=0.2)
    ref = scipy_masked(T, S, M)
    out = poisson_blend(T, S, M, mode="masked", clip=False)
    assert np.abs(out - ref).max() < 1e-3
    assert np.array_equal(out[~M], T[~M])
    sol = solve_poisson(T, S, M, mode="masked")
    assert poisson_residual(sol) <= 1e-3
    assert sol.info["iterations"] > 0


def test_box_matches_scipy_sparse_solve():
    T, S = random_images(40, 52, seed=2)
    M = blob_mask(40, 52, 4, frac=0.35)
    for erode in (3, 0):
        ref = scipy_box(T, S, M, erode=erode)
        out = poisson_blend(T, S, M, mode="box", erode=erode, margin=0, clip=False)
        assert np.abs(out - ref)[M].max() < 1e-4, erode
        assert np.array_equal(out[~M], T[~M])


def test_mixed_gradients_masked_matches_scipy():
    T, S = random_images(40, 40, seed=5)
    T = T + 0.3 * (np.indices((40, 40)).sum(0) % 2)[:, :, None].astype(np.float32)  # strong target texture
    M = blob_mask(40, 40, 6, frac=0.4)
    ref = scipy_masked(T, S, M, mixed=True)
    out = poisson_blend(T, S, M, mode="masked", mixed=True, clip=False)
    assert np.abs(out - ref).max() < 1e-3
    plain = poisson_blend(T, S, M, mode="masked", mixed=False, clip=False)
    assert np.abs(out - plain)[M].max() > 0.05  # the target's texture survives with mixing


# ----------------------------------------------------------------------------- against OpenCV


@pytest.mark.parametrize("mixed", [False, True])
def test_box_matches_cv2_seamless_clone_on_real_images(real_pairs, mixed):
    flag = cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE
    for T, S, M in real_pairs:
        ref = cv2_in_place(T, S, M, flag).astype(np.float64)
        out = poisson_blend(T, S, M, mode="box", mixed=mixed)
        assert out.dtype == np.uint8
        interior = ndi.binary_erosion(M, np.ones((3, 3)), iterations=3)
        mad = np.abs(out.astype(np.float64) - ref)[interior].mean()
        assert mad <= 1.0, mad  # <= 1/255 of the range
        assert np.array_equal(out[~M], T[~M])
        assert poisson_residual(solve_poisson(T, S, M, mode="box", mixed=mixed)) <= 1e-3 * 255


def test_masked_residual_on_real_image(real_pairs):
    T, S, M = real_pairs[0]
    for mixed in (False, True):
        sol = solve_poisson(T, S, M, mode="masked", mixed=mixed)
        assert poisson_residual(sol) <= 1e-3 * 255


# ----------------------------------------------------------------------------- awkward masks


def awkward_masks(H, W):
    border = np.zeros((H, W), bool)
    border[:12, 5:30] = True  # touches the top edge
    border[H - 9:, W - 7:] = True  # a corner
    multi = np.zeros((H, W), bool)
    multi[5:12, 6:14] = multi[20:30, 30:40] = multi[33, 3] = True
    one = np.zeros((H, W), bool)
    one[17, 23] = True
    most = np.ones((H, W), bool)
    most[H // 2:H // 2 + 3, W // 3:W // 3 + 4] = False  # all but a small hole
    return {"border": border, "multi": multi, "one": one, "most": most}


@pytest.mark.parametrize("name", ["border", "multi", "one", "most"])
def test_awkward_masks_masked_mode_exact(name):
    T, S = random_images(36, 44, seed=7)
    M = awkward_masks(36, 44)[name]
    ref = scipy_masked(T, S, M)
    out = poisson_blend(T, S, M, mode="masked", clip=False)
    assert np.abs(out - ref).max() < 1e-3
    assert np.array_equal(out[~M], T[~M])


@pytest.mark.parametrize("name", ["border", "multi", "one", "most"])
def test_awkward_masks_box_mode(name):
    T, S = random_images(36, 44, seed=8)
    M = awkward_masks(36, 44)[name]
    for erode in (3, 0):
        sol = solve_poisson(T, S, M, mode="box", erode=erode)
        assert poisson_residual(sol) <= 1e-3
        out = poisson_blend(T, S, M, mode="box", erode=erode)
        assert out.shape == T.shape and np.isfinite(out).all()
        assert np.array_equal(out[~M], T[~M])
    # erode=0: a pixel gets the source's detail even right at the mask edge
    if name == "one":
        out = poisson_blend(T, S, M, mode="box", erode=0, clip=False)
        assert out[17, 23, 0] != T[17, 23, 0]


def test_one_pixel_mask_masked_closed_form():
    T, S = random_images(10, 10, seed=9)
    M = np.zeros((10, 10), bool)
    M[4, 6] = True
    out = poisson_blend(T, S, M, mode="masked", clip=False)
    nb = [(3, 6), (5, 6), (4, 5), (4, 7)]
    expect = sum(T[q] + S[4, 6] - S[q] for q in nb) / 4
    np.testing.assert_allclose(out[4, 6], expect, atol=1e-5)


def test_full_mask_box_mode_uses_the_edge_frame():
    T, S = random_images(20, 24, seed=10)
    M = np.ones((20, 24), bool)
    out = poisson_blend(T, S, M, mode="box", erode=0, clip=False)
    assert np.isfinite(out).all()
    # the solution keeps the source's gradients in the middle of the image
    dS = np.diff(S[8:12, 8:16], axis=1)
    dO = np.diff(out[8:12, 8:16], axis=1)
    assert np.abs(dO - dS).max() < 0.05


# ----------------------------------------------------------------------------- API behaviour


def test_dtypes_and_grayscale():
    T, S = random_images(30, 30, seed=11)
    M = blob_mask(30, 30, 1, frac=0.3)
    out8 = poisson_blend((T * 255).astype(np.uint8), (S * 255).astype(np.uint8), M)
    assert out8.dtype == np.uint8
    outf = poisson_blend(T.astype(np.float64), S.astype(np.float64), M.astype(np.float32))
    assert outf.dtype == np.float64 and outf.min() >= 0 and outf.max() <= 1
    g = poisson_blend(T[:, :, 0], S[:, :, 0], M * 255)
    assert g.shape == (30, 30)
    np.testing.assert_allclose(g, poisson_blend(T, S, M)[:, :, 0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=np.zeros((16, 16), bool)), "mask is empty"),
        (dict(mask=np.ones((8, 8), bool)), "does not match the image size"),
        (dict(mode="fancy"), "mode must be one of"),
        (dict(erode=-1), "erode must be a whole number"),
        (dict(source=np.zeros((16, 12, 3), np.float32)), "same shape"),
        (dict(target=np.full((16, 16, 3), np.nan, np.float32)), "NaN"),
        (dict(target=np.zeros((16, 16, 3), np.int32)), "uint8"),
    ],
)
def test_bad_input_raises_user_error(kwargs, match):
    args = dict(target=np.zeros((16, 16, 3), np.float32), source=np.ones((16, 16, 3), np.float32),
                mask=np.pad(np.ones((4, 4), bool), 6))
    args.update(kwargs)
    with pytest.raises(R2RUserError, match=match):
        poisson_blend(args.pop("target"), args.pop("source"), args.pop("mask"), **args)


def test_masked_non_convergence_is_reported():
    T, S = random_images(40, 40, seed=12)
    M = blob_mask(40, 40, 2, frac=0.4, rough=0.3)
    with pytest.raises(R2RUserError, match="did not converge"):
        poisson_blend(T, S, M, mode="masked", max_iter=1, tol=1e-9)


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("mode", ["box", "masked"])
@pytest.mark.parametrize("mixed", [False, True])
def test_torch_backend_matches_numpy(mode, mixed):
    torch = pytest.importorskip("torch")
    from r2r.blending.poisson_torch import poisson_blend_torch

    T, S = random_images(34, 40, seed=13)
    M1 = blob_mask(34, 40, 5, frac=0.3)
    M2 = awkward_masks(34, 40)["border"]
    ref = np.stack([poisson_blend(T, S, m, mode=mode, mixed=mixed) for m in (M1, M2)])
    Tt = torch.from_numpy(T).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    St = torch.from_numpy(S).permute(2, 0, 1)[None]  # batch of one broadcasts
    Mt = torch.from_numpy(np.stack([M1, M2]))[:, None].float()
    for backend in ("torch", "numpy"):
        out = poisson_blend_torch(Tt, St, Mt, mode=mode, mixed=mixed, backend=backend)
        assert out.shape == Tt.shape and out.dtype == Tt.dtype
        np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), ref, atol=2e-4)
    # the generic entry point dispatches tensors, [C,H,W] in -> [C,H,W] out
    single = poisson_blend(Tt[0], St[0], Mt[0, 0], mode=mode, mixed=mixed)
    assert single.shape == Tt[0].shape


def test_torch_bad_mask_shape():
    torch = pytest.importorskip("torch")
    with pytest.raises(R2RUserError, match="mask must be"):
        poisson_blend(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 4, 4))


def test_tolerance_rule_is_the_same_on_both_backends():
    """``tol`` is relative to the whole image's value range (255 for uint8; for float, max(1, the span of
    target and source)), never to the solve window's: the torch backend once used the window's span, so on
    an image whose far-away pixels widen the range it needed more iterations than the numpy backend and
    failed with the same max_iter."""
    torch = pytest.importorskip("torch")
    from r2r.blending.poisson_torch import poisson_blend_torch

    rng = np.random.default_rng(0)
    T = (ndi.gaussian_filter(rng.random((64, 64, 3)), (2, 2, 0)) * 20).astype(np.float32)
    S = (ndi.gaussian_filter(rng.random((64, 64, 3)), (1, 1, 0)) * 20).astype(np.float32)
    T[0, 0] = 255.0  # far outside the solve window
    M = np.zeros((64, 64), bool)
    M[20:50, 18:46] = True
    M[30:40, 30:36] = False
    sol = solve_poisson(T, S, M, mode="masked", tol=1e-4)
    assert sol.info["value_range"] == pytest.approx(float(max(T.max(), S.max()) - min(T.min(), S.min())))
    n = sol.info["iterations"]
    ref = poisson_blend(T, S, M, mode="masked", tol=1e-4, max_iter=n, clip=False)
    Tt, St = (torch.from_numpy(x).permute(2, 0, 1) for x in (T, S))
    for backend in ("torch", "numpy"):
        out = poisson_blend_torch(Tt, St, torch.from_numpy(M), mode="masked", tol=1e-4, max_iter=n, clip=False,
                                  backend=backend)
        np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-4 * 255)
    # uint8 images: the range is 255 whatever the data spans
    T8, S8 = (T / 20 * 100).astype(np.uint8), (S / 20 * 100).astype(np.uint8)
    assert solve_poisson(T8, S8, M, mode="masked").info["value_range"] == 255.0
    # [0, 1] float images: the range is 1 even when the data spans less
    assert solve_poisson(T / 400, S / 400, M, mode="masked").info["value_range"] == 1.0


def test_the_numpy_and_torch_backends_share_the_pcg():
    """One PCG: the same problem takes the same number of iterations on both backends."""
    pytest.importorskip("torch")
    from r2r.blending import poisson_numpy, poisson_stencils, poisson_torch

    calls = []
    real = poisson_stencils.solve_pcg

    def counting(*args, **kwargs):
        u, info = real(*args, **kwargs)
        calls.append(info["iterations"])
        return u, info

    T, S = random_images(40, 44, seed=21)
    M = blob_mask(40, 44, 3, frac=0.3, rough=0.2)
    import torch

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(poisson_numpy, "solve_pcg", counting)
        mp.setattr(poisson_stencils, "solve_pcg", counting)  # the torch backend calls it through the module
        poisson_blend(T, S, M, mode="masked")
        poisson_torch.poisson_blend_torch(torch.from_numpy(T).permute(2, 0, 1), torch.from_numpy(S).permute(2, 0, 1),
                                          torch.from_numpy(M), mode="masked", backend="torch")
    finally:
        mp.undo()
    assert len(calls) == 2 and calls[0] == calls[1] > 0
