"""Every template (example_workflows/) and the V1-era fixtures (tests/data/v1_workflows/) use only
existing node ids, with widget values that map onto the V3 schemas (count, order, type, range) and
typed links; the templates need no user files (every R2R chain starts at R2R Example Image), carry
a Note, and have a JPEG thumbnail.

Our nodes are checked against the schemas the pack's extension registers; the core ComfyUI nodes
the workflows use are described below (from ComfyUI 0.3.64: nodes.py, comfy_extras/nodes_mask.py).
The full run of every workflow in a real ComfyUI is in test_comfyui_integration.py.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from comfy_pack import PACK_ROOT, node_classes

NODES = node_classes()
WF_DIR = os.path.join(PACK_ROOT, "example_workflows")
V1_DIR = os.path.join(PACK_ROOT, "tests", "data", "v1_workflows")
#: the templates as shipped before the version-2 nodes (they must still load and give the same images)
PRE_V2_DIR = os.path.join(PACK_ROOT, "tests", "data", "pre_v2_templates")
WORKFLOWS = sorted(f for f in os.listdir(WF_DIR) if f.endswith(".json"))
V1_WORKFLOWS = sorted(f for f in os.listdir(V1_DIR) if f.endswith(".json"))
PRE_V2_WORKFLOWS = sorted(f for f in os.listdir(PRE_V2_DIR) if f.endswith(".json"))
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MAX_RES = 16384

# core node id -> (ordered widget specs, input socket types, output types)
CORE = {
    "LoadImage": ([("image", "COMBO_FILE", {}), ("upload", "UPLOAD", {})], {}, ["IMAGE", "MASK"]),
    "LoadImageMask": (
        [("image", "COMBO_FILE", {}), ("channel", ["alpha", "red", "green", "blue"], {}), ("upload", "UPLOAD", {})],
        {}, ["MASK"],
    ),
    "SaveImage": ([("filename_prefix", "STRING", {})], {"images": "IMAGE"}, []),
    "PreviewImage": ([], {"images": "IMAGE"}, []),
    "ImageScaleBy": ([("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
                      ("scale_by", "FLOAT", {"min": 0.01, "max": 8.0})], {"image": "IMAGE"}, ["IMAGE"]),
    "SolidMask": ([("value", "FLOAT", {"min": 0.0, "max": 1.0}), ("width", "INT", {"min": 1, "max": MAX_RES}),
                   ("height", "INT", {"min": 1, "max": MAX_RES})], {}, ["MASK"]),
    "MaskComposite": ([("x", "INT", {"min": 0, "max": MAX_RES}), ("y", "INT", {"min": 0, "max": MAX_RES}),
                       ("operation", ["multiply", "add", "subtract", "and", "or", "xor"], {})],
                      {"destination": "MASK", "source": "MASK"}, ["MASK"]),
    "MaskToImage": ([], {"mask": "MASK"}, ["IMAGE"]),
    # core video nodes (comfy_extras/nodes_video.py); CreateVideo's optional audio socket is left out (never linked)
    "CreateVideo": ([("fps", "FLOAT", {"min": 1.0, "max": 120.0})], {"images": "IMAGE"}, ["VIDEO"]),
    "SaveVideo": ([("filename_prefix", "STRING", {}), ("format", ["auto", "mp4"], {}), ("codec", ["auto", "h264"], {})],
                  {"video": "VIDEO"}, []),
    "ImageCompositeMasked": ([("x", "INT", {"min": 0, "max": MAX_RES}), ("y", "INT", {"min": 0, "max": MAX_RES}),
                              ("resize_source", "BOOLEAN", {})],
                             {"destination": "IMAGE", "source": "IMAGE", "mask": "MASK"}, ["IMAGE"]),
    "GrowMask": ([("expand", "INT", {"min": -MAX_RES, "max": MAX_RES}), ("tapered_corners", "BOOLEAN", {})],
                 {"mask": "MASK"}, ["MASK"]),
    "FeatherMask": ([(side, "INT", {"min": 0, "max": MAX_RES}) for side in ("left", "top", "right", "bottom")],
                    {"mask": "MASK"}, ["MASK"]),
    "GetImageSize": ([], {"image": "IMAGE"}, ["INT", "INT", "INT"]),
    "ImageStitch": ([("direction", ["right", "down", "left", "up"], {}), ("match_image_size", "BOOLEAN", {}),
                     ("spacing_width", "INT", {"min": 0, "max": 1024, "step": 2}),
                     ("spacing_color", ["white", "black", "red", "green", "blue"], {})],
                    {"image1": "IMAGE", "image2": "IMAGE"}, ["IMAGE"]),
    "PrimitiveInt": ([("value", "INT", {"min": -(2 ** 63) + 1, "max": 2 ** 63 - 1}), ("value:control", "CONTROL", {})],
                     {}, ["INT"]),
    "KSampler": ([("seed", "INT", {"min": 0, "max": 0xFFFFFFFFFFFFFFFF}), ("seed:control", "CONTROL", {}),
                  ("steps", "INT", {"min": 1, "max": 10000}), ("cfg", "FLOAT", {"min": 0.0, "max": 100.0}),
                  ("sampler_name", "NAME", {}), ("scheduler", "NAME", {}), ("denoise", "FLOAT", {"min": 0.0, "max": 1.0})],
                 {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
                 ["LATENT"]),
}
UI_ONLY = {"Note", "MarkdownNote", "Reroute"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _our_spec(cls):
    """Widgets in the order the frontend creates them (required, then optional: input_order)."""
    info = cls.GET_NODE_INFO_V1()
    widgets, sockets, required = [], {}, set()
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            typ, opts = info["input"][section][name]
            if typ in WIDGET_TYPES and not opts.get("forceInput"):
                widgets.append((name, opts["options"] if typ == "COMBO" else typ, {**opts, "_optional": section ==
                                                                                   "optional"}))
                if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    widgets.append((name + ":control", "CONTROL", {}))
            else:
                sockets[name] = typ
                if section == "required":
                    required.add(name)
    return widgets, sockets, list(info["output"]), required


def _spec(node_type):
    if node_type in NODES:
        return _our_spec(NODES[node_type])
    if node_type in CORE:
        widgets, sockets, outputs = CORE[node_type]
        optional = {"image2", "mask"} if node_type in ("ImageStitch", "ImageCompositeMasked") else set()
        return widgets, sockets, outputs, set(sockets) - optional
    raise AssertionError(f"unknown node type {node_type!r}: not ours and not a core node the workflows may use")


def _check_value(node_type, name, typ, opts, value):
    where = f"{node_type}.{name}={value!r}"
    if typ == "CONTROL":
        assert value in CONTROL_VALUES, where
    elif typ == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts["min"] <= value <= opts["max"], where
        assert (value - opts["min"]) % opts.get("step", 1) == 0, where
    elif typ == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts["min"] <= value <= opts["max"], where
    elif typ == "BOOLEAN":
        assert isinstance(value, bool), where
    elif typ == "STRING":
        assert isinstance(value, str) and value.strip(), where
    elif typ == "COMBO_FILE":
        assert isinstance(value, str) and value.lower().endswith((".png", ".jpg", ".jpeg", ".webp")), where
    elif typ == "NAME":  # a core combo whose list comes from ComfyUI (checked by the real-ComfyUI tests)
        assert isinstance(value, str) and value, where
    elif typ == "UPLOAD":
        assert value in ("image", None, ""), where
    elif isinstance(typ, list):
        # model combos: the loader always lists the official release name, even before download
        assert value in typ, f"{where} not in {typ}"


def check_workflow(path):
    """Assert that the UI-format workflow at ``path`` loads onto the current schemas; return it."""
    filename = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        wf = json.load(f)
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list)
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    assert any(n["type"].startswith("R2R") for n in nodes.values())
    for node in nodes.values():
        t = node["type"]
        if t in UI_ONLY:
            continue
        assert node.get("mode", 0) == 0, f"{t} is muted/bypassed in {filename}"
        widgets, sockets, outputs, required = _spec(t)
        values = node.get("widgets_values") or []
        # a workflow saved before optional widgets were added at the end loads them with their defaults
        assert len(values) <= len(widgets) and all(w[2].get("_optional") for w in widgets[len(values):]), \
            f"{filename}: {t} has {len(values)} widget values, expected {len(widgets)}"
        for (name, typ, opts), value in zip(widgets, values):
            _check_value(t, name, typ, opts, value)
        linked = {i["name"]: i for i in node.get("inputs", []) if i.get("link") is not None}
        missing = required - set(linked)
        assert not missing, f"{filename}: {t} has unconnected required inputs {missing}"
        widget_types = {w[0]: w[1] for w in widgets}
        for name, inp in linked.items():
            # a widget may be driven by a link of its type (the frontend's widget input, e.g. an Int node's x)
            expected = sockets.get(name, widget_types.get(name) if inp.get("widget") else None)
            assert expected is not None, f"{filename}: {t} has no socket {name!r}"
            link = links[inp["link"]]
            _, origin, slot, target, _tslot, ltype = link
            assert target == node["id"]
            origin_outputs = _spec(nodes[origin]["type"])[2]
            assert origin_outputs[slot] == expected == ltype, f"{filename}: link {link} into {t}.{name}"
    return wf


@pytest.mark.parametrize("filename", WORKFLOWS)
def test_template_is_valid_and_runs_as_delivered(filename):
    wf = check_workflow(os.path.join(WF_DIR, filename))
    types = [n["type"] for n in wf["nodes"]]
    # as delivered: no file the user must place (Load Image names a file in the input folder)
    assert "LoadImage" not in types and "LoadImageMask" not in types, filename
    assert "R2RExampleImage" in types or "R2RExampleClip" in types, filename  # a bundled picture or clip
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, f"{filename}: no Note saying what to replace"
    text = notes[0]["widgets_values"][0]
    assert "Load Image" in text and "MaskEditor" in text and "white" in text.lower(), filename
    # the title the Templates browser shows is the file stem: words, not an identifier
    stem = filename[:-5]
    assert " " in stem and "_" not in stem and "-" not in stem, stem
    # nodes do not overlap (the frontend keeps the saved positions and sizes)
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"{filename}: nodes overlap {a} {b}"
    thumb = os.path.join(WF_DIR, stem + ".jpg")
    assert os.path.isfile(thumb), f"{stem}.jpg thumbnail missing (Templates browser)"
    assert os.path.getsize(thumb) < 100_000
    with open(thumb, "rb") as f:
        assert f.read(3) == b"\xff\xd8\xff", "thumbnail is not a JPEG"


@pytest.mark.parametrize("filename", V1_WORKFLOWS)
def test_v1_era_workflow_still_maps_onto_the_v3_schemas(filename):
    """Saved with the V1 nodes (before the V3 move): same ids, input names and widget order."""
    wf = check_workflow(os.path.join(V1_DIR, filename))
    decode = next(n for n in wf["nodes"] if n["type"] == "R2RClearVAEDecode")
    names = [w[0] for w in _our_spec(NODES["R2RClearVAEDecode"])[0]]
    assert dict(zip(names, decode["widgets_values"]))["fullres_mode"] == decode["widgets_values"][-1]


@pytest.mark.parametrize("filename", PRE_V2_WORKFLOWS)
def test_pre_version_2_template_still_maps_onto_the_schemas(filename):
    """The templates as shipped before the version-2 nodes (V1 MACA Controller Apply / Clear-VAE Decode)."""
    wf = check_workflow(os.path.join(PRE_V2_DIR, filename))
    assert {n["type"] for n in wf["nodes"]} & {"R2RMACAControllerApply", "R2RClearVAEDecode", "R2RHarmonize",
                                                "R2RWeightFreeHarmonize", "R2RRandomPoissonBlend"}


def test_templates_cover_every_node_and_the_promised_cases():
    used = set()
    for f in WORKFLOWS:
        with open(os.path.join(WF_DIR, f), encoding="utf-8") as fh:
            used |= {n["type"] for n in json.load(fh)["nodes"]}
    for node_id in ("R2RCheckpointLoader", "R2RExampleImage", "R2RClearVAEEncode", "R2RMACAControllerApplyV2",
                    "R2RSampler", "R2RClearVAEDecodeV2", "R2RHarmonize", "R2RWeightFreeHarmonize",
                    "R2RRandomPoissonBlend", "R2RSaveHarmonizationDataset"):
        assert node_id in used, node_id
    assert not used & {"R2RMACAControllerApply", "R2RClearVAEDecode"}, "templates use the deprecated V1 nodes"
    assert len(WORKFLOWS) >= 7
    with open(os.path.join(WF_DIR, "Harmonize a pasted object.json"), encoding="utf-8") as f:
        basic = json.load(f)
    decode = next(n for n in basic["nodes"] if n["type"] == "R2RClearVAEDecodeV2")
    assert decode["widgets_values"][-1] == "auto"  # fullres_mode: the default
    with open(os.path.join(WF_DIR, "Make a harmonization training set.json"), encoding="utf-8") as f:
        training = json.load(f)
    rpb = next(n for n in training["nodes"] if n["type"] == "R2RRandomPoissonBlend")
    assert rpb["widgets_values"][1] == "randomize"  # each run adds a new triplet
    preview = next(n for n in training["nodes"] if n["type"] == "PreviewImage")
    assert preview["size"][0] >= 250 and preview["size"][1] >= 250


def test_checker_rejects_bad_workflows(tmp_path, monkeypatch):
    """The checker itself fails on an unknown node, a value out of range and a wrong widget count."""
    good_path = os.path.join(WF_DIR, "Quick colour match, no model.json")
    with open(good_path, encoding="utf-8") as f:
        good = json.load(f)
    monkeypatch.setattr(sys.modules[__name__], "WF_DIR", str(tmp_path))
    cases = []
    bad = json.loads(json.dumps(good))
    next(n for n in bad["nodes"] if n["type"] == "R2RWeightFreeHarmonize")["type"] = "R2RNoSuchNode"
    cases.append(bad)
    bad = json.loads(json.dumps(good))
    node = next(n for n in bad["nodes"] if n["type"] == "R2RWeightFreeHarmonize")
    node["widgets_values"][0] = 3.0  # strength max is 1
    cases.append(bad)
    bad = json.loads(json.dumps(good))
    node = next(n for n in bad["nodes"] if n["type"] == "R2RWeightFreeHarmonize")
    node["widgets_values"].append(True)
    cases.append(bad)
    bad = json.loads(json.dumps(good))
    node = next(n for n in bad["nodes"] if n["type"] == "R2RExampleImage")
    node["type"] = "LoadImage"  # a file the user would have to place
    node["widgets_values"] = ["r2r_composite.png", "image"]
    cases.append(bad)
    for i, wf in enumerate(cases):
        (tmp_path / f"bad {i}.json").write_text(json.dumps(wf))
        (tmp_path / f"bad {i}.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 10)
        with pytest.raises(AssertionError):
            test_template_is_valid_and_runs_as_delivered(f"bad {i}.json")
