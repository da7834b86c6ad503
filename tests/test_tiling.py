"""Banded Clear-VAE (r2r.imaging.tiling) against the untiled ClearVAE methods: same numbers, less memory."""

import pytest
import torch

from r2r.errors import R2RUserError
from r2r.imaging import tiling
from r2r.models import ClearVAE


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    m = ClearVAE(block_out_channels=(16, 32, 64, 64), norm_num_groups=8).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:  # random, non-zero skip convs / filter weights: every path matters
                p.add_(torch.randn_like(p) * 0.05)
    return m


def _untiled(vae, x):
    with torch.no_grad():
        post, skips = vae.encode_with_skips(x)
        return post, skips, vae.decode_with_skips(post.mode(), skips)


@pytest.mark.parametrize("size,band", [((128, 192), 1500), ((192, 128), 10**9), ((64, 64), 1)])
def test_tiled_matches_untiled(vae, size, band):
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size) * 2 - 1
    post, skips, ref = _untiled(vae, x)
    post_t, skips_t = tiling.tiled_encode_with_skips(vae, x, band_elements=band)
    assert len(skips_t) == len(skips) == 12
    assert torch.allclose(post_t.mean, post.mean, atol=1e-4)
    assert torch.allclose(post_t.logvar, post.logvar, atol=1e-4)
    for a, b in zip(skips_t, skips):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    out = tiling.tiled_decode_with_skips(vae, post.mode(), skips_t, band_elements=band)
    assert out.shape == ref.shape
    # the seam criterion is 2/255 in [0,1] units (= 4/255 in [-1,1]); we are at rounding level
    assert (out - ref).abs().max().item() < 1e-4


def test_decode_consumes_skips_and_keeps_result(vae):
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    post, skips, ref = _untiled(vae, x)
    skips_list = list(skips)
    out = tiling.tiled_decode_with_skips(vae, post.mode(), skips_list, band_elements=3000, consume_skips=True)
    assert all(s is None for s in skips_list)
    assert (out - ref).abs().max().item() < 1e-4


def test_auto_wrappers_tile_above_budget_and_on_oom(vae, monkeypatch):
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    post, skips, ref = _untiled(vae, x)
    calls = []
    real = tiling.tiled_decode_with_skips
    monkeypatch.setattr(tiling, "tiled_decode_with_skips", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tiling.decode_with_skips_auto(vae, post.mode(), list(skips), budget_bytes=1)
    assert calls and (out - ref).abs().max().item() < 1e-4
    calls.clear()
    tiling.decode_with_skips_auto(vae, post.mode(), list(skips), budget_bytes=10**15)
    assert not calls

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(vae, "decode_with_skips", oom)
    out = tiling.decode_with_skips_auto(vae, post.mode(), list(skips), tiled=False)
    assert calls and (out - ref).abs().max().item() < 1e-4

    def other(*a, **k):
        raise RuntimeError("some unrelated failure")

    monkeypatch.setattr(vae, "decode_with_skips", other)
    with pytest.raises(RuntimeError, match="unrelated"):
        tiling.decode_with_skips_auto(vae, post.mode(), list(skips), tiled=False)

    monkeypatch.setattr(vae, "encode_with_skips", oom)
    post2, skips2 = tiling.encode_with_skips_auto(vae, x, tiled=False)
    assert torch.allclose(post2.mean, post.mean, atol=1e-4)


def test_memory_model_and_budget(monkeypatch):
    small = tiling.estimate_vae_memory(512, 512)
    big = tiling.estimate_vae_memory(1024, 1024)
    assert big["decode"] == pytest.approx(4 * small["decode"], rel=1e-6)
    assert small["decode"] > small["encode"] > small["skips"] > 0
    half = tiling.estimate_vae_memory(512, 512, dtype=torch.float16)
    assert half["decode"] * 2 == pytest.approx(small["decode"], rel=1e-6)
    assert tiling.should_tile(4096, 4096, budget_bytes=2**30)
    assert not tiling.should_tile(64, 64, budget_bytes=2**30)
    monkeypatch.setenv("R2R_VAE_MEMORY_BUDGET_MB", "1")
    assert tiling.memory_budget_bytes() == 2**20
    monkeypatch.setenv("R2R_VAE_MEMORY_BUDGET_MB", "lots")
    with pytest.raises(R2RUserError, match="megabytes"):
        tiling.memory_budget_bytes()
    with pytest.raises(R2RUserError, match="which"):
        tiling.should_tile(64, 64, which="both")


def test_bad_inputs_are_user_errors(vae):
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    post, skips = tiling.tiled_encode_with_skips(vae, x)
    with pytest.raises(R2RUserError, match="latent"):
        tiling.tiled_decode_with_skips(vae, torch.zeros(1, 3, 16, 16), skips)
    with pytest.raises(R2RUserError, match="same size"):
        tiling.tiled_decode_with_skips(vae, torch.zeros(1, 4, 8, 8), skips)
    with pytest.raises(R2RUserError, match="multiples"):
        tiling.tiled_encode_with_skips(vae, torch.zeros(1, 3, 100, 128))
    with pytest.raises(R2RUserError, match="Clear-VAE"):
        tiling.tiled_encode_with_skips(torch.nn.Conv2d(3, 3, 1), x)
    vae.train()
    try:
        with pytest.raises(R2RUserError, match="eval"):
            tiling.tiled_encode_with_skips(vae, x)
    finally:
        vae.eval()


def test_channels_last_model_and_input(vae):
    import copy

    x = torch.rand(1, 3, 128, 192) * 2 - 1
    post, skips, ref = _untiled(vae, x)
    cl = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    post_t, skips_t = tiling.tiled_encode_with_skips(cl, xc, band_elements=4000)
    assert skips_t[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(post_t.mean, post.mean, atol=1e-4)
    out = tiling.tiled_decode_with_skips(cl, post.mode(), skips_t, band_elements=4000)
    assert (out - ref).abs().max().item() < 1e-4
