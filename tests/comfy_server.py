"""A real ComfyUI server for the integration tests, and the few client calls they need.

* :class:`ComfyServer` starts ComfyUI's ``main.py`` (from the source tree of
  ``comfy_pack.comfyui_dir()``) with the pack linked into a private base directory, CPU only,
  on 127.0.0.1, and stops it again;
* :func:`ui_to_api` turns a UI-format workflow (what the frontend saves) into the API prompt the
  frontend would queue, using the server's ``/object_info`` (widget order = ``input_order``,
  required then optional; a control-after-generate value follows seed-like widgets and is not sent;
  Notes are skipped);
* :meth:`ComfyServer.run` queues a prompt over the websocket and records what a browser would see
  (progress messages, binary preview images, texts shown on nodes, the history entry).

Only the standard library and aiohttp (a ComfyUI requirement) are used.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

UI_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
BINARY_PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE
BINARY_TEXT = 3  # ComfyUI's BinaryEventTypes.TEXT: a text shown on a node (PromptServer.send_progress_text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui_dir: str, base_dir, packs: dict, extra_args=(), python=sys.executable,
                 extra_model_paths=None):
        self.comfyui_dir = comfyui_dir
        self.base = str(base_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.base, "comfyui.log")
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        for name, path in packs.items():
            link = os.path.join(self.base, "custom_nodes", name)
            if not os.path.lexists(link):
                os.symlink(path, link)
        self.cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--base-directory", self.base, "--database-url", f"sqlite:///{self.base}/user/comfyui.db",
                    "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "latent2rgb",
                    *extra_args]
        if extra_model_paths:
            self.cmd += ["--extra-model-paths-config", str(extra_model_paths)]
        self.proc = None

    def start(self, timeout: float = 300.0) -> float:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("R2R_HOST", None)
        self._log = open(self.log_path, "wb")
        t0 = time.time()
        self.proc = subprocess.Popen(self.cmd, cwd=self.comfyui_dir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/api/system_stats", timeout=2)
                return time.time() - t0
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
        self.proc = None

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def get(self, path: str, timeout: float = 60, raw: bool = False):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def put_input(self, src, name: str | None = None) -> str:
        """Place a file in the server's input folder (what uploading it in the UI does)."""
        name = name or os.path.basename(src)
        shutil.copyfile(src, os.path.join(self.base, "input", name))
        return name

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue ``prompt`` over the websocket like the frontend; wait for the end of the run."""
        return asyncio.run(self._run(prompt, timeout))

    async def _run(self, prompt, timeout):
        import aiohttp

        cid = uuid.uuid4().hex
        out = {"progress": [], "previews": [], "texts": [], "error": None, "validation": None, "prompt_id": None}
        async with aiohttp.ClientSession() as s:
            ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={cid}"
            async with s.ws_connect(ws_url, max_msg_size=0) as ws:
                async with s.post(self.url + "/api/prompt", json={"prompt": prompt, "client_id": cid}) as r:
                    body = await r.json()
                if r.status != 200 or body.get("node_errors"):
                    out["validation"] = body
                    return out
                pid = out["prompt_id"] = body["prompt_id"]
                deadline = time.time() + timeout
                while True:
                    msg = await asyncio.wait_for(ws.receive(), max(1.0, deadline - time.time()))
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        event = int.from_bytes(msg.data[:4], "big")
                        if event == BINARY_PREVIEW_IMAGE:
                            out["previews"].append((int.from_bytes(msg.data[4:8], "big"), len(msg.data) - 8))
                        elif event == BINARY_TEXT:  # (node id, text) as the frontend shows it on the node
                            n = int.from_bytes(msg.data[4:8], "big")
                            out["texts"].append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode("utf-8")))
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise RuntimeError(f"websocket closed: {msg}")
                    m = json.loads(msg.data)
                    data = m.get("data", {})
                    if data.get("prompt_id") not in (None, pid):
                        continue
                    if m["type"] == "progress":
                        out["progress"].append((str(data.get("node")), data["value"], data["max"]))
                    elif m["type"] in ("execution_error", "execution_interrupted"):
                        out["error"] = m
                        break
                    elif m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                        break
        out["history"] = self.get(f"/api/history/{pid}").get(pid, {})
        return out


def ui_to_api(wf: dict, object_info: dict) -> dict:
    """The API prompt of a UI-format workflow (no subgraphs, reroutes or bypassed nodes in ours)."""
    links = {link[0]: link for link in wf["links"]}
    prompt = {}
    for node in wf["nodes"]:
        t = node["type"]
        if t in UI_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[t]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                typ, opts = (info["input"][section][name] + [{}])[:2]
                is_widget = (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")
                if is_widget and values:
                    inputs[name] = values.pop(0)
                    if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                        values.pop(0)  # the control value (fixed/randomize/...) is not sent
        # what is left (Load Image's "upload" button value, after its widgets) is not sent either
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, origin, slot, *_ = links[inp["link"]]
                inputs[inp["name"]] = [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": t, "inputs": inputs}
    return prompt
