"""Harmonize toward another photo (issue "Harmonize toward another photo"): the invariants of a reference photo
on the Python API, the nodes and the CLI, the weight-free harmonizer's colour move, batches, the same picture
from every surface, and the bad inputs (refused before any work).

The R2R runs use the tiny release with MACA amplified (tests/reference_release.py), so where MACA's
statistics come from moves the picture by ~1e-3, far above the 1e-6 of the identity checks. The KSampler path
(R2R Conditioning + KSampler) is in tests/test_reference_ksampler.py (it needs ComfyUI's sampling code).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_pack import load_pack, models_folder, node_classes, pack_module
from comfy_pack import run_node as run

from r2r import R2RPipeline
from r2r.errors import R2RUserError
from r2r.pipeline import Reference, SharedSeed

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

load_pack()
NODES = node_classes()
NodeError = pack_module("r2r.errors").R2RUserError
STEPS, SEED, SIDE = 2, 7, 128
IDENTITY_TOL = 1e-6


@pytest.fixture(scope="module")
def pipe(maca_release):
    return R2RPipeline.from_pretrained(str(maca_release))


@pytest.fixture(scope="module")
def loaded(maca_release, tmp_path_factory):
    """(R2R_MODEL, R2R_CLEAR_VAE, R2R_CONTROLLER) of the amplified release, through the R2R Checkpoint Loader."""
    with models_folder(maca_release, tmp_path_factory.mktemp("models_reference")):
        yield run("R2RCheckpointLoader", "region2region", "fp32", False)


def scene(h=80, w=112, shift=(1.3, 0.7, 0.6)):
    """Composite ``[1,3,H,W]`` (values on the 1/255 grid, as files give them) and its mask ``[1,1,H,W]``."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx])[None]
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1
    img = torch.where(mask > 0, img * torch.tensor(shift).view(1, 3, 1, 1), img).clamp(0, 1)
    return (img * 255).round() / 255, mask


