"""Dataset layouts (iHarmony4/RPHarmony lists, image+mask sources) and the atomic writer."""

import json
import os
import time

import cv2
import numpy as np
import pytest

from r2r.dataset import layouts, writer
from r2r.dataset.layouts import read_split, split_composite_name, subset_from_name
from r2r.dataset.writer import HarmonizationDatasetWriter, read_indexes
from r2r.errors import R2RUserError


def _img(rng, h=40, w=56):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=40, w=56):
    m = np.zeros((h, w), bool)
    m[8:24, 10:40] = True
    return m


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())


# ----------------------------------------------------------------------------- naming rule


def test_naming_rule():
    assert split_composite_name("a0001_1_2") == ("a0001", "1", "2")
    # the official rule re-joins the first two of four parts
    assert split_composite_name("c_100_1_2") == ("c_100", "1", "2")
    with pytest.raises(R2RUserError, match="naming rule"):
        split_composite_name("a0001_1")
    assert subset_from_name("rd-foo_1_1.jpg") == "R-DUTS"
    assert subset_from_name("r-ADE_1_1.jpg") == "R-ADE20K"
    assert subset_from_name("a0001_1_1.jpg") == "HAdobe5k"
    assert subset_from_name("c1_1_1.jpg") == "HCOCO"
    assert subset_from_name("d90_1_1.jpg") == "Hday2night"
    assert subset_from_name("f12_1_1.jpg") == "HFlickr"


def _ihd_tree(root, rng):
    for subset, name in (("HAdobe5k", "a0001"), ("HCOCO", "c7")):
        _write(root / subset / "real_images" / f"{name}.jpg", _img(rng))
        _write(root / subset / "masks" / f"{name}_1.png", _mask().astype(np.uint8) * 255)
        _write(root / subset / "composite_images" / f"{name}_1_1.jpg", _img(rng))
        _write(root / subset / "composite_images" / f"{name}_1_2.jpg", _img(rng))


def test_read_split_jsonl_txt_and_bare_names(tmp_path):
    rng = np.random.default_rng(0)
    _ihd_tree(tmp_path, rng)
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"file_name": "HAdobe5k/composite_images/a0001_1_1.jpg", "text": ""}) + "\n"
        + json.dumps({"file_name": "HCOCO/composite_images/c7_1_2.jpg", "text": ""}) + "\n"
        + '{"file_name": "HCOCO/composite_images/c7_1'  # a half-written last line is ignored
    )
    s = read_split(tmp_path, "test")
    assert [x.subset for x in s] == ["HAdobe5k", "HCOCO"]
    assert s[0].mask == tmp_path / "HAdobe5k/masks/a0001_1.png"
    assert s[1].real == tmp_path / "HCOCO/real_images/c7.jpg"
    # official IHD_train.txt with bare names: subset from the name prefix
    (tmp_path / "IHD_train.txt").write_text("a0001_1_2.jpg\nHCOCO/composite_images/c7_1_1.jpg\n")
    s = read_split(tmp_path, "train")
    assert [x.file_name for x in s] == ["HAdobe5k/composite_images/a0001_1_2.jpg", "HCOCO/composite_images/c7_1_1.jpg"]
    # a list given as a path
    assert len(read_split(tmp_path, str(tmp_path / "test.jsonl"))) == 2


def test_read_split_errors(tmp_path):
    rng = np.random.default_rng(0)
    _ihd_tree(tmp_path, rng)
    with pytest.raises(R2RUserError, match="no list of the 'test' split"):
        read_split(tmp_path, "test")
    (tmp_path / "test.txt").write_text("HCOCO/composite_images/c7_1_9.jpg\n")
    with pytest.raises(R2RUserError, match=r"1 file\(s\) listed .* missing"):
        read_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text("not json\n")
    with pytest.raises(R2RUserError, match="line 1 is not a JSON object"):
        read_split(tmp_path, "test")
    with pytest.raises(R2RUserError, match="does not exist"):
        read_split(tmp_path / "nope")


# ----------------------------------------------------------------------------- sources


