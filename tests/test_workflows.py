"""Every example workflow uses only existing node ids with valid widget values and links.

Our nodes are checked against their own INPUT_TYPES; the few core ComfyUI nodes the
examples use are described below (from ComfyUI 0.3.64's nodes.py). The full run of
every workflow in a real ComfyUI is in test_comfyui_integration.py.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from comfy_pack import PACK_ROOT, load_pack

pack = load_pack()
WF_DIR = os.path.join(PACK_ROOT, "example_workflows")
WORKFLOWS = sorted(f for f in os.listdir(WF_DIR) if f.endswith(".json"))
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
ANY = object()

# core node id -> (ordered widget specs, input socket types, output types)
CORE = {
    "LoadImage": ([("image", "COMBO_FILE", {}), ("upload", "UPLOAD", {})], {}, ["IMAGE", "MASK"]),
    "LoadImageMask": (
        [("image", "COMBO_FILE", {}), ("channel", ["alpha", "red", "green", "blue"], {}), ("upload", "UPLOAD", {})],
        {}, ["MASK"],
    ),
    "SaveImage": ([("filename_prefix", "STRING", {})], {"images": "IMAGE"}, []),
    "PreviewImage": ([], {"images": "IMAGE"}, []),
}
UI_ONLY = {"Note", "MarkdownNote", "Reroute"}


def _our_spec(cls):
    spec = cls.INPUT_TYPES()
    widgets, sockets = [], {}
    for section in ("required", "optional"):
        for name, (typ, opts) in spec.get(section, {}).items():
            if isinstance(typ, list) or (typ in ("INT", "FLOAT", "STRING", "BOOLEAN") and not opts.get("forceInput")):
                widgets.append((name, typ, opts))
                if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    widgets.append((name + ":control", "CONTROL", {}))
            else:
                sockets[name] = typ
    return widgets, sockets, list(cls.RETURN_TYPES)


def _spec(node_type):
    if node_type in pack.NODE_CLASS_MAPPINGS:
        return _our_spec(pack.NODE_CLASS_MAPPINGS[node_type])
    if node_type in CORE:
        return CORE[node_type]
    raise AssertionError(f"unknown node type {node_type!r}: not ours and not a core node the examples may use")


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
    elif typ == "UPLOAD":
        assert value in ("image", None, ""), where
    elif isinstance(typ, list):
        # model combos: the loader always lists the official release name, even before download
        assert value in typ, f"{where} not in {typ}"


@pytest.mark.parametrize("filename", WORKFLOWS)
def test_example_workflow_is_valid(filename):
    with open(os.path.join(WF_DIR, filename), encoding="utf-8") as f:
        wf = json.load(f)
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list)
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    assert any(n["type"].startswith("R2R") for n in nodes.values())
    for node in nodes.values():
        t = node["type"]
        if t in UI_ONLY:
            continue
        assert node.get("mode", 0) == 0, f"{t} is muted/bypassed in an example"
        widgets, sockets, outputs = _spec(t)
        values = node.get("widgets_values") or []
        assert len(values) == len(widgets), f"{filename}: {t} has {len(values)} widget values, expected {len(widgets)}"
        for (name, typ, opts), value in zip(widgets, values):
            _check_value(t, name, typ, opts, value)
        # sockets: every required socket linked, with the right type
        linked = {i["name"]: i for i in node.get("inputs", []) if i.get("link") is not None}
        required = {}
        if t in pack.NODE_CLASS_MAPPINGS:
            required = {k for k, v in pack.NODE_CLASS_MAPPINGS[t].INPUT_TYPES()["required"].items() if k in sockets}
        else:
            required = set(sockets)
        missing = required - set(linked)
        assert not missing, f"{filename}: {t} has unconnected required inputs {missing}"
        for name, inp in linked.items():
            assert name in sockets, f"{filename}: {t} has no socket {name!r}"
            link = links[inp["link"]]
            _, origin, slot, target, _tslot, ltype = link
            assert target == node["id"]
            origin_outputs = _spec(nodes[origin]["type"])[2]
            assert origin_outputs[slot] == sockets[name] == ltype, f"{filename}: link {link} into {t}.{name}"
    stem = filename[:-5]
    thumb = os.path.join(WF_DIR, stem + ".jpg")
    assert os.path.isfile(thumb), f"{stem}.jpg thumbnail missing (Templates browser)"
    assert os.path.getsize(thumb) < 100_000
    with open(thumb, "rb") as f:
        assert f.read(3) == b"\xff\xd8\xff", "thumbnail is not a JPEG"


def test_the_five_promised_examples_exist():
    stems = {f[:-5] for f in WORKFLOWS}
    assert {"r2r_harmonize_basic", "r2r_reference_region", "r2r_large_image_fullres", "r2r_make_training_set",
            "r2r_weight_free"} <= stems
    used = set()
    for f in WORKFLOWS:
        with open(os.path.join(WF_DIR, f), encoding="utf-8") as fh:
            used |= {n["type"] for n in json.load(fh)["nodes"]}
    # every processing node appears in at least one example
    for node_id in ("R2RCheckpointLoader", "R2RClearVAEEncode", "R2RMACAControllerApply", "R2RSampler",
                    "R2RClearVAEDecode", "R2RHarmonize", "R2RWeightFreeHarmonize", "R2RRandomPoissonBlend",
                    "R2RSaveHarmonizationDataset"):
        assert node_id in used, node_id


def test_checker_rejects_bad_workflows(tmp_path, monkeypatch):
    """The checker itself fails on an unknown node, a value out of range and a wrong widget count."""
    with open(os.path.join(WF_DIR, "r2r_weight_free.json"), encoding="utf-8") as f:
        good = json.load(f)
    monkeypatch.setattr(sys.modules[__name__], "WF_DIR", str(tmp_path))
    cases = []
    bad = json.loads(json.dumps(good))
    bad["nodes"][1]["type"] = "R2RNoSuchNode"
    cases.append(bad)
    bad = json.loads(json.dumps(good))
    node = next(n for n in bad["nodes"] if n["type"] == "R2RWeightFreeHarmonize")
    node["widgets_values"][0] = 3.0  # strength max is 1
    cases.append(bad)
    bad = json.loads(json.dumps(good))
    node = next(n for n in bad["nodes"] if n["type"] == "R2RWeightFreeHarmonize")
    node["widgets_values"].append(True)
    cases.append(bad)
    for i, wf in enumerate(cases):
        (tmp_path / f"bad{i}.json").write_text(json.dumps(wf))
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 10)
        with pytest.raises(AssertionError):
            test_example_workflow_is_valid(f"bad{i}.json")