def photo(h=150, w=90, tint=(0.9, 0.55, 0.3)):
    """A warm 'other photo' of another size and aspect, and a region (its left part)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([tint[0] * (0.7 + 0.3 * yy), tint[1] * (0.8 + 0.2 * xx), tint[2] + 0 * xx])[None]
    region = torch.zeros(1, 1, h, w)
    region[..., :, : w // 2] = 1
    return (img.clamp(0, 1) * 255).round() / 255, region


def call(pipe, comp, mask, **kw):
    return pipe(comp, mask, num_inference_steps=STEPS, generator=kw.pop("generator", SEED), max_side=SIDE, **kw)


def bhwc(x):
    return x.permute(0, 2, 3, 1)


def bchw(x):
    return x.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- the invariants


def test_composite_as_its_own_reference_photo_is_no_reference(pipe):
    comp, mask = scene()
    plain = call(pipe, comp, mask).images
    same = call(pipe, comp, mask, reference=Reference(image=comp, image_mask=1 - mask)).images
    diff = float((plain - same).abs().max())
    print(f"identity (Python API): max |diff| = {diff:.3g}")
    assert diff <= IDENTITY_TOL
    # the photo is used: the whole composite as the region, or another photo, changes the picture
    whole = call(pipe, comp, mask, reference=Reference(image=comp)).images
    other = call(pipe, comp, mask, reference=Reference(image=photo()[0])).images
    assert float((whole - plain).abs().max()) > 100 * IDENTITY_TOL
    assert float((other - plain).abs().max()) > 100 * IDENTITY_TOL


def _graph(loaded, image, mask, **apply_kw):
    model, vae, ctrl = loaded
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, SIDE, False, "fit")
    (cmodel,) = run("R2RMACAControllerApplyV2", model, ctrl, 1.0, **apply_kw)
    (sampled,) = run("R2RSampler", cmodel, latent, SEED, STEPS, "euler_ancestral")
    (out,) = run("R2RClearVAEDecodeV2", vae, sampled, True, -1, "auto")
    return out


def test_identity_through_the_four_node_graph(loaded):
    comp, mask = scene()
    image, m = bhwc(comp), mask[:, 0]
    plain = _graph(loaded, image, m)
    same = _graph(loaded, image, m, reference_image=image, reference_image_mask=1 - m)
    diff = float((plain - same).abs().max())
    print(f"identity (four-node graph): max |diff| = {diff:.3g}")
    assert diff <= IDENTITY_TOL
    assert float((_graph(loaded, image, m, reference_image=image) - plain).abs().max()) > 100 * IDENTITY_TOL


def test_photo_of_another_size_and_aspect_is_stretched_to_the_working_canvas(pipe):
    from r2r.imaging import prepare, prepare_reference_photo, resize

    comp, mask = scene()  # 80x112 -> working canvas 64x128 at max_side 128
    for h, w in ((150, 70), (64, 300), (700, 700)):
        img, region = photo(h, w)
        prepared = prepare(comp, mask, max_side=SIDE)
        ready = prepare_reference_photo(img, region, prepared.geometry.working_size)
        assert tuple(ready.hint.shape[-2:]) == tuple(prepared.geometry.working_size)
        # the documented rule: the photo resized (stretched) to the canvas; its region on the latent grid
        stretched = resize(img, prepared.geometry.working_size).clamp(0, 1)
        assert torch.allclose(ready.hint[:, 3:6], stretched * 2 - 1, atol=1e-6)
        assert tuple(ready.region.shape[-2:]) == prepared.latent_size and bool(ready.region.any())
        out = call(pipe, comp, mask, reference=Reference(image=img, image_mask=region)).images
        assert out.shape == comp.shape and torch.isfinite(out).all()


def _lab_mean(rgb01_hwc, weight_hw):
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(rgb01_hwc, dtype=np.float32), cv2.COLOR_RGB2Lab).reshape(-1, 3)
    w = np.asarray(weight_hw, np.float64).reshape(-1)
    return (lab * w[:, None]).sum(0) / w.sum()


def test_weight_free_moves_the_foreground_lab_mean_to_the_reference_region():
    """At strength 1 the foreground's Lab mean lands on the reference region's (OpenCV Lab, <= 1 per channel),
    from the numpy and torch functions and the node."""
    from r2r.blending import harmonize_statistics

    comp, mask = scene(shift=(0.7, 0.8, 1.3))
    img, region = photo(150, 90, tint=(0.85, 0.6, 0.35))
    target = _lab_mean(img[0].permute(1, 2, 0).numpy(), region[0, 0].numpy())
    fg = mask[0, 0].numpy()
    comp_u8 = (comp[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    photo_u8 = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    before = _lab_mean(comp_u8 / 255.0, fg)
    out_np = harmonize_statistics(comp_u8, fg, 1.0, reference_image=photo_u8, reference_image_mask=region[0, 0].numpy())
    out_t = harmonize_statistics(comp, mask, 1.0, reference_image=img, reference_image_mask=region)
    (out_node,) = run("R2RWeightFreeHarmonize", bhwc(comp), mask[:, 0], 1.0, False, reference_image=bhwc(img),
                      reference_image_mask=region[:, 0])
    moved = {}
    for name, out in (("numpy", out_np / 255.0), ("torch", out_t[0].permute(1, 2, 0).numpy()),
                      ("node", out_node[0].numpy())):
        moved[name] = np.abs(_lab_mean(out, fg) - target)
        assert moved[name].max() <= 1.0, (name, moved[name])
    print("weight-free |Lab mean - reference| per channel:", {k: v.round(3).tolist() for k, v in moved.items()})
    assert np.abs(before - target).max() > 10  # it had somewhere to go
    outside = mask[0, 0] == 0
    assert torch.equal(out_node[0][outside], bhwc(comp)[0][outside])
    # strength 0.5: half way (in Lab, up to the gamut clip)
    (half,) = run("R2RWeightFreeHarmonize", bhwc(comp), mask[:, 0], 0.5, False, reference_image=bhwc(img),
                  reference_image_mask=region[:, 0])
    mid = _lab_mean(half[0].numpy(), fg)
    assert np.abs(mid - (before + target) / 2).max() <= 2.0


# ----------------------------------------------------------------------------- batches


def test_pipeline_batches_of_composites_and_of_references(pipe):
    comp, mask = scene()
    comp2, _ = scene(shift=(0.6, 0.9, 1.4))
    img, region = photo()
    ref = Reference(image=img, image_mask=region)
    both = call(pipe, torch.cat([comp, comp2]), mask, reference=ref, generator=[SEED, SEED]).images
    assert both.shape[0] == 2
    for i, c in enumerate((comp, comp2)):
        assert torch.allclose(both[i:i + 1], call(pipe, c, mask, reference=ref).images, atol=1e-5), i
    imgs = torch.cat([img, photo(tint=(0.3, 0.5, 0.9))[0]])
    many = call(pipe, comp, mask, reference=Reference(image=imgs), generator=SharedSeed(SEED)).images
    assert many.shape[0] == 2 and float((many[0] - many[1]).abs().max()) > 10 * IDENTITY_TOL  # one result per reference
    for r in range(2):
        one = call(pipe, comp, mask, reference=Reference(image=imgs[r:r + 1])).images
        assert torch.allclose(many[r:r + 1], one, atol=1e-5), r


def test_node_batches_of_composites_and_of_references(loaded):
    model, vae, ctrl = loaded
    comp, mask = scene()
    comp2, _ = scene(shift=(0.6, 0.9, 1.4))
    img, _ = photo()
    imgs = torch.cat([img, photo(tint=(0.3, 0.5, 0.9))[0]])
    kw = dict(seed=SEED, steps=STEPS, max_side=SIDE)
    (many,) = run("R2RHarmonize", model, vae, ctrl, bhwc(comp), mask[:, 0], reference_image=bhwc(imgs), **kw)
    assert many.shape[0] == 2 and float((many[0] - many[1]).abs().max()) > 10 * IDENTITY_TOL
    graph = _graph(loaded, bhwc(comp), mask[:, 0], reference_image=bhwc(imgs))
    assert torch.equal(graph, many)  # the four nodes and R2R Harmonize: one result per reference, the same
    (two,) = run("R2RHarmonize", model, vae, ctrl, bhwc(torch.cat([comp, comp2])), mask[:, 0],
                 reference_image=bhwc(img), **kw)
    assert two.shape[0] == 2 and not torch.equal(two[0], two[1])
    (weight_free,) = run("R2RWeightFreeHarmonize", bhwc(comp), mask[:, 0], 1.0, False, reference_image=bhwc(imgs))
    assert weight_free.shape[0] == 2 and not torch.equal(weight_free[0], weight_free[1])
    with pytest.raises(NodeError, match="3 reference images for 2 composites"):
        run("R2RWeightFreeHarmonize", bhwc(torch.cat([comp, comp2])), mask[:, 0], 1.0, False,
            reference_image=bhwc(torch.cat([imgs, img])))


# ----------------------------------------------------------------------------- every surface, one picture


def test_every_surface_gives_the_same_image_for_the_same_reference(pipe, loaded, tmp_path):
    """Python API == R2R Harmonize == the four-node graph == the CLI (the KSampler path:
    tests/test_reference_ksampler.py)."""
    from r2r.cli import main
    from r2r.fileio import read_image, write_image

    comp, mask = scene()
    img, region = photo()
    api = call(pipe, comp, mask, reference=Reference(image=img, image_mask=region)).images
    model, vae, ctrl = loaded
    (node,) = run("R2RHarmonize", model, vae, ctrl, bhwc(comp), mask[:, 0], seed=SEED, steps=STEPS, max_side=SIDE,
                  reference_image=bhwc(img), reference_image_mask=region[:, 0])
    graph = _graph(loaded, bhwc(comp), mask[:, 0], reference_image=bhwc(img), reference_image_mask=region[:, 0])
    assert torch.equal(node, graph)
    assert float((bchw(node) - api).abs().max()) <= 2e-5
    u8 = lambda t: (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    paths = {k: tmp_path / f"{k}.png" for k in ("comp", "mask", "photo", "region", "out")}
    write_image(paths["comp"], u8(comp))
    write_image(paths["mask"], (mask[0, 0].numpy() * 255).astype(np.uint8))
    write_image(paths["photo"], u8(img))
    write_image(paths["region"], (region[0, 0].numpy() * 255).astype(np.uint8))
    rc = main(["harmonize", "--composite", str(paths["comp"]), "--mask", str(paths["mask"]), "--out",
               str(paths["out"]), "--weights", str(pipe.source), "--steps", str(STEPS), "--seed", str(SEED),
               "--max-side", str(SIDE), "--reference", str(paths["photo"]), "--reference-mask", str(paths["region"])])
    assert rc == 0
    cli = read_image(paths["out"])
    expected = (api[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(cli.astype(int) - expected.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- bad input, before any work


def _spy(pipe, monkeypatch):
    calls = []
    real = pipe.models.get
    monkeypatch.setattr(pipe.models, "get", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    return calls


BAD = [
    ("small photo", lambda img, reg: Reference(image=img[..., :50, :]), "at least 64x64"),
    ("empty region", lambda img, reg: Reference(image=img, image_mask=torch.zeros_like(reg)), "is empty"),
    ("region size", lambda img, reg: Reference(image=img, image_mask=reg[..., :100, :]),
     "does not match the reference image size"),
    ("batch", lambda img, reg: Reference(image=torch.cat([img] * 3)), "Got 3 reference images for 2 composites"),
]


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_reference_is_refused_before_any_work(pipe, monkeypatch, name, make, message):
    comp, mask = scene()
    img, region = photo()
    calls = _spy(pipe, monkeypatch)
    with pytest.raises(R2RUserError, match=message):
        call(pipe, torch.cat([comp, comp]), mask, reference=make(img, region))
    for objects, crop in (("each", "none"), ("together", "per_object")):
        with pytest.raises(R2RUserError, match=message):
            call(pipe, torch.cat([comp, comp]), mask, reference=make(img, region), objects=objects, crop=crop)
    assert calls == []


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_reference_on_the_nodes(loaded, monkeypatch, name, make, message):
    model, vae, ctrl = loaded
    comp, mask = scene()
    img, region = photo()
    ref = make(img, region)
    inputs = {"reference_image": bhwc(ref.image)}
    if ref.image_mask is not None:
        inputs["reference_image_mask"] = ref.image_mask[:, 0]
    image = bhwc(torch.cat([comp, comp]))
    flow = pack_module("nodes.flow")
    encodes = []
    monkeypatch.setattr(flow, "encode", lambda *a, **k: encodes.append(1))
    if name == "region size":  # the nodes resize a mask of the same aspect ratio; another aspect is refused
        message = "reference_image_mask"
        inputs["reference_image_mask"] = region[:, 0, :100, :10]
    with pytest.raises(NodeError, match=message):
        run("R2RHarmonize", model, vae, ctrl, image, mask[:, 0], seed=SEED, steps=STEPS, max_side=SIDE, **inputs)
    assert encodes == []
    with pytest.raises(NodeError, match=message if name != "batch" else "reference images for 2 composites"):
        run("R2RWeightFreeHarmonize", image, mask[:, 0], 1.0, False, **inputs)


def test_bad_reference_on_the_cli(pipe, tmp_path, capsys):
    from r2r.cli import main
    from r2r.fileio import write_image

    comp, mask = scene()
    write_image(tmp_path / "c.png", (comp[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    write_image(tmp_path / "m.png", (mask[0, 0].numpy() * 255).astype(np.uint8))
    img, region = photo()
    u8 = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_image(tmp_path / "small.png", u8[:50])
    write_image(tmp_path / "p.png", u8)
    write_image(tmp_path / "empty.png", np.zeros(region.shape[-2:], np.uint8))
    write_image(tmp_path / "other.png", np.full((100, 90), 255, np.uint8))
    base = ["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--weights",
            str(pipe.source), "--steps", "1", "--max-side", str(SIDE)]
    for extra, message in ((["--reference", str(tmp_path / "small.png")], "at least 64x64"),
                           (["--reference", str(tmp_path / "p.png"), "--reference-mask", str(tmp_path / "empty.png")],
                            "is empty"),
                           (["--reference", str(tmp_path / "p.png"), "--reference-mask", str(tmp_path / "other.png")],
                            "does not match the reference image size"),
                           (["--reference-mask", str(tmp_path / "empty.png")], "needs the photo")):
        out = tmp_path / "out.png"
        assert main(base + ["--out", str(out)] + extra) == 2, extra
        assert message in capsys.readouterr().err and not out.exists()
