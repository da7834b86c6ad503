"""R2RPipeline on the tiny release: seed-compatibility with the official flow, dtypes, stages, paste-back."""


import cv2
import numpy as np
import pytest
import torch

from r2r.devices import resolve_device, resolve_dtype
from r2r.errors import R2RUserError
from r2r.pipeline import R2RPipeline, noise_source

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SD = "stable-diffusion-inpainting"


@pytest.fixture(scope="module")
def pipe(tiny_components):
    return R2RPipeline(tiny_components)


def _scene(h=64, w=128, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1) * 200 + rng.normal(0, 8, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : w // 2 + 8] = 255
    comp = base.copy()
    comp[mask > 0] = comp[mask > 0] * [1.3, 0.8, 0.6] + 30  # disharmonious foreground
    return np.clip(comp, 0, 255).astype(np.uint8), mask


def _official_restatement(release, comp_u8, mask_u8, seed, steps):
    """The official call (tests/official_flow.py) on inputs prepared by hand, independently of r2r's
    preprocessing: hint white outside, BGR2GRAY on RGB, Canny 100/200, composed; no resize."""
    from official_flow import load_official, run_official

    m = mask_u8 >= 128
    white = comp_u8.copy()
    white[~m] = 255
    edges = cv2.Canny(cv2.cvtColor(white, cv2.COLOR_BGR2GRAY), 100, 200)
    pre = np.where(m[..., None], np.stack([edges] * 3, -1), comp_u8)

    def pm1(a):
        return (torch.from_numpy(a).permute(2, 0, 1).contiguous()[None].float() / 255 - 0.5) / 0.5  # ToTensor

    image = pm1(comp_u8)
    mask = torch.from_numpy(m.astype(np.float32))[None, None]
    hint = torch.cat([pm1(pre), image, mask], 1)
    out, gen = run_official(load_official(release), image, hint, mask, seed, steps)
    return out, torch.randn(4, generator=gen)


def test_seed_compatible_with_official_flow(pipe, tiny_release):
    comp, mask = _scene(64, 128)
    ref, ref_after = _official_restatement(tiny_release, comp, mask, seed=42, steps=4)
    gen = torch.Generator().manual_seed(42)
    out = pipe(comp, mask, num_inference_steps=4, generator=gen, max_side=128, paste_back=False)
    assert out.prepared.geometry.working_size == (64, 128)
    assert torch.equal(out.working_images, ref), float((out.working_images - ref).abs().max())
    assert torch.equal(torch.randn(4, generator=gen), ref_after)
    # no resize happened, so the restored image is the working image itself
    assert torch.allclose(out.images, out.working_images, atol=1e-6)


def test_output_and_paste_back(pipe):
    comp, mask = _scene(90, 150)
    out = pipe(comp, mask, num_inference_steps=2, generator=0, max_side=128, feather=3)
    assert out.images.shape == (1, 3, 90, 150) and out.working_images.shape == (1, 3, 64, 128)
    assert out.images.min() >= 0 and out.images.max() <= 1 and out.latents.shape == (1, 4, 8, 16)
    dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    far = dist > 3
    u8 = out.to_numpy()[0]
    assert u8.dtype == np.uint8 and u8.shape == (90, 150, 3)
    assert np.array_equal(u8[far], comp[far]), "background must be bit-exact outside the feathered band"
    assert not np.array_equal(u8[mask > 0], comp[mask > 0]), "the foreground must change"
    free = pipe(comp, mask, num_inference_steps=2, generator=0, max_side=128, paste_back=False)
    assert torch.equal(free.working_images, out.working_images)
    assert not np.array_equal(free.to_numpy()[0][far], comp[far])


def test_determinism_and_seeds(pipe):
    comp, mask = _scene()
    a = pipe(comp, mask, num_inference_steps=2, generator=7, max_side=128).images
    b = pipe(comp, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(7), max_side=128).images
    c = pipe(comp, mask, num_inference_steps=2, generator=8, max_side=128).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stages_equal_call_and_options(pipe):
    comp, mask = _scene()
    ref = pipe(comp, mask, num_inference_steps=3, generator=3, max_side=128, paste_back=False)
    prepared = pipe.prepare(comp, mask, max_side=128)
    plan = pipe.plan(3)
    residuals = pipe.residuals(prepared, plan, timestep_batch=1)
    encoded = pipe.encode(prepared)
    ticks = []
    latents = pipe.sample(prepared, encoded, residuals, plan, 3, callback=lambda i, n: ticks.append(i))
    working = pipe.decode(latents, encoded)
    assert ticks == [1, 2, 3] and torch.equal(working, ref.working_images)
    # the official double encode (skips dropped, recomputed at decode) gives the same image
    again = pipe(comp, mask, num_inference_steps=3, generator=3, max_side=128, paste_back=False, skips="recompute")
    assert torch.equal(again.working_images, ref.working_images)
    # timesteps batched through the controller: same numbers up to float summation order
    batched = pipe(comp, mask, num_inference_steps=3, generator=3, max_side=128, paste_back=False, timestep_batch=3)
    assert torch.allclose(batched.working_images, ref.working_images, atol=1e-4)
    no_ctrl = pipe(comp, mask, num_inference_steps=3, generator=3, max_side=128, paste_back=False, use_controller=False)
    assert not torch.equal(no_ctrl.working_images, ref.working_images)
    other = pipe(comp, mask, num_inference_steps=3, generator=3, max_side=128, scheduler="dpmpp_2m")
    assert torch.isfinite(other.images).all()


def test_batch_matches_single_items(pipe):
    comp, mask = _scene()
    comp2, _ = _scene(seed=1)
    batch = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in (comp, comp2)])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    out = pipe(batch, mask, num_inference_steps=2, generator=gens, max_side=128)
    assert out.images.shape == (2, 3, 64, 128)
    single = pipe(comp2, mask, num_inference_steps=2, generator=2, max_side=128)
    assert torch.allclose(out.images[1], single.images[0], atol=1e-4)


