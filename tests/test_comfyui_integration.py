"""The pack inside a real ComfyUI 0.3.64 (the source tree of comfy_pack.comfyui_dir(): $COMFYUI_DIR, else
.cache/ComfyUI; the Python of $R2R_COMFY_VENV, else this one), started once for the module with the pack
linked as custom_nodes/ComfyUI-R2R and tiny official-layout weights in models/r2r/region2region:

* /object_info shows every node with its V3 metadata (descriptions, search aliases, tooltips);
  the Templates listing, the template files, thumbnails and the nodes' help pages are served;
* every template runs AS DELIVERED (no file is placed: its picture comes from R2R Example Image), with
  only max_side / steps lowered so the CPU run stays short;
* the workflows saved with the V1 nodes (tests/data/v1_workflows) load and run;
* the R2R Sampler sends binary latent previews and step progress over the websocket;
* a mask mistake reaches the user as a readable error; a loader name outside models/r2r (absolute, '..')
  fails validation with the reason;
* the memory estimates reach ComfyUI's load_models_gpu, also in its LOW_VRAM / NO_VRAM states
  (an in-process ComfyUI executor run, tests/comfy_inprocess.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from comfy_pack import PACK_ROOT, comfyui_dir, node_classes
from comfy_server import ComfyServer, ui_to_api
from PIL import Image

pytestmark = pytest.mark.comfyui

PACK_LINK = "ComfyUI-R2R"
WF_DIR = os.path.join(PACK_ROOT, "example_workflows")
V1_DIR = os.path.join(PACK_ROOT, "tests", "data", "v1_workflows")
WORKFLOWS = sorted(f[:-5] for f in os.listdir(WF_DIR) if f.endswith(".json"))
V1_WORKFLOWS = sorted(f[:-5] for f in os.listdir(V1_DIR) if f.endswith(".json"))
# what the real frontend (1.27.10) queues for each workflow (app.graphToPrompt(), saved with the harness's
# screenshot.sh --prompt-out against this pack); regenerate them when a template changes
FRONTEND_DIR = os.path.join(PACK_ROOT, "tests", "data", "frontend_prompts")
FAST = {"R2RClearVAEEncode": {"max_side": 128}, "R2RHarmonize": {"max_side": 128, "steps": 2},
        "R2RSampler": {"steps": 2}, "KSampler": {"steps": 2}}
EXAMPLE_SIZES = {"astronaut": (448, 448), "coffee": (448, 299), "motorcycle": (448, 302), "cup_cutout": (150, 142),
                 "rocket_background": (448, 299), "astronaut_objects": (448, 448)}


def _python():
    venv = os.environ.get("R2R_COMFY_VENV")
    return os.path.join(venv, "bin", "python") if venv else sys.executable


def _scene(h, w, seed, alpha_fg=True):
    """RGB(A) test picture; with alpha_fg the foreground disc is transparent, as the MaskEditor paints it
    (Load Image's MASK = 1 - alpha = 1 on the painted foreground)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([0.25 + 0.5 * xx, 0.3 + 0.4 * yy, 0.7 - 0.4 * xx], -1) + 0.04 * rng.standard_normal((h, w, 3))
    fg = (np.arange(h)[:, None] - h // 2) ** 2 + (np.arange(w)[None] - w // 2) ** 2 < (min(h, w) // 4) ** 2
    img[fg] = img[fg] * np.array([1.4, 0.8, 0.5]) + 0.1
    rgb = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    if not alpha_fg:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.dstack([rgb, np.where(fg, 0, 255).astype(np.uint8)]), "RGBA")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tiny import make_tiny_release

    tree = comfyui_dir()
    if not os.path.isfile(os.path.join(tree, "main.py")):
        pytest.skip(f"no ComfyUI source tree at {tree} (make test fetches ComfyUI 0.3.64 into .cache/ComfyUI)")
    work = tmp_path_factory.mktemp("comfy_work")
    make_tiny_release(work / "models" / "r2r" / "region2region")
    # a second models folder declared in extra_model_paths.yaml (applied before the pack registers models/r2r)
    extra = work / "elsewhere"
    (extra / "r2r").mkdir(parents=True)
    os.symlink(work / "models" / "r2r" / "region2region", extra / "r2r" / "extra_release")
    (work / "extra_model_paths.yaml").write_text(f"mine:\n    base_path: {extra}\n    r2r: r2r\n")
    srv = ComfyServer(tree, work, {PACK_LINK: PACK_ROOT}, python=_python(),
                      extra_model_paths=work / "extra_model_paths.yaml")
    srv.start_seconds = srv.start()
    srv.object_info = srv.get("/api/object_info")
    yield srv
    srv.stop()


def _load_ui(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _prompt(server, wf, fast=True):
    prompt = ui_to_api(wf, server.object_info)
    if fast:
        for node in prompt.values():
            node["inputs"].update(FAST.get(node["class_type"], {}))
    return prompt


def _ok(res):
    assert res["validation"] is None, json.dumps(res["validation"], indent=1)
    assert res["error"] is None, json.dumps(res["error"], indent=1)[:6000]
    return res["history"]


def _output_images(server, history):
    files = []
    for out in history["outputs"].values():
        for im in out.get("images", []):
            files.append(os.path.join(server.base, im["type"], im["subfolder"], im["filename"]))
    return files


def test_server_started_with_the_pack(server):
    log = server.log()
    assert "IMPORT FAILED" not in log and f"custom_nodes/{PACK_LINK}" in log, log[-3000:]
    assert server.start_seconds < 240


def test_object_info_shows_every_node_with_v3_metadata(server):
    info = server.object_info
    for node_id, cls in node_classes().items():
        assert node_id in info, f"{node_id} missing from /object_info (see {server.log_path})"
        got, own = info[node_id], cls.GET_NODE_INFO_V1()
        assert got["python_module"] == f"custom_nodes.{PACK_LINK}"
        for key in ("display_name", "category", "description", "search_aliases", "input_order", "output_name",
                    "output_tooltips"):
            assert got[key] == own[key], f"{node_id}.{key}"
        assert (got["search_aliases"] or got["deprecated"]) and len(got["description"]) > 40
    assert {"harmonize", "relight", "color match", "composite", "blend"} <= set(info["R2RHarmonize"]["search_aliases"])
    checkpoints = info["R2RCheckpointLoader"]["input"]["required"]["checkpoint"][1]["options"]
    assert "region2region" in checkpoints
    assert "extra_release" in checkpoints  # extra_model_paths.yaml entry merged with models/r2r
    vaes = info["R2RClearVAELoader"]["input"]["required"]["name"][1]["options"]
    assert "region2region/clear_vae" in vaes
    legacy = info["R2RClearVAEDecode"]["input"]["optional"]["invert_mask"][1]["tooltip"]
    assert "Kept" in legacy and "older workflows" in legacy


def test_templates_thumbnails_and_help_pages_are_served(server):
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get(PACK_LINK, [])) == WORKFLOWS
    for name in WORKFLOWS:
        quoted = urllib.parse.quote(name)
        wf = json.loads(server.get(f"/api/workflow_templates/{PACK_LINK}/{quoted}.json", raw=True))
        assert wf == _load_ui(os.path.join(WF_DIR, name + ".json"))
        assert server.get(f"/api/workflow_templates/{PACK_LINK}/{quoted}.jpg", raw=True)[:3] == b"\xff\xd8\xff"
    page = server.get(f"/extensions/{PACK_LINK}/docs/R2RHarmonize.md", raw=True).decode()
    assert page.startswith("# R2R Harmonize")


def _check_videos(files):
    """The video template's outputs (Save Video): the bundled clip's 24 frames of 256x256 at 12 fps."""
    import av

    assert len(files) == 2, files  # the harmonized clip and the clip as it came in
    for f in files:
        with av.open(f) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            assert len(frames) == 24 and frames[0].shape == (256, 256, 3), (f, len(frames), frames[0].shape)
            assert float(stream.average_rate) == 12.0, f


@pytest.mark.parametrize("name", WORKFLOWS)
def test_template_runs_as_delivered(server, name):
    wf = _load_ui(os.path.join(WF_DIR, name + ".json"))
    before = set(os.listdir(os.path.join(server.base, "input")))
    history = _ok(server.run(_prompt(server, wf)))
    assert set(os.listdir(os.path.join(server.base, "input"))) == before  # nothing was placed or needed
    if any(n["type"] == "R2RExampleClip" for n in wf["nodes"]):  # the video template: videos out
        _check_videos(_output_images(server, history))
        return
    example = next(n for n in wf["nodes"] if n["type"] == "R2RExampleImage")["widgets_values"][0]
    w, h = EXAMPLE_SIZES[example]
    scale = [n["widgets_values"][1] for n in wf["nodes"] if n["type"] == "ImageScaleBy"]
    if scale:
        w, h = round(w * scale[0]), round(h * scale[0])
    sizes = {(w, h), EXAMPLE_SIZES[example]}
    for n in wf["nodes"]:
        if n["type"] == "ImageStitch":  # before | after side by side (right; image2 scaled to image1's height)
            sizes.add((w + n["widgets_values"][2] + int(h * (w / h)), h))
    files = _output_images(server, history)
    assert files
    for f in files:
        with Image.open(f) as im:
            if "r2r_datasets" not in f:
                assert im.size in sizes, f"{f}: {im.size}"
    if name == "Make a harmonization training set":
        root = os.path.join(server.base, "output", "r2r_datasets", "MyHarmony")
        with open(os.path.join(root, "train.jsonl"), encoding="utf-8") as fh:
            lines = [json.loads(x)["file_name"] for x in fh.read().splitlines()]
        assert lines and all(os.path.isfile(os.path.join(root, x)) for x in lines)
        with open(os.path.join(root, "train.txt"), encoding="utf-8") as fh:
            assert fh.read().split() == lines
        shown = [f for f in files if "r2r_datasets" in f]  # the save confirmation shown on the node
        assert shown and all(os.path.isfile(f) for f in shown)


@pytest.mark.parametrize("name", V1_WORKFLOWS)
def test_v1_era_workflow_loads_and_runs(server, name):
    """Saved with the V1 nodes before the V3 move (Load Image with files the user uploaded)."""
    inputs = os.path.join(server.base, "input")
    _scene(256, 384, 0).save(os.path.join(inputs, "r2r_composite.png"))
    ref = np.zeros((256, 384), np.uint8)
    ref[:, :100] = 255
    Image.fromarray(ref).convert("RGB").save(os.path.join(inputs, "r2r_reference_mask.png"))
    wf = _load_ui(os.path.join(V1_DIR, name + ".json"))
    history = _ok(server.run(_prompt(server, wf)))
    files = _output_images(server, history)
    assert files
    for f in files:
        with Image.open(f) as im:
            assert im.size == (384, 256)


@pytest.mark.parametrize("name", WORKFLOWS + V1_WORKFLOWS)
def test_conversion_equals_what_the_real_frontend_queues(server, name):
    """The UI->API conversion these tests use gives, on every input, what the frontend itself sends for the
    workflow (so the V1-era widget values land on the same V3 inputs in the browser too)."""
    path = os.path.join(WF_DIR if name in WORKFLOWS else V1_DIR, name + ".json")
    frontend = _load_ui(os.path.join(FRONTEND_DIR, name + ".json"))
    ours = ui_to_api(_load_ui(path), server.object_info)
    assert set(ours) == set(frontend)
    for node_id, node in ours.items():
        assert node["class_type"] == frontend[node_id]["class_type"]
        for key, value in node["inputs"].items():
            assert frontend[node_id]["inputs"].get(key) == value, (name, node_id, key)


def test_sampler_sends_previews_and_progress(server):
    wf = _load_ui(os.path.join(WF_DIR, "Harmonize a pasted object.json"))
    prompt = _prompt(server, wf)
    sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "R2RSampler")
    prompt[sampler_id]["inputs"].update(steps=3, seed=12345)  # a new seed: not served from the cache
    res = server.run(prompt)
    _ok(res)
    steps = [(v, m) for node, v, m in res["progress"] if node == sampler_id]
    # the controller phase counts on its own (1..3), then the bar counts the denoising steps (1..3): never /6
    last = max(i for i, (v, _) in enumerate(steps) if v == 1 or i == 0)
    denoise = steps[last:]
    assert denoise and [v for v, _ in denoise] == sorted(v for v, _ in denoise), steps
    assert denoise[-1] == (3, 3) and {m for _, m in steps} == {3}, steps
    assert len(res["previews"]) >= 3, res["previews"]  # one binary JPEG preview per denoising step at least
    assert all(size > 100 for _, size in res["previews"])