def test_find_sources_matching_rules(tmp_path):
    rng = np.random.default_rng(0)
    im, mk = tmp_path / "img", tmp_path / "msk"
    for n in ("plain", "suffixed", "multi", "lonely", "sub/nested"):
        _write(im / f"{n}.jpg", _img(rng))
    _write(mk / "plain.png", _mask().astype(np.uint8) * 255)
    _write(mk / "suffixed_mask.png", _mask().astype(np.uint8) * 255)
    _write(mk / "multi_1.png", _mask().astype(np.uint8) * 255)
    _write(mk / "multi_3.png", _mask().astype(np.uint8) * 255)
    _write(mk / "sub/nested.png", _mask().astype(np.uint8) * 255)
    (im / "half.jpg.tmp-123").write_bytes(b"partial")  # a crashed writer's temp file is ignored
    items = {s.key: s for s in layouts.find_sources(im, mk)}
    assert sorted(items) == ["lonely", "multi", "plain", "sub/nested", "suffixed"]
    assert [m.k for m in items["multi"].masks] == [1, 3]
    assert items["suffixed"].masks[0].path.name == "suffixed_mask.png"
    assert items["sub/nested"].masks[0].path == mk / "sub/nested.png"
    assert items["lonely"].masks == [] and "no mask found for image" in items["lonely"].problem
    (tmp_path / "empty").mkdir()
    with pytest.raises(R2RUserError, match="no images found"):
        layouts.find_sources(tmp_path / "empty", mk)
    with pytest.raises(R2RUserError, match="no mask files found"):
        layouts.find_sources(im, tmp_path / "empty")
    with pytest.raises(R2RUserError, match="does not exist"):
        layouts.find_sources(tmp_path / "nope", mk)


def test_detect_layout(tmp_path):
    for sub in ("DUTS-TR-Image", "DUTS-TR-Mask"):
        (tmp_path / "duts" / sub).mkdir(parents=True)
    for sub in ("images", "annotations"):
        (tmp_path / "ade" / sub).mkdir(parents=True)
    for sub in ("real_images", "masks", "composite_images"):
        (tmp_path / "ihd" / sub).mkdir(parents=True)
    assert layouts.detect_layout(tmp_path / "duts")[2] == "binary"
    img, msk, kind = layouts.detect_layout(tmp_path / "ade")
    assert (img.name, msk.name, kind) == ("images", "annotations", "labels")
    assert layouts.detect_layout(tmp_path / "ihd")[0].name == "real_images"
    with pytest.raises(R2RUserError, match="cannot recognise the layout"):
        layouts.detect_layout(tmp_path)


# ----------------------------------------------------------------------------- writer


def _consistent(root):
    idx = read_indexes(root)
    for split in ("train", "test"):
        j = [json.loads(line)["file_name"] for line in (root / f"{split}.jsonl").read_text().splitlines()]
        t = (root / f"{split}.txt").read_text().splitlines()
        assert j == t == idx[split]
        for fn in j:
            s = layouts.sample_from_file_name(root, fn)
            assert s.composite.exists() and s.mask.exists() and s.real.exists()
    return idx


def test_writer_add_names_and_indexes(tmp_path):
    rng = np.random.default_rng(0)
    real, m = _img(rng), _mask()
    w = HarmonizationDatasetWriter(tmp_path, "R-Custom")
    p1 = w.add(_img(rng), m, real)
    p2 = w.add(_img(rng), m, real)  # same real + mask: next composite index
    m2 = _mask()
    m2[30:38, 0:10] = True
    p3 = w.add(_img(rng), m2, real, split="test")  # new mask of the same real: next mask index
    p4 = w.add(_img(rng).astype(np.float32) / 255.0, m.astype(np.float32), _img(rng), name="photo-7")
    name = p1["real"].stem
    assert p1["file_name"] == f"R-Custom/composite_images/{name}_1_1.jpg"
    assert p2["file_name"].endswith(f"{name}_1_2.jpg") and p3["file_name"].endswith(f"{name}_2_1.jpg")
    assert p4["composite"].name == "photo-7_1_1.jpg" and p4["mask"].name == "photo-7_1.png"
    line = (tmp_path / "train.jsonl").read_text().splitlines()[0]
    assert line == '{"file_name": "R-Custom/composite_images/' + f'{name}_1_1.jpg", "text": ""' + "}"
    idx = _consistent(tmp_path)
    assert len(idx["train"]) == 3 and len(idx["test"]) == 1
    # stored mask is 0/255 and exact; JPEG quality 100 keeps the real image close
    stored = cv2.imread(str(p1["mask"]), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(stored)) == {0, 255} and np.array_equal(stored > 127, m)
    back = cv2.cvtColor(cv2.imread(str(p1["real"])), cv2.COLOR_BGR2RGB)
    assert np.abs(back.astype(int) - real).mean() < 2.0
    # a new writer on the same root (next run) continues the numbering
    p5 = HarmonizationDatasetWriter(tmp_path, "R-Custom").add(_img(rng), m, real)
    assert p5["file_name"].endswith(f"{name}_1_3.jpg")
    png = HarmonizationDatasetWriter(tmp_path, "R-Lossless", image_format="png").add(real, m, real, name="x")
    assert png["real"].suffix == ".png"
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(png["real"])), cv2.COLOR_BGR2RGB), real)
    _consistent(tmp_path)