@pytest.mark.parametrize("dtype", ["bf16"])  # fp16 takes the same code path (and is as slow on CPU convs)
def test_half_dtypes_on_cpu(tiny_release, pipe, dtype):
    comp, mask = _scene(64, 64)
    half = R2RPipeline.from_pretrained(tiny_release, torch_dtype=dtype, device="cpu")
    expected = resolve_dtype(dtype)
    assert half.dtype == expected and half.clear_vae.dtype == expected and half.controller.dtype == expected
    out = half(comp, mask, num_inference_steps=1, generator=0, max_side=64)
    ref = pipe(comp, mask, num_inference_steps=1, generator=0, max_side=64)
    assert out.images.dtype == torch.float32 and out.latents.dtype == torch.float32
    assert torch.isfinite(out.images).all()
    assert (out.images - ref.images).abs().mean() < 0.05


@pytest.mark.parametrize("mode", ["pad", "square"])
def test_resize_modes_end_to_end(pipe, mode):
    comp, mask = _scene(70, 150)
    out = pipe(comp, mask, num_inference_steps=1, generator=0, max_side=128, resize_mode=mode, feather=0)
    assert out.images.shape == (1, 3, 70, 150)
    assert out.working_images.shape[-2:] == ((64, 128) if mode == "pad" else (128, 128))
    u8 = out.to_numpy()[0]
    assert np.array_equal(u8[mask == 0], comp[mask == 0])


def test_cancel_from_callback(pipe):
    comp, mask = _scene()

    class Stop(Exception):
        pass

    def cb(i, n):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        pipe(comp, mask, num_inference_steps=3, generator=0, max_side=128, callback=cb)


