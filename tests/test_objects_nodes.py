"""R2R Harmonize's objects / crop / context inputs (r2r.pipeline.objects over ComfyUI's model management):
the same picture as ``pipe(..., objects=, crop=, context=)``, a MASK batch for one picture as its objects,
the simple case keeping its per-node reuse, and errors named on the node before any work."""

from __future__ import annotations

import pytest
import torch
from comfy_pack import load_pack, models_folder, node_classes, pack_module
from comfy_pack import run_node as run

from r2r import R2RPipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

load_pack()
NODES = node_classes()
NodeError = pack_module("r2r.errors").R2RUserError
KW = dict(seed=3, steps=2, max_side=128)


@pytest.fixture(scope="module")
def loaded(maca_release, tmp_path_factory):
    with models_folder(maca_release, tmp_path_factory.mktemp("models_objects")):
        yield run("R2RCheckpointLoader", "region2region", "fp32", False)


def scene(h=120, w=200):
    """IMAGE [1,H,W,3], the objects as a MASK batch [2,H,W] and their union [1,H,W]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx], -1)[None]
    masks = torch.zeros(2, h, w)
    masks[0, 20:50, 20:60] = 1
    masks[1, 70:110, 130:180] = 1
    img = torch.where(masks[0, ..., None] > 0, img * torch.tensor([1.3, 0.7, 0.6]), img)
    img = torch.where(masks[1, ..., None] > 0, img * torch.tensor([0.6, 0.9, 1.4]), img)
    return img.clamp(0, 1), masks, masks.amax(0, keepdim=True)


@pytest.mark.parametrize("objects,crop", [("each", "none"), ("each", "per_object"), ("together", "per_object")])
def test_harmonize_node_objects_equal_the_python_api(loaded, maca_release, objects, crop):
    model, vae, ctrl = loaded
    image, masks, union = scene()
    (node,) = run("R2RHarmonize", model, vae, ctrl, image, union, objects=objects, crop=crop, context=1.5, **KW)
    pipe = R2RPipeline.from_pretrained(str(maca_release))
    api = pipe(image.permute(0, 3, 1, 2), union[:, None], num_inference_steps=2, generator=3, max_side=128,
               objects=objects, crop=crop, context=1.5).images
    assert node.shape == image.shape
    assert float((node.permute(0, 3, 1, 2) - api).abs().max()) <= 2e-5
    outside = union[0] == 0
    changed = (node[0] != image[0]).any(-1)
    assert changed[union[0] > 0].float().mean() > 0.9
    far = torch.nn.functional.max_pool2d(union[:, None], 41, 1, 20)[0, 0] == 0
    assert not changed[outside & far].any()


def test_mask_batch_for_one_picture_lists_its_objects(loaded):
    model, vae, ctrl = loaded
    image, masks, union = scene()
    (by_batch,) = run("R2RHarmonize", model, vae, ctrl, image, masks, objects="each", **KW)
    (by_parts,) = run("R2RHarmonize", model, vae, ctrl, image, union, objects="each", **KW)
    assert by_batch.shape == image.shape and torch.equal(by_batch, by_parts)
    # objects=together without crops keeps the old meaning: one result per mask of the batch
    (per_mask,) = run("R2RHarmonize", model, vae, ctrl, image, masks, **KW)
    assert per_mask.shape[0] == 2


def test_simple_case_keeps_its_reuse_and_a_reference_applies_per_object(loaded, monkeypatch):
    model, vae, ctrl = loaded
    image, masks, union = scene()
    memo = pack_module("nodes.harmonize").MEMO
    before = memo.encodes
    (a,) = run("R2RHarmonize", model, vae, ctrl, image, union, **KW)
    (b,) = run("R2RHarmonize", model, vae, ctrl, image, union, objects="each", **KW)
    (c,) = run("R2RHarmonize", model, vae, ctrl, image, union, **{**KW, "seed": 4})
    assert memo.encodes == before + 1  # the objects run did not disturb the simple case's memo
    assert not torch.equal(a, b) and not torch.equal(a, c)
    photo = torch.ones(1, 80, 80, 3) * torch.tensor([0.9, 0.5, 0.2])
    (d,) = run("R2RHarmonize", model, vae, ctrl, image, union, objects="each", reference_image=photo, **KW)
    assert not torch.equal(b, d)


def test_object_errors_are_named_on_the_node_before_any_work(loaded, monkeypatch):
    model, vae, ctrl = loaded
    image, masks, union = scene(h=400, w=600)
    speck = union.clone()
    speck[0, 300:302, 500:503] = 1
    flow = pack_module("nodes.flow")
    calls = []
    monkeypatch.setattr(flow, "pipeline", lambda **k: calls.append(k) or pytest.fail("no pipeline before checks"))
    with pytest.raises(NodeError, match=r"R2R Harmonize: 'objects' must be one of together, each"):
        run("R2RHarmonize", model, vae, ctrl, image, union, objects="several", **KW)
    with pytest.raises(NodeError, match=r"'context' must be a number from 1 to 8"):
        run("R2RHarmonize", model, vae, ctrl, image, union, crop="per_object", context=20.0, **KW)
    monkeypatch.undo()
    kw = {**KW, "max_side": 256}  # objects 1 and 2 keep cells of the latent grid there, the speck none
    with pytest.raises(NodeError, match=r"R2R Harmonize: objects=each: object 3 of 3 \(3x2 px"):
        run("R2RHarmonize", model, vae, ctrl, image, speck, objects="each", **kw)
    (ok,) = run("R2RHarmonize", model, vae, ctrl, image, speck, objects="each", crop="per_object", **kw)
    assert ok.shape == image.shape
