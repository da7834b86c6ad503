"""Issue 16, the templates as an artist meets them (no server; test_artist_comfyui.py runs them in ComfyUI):

* version-2 nodes only, seeds on "increment" (so Run gives a new variation; the training set keeps
  "randomize"), max_side automatic;
* live previews: every template that samples says how to turn previews on (--preview-method auto) and leaves
  room under the node that shows them (no node below it);
* the Templates browser: the starter first in the pack's order; thumbnails 512x512, all different, and made
  by tools/make_thumbnails.py (whose captions say what made each picture);
* the composite-building template builds the composite with core nodes and shows before | after;
* docs/nodes.md and the README list every template of this pack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from comfy_pack import PACK_ROOT, node_classes, pack_module
from PIL import Image
from test_workflows import _spec

NODES = node_classes()
WF_DIR = os.path.join(PACK_ROOT, "example_workflows")
TEMPLATE_ORDER = pack_module("nodes.examples").TEMPLATE_ORDER
#: the templates this work ships (others add theirs beside them)
OURS = ("Harmonize a pasted object", "Paste an object onto a photo and harmonize it", "Quick colour match, no model",
        "Harmonize using a reference region", "Harmonize a large picture, keep every detail",
        "Harmonize with KSampler", "Make a harmonization training set")
PREVIEW_NODES = {"R2RSampler", "R2RHarmonize", "KSampler"}
PREVIEW_ROOM = 760  # px under the top of a previewing node kept free: its widgets plus a 512-px preview


def _load(name):
    with open(os.path.join(WF_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def _values(node):
    """{widget name: value} of a UI-format node, by the schema's widget order."""
    widgets = _spec(node["type"])[0]
    return {w[0]: v for w, v in zip(widgets, node.get("widgets_values") or [])}


@pytest.mark.parametrize("name", OURS)
def test_template_uses_current_nodes_and_increments_its_seed(name):
    wf = _load(name)
    for node in wf["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        if node["type"] in NODES:
            assert not NODES[node["type"]].GET_NODE_INFO_V1()["deprecated"], (name, node["type"])
        values = _values(node)
        if "seed:control" in values:
            expected = "randomize" if node["type"] == "R2RRandomPoissonBlend" else "increment"
            assert values["seed:control"] == expected, (name, node["type"])
        if "max_side" in values:
            assert values["max_side"] == 0, (name, node["type"])  # automatic: 1024 on a GPU, 512 on a CPU


@pytest.mark.parametrize("name", [n for n in OURS if n != "Make a harmonization training set"])
def test_previews_are_explained_and_have_room(name):
    wf = _load(name)
    note = next(n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote"))["widgets_values"][0]
    shows = [n for n in wf["nodes"] if n["type"] in PREVIEW_NODES]
    if not shows:
        assert name == "Quick colour match, no model"
        return
    assert "--preview-method auto" in note, name
    for node in shows:
        x0, y0 = node["pos"]
        x1, y1 = x0 + node["size"][0], y0 + max(node["size"][1], PREVIEW_ROOM)
        assert node["size"][1] >= 560, (name, node["type"], node["size"])
        for other in wf["nodes"]:
            if other is node:
                continue
            ox0, oy0 = other["pos"][0], other["pos"][1] - 30
            ox1, oy1 = ox0 + other["size"][0], other["pos"][1] + other["size"][1]
            assert ox1 <= x0 or x1 <= ox0 or oy1 <= y0 or y1 <= oy0, (name, other["type"], "covers the preview")


def test_starter_template_is_first_and_every_template_is_ordered():
    assert TEMPLATE_ORDER[0] == "Harmonize a pasted object"
    assert set(OURS) <= set(TEMPLATE_ORDER)
    starter = _load("Harmonize a pasted object")
    types = {n["type"] for n in starter["nodes"]}
    assert {"R2RClearVAEEncode", "R2RMACAControllerApplyV2", "R2RSampler", "R2RClearVAEDecodeV2"} <= types
    sampler = next(n for n in starter["nodes"] if n["type"] == "R2RSampler")
    assert _values(sampler)["steps"] == 10 and _values(sampler)["batch_size"] == 1


def test_composite_building_template():
    wf = _load("Paste an object onto a photo and harmonize it")
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {ln[0]: ln for ln in wf["links"]}

    def source(node, name):
        link = links[next(i for i in node["inputs"] if i["name"] == name)["link"]]
        return nodes[link[1]], link[2]

    by_type = {}
    for n in wf["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    examples = {n["widgets_values"][0] for n in by_type["R2RExampleImage"]}
    assert examples == {"cup_cutout", "rocket_background"}
    paste = by_type["ImageCompositeMasked"][0]
    assert source(paste, "destination")[0]["widgets_values"] == ["rocket_background"]
    assert source(paste, "source")[0]["widgets_values"] == ["cup_cutout"]
    assert source(paste, "mask")[0]["type"] == "FeatherMask"
    harmonize = by_type["R2RHarmonize"][0]
    assert source(harmonize, "image")[0] is paste
    placed = source(harmonize, "mask")[0]
    assert placed["type"] == "MaskComposite" and source(placed, "source")[0]["type"] == "GrowMask"
    # one position for the paste and the mask: the same two Int nodes feed both
    for axis in ("x", "y"):
        assert source(paste, axis)[0] is source(placed, axis)[0]
        assert source(paste, axis)[0]["type"] == "PrimitiveInt"
    stitch = by_type["ImageStitch"][0]
    assert source(stitch, "image1")[0] is paste and source(stitch, "image2")[0] is harmonize
    assert source(by_type["SaveImage"][0], "images")[0] is stitch


def _grey(path):
    return np.asarray(Image.open(path).convert("L").resize((64, 64)), np.float32)


def test_thumbnails_differ_and_are_what_the_script_makes(tmp_path):
    names = sorted(OURS)
    thumbs = {}
    for name in names:
        path = os.path.join(WF_DIR, name + ".jpg")
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (512, 512), name  # the browser's box is square
        thumbs[name] = _grey(path)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(thumbs[a] - thumbs[b]).mean() > 8, f"thumbnails of {a!r} and {b!r} look alike"
    pytest.importorskip("cv2")
    res = subprocess.run([sys.executable, os.path.join(PACK_ROOT, "tools", "make_thumbnails.py"), "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in names:  # the shipped thumbnails are the script's (its captions say what made them)
        assert np.abs(_grey(tmp_path / f"{name}.jpg") - thumbs[name]).mean() < 2, name


def test_docs_and_readme_list_every_template():
    with open(os.path.join(PACK_ROOT, "docs", "nodes.md"), encoding="utf-8") as f:
        nodes_md = f.read()
    with open(os.path.join(PACK_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name in OURS:
        assert f"| {name} |" in nodes_md, f"docs/nodes.md's template table lacks {name!r}"
        assert f"*{name}*" in readme, f"README's template section lacks {name!r}"
    assert "--preview-method auto" in readme and "--preview-method auto" in nodes_md
