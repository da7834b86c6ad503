"""r2r.models: exact weight compatibility with the official release + behaviour of every addition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from r2r.errors import R2RUserError
from r2r.models import MACA, AdaptiveFilters, ClearVAE, HarmonyController

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "tests" / "data" / "manifests"
OFFICIAL = ROOT / "r2r" / "configs" / "official"
SD = OFFICIAL / "stable-diffusion-inpainting"


def _json(p: Path):
    return json.loads(p.read_text())


def _meta_model(name: str):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        if name == "clear_vae":
            return ClearVAE.from_config(_json(OFFICIAL / "clear_vae" / "config.json"))
        if name == "controlnet":
            return HarmonyController.from_config(_json(SD / "controlnet" / "config.json"))
        return UNet2DConditionModel.from_config(_json(SD / "unet" / "config.json"))


@pytest.fixture(scope="module")
def meta_models():
    return {n: _meta_model(n) for n in ("clear_vae", "controlnet", "unet")}


# ---------------------------------------------------------------------------- manifests
def test_state_dicts_equal_official_manifests(meta_models):
    total = 0
    for name, model in meta_models.items():
        manifest = _json(MANIFESTS / f"{name}.keys.json")
        got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
        assert got == manifest, name  # same keys, order, shapes and dtypes
        total += len(got)
    assert total == 1430


def test_parameter_counts_equal_official(meta_models):
    counts = _json(MANIFESTS / "param_counts.json")
    for name, model in meta_models.items():
        c = counts[name]
        assert sum(p.numel() for p in model.parameters()) == c["parameters"]
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == c["parameters_requires_grad"]
        assert sum(v.numel() for v in model.state_dict().values()) == c["state_dict_elements"]
        assert len(model.state_dict()) == c["state_dict_tensors"]


def test_official_geometry_from_config(meta_models):
    vae, cn = meta_models["clear_vae"], meta_models["controlnet"]
    assert vae.skip_channels == [128] * 4 + [256] * 3 + [512] * 5
    assert [m.config.channels for m in cn.PCCAs] == [320, 640, 1280, 1280]
    assert vae.config.down_block_types == ["DownEncoderSkipBlock2D"] * 4  # official names kept in the config


# ---------------------------------------------------------------------------- filters
def _formula_filter(f: AdaptiveFilters, x: torch.Tensor) -> torch.Tensor:
    """ref §b.3 written out: eight depthwise convs + alpha8 * (x - 2-D Gaussian(x)) + beta * x."""
    kernels = {
        "Sobel_x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
        "Sobel_y": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
        "Laplation": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
        "Edge": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
        "Sobel_xy": [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
        "Sobel_yx": [[-2, -1, 0], [-1, 0, 1], [0, 1, 2]],
        "Roberts_x": [[1, 0, 0], [0, -1, 0], [0, 0, 0]],
        "Roberts_y": [[0, 1, 0], [-1, 0, 0], [0, 0, 0]],
    }
    c = x.shape[1]
    y = torch.zeros_like(x)
    for k, kern in enumerate(kernels.values()):
        w = (torch.tensor(kern, dtype=torch.float16) * 1e-3).to(x.dtype).expand(c, 1, 3, 3)
        y = y + f.alpha[k].to(x.dtype) * F.conv2d(x, w, padding=1, groups=c)
    t = torch.arange(-7, 8, dtype=torch.float32)  # torchvision builds the kernel in float32
    g = torch.exp(-(t**2) / (2 * 25.0))
    g = (g / g.sum()).to(x.dtype)
    g2 = torch.outer(g, g).expand(c, 1, 15, 15)
    blur = F.conv2d(F.pad(x, (7, 7, 7, 7), mode="reflect"), g2, groups=c)
    return y + f.alpha[8].to(x.dtype) * (x - blur) + f.beta[0].to(x.dtype) * x


def test_filter_kernels_are_the_official_float16_values():
    f = AdaptiveFilters(4)
    assert f.Sobel_x.dtype == torch.float16 and not f.Sobel_x.requires_grad
    assert f.Sobel_x.shape == (4, 1, 3, 3)
    assert f.Sobel_x[0, 0, 1, 0].item() == pytest.approx(0.0020008, abs=1e-7)
    assert f.Edge[3, 0, 1, 1].item() == pytest.approx(0.0080032, abs=1e-7)
    assert f.Roberts_x[2, 0, 0, 0].item() == pytest.approx(0.0010004, abs=1e-7)
    assert f.alpha.dtype == torch.float32 and f.alpha.tolist() == [1.0] * 9 and f.beta.tolist() == [0.0]


def test_filters_equal_the_formula():
    torch.manual_seed(0)
    f = AdaptiveFilters(6).double()
    with torch.no_grad():
        f.alpha.copy_(torch.randn(9))
        f.beta.copy_(torch.randn(1))
    x = torch.randn(2, 6, 9, 13, dtype=torch.float64)
    torch.testing.assert_close(f(x), _formula_filter(f, x), rtol=1e-10, atol=1e-12)
    # float32 path (the fast combined kernel + separable blur) agrees to float32 precision
    f32 = f.float()
    torch.testing.assert_close(f32(x.float()), _formula_filter(f32, x.float()), rtol=1e-5, atol=1e-5)


def test_filters_reject_too_small_maps():
    with pytest.raises(R2RUserError, match="64x64"):
        AdaptiveFilters(2)(torch.zeros(1, 2, 7, 20))


# ---------------------------------------------------------------------------- MACA
def _formula_maca(mod: MACA, x, m, ref=None):
    """ref §c.3 written out with einsum."""
    w1 = mod.conv1.weight[:, :, 0, 0]
    w2 = mod.conv2.weight[:, :, 0, 0]
    fg, bg = m * x, (1 - m) * x
    src = bg if ref is None else ref * x
    a = torch.einsum("oc,bchw->bo", w1, fg) / (x.shape[2] * x.shape[3])
    b = torch.einsum("oc,bchw->bo", w2, src) / (x.shape[2] * x.shape[3])
    if ref is not None:  # a region's statistic gets the magnitude of the background statistic
        b = b * ((1 - m).sum(dim=(1, 2, 3)) / ref.sum(dim=(1, 2, 3)))[:, None]
    hidden = F.silu(torch.cat([a, b], 1) @ mod.mlp[0].weight.T + mod.mlp[0].bias)
    out = hidden @ mod.mlp[2].weight.T + mod.mlp[2].bias
    c = x.shape[1]
    gamma, beta = out[:, :c, None, None], out[:, c:, None, None]
    return bg + m * (fg * (1 + gamma) + beta)


def test_maca_is_identity_at_init():
    torch.manual_seed(1)
    mod = MACA(8)
    x = torch.randn(2, 8, 5, 6)
    m = (torch.rand(2, 1, 5, 6) > 0.5).float()
    torch.testing.assert_close(mod(x, m), x, rtol=0, atol=1e-6)
    assert not mod.mlp[2].weight.any() and not mod.mlp[2].bias.any()


def test_maca_equals_formula_on_random_weights():
    torch.manual_seed(2)
    mod = MACA(8).double()
    for p in mod.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64)
    m = torch.rand(3, 1, 5, 7, dtype=torch.float64)  # soft masks too
    ref = (torch.rand(3, 1, 5, 7) > 0.7).double()
    torch.testing.assert_close(mod(x, m), _formula_maca(mod, x, m))
    torch.testing.assert_close(mod(x, m, ref), _formula_maca(mod, x, m, ref))
    # reference = background gives the official result; outside a binary mask the output is X
    mb = (m > 0.5).double()
    torch.testing.assert_close(mod(x, mb, 1 - mb), mod(x, mb))
    assert torch.equal(mod(x, mb)[(mb == 0).expand_as(x)], x[(mb == 0).expand_as(x)])
    assert not torch.allclose(mod(x, mb, ref), mod(x, mb))


def test_maca_reference_statistic_does_not_shrink_with_the_region():
    """A reference region with the background's pixel values gives the background statistic,
    whatever its area (the plain global mean would shrink with the area)."""
    torch.manual_seed(4)
    mod = MACA(4).double()
    for p in mod.parameters():
        torch.nn.init.normal_(p, std=0.3)
    m = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    m[..., 2:5, 2:5] = 1
    x = torch.randn(1, 4, 1, 1, dtype=torch.float64).expand(1, 4, 8, 8).clone()  # uniform background
    x[..., 2:5, 2:5] = 3.0
    small = torch.zeros_like(m)
    small[..., 6:8, 0:2] = 1  # 4 background pixels
    large = 1 - m  # the whole background
    torch.testing.assert_close(mod(x, m, small), mod(x, m, large))
    torch.testing.assert_close(mod(x, m, large), mod(x, m))


# ---------------------------------------------------------------------------- Clear-VAE
def _tiny_vae_config(**kw):
    from tiny import tiny_configs

    cfg = tiny_configs()["clear_vae"]
    cfg.update(kw)
    return cfg


def test_clear_vae_with_zero_skip_convs_equals_stock_autoencoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = ClearVAE.from_config(_tiny_vae_config()).eval()  # skip convs zero-initialised (official init)
    assert all(not r.skip_connect.conv.weight.any() for b in vae.decoder.up_blocks for r in b.resnets)
    cfg = {k: v for k, v in vae.config.items() if not k.startswith("_") and k not in ("use_skip", "training")}
    cfg.update(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    stock = AutoencoderKL.from_config(cfg).eval()
    sd = {k: v for k, v in vae.state_dict().items() if not k.startswith("filters.") and "skip_connect" not in k}
    stock.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        post, skips = vae.encode_with_skips(x)
        torch.testing.assert_close(post.mean, stock.encode(x).latent_dist.mean, rtol=0, atol=0)
        torch.testing.assert_close(post.mean, vae.encode(x).latent_dist.mean, rtol=0, atol=0)
        z = post.mean
        ref = stock.decode(z).sample
        torch.testing.assert_close(vae.decode_with_skips(z, skips), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vae.decode(z).sample, ref, rtol=0, atol=0)


def test_clear_vae_skip_geometry_and_fusion():
    torch.manual_seed(4)
    vae = ClearVAE.from_config(_tiny_vae_config()).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        post, skips = vae.encode_with_skips(x)
    sizes = [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3
    assert [tuple(s.shape[1:]) for s in skips] == [(c, s, s) for c, s in zip(vae.skip_channels, sizes)]
    # LIFO fusion: decoder resnet k gets skip 11-k; check one resnet against a hand computation
    r = vae.decoder.up_blocks[1].resnets[2]  # 64 -> 64 with the 32-channel skip 6, tiled [s, s]
    torch.nn.init.normal_(r.skip_connect.conv.weight, std=0.1)
    h_in = torch.randn(2, 64, 16, 16)
    s = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        h = F.silu(r.norm1(h_in))
        h = r.conv1(h) + F.conv2d(h + torch.cat([s, s], 1), r.skip_connect.conv.weight)
        expected = h_in + r.conv2(F.silu(r.norm2(h)))
        torch.testing.assert_close(r(h_in, None, skip=s), expected)
    # every skip reaches the output
    with torch.no_grad():
        for b in vae.decoder.up_blocks:
            for rr in b.resnets:
                torch.nn.init.normal_(rr.skip_connect.conv.weight, std=0.05)
        base = vae.decode_with_skips(post.mean, skips)
        for i in (0, 6, 11):
            changed = [t.clone() for t in skips]
            changed[i] = changed[i] + 1
            assert not torch.allclose(vae.decode_with_skips(post.mean, changed), base)


def test_clear_vae_without_use_skip_has_no_filters():
    vae = ClearVAE.from_config(_tiny_vae_config(use_skip=False))
    keys = vae.state_dict().keys()
    assert not any(k.startswith("filters.") for k in keys)
    assert sum("skip_connect" in k for k in keys) == 12
    skips = [torch.randn(1, c, 8, 8) for c in vae.skip_channels]
    assert vae.filter_skips(skips)[3] is skips[3]


def test_clear_vae_input_errors():
    vae = ClearVAE.from_config(_tiny_vae_config())
    with pytest.raises(R2RUserError, match="multiples of 64"):
        vae.encode_with_skips(torch.zeros(1, 3, 96, 64))
    with pytest.raises(R2RUserError, match="12 encoder skips"):
        vae.decode_with_skips(torch.zeros(1, 4, 8, 8), [torch.zeros(1, 32, 64, 64)] * 3)
    skips = [torch.zeros(1, c, 8, 8) for c in vae.skip_channels]
    skips[2] = torch.zeros(1, 5, 8, 8)
    with pytest.raises(R2RUserError, match="skip 2"):
        vae.filter_skips(skips)
    with pytest.raises(R2RUserError, match="Unsupported block types|unsupported block types"):
        ClearVAE.from_config(_tiny_vae_config(down_block_types=["AttnDownEncoderBlock2D"] * 4))


# ---------------------------------------------------------------------------- controller
def _tiny_controller(seed=5, random_maca=True):
    from tiny import _randomize_zero_init, tiny_configs

    torch.manual_seed(seed)
    cn = HarmonyController.from_config(tiny_configs()["controlnet"]).eval()
    keep = {} if random_maca else {k: v.clone() for k, v in cn.state_dict().items() if k.startswith("PCCAs")}
    _randomize_zero_init(cn, seed + 1)
    cn.load_state_dict(keep, strict=False)
    return cn


def _controller_inputs(b=2, h=128, w=64, seed=6):
    g = torch.Generator().manual_seed(seed)
    hint = torch.rand(b, 7, h, w, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, h // 8, w // 8)
    mask[:, :, 2:12, 1:7] = 1
    text = torch.randn(1, 77, 32, generator=g)
    return hint, mask, text


def test_controller_residual_shapes_follow_the_unet_table():
    cn = _tiny_controller()
    hint, mask, text = _controller_inputs()
    with torch.no_grad():
        down, mid = cn(hint, torch.tensor(999.0), text, mask)
    ch = cn.config.block_out_channels  # (32, 32, 64, 64); official 320, 640, 1280, 1280
    h, w = 16, 8  # latent size
    expected = [(ch[0], h, w)] * 3 + [(ch[0], h // 2, w // 2)] + [(ch[1], h // 2, w // 2)] * 2
    expected += [(ch[1], h // 4, w // 4)] + [(ch[2], h // 4, w // 4)] * 2 + [(ch[3], h // 8, w // 8)] * 3
    assert len(down) == 12
    assert [tuple(d.shape[1:]) for d in down] == expected
    assert tuple(mid.shape) == (2, ch[3], h // 8, w // 8)


def test_controller_ignores_the_noisy_latent_path():
    cn = _tiny_controller()
    hint, mask, text = _controller_inputs()
    with torch.no_grad():
        a = cn(hint, 500, text, mask)
        torch.nn.init.normal_(cn.conv_in.weight, std=1.0)  # the (dead) latent input conv
        torch.nn.init.normal_(cn.conv_in.bias, std=1.0)
        b = cn(hint, 500, text, mask)
    for x, y in zip(a[0] + (a[1],), b[0] + (b[1],)):
        assert torch.equal(x, y)


def test_controller_equals_stock_controlnet_when_maca_is_identity():
    """MACA at init = identity, conv_in(latent) = 0: then the stock ControlNet computes the same thing."""
    from diffusers import ControlNetModel

    cn = _tiny_controller(random_maca=False)
    cfg = {k: v for k, v in cn.config.items() if not k.startswith("_")}
    stock = ControlNetModel.from_config(cfg).eval()
    sd = {k: v for k, v in cn.state_dict().items() if not k.startswith("PCCAs")}
    sd["conv_in.weight"] = torch.zeros_like(sd["conv_in.weight"])
    sd["conv_in.bias"] = torch.zeros_like(sd["conv_in.bias"])
    stock.load_state_dict(sd, strict=True)
    hint, mask, text = _controller_inputs()
    latent = torch.randn(2, 4, 16, 8)
    with torch.no_grad():
        down, mid = cn(hint, 250, text, mask, conditioning_scale=0.7)
        sdown, smid = stock(latent, 250, text.expand(2, -1, -1), hint, conditioning_scale=0.7, return_dict=False)
    for x, y in zip(down, sdown):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mid, smid, rtol=1e-5, atol=1e-6)


def test_controller_maca_positions_and_reference_mask():
    cn = _tiny_controller()
    hint, mask, text = _controller_inputs()
    with torch.no_grad():
        base_down, base_mid = cn(hint, 100, text, mask)
        ident = {}
        for k, m in enumerate(cn.PCCAs):  # disable MACA k -> only residuals from index 3k+3 on change
            ident[k] = (m.mlp[2].weight.clone(), m.mlp[2].bias.clone())
        cn.PCCAs[1].mlp[2].weight.zero_()
        cn.PCCAs[1].mlp[2].bias.zero_()
        down, _ = cn(hint, 100, text, mask)
        for i in range(6):
            assert torch.equal(down[i], base_down[i])
        assert not torch.allclose(down[6], base_down[6])
        cn.PCCAs[1].mlp[2].weight.copy_(ident[1][0])
        cn.PCCAs[1].mlp[2].bias.copy_(ident[1][1])
        # reference mask = background -> official result; another region -> different
        same, _ = cn(hint, 100, text, mask, reference_mask=1 - mask)
        for x, y in zip(same, base_down):
            torch.testing.assert_close(x, y)
        ref = torch.zeros_like(mask)
        ref[:, :, :4, :] = 1
        other, _ = cn(hint, 100, text, mask, reference_mask=ref)
        assert torch.equal(other[0], base_down[0]) and not torch.allclose(other[3], base_down[3])


def test_controller_input_errors():
    cn = _tiny_controller()
    hint, mask, text = _controller_inputs()
    with pytest.raises(R2RUserError, match="hint"):
        cn(hint[:, :3], 1, text, mask)
    with pytest.raises(R2RUserError, match=r"\[B,1,16,8\]"):
        cn(hint, 1, text, mask[:, :, :8])
    with pytest.raises(R2RUserError, match="multiples of 64"):
        cn(hint[:, :, :96], 1, text, mask[:, :, :12])
    with pytest.raises(R2RUserError, match="timestep"):
        cn(hint, torch.tensor([1.0, 2.0, 3.0]), text, mask)


def test_controller_per_sample_timesteps_match_single_calls():
    cn = _tiny_controller()
    hint, mask, text = _controller_inputs()
    with torch.no_grad():
        both, mid = cn(hint, torch.tensor([999.0, 111.0]), text, mask)
        first, _ = cn(hint[:1], 999.0, text, mask[:1])
        second, mid2 = cn(hint[1:], torch.tensor(111.0), text, mask[1:])
    for a, b1, b2 in zip(both, first, second):
        torch.testing.assert_close(a, torch.cat([b1, b2]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mid[1:], mid2, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(7)
    vae = ClearVAE.from_config(_tiny_vae_config())
    cn = _tiny_controller()
    vae.save_pretrained(tmp_path / "vae")
    cn.save_pretrained(tmp_path / "cn")
    vae2 = ClearVAE.from_pretrained(tmp_path / "vae")
    cn2 = HarmonyController.from_pretrained(tmp_path / "cn")
    assert vae2.config.down_block_types == ["DownEncoderSkipBlock2D"] * 4 and vae2.config.use_skip
    for a, b in ((vae, vae2), (cn, cn2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            assert torch.equal(sa[k].float(), sb[k].float()), k


def test_official_style_configs_load(tiny_release):
    vae = ClearVAE.from_pretrained(tiny_release / "clear_vae", torch_dtype=torch.float32)
    assert json.loads((tiny_release / "clear_vae" / "config.json").read_text())["_class_name"] == "AutoencoderKL_Skip"
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    cn = HarmonyController.from_pretrained(tiny_release / "stable-diffusion-inpainting" / "controlnet")
    assert cn.config.conditioning_channels == 7
    assert any(m.mlp[2].weight.any() for m in cn.PCCAs)  # tiny release: MACA not at its identity init
