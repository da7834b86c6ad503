"""The node side of issues 18 and 22, in plain mode (``R2R_MODELS_DIR`` / ``R2R_OUTPUT_DIR``, the pack loaded
as ComfyUI loads it): loader names stay inside the models folders, and R2R Save Harmonization Dataset writes
only inside the output folder, survives a full disk and over-long names, and never rewrites what it did not
write. Every refusal is an R2RUserError starting with "R2R" that names the problem, and every folder involved
is hashed before and after.
"""

from __future__ import annotations

import os

import pytest
import torch
from comfy_pack import node_classes, pack_module
from test_safety_outputs import DiskFull, snapshot

NODES = node_classes()
R2RUserError = pack_module("r2r.errors").R2RUserError
FILEIO = pack_module("r2r.fileio")
LOADERS = ("R2RCheckpointLoader", "R2RClearVAELoader", "R2RControllerLoader", "R2RUNetLoader")


# ----------------------------------------------------------------------------- loaders


def _validate(node_id, name):
    cls = NODES[node_id]
    if node_id == "R2RUNetLoader":
        return cls.validate_inputs(name=name, text_embedding_from="region2region")
    return cls.validate_inputs(name) if node_id != "R2RCheckpointLoader" else cls.validate_inputs(checkpoint=name)


def _execute(node_id, name):
    cls = NODES[node_id]
    if node_id == "R2RCheckpointLoader":
        return cls.execute(name, "fp32", False)
    return cls.execute(name, "fp32")


def _escaping_names(tiny_release):
    return [
        (str(tiny_release), "an absolute path"),  # a real release outside models/r2r: the old hole
        (str(tiny_release / "clear_vae"), "an absolute path"),
        ("../" + tiny_release.name, "'..'"),
        ("region2region/../../" + tiny_release.name, "'..'"),
        ("region2region\\..\\..\\etc", "'..'"),
        ("C:\\models\\x.safetensors", "an absolute path"),
        ("region2region\x00.safetensors", "NUL byte"),
    ]


@pytest.mark.parametrize("node_id", LOADERS)
def test_loader_names_that_leave_the_models_folder_are_refused(node_id, models_dir, tiny_release):
    before = snapshot(tiny_release, models_dir)
    for name, why in _escaping_names(tiny_release):
        msg = _validate(node_id, name)
        assert isinstance(msg, str) and repr(name) in msg and why in msg and "models/r2r" in msg, (name, msg)
        with pytest.raises(R2RUserError) as exc:
            _execute(node_id, name)
        assert str(exc.value).startswith("R2R") and why in str(exc.value)
    # nothing was read into a model, and nothing written next to the weights (a release load caches the prompt)
    assert snapshot(tiny_release, models_dir) == before


def test_unet_loader_refuses_an_escaping_text_embedding_release(models_dir, tiny_release):
    msg = NODES["R2RUNetLoader"].validate_inputs(name="region2region/stable-diffusion-inpainting/unet",
                                                 text_embedding_from=str(tiny_release))
    assert isinstance(msg, str) and "an absolute path" in msg
    with pytest.raises(R2RUserError, match="an absolute path"):
        NODES["R2RUNetLoader"].execute("region2region/stable-diffusion-inpainting/unet", "fp32", str(tiny_release))


def test_names_inside_the_models_folder_still_load(models_dir):
    """Relative names, also through a symbolic link placed inside models/r2r (region2region is one here,
    as ComfyUI follows such links: how shared model storage is usually linked in)."""
    assert os.path.islink(models_dir / "region2region")
    assert NODES["R2RCheckpointLoader"].validate_inputs(checkpoint="region2region") is True
    assert NODES["R2RClearVAELoader"].validate_inputs("region2region/clear_vae") is True
    assert NODES["R2RClearVAELoader"].validate_inputs("./region2region/clear_vae/") is True
    (vae,) = _execute("R2RClearVAELoader", "region2region/clear_vae").args
    assert vae is not None


# ----------------------------------------------------------------------------- Save Harmonization Dataset