def test_user_errors(pipe):
    comp, mask = _scene()
    with pytest.raises(R2RUserError, match="dtype"):
        resolve_dtype("int8")
    with pytest.raises(R2RUserError, match="device"):
        resolve_device("tpu:9")
    if not torch.cuda.is_available():
        with pytest.raises(R2RUserError, match="CUDA is not available"):
            resolve_device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():  # the Python API refuses it up front, as the CLI does
        with pytest.raises(R2RUserError, match="MPS backend is not available"):
            resolve_device("mps")
    with pytest.raises(R2RUserError, match="generator"):
        noise_source("seven")
    with pytest.raises(R2RUserError, match="num_inference_steps"):
        pipe(comp, mask, num_inference_steps=0, max_side=128)
    with pytest.raises(R2RUserError, match="scheduler must be one of"):
        pipe(comp, mask, num_inference_steps=1, max_side=128, scheduler="nope")
    with pytest.raises(R2RUserError, match="is empty"):
        pipe(comp, np.zeros_like(mask), max_side=128)
    with pytest.raises(R2RUserError, match="R2RComponents"):
        R2RPipeline(object())
    import copy

    no_ctrl = copy.copy(pipe.components)
    no_ctrl.controller = None
    with pytest.raises(R2RUserError, match="without the Harmony Controller"):
        R2RPipeline(no_ctrl)(comp, mask, num_inference_steps=1, max_side=128)
    assert R2RPipeline(no_ctrl)(comp, mask, num_inference_steps=1, max_side=128, use_controller=False).images.shape[0] == 1
    no_unet = copy.copy(pipe.components)
    no_unet.unet = None
    with pytest.raises(R2RUserError, match="needs the unet"):
        R2RPipeline(no_unet)


def test_banded_vae_and_fullres_mode_in_the_pipeline(pipe, monkeypatch):
    comp, mask = _scene(h=128, w=192, seed=5)
    plain = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=192)
    # a tiny memory budget makes the pipeline use the banded Clear-VAE for encode and decode
    monkeypatch.setenv("R2R_VAE_MEMORY_BUDGET_MB", "0.001")
    from r2r.imaging import tiling

    calls = []
    orig = tiling.tiled_decode_with_skips
    monkeypatch.setattr(tiling, "tiled_decode_with_skips", lambda *a, **k: calls.append(1) or orig(*a, **k))
    banded = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=192)
    assert calls, "the banded decoder was not used above the memory budget"
    assert (banded.working_images - plain.working_images).abs().max() <= 2 / 255
    monkeypatch.delenv("R2R_VAE_MEMORY_BUDGET_MB")
    # colour-transform full-resolution mode: same size, background exact, a different foreground rendering
    ct = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=64, feather=0, fullres_mode="color_transform")
    up = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=64, feather=0, fullres_mode="upsample")
    auto = pipe(comp, mask, num_inference_steps=2, generator=3, max_side=64, feather=0)
    assert torch.equal(auto.images, ct.images)  # auto = colour transform for originals larger than the working size
    assert ct.images.shape == up.images.shape == (1, 3, 128, 192)
    bg = torch.from_numpy(mask == 0)
    comp_t = torch.from_numpy(comp).permute(2, 0, 1).float() / 255
    assert torch.equal(ct.images[0][:, bg], comp_t[:, bg])
    assert not torch.equal(ct.images[0][:, ~bg], up.images[0][:, ~bg])
    with pytest.raises(R2RUserError, match="fullres_mode"):
        pipe(comp, mask, num_inference_steps=1, max_side=64, fullres_mode="sharpen")


def test_low_memory_flow_equals_the_pipeline(pipe, tiny_release, tmp_path, monkeypatch):
    from r2r.pipeline import harmonize_low_memory

    comp, mask = _scene(h=96, w=160, seed=7)
    ref = pipe(comp, mask, num_inference_steps=3, generator=11, max_side=128)
    low = harmonize_low_memory(tiny_release, comp, mask, num_inference_steps=3, generator=11, max_side=128)
    assert torch.equal(low.images, ref.images)
    assert torch.equal(low.latents, ref.latents)
    kept = harmonize_low_memory(tiny_release, comp, mask, num_inference_steps=3, generator=11, max_side=128,
                                skips="device", residuals="recompute")
    assert torch.equal(kept.images, ref.images)


