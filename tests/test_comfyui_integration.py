"""The pack inside a real ComfyUI: /object_info, the Templates listing, and every example
workflow run to completion with output images (tiny official-layout weights in
models/r2r/region2region). Skipped unless COMFYUI_DIR is set.

Environment:
  COMFYUI_DIR          an extracted ComfyUI source tree (0.3.64 was used)
  R2R_COMFY_VENV       the virtualenv ComfyUI runs in (default: $VENV)
  R2R_COMFY_HARNESS    the comfy-harness folder (default: ../shared/tools/comfy-harness from the repo)
  R2R_COMFY_PORT       port to use (default 8237)

The example workflows work at max_side 1024 / 10 steps like the official release; the
runs here override max_side to 128 and steps to 2 (with --set) so that the CPU run stays short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from comfy_pack import PACK_ROOT, load_pack

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"),
                                                      reason="COMFYUI_DIR not set (needs a ComfyUI source tree)")]

PACK_LINK = "ComfyUI-R2R"
WF_DIR = os.path.join(PACK_ROOT, "example_workflows")
WORKFLOWS = sorted(f[:-5] for f in os.listdir(WF_DIR) if f.endswith(".json"))
FAST = {"R2RClearVAEEncode": {"max_side": 128}, "R2RHarmonize": {"max_side": 128, "steps": 2},
        "R2RSampler": {"steps": 2}}


def _harness():
    path = os.environ.get("R2R_COMFY_HARNESS") or os.path.join(PACK_ROOT, "..", "shared", "tools", "comfy-harness")
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "start.sh")):
        pytest.skip(f"comfy-harness not found at {path}; set R2R_COMFY_HARNESS")
    return path


def _scene(h, w, seed, alpha_fg=True):
    """RGB(A) test picture; with alpha_fg the foreground disc is transparent, as the mask editor paints it
    (Load Image's MASK = 1 - alpha = 1 on the painted foreground)."""
    import numpy as np
    from PIL import Image

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
    from PIL import Image
    from tiny import make_tiny_release

    harness = _harness()
    venv = os.environ.get("R2R_COMFY_VENV") or os.environ.get("VENV")
    if not venv:
        pytest.skip("set R2R_COMFY_VENV (or VENV) to ComfyUI's virtualenv")
    work = tmp_path_factory.mktemp("comfy_work")
    make_tiny_release(work / "models" / "r2r" / "region2region")
    # a second models folder declared in extra_model_paths.yaml (applied before the pack registers models/r2r)
    extra = work / "elsewhere"
    (extra / "r2r").mkdir(parents=True)
    os.symlink(work / "models" / "r2r" / "region2region", extra / "r2r" / "extra_release")
    (work / "extra_model_paths.yaml").write_text(f"mine:\n    base_path: {extra}\n    r2r: r2r\n")
    inputs = work / "inputs"
    inputs.mkdir()
    _scene(256, 384, 0).save(inputs / "r2r_composite.png")
    _scene(1200, 1800, 1).save(inputs / "r2r_large_composite.png")
    _scene(256, 256, 2).save(inputs / "r2r_real.png")
    _scene(256, 384, 3, alpha_fg=False).save(inputs / "r2r_no_alpha.png")
    import numpy as np

    ref = np.zeros((256, 384), np.uint8)
    ref[:, :100] = 255
    Image.fromarray(ref).convert("RGB").save(inputs / "r2r_reference_mask.png")
    env = dict(os.environ, VENV=venv, PACK_DIR=f"{PACK_LINK}={PACK_ROOT}", WORK_DIR=str(work),
               PORT=os.environ.get("R2R_COMFY_PORT", "8237"), HF_HUB_OFFLINE="1",
               EXTRA_MODEL_PATHS=str(work / "extra_model_paths.yaml"))
    res = subprocess.run(["bash", os.path.join(harness, "start.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    info = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    if res.returncode != 0 or "URL" not in info:
        pytest.fail(f"ComfyUI did not start:\n{res.stdout}\n{res.stderr}")
    yield {"url": info["URL"], "work": work, "inputs": inputs, "harness": harness, "log": info.get("LOG")}
    subprocess.run(["bash", os.path.join(harness, "stop.sh"), str(work)], env=env, capture_output=True, timeout=60)


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def test_object_info_lists_every_node(server):
    info = _get(server["url"] + "/api/object_info")
    pack = load_pack()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id in info, f"{node_id} missing from /object_info (import failed? see {server['log']})"
        assert info[node_id]["python_module"] == f"custom_nodes.{PACK_LINK}"
        assert info[node_id]["category"] == cls.CATEGORY
        assert info[node_id]["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    checkpoints = info["R2RCheckpointLoader"]["input"]["required"]["checkpoint"][0]
    assert "region2region" in checkpoints
    assert "extra_release" in checkpoints  # extra_model_paths.yaml entry merged with models/r2r
    vaes = info["R2RClearVAELoader"]["input"]["required"]["name"][0]
    assert "region2region/clear_vae" in vaes
    templates = _get(server["url"] + "/api/workflow_templates")
    assert sorted(templates.get(PACK_LINK, [])) == WORKFLOWS


def _run(server, workflow_path, tmp_path, overrides=(), uploads=None):
    cmd = [sys.executable, os.path.join(server["harness"], "run_workflow.py"), str(workflow_path), "--url",
           server["url"], "--out", str(tmp_path / "out"), "--timeout", "500"]
    for f in uploads if uploads is not None else sorted(os.listdir(server["inputs"])):
        cmd += ["--upload", str(server["inputs"] / f)]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=560)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_runs(server, name, tmp_path):
    from PIL import Image

    path = os.path.join(WF_DIR, name + ".json")
    with open(path, encoding="utf-8") as f:
        wf = json.load(f)
    overrides = [f"{n['id']}.{k}={json.dumps(v)}" for n in wf["nodes"] for k, v in FAST.get(n["type"], {}).items()]
    res = _run(server, path, tmp_path, overrides)
    assert res.returncode == 0, res.stdout + res.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert files, res.stdout
    loads = [n for n in wf["nodes"] if n["type"] == "LoadImage"]
    src = Image.open(server["inputs"] / loads[0]["widgets_values"][0])
    for f in files:
        with Image.open(f) as im:
            assert im.size == src.size, f"{f.name}: {im.size} != input {src.size}"
    if name == "r2r_make_training_set":
        root = server["work"] / "output" / "r2r_datasets" / "MyHarmony"
        lines = (root / "train.jsonl").read_text().splitlines()
        assert lines and all((root / json.loads(x)["file_name"]).is_file() for x in lines)
        assert (root / "train.txt").read_text().split() == [json.loads(x)["file_name"] for x in lines]


def test_mask_error_reaches_the_user(server, tmp_path):
    """An image without alpha gives Load Image's 64x64 empty mask: the error says what to do."""
    src = os.path.join(WF_DIR, "r2r_harmonize_basic.json")
    with open(src, encoding="utf-8") as f:
        wf = json.load(f)
    for n in wf["nodes"]:
        if n["type"] == "LoadImage":
            n["widgets_values"][0] = "r2r_no_alpha.png"
    path = tmp_path / "no_alpha.json"
    path.write_text(json.dumps(wf))
    res = _run(server, path, tmp_path, ["3.max_side=128", "5.steps=1"])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no alpha channel" in res.stdout + res.stderr and "MaskEditor" in res.stdout + res.stderr


_WS_CLIENT = r'''
import asyncio, json, sys, uuid
import aiohttp

async def main(url, prompt_file):
    prompt = json.load(open(prompt_file))
    cid = uuid.uuid4().hex
    events = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url.replace("http", "ws", 1) + "/ws?clientId=" + cid) as ws:
            async with s.post(url + "/prompt", json={"prompt": prompt, "client_id": cid}) as r:
                pid = (await r.json())["prompt_id"]
            while True:
                msg = await asyncio.wait_for(ws.receive(), 300)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                data = m.get("data", {})
                if m["type"] == "progress":
                    events.append([data.get("node"), data["value"], data["max"]])
                if m["type"] in ("execution_error", "execution_interrupted"):
                    print(json.dumps({"error": m})); return
                if m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                    break
    print(json.dumps({"progress": events}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


def test_sampler_progress_reaches_the_ui(server, tmp_path):
    """The frontend's progress bar: ComfyUI sends 'progress' websocket messages for the R2R Sampler."""
    venv = os.environ.get("R2R_COMFY_VENV") or os.environ.get("VENV")
    api = tmp_path / "basic.api.json"
    conv = subprocess.run([sys.executable, os.path.join(server["harness"], "ui_to_api.py"),
                           os.path.join(WF_DIR, "r2r_harmonize_basic.json"), "--url", server["url"], "-o", str(api)],
                          capture_output=True, text=True, timeout=120)
    assert conv.returncode == 0, conv.stderr
    prompt = json.loads(api.read_text())
    prompt = prompt.get("prompt", prompt)
    prompt["3"]["inputs"]["max_side"] = 64
    prompt["5"]["inputs"].update(steps=3, seed=12345)  # a new seed: not served from the cache
    api.write_text(json.dumps(prompt))
    client = tmp_path / "ws_client.py"
    client.write_text(_WS_CLIENT)
    res = subprocess.run([os.path.join(venv, "bin", "python"), str(client), server["url"], str(api)],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "progress" in out, out
    sampler = [(v, m) for node, v, m in out["progress"] if str(node) == "5"]
    assert sampler and all(m == 6 for _, m in sampler), out  # 3 controller steps + 3 denoising steps
    assert sampler[-1][0] == 6 and [v for v, _ in sampler] == sorted(v for v, _ in sampler)