def test_writer_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    w = HarmonizationDatasetWriter(tmp_path, "S")
    real = _img(rng)
    with pytest.raises(R2RUserError, match="must have the same size"):
        w.add(_img(rng, 40, 50), _mask(), real)
    with pytest.raises(R2RUserError, match="mask is empty"):
        w.add(real, np.zeros((40, 56)), real)
    with pytest.raises(R2RUserError, match="whole image"):
        w.add(real, np.ones((40, 56)), real)
    with pytest.raises(R2RUserError, match="no '_'"):
        w.add(real, _mask(), real, name="a_b")
    with pytest.raises(R2RUserError, match=r"float images must be in \[0, 1\]"):
        w.add(real.astype(np.float32), _mask(), real)
    with pytest.raises(R2RUserError, match="HxWx3"):
        w.add(real[..., 0], _mask(), real)
    with pytest.raises(R2RUserError, match="split must be"):
        w.add(real, _mask(), real, split="val")
    w.add(real, _mask(), real, name="same")
    with pytest.raises(R2RUserError, match="different real image is already saved"):
        w.add(real, _mask(), _img(rng), name="same")
    with pytest.raises(R2RUserError, match="plain folder name"):
        HarmonizationDatasetWriter(tmp_path, "a/b")
    with pytest.raises(R2RUserError, match="image_format"):
        HarmonizationDatasetWriter(tmp_path, "S", image_format="gif")
    assert len(read_indexes(tmp_path)["train"]) == 1  # failed adds listed nothing


def test_writer_crash_between_files_leaves_no_index_line(tmp_path, monkeypatch):
    """A crash after the real and mask are written but while the composite is being renamed:
    no index line, no composite, no temp file, and the real and mask this add wrote are removed
    again (nothing half-made stays); the next add works normally."""
    rng = np.random.default_rng(0)
    w = HarmonizationDatasetWriter(tmp_path, "S")
    real_replace = os.replace

    def crash_on_composite(src, dst):
        if "composite_images" in str(dst):
            raise KeyboardInterrupt("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", crash_on_composite)
    with pytest.raises(KeyboardInterrupt):
        w.add(_img(rng), _mask(), _img(rng), name="x")
    monkeypatch.setattr(writer.os, "replace", real_replace)
    assert [p for p in (tmp_path / "S").rglob("*") if p.is_file()] == []  # no image, no temp file
    assert read_indexes(tmp_path) == {"train": [], "test": []}
    kept = w.add(_img(rng), _mask(), _img(rng), name="x")
    assert kept["file_name"] == "S/composite_images/x_1_1.jpg" and read_indexes(tmp_path)["train"] == [
        kept["file_name"]]


def test_writer_repairs_interrupted_indexes_and_ignores_temp_files(tmp_path):
    """What a crash can leave: a half line (dropped), jsonl/txt out of step (the missing names are
    appended to the other file). Lines someone else wrote stay, even a repeated one or one whose files
    are gone: repair never drops or reorders a listed line."""
    rng = np.random.default_rng(0)
    w = HarmonizationDatasetWriter(tmp_path, "S")
    ok = w.add(_img(rng), _mask(), _img(rng), name="ok")["file_name"]
    gone = "S/composite_images/gone_1_1.jpg"
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write(json.dumps({"file_name": ok, "text": "listed twice on purpose"}) + "\n")
        f.write(json.dumps({"file_name": gone, "text": ""}) + "\n")  # not in train.txt: a crash between appends
        f.write('{"file_name": "S/compos')
    stale = tmp_path / "S/composite_images/ok_1_2.jpg.tmp-99999"
    stale.write_bytes(b"\xff\xd8partial")
    assert layouts.list_images(tmp_path / "S/composite_images") == [tmp_path / "S/composite_images/ok_1_1.jpg"]
    w2 = HarmonizationDatasetWriter(tmp_path, "S")
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["file_name"] for line in lines] == [ok, ok, gone]
    assert json.loads(lines[1])["text"] == "listed twice on purpose"
    assert (tmp_path / "train.txt").read_text().splitlines() == [ok, gone]
    assert read_indexes(tmp_path)["train"] == [ok, gone]
    assert w2.repair() is False  # already consistent: nothing rewritten
    assert writer.cleanup_temp_files(tmp_path) == 0  # too recent: may belong to a running writer
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert writer.cleanup_temp_files(tmp_path) == 1 and not stale.exists()


def test_rebuild_indexes_sorted_and_no_split_leak(tmp_path):
    rng = np.random.default_rng(0)
    w = HarmonizationDatasetWriter(tmp_path, "S")
    b = w.add(_img(rng), _mask(), _img(rng), name="b")["file_name"]
    a = w.add(_img(rng), _mask(), _img(rng), name="a")["file_name"]
    counts = writer.rebuild_indexes(tmp_path, {"test": [b]})
    assert counts == {"train": 1, "test": 1}
    assert _consistent(tmp_path) == {"train": [a], "test": [b]}