def test_placements_strength_reference_and_variations(pipe, monkeypatch):
    """Every placement of skips/residuals gives the same image; strength and the reference region change it;
    variations equal separate calls seed by seed."""
    comp, mask = _scene(seed=2)
    kw = dict(num_inference_steps=2, max_side=128)
    ref = pipe(comp, mask, generator=5, **kw)
    for skips, residuals in (("host", "host"), ("recompute", "recompute"), ("device", "device")):
        out = pipe(comp, mask, generator=5, skips=skips, residuals=residuals, **kw)
        assert torch.equal(out.images, ref.images), (skips, residuals)
    # the automatic rule falls back to recomputing when the host is short of memory
    from r2r.pipeline import memory

    monkeypatch.setattr(memory, "available_host_bytes", lambda: 1)
    assert memory.choose_placement("auto", 10, torch.device("cpu"), "skips") == "recompute"
    assert torch.equal(pipe(comp, mask, generator=5, **kw).images, ref.images)
    monkeypatch.undo()
    weak = pipe(comp, mask, generator=5, strength=0.5, **kw)
    assert not torch.equal(weak.images, ref.images)
    assert torch.equal(pipe(comp, mask, generator=5, strength=0.0, **kw).images,
                       pipe(comp, mask, generator=5, use_controller=False, **kw).images)
    region = np.zeros_like(mask)
    region[:, 100:] = 255
    steered = pipe(comp, mask, generator=5, reference_mask=region, **kw)
    assert not torch.equal(steered.images, ref.images)
    with pytest.raises(R2RUserError, match="reference_mask of batch item 0 is empty"):
        pipe(comp, mask, generator=5, reference_mask=np.zeros_like(mask), **kw)
    with pytest.raises(R2RUserError, match="strength"):
        pipe(comp, mask, generator=5, strength=-1, **kw)
    # the seeds go through one batched U-Net forward: the same draws, the same image up to float summation order
    outs = pipe.variations(comp, mask, seeds=[5, 6], strength=0.5, **kw)
    six = pipe(comp, mask, generator=6, strength=0.5, **kw).images
    assert (outs[0].images - weak.images).abs().max() < 1e-5 and (outs[1].images - six).abs().max() < 1e-5
    assert not torch.equal(outs[0].images, outs[1].images)
    # one seed per forward (what little memory gives): bit for bit
    monkeypatch.setattr(memory, "seeds_per_forward", lambda n, *a: 1)
    outs = pipe.variations(comp, mask, seeds=[5, 6], strength=0.5, **kw)
    assert torch.equal(outs[0].images, weak.images) and torch.equal(outs[1].images, six)
    with pytest.raises(R2RUserError, match="at least one seed"):
        pipe.variations(comp, mask, seeds=[], **kw)


def test_batch_reference_mask_broadcasts_a_single_image(pipe):
    """A batch of reference masks with one composite: the composite is used for every item."""
    comp, mask = _scene(seed=3)
    regions = np.zeros((2, *mask.shape), np.float32)
    regions[0, :, 100:] = 1
    regions[1, :, :20] = 1
    out = pipe(comp, mask, num_inference_steps=1, generator=[torch.Generator().manual_seed(1),
                                                              torch.Generator().manual_seed(1)],
               max_side=128, reference_mask=torch.from_numpy(regions)[:, None])
    assert out.images.shape[0] == 2 and not torch.equal(out.images[0], out.images[1])


def test_fp16_on_cpu_runs_at_a_sensible_speed(tiny_release):
    """fp16 on the CPU used to hang in the Clear-VAE's Gaussian blur; the filters now run in float32 there."""
    import time

    half = R2RPipeline.from_pretrained(tiny_release, torch_dtype="fp16", device="cpu")
    comp, mask = _scene(128, 128)
    start = time.perf_counter()
    out = half(comp, mask, num_inference_steps=1, generator=0, max_side=128)
    assert torch.isfinite(out.images).all()
    assert time.perf_counter() - start < 60


def test_free_residuals_releases_each_entry_during_the_loop(pipe):
    """``sample(free_residuals=True)`` (the one-shot call's choice) drops each timestep's residuals from the
    caller's Residuals once used, so they do not all stay alive until the loop ends; without it they stay."""
    comp, mask = _scene()
    prepared = pipe.prepare(comp, mask, max_side=64)
    plan = pipe.plan(3, "euler_ancestral")
    encoded = pipe.encode(prepared)
    kept = pipe.residuals(prepared, plan, 1.0, placement="device")
    freed = pipe.residuals(prepared, plan, 1.0, placement="device")
    a = pipe.sample(prepared, encoded, kept, plan, noise_source(0, "cpu"))
    b = pipe.sample(prepared, encoded, freed, plan, noise_source(0, "cpu"), free_residuals=True)
    assert torch.equal(a, b)
    assert all(entry is not None for entry in kept.entries)
    assert freed.entries is not None and all(entry is None for entry in freed.entries)
