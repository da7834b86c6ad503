"""Several objects in one picture and per-object crops (r2r.pipeline.objects), on the tiny release: how
objects are found, the crop geometry, what each run is (checked against plain pipeline calls that state
the rule), the composition (later masks win, feather bands stay out of other objects, pixels outside
every mask bit-exact), batches, the weight-free harmonizer per object, and the bad inputs."""
# the tiny release with MACA amplified: tests/reference_release.py

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2r import R2RPipeline
from r2r.errors import R2RUserError
from r2r.imaging import compute_geometry
from r2r.pipeline import Reference, SharedSeed
from r2r.pipeline.objects import (
    MAX_OBJECTS,
    Box,
    ObjectsOutput,
    components,
    crop_box,
    harmonize_statistics_objects,
    split_objects,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

KW = dict(num_inference_steps=2, generator=5, max_side=128)


@pytest.fixture(scope="module")
def pipe(maca_release):
    """The tiny release with MACA amplified, so the colour source of each object shows."""
    return R2RPipeline.from_pretrained(str(maca_release))


def scene(h=96, w=160, boxes=((20, 50, 20, 50), (50, 80, 100, 140))):
    """A gradient picture with recoloured rectangles (the pasted objects) and their masks ``[K,1,H,W]``."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    comp = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx])[None]
    masks = torch.zeros(len(boxes), 1, h, w)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, :, y0:y1, x0:x1] = 1
    gains = torch.tensor([[1.3, 0.7, 0.6], [0.6, 0.9, 1.4], [1.1, 1.2, 0.5]])
    for i in range(len(boxes)):
        comp = torch.where(masks[i:i + 1] > 0, comp * gains[i % 3].view(1, 3, 1, 1), comp)
    return comp.clamp(0, 1), masks


def union(masks):
    return masks.amax(0, keepdim=True)


# ----------------------------------------------------------------------------- finding objects


def test_components_in_reading_order_with_soft_edges_to_the_nearest():
    m = torch.zeros(1, 40, 60)
    m[0, 25:35, 5:15] = 1  # lower left: second in reading order
    m[0, 5:12, 40:55] = 1  # upper right: first
    m[0, 24, 5:15] = 0.3  # a soft edge just above the lower object
    m[0, 5:12, 39] = 0.2  # and left of the upper one
    objs = components(m)
    assert [o.box for o in objs] == [Box(5, 12, 39, 55), Box(24, 35, 5, 15)]  # the soft edges belong to them
    whole = Box(0, 40, 0, 60)
    parts = torch.cat([o.within(whole) for o in objs])
    assert parts.shape == (2, 1, 40, 60)
    assert bool(parts[0, 0, 8, 45] == 1) and bool(parts[1, 0, 30, 10] == 1)
    assert float(parts[1, 0, 24, 10]) == pytest.approx(0.3) and float(parts[0, 0, 24, 10]) == 0
    assert float(parts[0, 0, 8, 39]) == pytest.approx(0.2)
    assert torch.equal(parts.sum(0), m)  # every pixel in exactly one object, values kept
    single = torch.zeros(1, 40, 60)
    single[0, 10:20, 10:20] = 1
    (one,) = components(single)
    assert one.box == Box(10, 20, 10, 20) and torch.equal(one.within(whole)[0], single)
    assert torch.equal(one.within(Box(15, 40, 0, 12))[0, 0], single[0, 15:40, 0:12])  # cut to another box


def test_split_objects_batch_rules():
    _, masks = scene()
    assert [len(g) for g in split_objects(masks, 1)] == [2]  # a MASK batch for one picture: its objects
    assert [len(g) for g in split_objects(union(masks), 1)] == [2]  # its separate parts
    assert [len(g) for g in split_objects(torch.cat([union(masks), masks[:1]]), 2)] == [2, 1]
    with pytest.raises(R2RUserError, match="Got 2 masks for 3 composites"):
        split_objects(masks, 3)
    empty = masks.clone()
    empty[1] = 0
    with pytest.raises(R2RUserError, match="object 2 is empty"):
        split_objects(empty, 1)
    specks = torch.zeros(1, 1, 64, 200)
    specks[..., ::2, ::3] = 1  # far more separate parts than objects
    specks[..., 1::2, :] = 0
    with pytest.raises(R2RUserError, match=f"at most {MAX_OBJECTS}"):
        split_objects(specks, 1)


# ----------------------------------------------------------------------------- crop geometry


@pytest.mark.parametrize("obj,image,context", [
    (Box(1000, 1300, 2000, 2200), (3000, 4000), 2.0),  # a 200x300 object in a big photo
    (Box(0, 40, 0, 30), (400, 300), 2.0),  # at the corner: shifted inside
    (Box(10, 290, 20, 380), (300, 400), 3.0),  # grown past the picture: clamped
    (Box(50, 53, 60, 62), (200, 300), 1.0),  # a speck: at least 64 px
])
def test_crop_geometry(obj, image, context):
    box = crop_box(obj, image, context, 1024)
    assert 0 <= box.y0 and box.y1 <= image[0] and 0 <= box.x0 and box.x1 <= image[1]
    assert box.y0 <= obj.y0 and obj.y1 <= box.y1 and box.x0 <= obj.x0 and obj.x1 <= box.x1
    assert min(box.height, box.width) >= 64 or (box.height, box.width) == image
    if box.height < image[0] and box.width < image[1]:  # not clamped: the canvas's aspect, no stretch
        content = compute_geometry(box.height, box.width, 1024).content_size
        assert abs(box.height / box.width - content[0] / content[1]) <= 1.0 / min(box.height, box.width)
        assert max(box.height, box.width) >= context * max(obj.height, obj.width)


def test_crop_grows_with_context():
    small, big = (crop_box(Box(1000, 1300, 2000, 2200), (3000, 4000), c, 1024) for c in (1.0, 3.0))
    assert big.height > 2.5 * small.height * 0.9 and big.y0 < small.y0
    assert small.height >= 300 and small.width >= 200


# ----------------------------------------------------------------------------- what each run is


def test_each_object_is_its_own_run_against_the_background_without_the_others(pipe):
    comp, masks = scene()
    out = pipe(comp, union(masks), objects="each", feather=0, **KW)
    assert isinstance(out, ObjectsOutput) and len(out.runs) == 2 and out.images.shape == comp.shape
    rest = 1 - union(masks)
    for i in range(2):
        alone = pipe(comp, masks[i:i + 1], reference=Reference(mask=rest), feather=0, **KW).images
        inside = masks[i, 0] > 0
        assert torch.equal(out.images[..., inside], alone[..., inside]), i
    outside = union(masks)[0, 0] == 0
    assert torch.equal(out.images[..., outside], comp[..., outside])  # bit for bit
    # the other object changes object 1's colour source: not what a run with the whole background gives
    whole = pipe(comp, masks[:1], feather=0, **KW).images
    assert not torch.allclose(whole[..., masks[0, 0] > 0], out.images[..., masks[0, 0] > 0], atol=1e-4)


def test_one_object_each_is_the_plain_call(pipe):
    comp, masks = scene(boxes=((20, 60, 30, 90),))
    plain = pipe(comp, masks, **KW).images
    assert torch.equal(pipe(comp, masks, objects="each", **KW).images, plain)


def test_per_object_crop_is_a_plain_run_on_the_crop_pasted_back(pipe):
    comp, masks = scene(h=200, w=300, boxes=((20, 50, 20, 60), (120, 170, 200, 260)))
    out = pipe(comp, union(masks), objects="each", crop="per_object", **KW)
    for i, run in enumerate(out.runs):
        box = run.box
        assert box == crop_box(run.object_box, (200, 300), 2.0, 128)
        alone = pipe(box.of(comp), box.of(masks[i:i + 1]), **KW).images
        inside = box.of(masks[i, 0]) > 0
        assert torch.equal(box.of(out.images)[..., inside], alone[..., inside]), i
    far = torch.ones(200, 300, dtype=torch.bool)
    for run in out.runs:  # nothing outside the crops changes
        far[run.box.y0:run.box.y1, run.box.x0:run.box.x1] = False
    assert torch.equal(out.images[..., far], comp[..., far])
    outside = union(masks)[0, 0] == 0
    assert torch.equal(out.images[..., outside & far], comp[..., outside & far])


def test_together_with_crops_harmonizes_the_union_in_each_crop(pipe):
    comp, masks = scene(h=128, w=192, boxes=((30, 60, 30, 70), (40, 90, 80, 110)))
    out = pipe(comp, union(masks), crop="per_object", context=1.5, feather=0, **KW)
    assert len(out.runs) == 2
    for i, run in enumerate(out.runs):
        box = run.box
        alone = pipe(box.of(comp), box.of(union(masks)), feather=0, **KW).images
        mine = box.of(masks[i, 0]) > 0
        if i == 0:  # the later crop wins where both objects are pasted: object 1 keeps only its own pixels
            mine &= box.of(masks[1, 0]) == 0
        assert torch.equal(box.of(out.images)[..., mine], alone[..., mine]), i


def test_overlap_later_mask_wins_and_feather_bands_stay_out_of_other_objects(pipe):
    comp, masks = scene(boxes=((20, 60, 20, 70), (40, 80, 60, 110)))  # overlap at [40:60, 60:70]
    out = pipe(comp, masks, objects="each", **KW)  # a MASK batch for one picture: two objects
    rest = 1 - union(masks)
    second = pipe(comp, masks[1:], reference=Reference(mask=rest), **KW).images
    overlap = (masks[0, 0] > 0) & (masks[1, 0] > 0)
    assert overlap.any() and torch.equal(out.images[..., overlap], second[..., overlap])
    first = pipe(comp, masks[:1], reference=Reference(mask=rest), **KW).images
    only_first = (masks[0, 0] > 0) & (masks[1, 0] == 0)  # next to object 2, inside its feather band
    assert torch.allclose(out.images[..., only_first], first[..., only_first], atol=1e-6)
    # pixels farther than the feather band (one latent cell in original pixels) from both masks are bit-exact
    import cv2

    from r2r.imaging.pasteback import default_feather

    band = default_feather(compute_geometry(96, 160, 128))
    far = cv2.distanceTransform((union(masks)[0, 0] == 0).numpy().astype(np.uint8), cv2.DIST_L2, 5) > band
    far = torch.from_numpy(far)
    assert torch.equal(out.images[..., far], comp[..., far])


# ----------------------------------------------------------------------------- batches, references, big pictures


def test_batch_of_composites_each_as_alone(pipe):
    comp, masks = scene()
    comp2 = comp.flip(-1)
    both = pipe(torch.cat([comp, comp2]), torch.cat([union(masks), union(masks).flip(-1)]), objects="each",
                generator=[5, 6], num_inference_steps=2, max_side=128)
    assert both.images.shape[0] == 2 and len(both.runs) == 4
    for b, (c, m, seed) in enumerate(((comp, union(masks), 5), (comp2, union(masks).flip(-1), 6))):
        alone = pipe(c, m, objects="each", generator=seed, num_inference_steps=2, max_side=128).images
        assert torch.equal(both.images[b:b + 1], alone), b


def test_one_composite_several_reference_photos_with_objects(pipe):
    comp, masks = scene()
    photos = torch.stack([torch.full((3, 80, 120), v) for v in (0.2, 0.8)]) * torch.tensor([1.0, 0.6, 0.3]).view(
        1, 3, 1, 1)
    kw = {**KW, "generator": SharedSeed(5)}  # every result drawn as a batch-1 run with seed 5 draws it
    out = pipe(comp, union(masks), objects="each", reference=Reference(image=photos), **kw)
    assert out.images.shape[0] == 2 and not torch.equal(out.images[0], out.images[1])
    for r in range(2):
        one = pipe(comp, union(masks), objects="each", reference=Reference(image=photos[r:r + 1]), **kw).images
        assert torch.allclose(out.images[r:r + 1], one, atol=1e-5), r


def test_big_picture_per_object_uses_fullres_mode_and_counts_steps(pipe):
    comp, masks = scene(h=600, w=900, boxes=((100, 160, 100, 200), (400, 470, 600, 690)))
    steps = []
    out = pipe(comp, union(masks), objects="each", crop="per_object", callback=lambda i, n: steps.append((i, n)),
               **KW)
    assert steps[-1] == (4, 4) and [i for i, _ in steps] == [1, 2, 3, 4]
    outside = union(masks)[0, 0] == 0
    changed = (out.images != comp).any(1)[0]
    assert changed[masks[0, 0] > 0].float().mean() > 0.9
    near = torch.zeros_like(outside)
    for run in out.runs:
        near[run.box.y0:run.box.y1, run.box.x0:run.box.x1] = True
    assert not changed[outside & ~near].any()


# ----------------------------------------------------------------------------- the weight-free harmonizer


def _lab_mean(img, weight):
    import cv2

    lab = cv2.cvtColor(img[0].permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2Lab)
    w = weight[0, 0].numpy().astype(np.float64)
    return (lab.reshape(-1, 3) * w.reshape(-1, 1)).sum(0) / w.sum()


def test_weight_free_each_object_takes_the_background_without_the_others():
    comp, masks = scene()
    out = harmonize_statistics_objects(comp, union(masks), objects="each")
    rest = 1 - union(masks)
    target = _lab_mean(comp, rest)
    for i in range(2):
        assert np.abs(_lab_mean(out, masks[i:i + 1]) - target).max() <= 1.0, i
    outside = union(masks)[0, 0] == 0
    assert torch.equal(out[..., outside], comp[..., outside])
    # together: the union's statistics move as one (each object keeps its difference to the other)
    together = harmonize_statistics_objects(comp, union(masks), objects="together", crop="per_object")
    assert together.shape == comp.shape and not torch.allclose(together, out)


def test_weight_free_crops_take_the_crop_background():
    comp, masks = scene(h=200, w=300, boxes=((20, 50, 20, 60), (120, 170, 200, 260)))
    out = harmonize_statistics_objects(comp, union(masks), objects="each", crop="per_object", context=1.5)
    box = crop_box(Box(20, 50, 20, 60), (200, 300), 1.5, 1024)
    local = _lab_mean(box.of(comp), 1 - box.of(union(masks)))
    assert np.abs(_lab_mean(box.of(out), box.of(masks[:1])) - local).max() <= 1.0


# ----------------------------------------------------------------------------- bad input, before any work


def _no_work(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(pipe.models, "get", lambda name, *a, **k: calls.append(name))
    return calls


def test_object_lost_at_the_working_size_names_it(pipe, monkeypatch):
    comp, masks = scene(h=400, w=600, boxes=((100, 200, 100, 250), (300, 302, 500, 503)))
    calls = _no_work(pipe, monkeypatch)
    with pytest.raises(R2RUserError, match=r"object 2 of 2 \(3x2 px at x=500, y=300\) vanishes") as err:
        pipe(comp, union(masks), objects="each", num_inference_steps=2, max_side=128)
    assert "crop=per_object" in str(err.value)
    assert calls == []


def test_bad_object_settings(pipe, monkeypatch):
    comp, masks = scene()
    calls = _no_work(pipe, monkeypatch)
    with pytest.raises(R2RUserError, match="objects must be one of together, each"):
        pipe(comp, union(masks), objects="all", **KW)
    with pytest.raises(R2RUserError, match="crop must be one of none, per_object"):
        pipe(comp, union(masks), crop="tight", **KW)
    with pytest.raises(R2RUserError, match="context must be a number from 1 to 8"):
        pipe(comp, union(masks), crop="per_object", context=0.5, **KW)
    with pytest.raises(R2RUserError, match="context must be"):
        pipe(comp, union(masks), context=9.0, **KW)
    with pytest.raises(R2RUserError, match="need paste_back on"):
        pipe(comp, union(masks), objects="each", paste_back=False, **KW)
    with pytest.raises(R2RUserError, match="Got 2 masks for 3 composites"):
        pipe(comp.expand(3, -1, -1, -1), masks, objects="each", **KW)
    with pytest.raises(R2RUserError, match="does not match the composite size"):
        pipe(comp, union(masks)[..., :80], objects="each", **KW)
    # a crop whose background is all other objects
    crowded = torch.zeros(1, 1, 96, 160)
    crowded[..., :, :] = 1
    crowded[..., 42:54, 72:88] = 0
    inner = torch.zeros_like(crowded)
    inner[..., 44:52, 74:86] = 1
    with pytest.raises(R2RUserError, match="no background of its own"):
        pipe(comp, torch.cat([crowded, inner]), objects="each", **KW)
    assert calls == []


# ----------------------------------------------------------------------------- the command line


def test_cli_objects_and_crops(pipe, tmp_path, capsys):
    from r2r.cli import main
    from r2r.fileio import read_image, write_image

    comp, masks = scene(h=150, w=240, boxes=((20, 60, 20, 70), (90, 130, 150, 210)))
    comp = (comp * 255).round() / 255
    u8 = (comp[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_image(tmp_path / "c.png", u8)
    write_image(tmp_path / "m.png", (union(masks)[0, 0].numpy() * 255).astype(np.uint8))
    base = ["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--steps", "2",
            "--seed", "5", "--max-side", "128", "--objects", "each", "--crop", "per_object", "--context", "1.5"]
    assert main(base + ["--out", str(tmp_path / "r2r.png"), "--weights", str(pipe.source)]) == 0
    api = pipe(comp, union(masks), objects="each", crop="per_object", context=1.5, **KW).images
    expected = (api[0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert np.abs(read_image(tmp_path / "r2r.png").astype(int) - expected).max() <= 1
    assert main(base + ["--out", str(tmp_path / "wf.png"), "--method", "statistics"]) == 0
    wf = harmonize_statistics_objects(u8, union(masks)[0, 0].numpy(), objects="each", crop="per_object", context=1.5,
                                      max_side=128)
    assert np.abs(read_image(tmp_path / "wf.png").astype(int) - (wf[0].permute(1, 2, 0).numpy() * 255).round()).max() \
        <= 1
    # an object lost at the working size: exit 2 before any weights are looked for
    speck = union(masks).clone()
    speck[..., 140:141, 5:7] = 1
    write_image(tmp_path / "s.png", (speck[0, 0].numpy() * 255).astype(np.uint8))
    capsys.readouterr()
    bad = ["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "s.png"), "--out",
           str(tmp_path / "no.png"), "--weights", str(tmp_path / "no_such_release"), "--max-side", "128",
           "--objects", "each"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "object 3 of 3 (2x1 px at x=5, y=140) vanishes" in err and not (tmp_path / "no.png").exists()
    assert main(bad[:-2] + ["--crop", "per_object", "--context", "9"]) == 2
    assert "--context must be a number from 1 to 8" in capsys.readouterr().err
