"""Issue 16 ("An artist's first ten minutes and daily loop"), the node side, in-process on the tiny release:

* item 1: max_side 0 (the default of Clear-VAE Encode and R2R Harmonize) works at 512 on a CPU and says so
  in the log;
* item 3: a mask covering more than half of the picture gets a warning (log + node text) with the invert
  hint; a normal mask does not;
* item 4: the version-2 MACA Controller Apply / Clear-VAE Decode show only what they use, the version-1
  ids stay registered and deprecated;
* item 7: a new seed on R2R Harmonize runs neither the Clear-VAE encoder nor the controller, and its image
  equals a fresh run's;
* a batch of seeds in one run (R2R Sampler's batch_size): each image is the one its seed gives alone.
"""

from __future__ import annotations

import logging

import pytest
import torch
from comfy_pack import load_pack, node_classes, pack_module
from comfy_pack import run_node as run

load_pack()
NODES = node_classes()
harmonize = pack_module("nodes.harmonize")


def _scene(h=80, w=112, box=(20, 60, 37, 74)):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx], -1)[None]
    mask = torch.zeros(1, h, w)
    y0, y1, x0, x1 = box
    mask[:, y0:y1, x0:x1] = 1.0
    return torch.where(mask[..., None] > 0, img * torch.tensor([1.3, 0.7, 0.6]), img).clamp(0, 1), mask


def _spy(monkeypatch, cls, method):
    calls = []
    orig = getattr(cls, method)

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, method, spy)
    return calls


def test_new_seed_on_harmonize_runs_neither_encoder_nor_controller(loaded, monkeypatch):
    model, vae, ctrl = loaded
    image, mask = _scene()
    monkeypatch.setattr(harmonize, "MEMO", harmonize.HarmonizeMemo())
    encodes = _spy(monkeypatch, type(vae.model), "encode_with_skips")
    controls = _spy(monkeypatch, type(ctrl.model), "forward")
    kw = dict(steps=3, max_side=64)
    (first,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=1, **kw)
    assert len(encodes) == 1 and len(controls) == 3
    (again,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=2, **kw)  # a new seed
    assert len(encodes) == 1 and len(controls) == 3, "a new seed ran the encoder or the controller again"
    # the reused work gives exactly the picture of a fresh run (a new memo = a restarted ComfyUI)
    monkeypatch.setattr(harmonize, "MEMO", harmonize.HarmonizeMemo())
    (fresh,) = run("R2RHarmonize", model, vae, ctrl, image, mask, seed=2, **kw)
    assert len(encodes) == 2 and len(controls) == 6
    assert torch.equal(again, fresh) and not torch.equal(first, again)
    # a new strength runs the controller again, not the encoder; a new picture runs both
    run("R2RHarmonize", model, vae, ctrl, image, mask, seed=2, strength=0.5, **kw)
    assert len(encodes) == 2 and len(controls) == 9
    run("R2RHarmonize", model, vae, ctrl, image.flip(2), mask.flip(2), seed=2, **kw)
    assert len(encodes) == 3 and len(controls) == 12