def test_mask_error_reaches_the_user(server):
    """An image without alpha gives Load Image's 64x64 empty mask: the error says what to do."""
    _scene(256, 384, 3, alpha_fg=False).save(os.path.join(server.base, "input", "r2r_no_alpha.png"))
    wf = _load_ui(os.path.join(V1_DIR, "r2r_harmonize_basic.json"))
    for n in wf["nodes"]:
        if n["type"] == "LoadImage":
            n["widgets_values"][0] = "r2r_no_alpha.png"
    res = server.run(_prompt(server, wf))
    assert res["error"] is not None and res["error"]["type"] == "execution_error"
    message = res["error"]["data"]["exception_message"]
    assert "no alpha channel" in message and "MaskEditor" in message


def test_memory_estimates_reach_comfyui_in_every_vram_state(server, tmp_path):
    """Every R2R network is loaded through load_models_gpu with a memory estimate for its activations and a
    full load; with ComfyUI's NO_VRAM state (which loads 0 bytes of non-comfy.ops layers) the pack still
    ends with each network whole and accounted, and the template completes."""
    wf = _load_ui(os.path.join(WF_DIR, "Harmonize a pasted object.json"))
    prompt_path = tmp_path / "prompt.json"
    prompt_path.write_text(json.dumps(_prompt(server, wf)))
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([_python(), os.path.join(PACK_ROOT, "tests", "comfy_inprocess.py"), comfyui_dir(),
                          PACK_ROOT, os.path.join(server.base, "models", "r2r"), str(prompt_path), str(out),
                          "lowvram,novram"], capture_output=True, text=True, timeout=900,
                         env={**{k: v for k, v in os.environ.items() if k != "R2R_HOST"}, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for run in report["runs"]:
        error = run.get("error") or {}
        assert run["success"], f"{error.get('exception_type')}: {error.get('exception_message')}\n" + "".join(
            error.get("traceback") or [])[-3000:]
        assert set(run["loaded_models"]) == {"ClearVAE", "HarmonyController", "UNet2DConditionModel"}, run
        assert all(loaded == size for loaded, size in run["loaded_models"].values()), run
    assert [r["vram_state"] for r in report["runs"]] == ["LOW_VRAM", "NO_VRAM"]
    calls = report["calls"]
    assert {c["model"] for c in calls} == {"ClearVAE", "HarmonyController", "UNet2DConditionModel"}
    for c in calls:
        assert c["force_full_load"] and c["memory_required"] > 0, c
    # the Clear-VAE's activations at the working resolution dwarf its (tiny) weights
    assert max(c["memory_required"] for c in calls if c["model"] == "ClearVAE") > max(
        c["weights"] for c in calls if c["model"] == "ClearVAE")


@pytest.mark.parametrize("name", ["ABSOLUTE", "../../models/r2r/region2region", "region2region/../../x"])
def test_loader_names_outside_the_models_folders_are_refused_by_the_server(server, name):
    """Issue 22: a client cannot make the server read weights outside models/r2r (absolute or '..' names);
    the prompt fails validation with the reason, before any node runs."""
    if name == "ABSOLUTE":
        name = os.path.join(server.base, "models", "r2r", "region2region")  # a real release, given by path
    wf = _load_ui(os.path.join(WF_DIR, "Harmonize a pasted object.json"))
    prompt = _prompt(server, wf)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "R2RCheckpointLoader")
    prompt[loader]["inputs"]["checkpoint"] = name
    res = server.run(prompt)
    assert res["validation"] is not None, "the prompt was accepted"
    errors = res["validation"]["node_errors"][loader]["errors"]
    details = " ".join(e.get("details", "") for e in errors)
    assert "is refused" in details and repr(name) in details and "models/r2r" in details, errors