def _scene(b=3, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = 0.2 + 0.6 * torch.rand(b, h, w, 3, generator=g)
    mask = torch.zeros(b, h, w)
    mask[:, 12:36, 16:48] = 1.0
    comp = torch.where(mask[..., None] > 0, real * 0.7, real)
    return comp, mask, real


SAVE = NODES["R2RSaveHarmonizationDataset"]


@pytest.fixture()
def output(tmp_path, monkeypatch):
    out, outside = tmp_path / "output", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    monkeypatch.setenv("R2R_OUTPUT_DIR", str(out))
    return out, outside


def _save(b=3, folder="ds/Set", subset="R-Test", split="train", seed=0):
    comp, mask, real = _scene(b, seed=seed)
    return SAVE.execute(comp, mask, real, folder, subset, split, "png")


@pytest.mark.parametrize("link", ["ds/Set/R-Test", "ds/Set/R-Test/masks", "ds/Set/R-Test/composite_images",
                                  "ds/Set/train.jsonl", "ds/Set/test.txt", "ds/Set/.r2r-index.lock", "ds"])
def test_dataset_writes_never_follow_a_link_out_of_the_output_folder(output, link):
    out, outside = output
    target = outside / "target"
    if link.endswith((".jsonl", ".txt", ".lock")):
        target.write_text("outside file\n")
    else:
        target.mkdir()
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, out / link)
    before = snapshot(out, outside)
    with pytest.raises(R2RUserError) as exc:
        _save()
    text = str(exc.value)
    assert text.startswith("R2R Save Harmonization Dataset") and "outside" in text and str(target) in text, text
    assert "link" in text
    assert snapshot(out, outside) == before


def test_a_link_inside_the_output_folder_is_fine(output):
    out, _ = output
    (out / "real").mkdir()
    os.symlink(out / "real", out / "ds")
    res = _save(b=1)
    assert "saved 1" in res.ui["text"][0] and len(list((out / "real" / "Set" / "R-Test" / "masks").iterdir())) == 1


@pytest.mark.parametrize("what, match, files_ok, kept", [
    ("images", lambda p: ".png.tmp-" in p, 4, 1),  # triplet 1 (3 files), then triplet 2's real; its mask fails
    ("index appends", lambda p: p.endswith((".jsonl", ".txt")), 2, 1),  # triplet 1's two lines, then full
])
def test_full_disk_in_the_dataset_node(output, monkeypatch, what, match, files_ok, kept):
    out, outside = output
    _save(b=2, split="test", seed=1)  # an earlier run's results (other pictures)
    root = out / "ds" / "Set"
    before = snapshot(out)
    with monkeypatch.context() as m:
        full = DiskFull(m, out, files_ok=files_ok, match=match, fileio=FILEIO)
        with pytest.raises(R2RUserError) as exc:
            _save(b=3)
    assert full.hits > files_ok
    text = str(exc.value)
    assert isinstance(exc.value, OSError) and text.startswith("R2R Save Harmonization Dataset"), text
    assert "no space left on the disk" in text and str(root) in text and "Free some space" in text
    assert f"The {kept} triplet(s) of this batch saved before stay" in text
    after = snapshot(out)
    assert {p: h for p, h in after.items() if p in before and not p.endswith((".jsonl", ".txt"))} == {
        p: h for p, h in before.items() if not p.endswith((".jsonl", ".txt"))}, "earlier results changed"
    for split, n in (("train", kept), ("test", 2)):
        lines = (root / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == n and (root / f"{split}.txt").read_text().count("\n") == n
    files = [p for p in (root / "R-Test").rglob("*") if p.is_file()]
    assert len(files) == 3 * (2 + kept), "the failed triplet left no file behind"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name] and snapshot(outside) == {}


def test_over_long_dataset_folder_or_subset(output):
    out, _ = output
    for folder, subset in (("ds/" + "x" * 300, "R-Test"), ("ds/Set", "R-" + "y" * 300)):
        with pytest.raises(R2RUserError) as exc:
            _save(b=1, folder=folder, subset=subset)
        assert "longer than the file system allows" in str(exc.value) and str(exc.value).startswith("R2R")
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_malformed_index_stops_the_node_before_writing(output):
    out, _ = output
    _save(b=1)
    root = out / "ds" / "Set"
    with open(root / "train.jsonl", "a") as fh:
        fh.write('{"file_name": "R-Test/composite_images/x_1_1.png", "text": "a caption"}\nbroken line\n')
    before = snapshot(out)
    with pytest.raises(R2RUserError) as exc:
        _save(b=1)
    assert f"{root / 'train.jsonl'}: line 3" in str(exc.value) and "nothing was written" in str(exc.value)
    assert snapshot(out) == before