def test_max_side_auto_is_512_on_a_cpu_and_logged(loaded, caplog):
    _, vae, _ = loaded
    image, mask = _scene(h=600, w=840, box=(150, 450, 280, 560))
    caplog.set_level(logging.INFO)  # the pack copy logs as <pack>.r2r.devices
    assert NODES["R2RClearVAEEncode"].GET_NODE_INFO_V1()["input"]["required"]["max_side"][1]["default"] == 0
    assert NODES["R2RHarmonize"].GET_NODE_INFO_V1()["input"]["required"]["max_side"][1]["default"] == 0
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 0, False, "fit")
    assert max(latent["r2r"].prepared.geometry.working_size) == 512
    assert any("max_side auto: 512 on cpu" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("node", ["R2RClearVAEEncode", "R2RHarmonize"])
def test_a_mask_over_half_the_picture_is_warned_about(loaded, caplog, node):
    model, vae, ctrl = loaded
    image, small = _scene()
    big = 1.0 - small  # what a cut-out PNG's Load Image MASK looks like: the object's surroundings
    caplog.set_level(logging.WARNING, logger="r2r.nodes")

    def go(mask):
        caplog.clear()
        if node == "R2RClearVAEEncode":
            run(node, vae, image, mask, 64, False, "fit")
        else:
            run(node, model, vae, ctrl, image, mask, seed=0, steps=1, max_side=64)
        return [r.getMessage() for r in caplog.records if r.name == "r2r.nodes"]

    warned = go(big)
    assert len(warned) == 1, warned
    share = round(float(big.mean()) * 100)
    assert f"the mask covers {share}% of the picture" in warned[0] and "switch invert_mask on" in warned[0]
    assert "cut-out PNG" in warned[0]
    assert go(small) == []


def test_version_2_nodes_show_only_what_they_use():
    v2 = {"R2RMACAControllerApplyV2": "R2RMACAControllerApply", "R2RClearVAEDecodeV2": "R2RClearVAEDecode"}
    for new, old in v2.items():
        info_new, info_old = NODES[new].GET_NODE_INFO_V1(), NODES[old].GET_NODE_INFO_V1()
        names_new = {n for s in ("required", "optional") for n in info_new["input"].get(s, {})}
        names_old = {n for s in ("required", "optional") for n in info_old["input"].get(s, {})}
        assert not names_new & {"image", "mask", "invert_mask"}, new
        assert {"image", "mask", "invert_mask"} <= names_old - names_new
        assert info_old["deprecated"] and not info_new["deprecated"]
        assert info_new["display_name"] + " (old)" == info_old["display_name"]


def test_a_batch_of_seeds_in_one_run_equals_each_seed_alone(loaded):
    model, vae, ctrl = loaded
    image, mask = _scene()
    (latent,) = run("R2RClearVAEEncode", vae, image, mask, 64, False, "fit")
    (cmodel,) = run("R2RMACAControllerApplyV2", model, ctrl, 1.0)
    (batch,) = run("R2RSampler", cmodel, latent, 7, 2, "euler_ancestral", "cpu", 3)
    assert batch["samples"].shape[0] == 3
    for i in range(3):
        (one,) = run("R2RSampler", cmodel, latent, 7 + i, 2, "euler_ancestral", "cpu", 1)
        # batched through the U-Net: the same picture up to float rounding (latents here are ~100 in size)
        assert torch.allclose(batch["samples"][i:i + 1], one["samples"], rtol=1e-4, atol=1e-3), i
    (images,) = run("R2RClearVAEDecodeV2", vae, batch)
    assert images.shape[0] == 3 and images.shape[1:3] == image.shape[1:3]


def test_example_image_offers_a_cut_out_and_a_background():
    """The pieces of the composite-building template: a cut-out with its mask, a background with an empty
    mask; made by r2r/assets/make_examples.py (regenerated here: the bundled files are what it writes)."""
    import numpy as np
    from PIL import Image

    examples = pack_module("nodes.examples")
    names = examples.example_names()
    assert {"astronaut", "coffee", "motorcycle", "cup_cutout", "rocket_background"} <= set(names)
    cup, cup_mask = run("R2RExampleImage", "cup_cutout")
    bg, bg_mask = run("R2RExampleImage", "rocket_background")
    assert cup.shape == (1, 142, 150, 3) and cup_mask.shape == (1, 142, 150)
    assert 0.5 < float(cup_mask.mean()) < 0.95
    assert bg.shape == (1, 299, 448, 3) and bg_mask.shape == (1, 299, 448) and float(bg_mask.max()) == 0.0
    pytest.importorskip("skimage")
    from r2r.assets import make_examples

    for stem, rgb, mask in make_examples.cutouts_and_backgrounds():
        bundled = np.asarray(Image.open(f"{examples.EXAMPLES_DIR}/{stem}_image.png").convert("RGB"))
        assert np.array_equal(bundled, rgb), stem
        if mask is not None:
            assert np.array_equal(np.asarray(Image.open(f"{examples.EXAMPLES_DIR}/{stem}_mask.png")) > 127, mask)
