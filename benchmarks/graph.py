"""Node-graph benchmark: the basic template in a real ComfyUI vs the official flow.

    python benchmarks/graph.py --size 512 --steps 2          # CPU, fp32, full-size random weights
    python benchmarks/graph.py --size 256 --steps 1          # quick check
    python benchmarks/graph.py --as-delivered                # the starter template exactly as shipped

What it runs (each flow in its own process, never two at once):

official  benchmarks/pipeline.py's re-statement of the official call (every network resident, CLIP
          on every call, the composite encoded twice, untiled decode; loading not counted), in a
          subprocess, on the same bundled composite and mask, followed by the same restore to the
          original size (pasted back, feather auto, fullres auto) the graph's Clear-VAE Decode does;
          its prepare and restore are counted (the graph's Encode and Decode do them).
graph     the basic template (example_workflows/, the four-node R2R chain fed by "R2R Example Image")
          in a real ComfyUI started headless with the comfy-harness (``start.sh``, ``--cpu``), the pack
          linked as ComfyUI-R2R and the weights under the server's models/r2r/region2region. Three
          prompts, as an artist queues them: the first run (loading included), a re-run with a new
          seed, a re-run with a new strength.

Times are the server process's CPU seconds (psutil; all threads; robust on a shared machine) and
wall seconds from queueing to completion. Per-node times and the sampler's controller / U-Net
phases come from the websocket ('executing' and 'progress' events, timestamped on arrival). With
``--steps`` below 10, every 10-step figure is estimated as ``measured + (10 - steps) x per-step``,
with the per-step costs measured in that same run (controller and U-Net phases; the official
flow's clock). Peak memory: the server's RSS high-water mark (``VmHWM``, reset before each prompt
through ``/proc/<pid>/clear_refs``) vs the official subprocess's ``ru_maxrss``. The 4-seed variation
batch is what an artist does in the graph: queue the same composite with four seeds (a first run,
then three new-seed re-runs), composed from the measured runs as ``first + 3 x reseed``, against
four official calls (``4 x`` one measured call). The image check compares the first run (seed
``--seed``) with the official flow's image for that seed, both quantised as ComfyUI's SaveImage does.

``--as-delivered`` runs the basic template exactly as shipped (its max_side, steps and dtype; only the
release name is set, pointing at the weights) twice, a first run and a new seed, and reports wall and
CPU seconds and the load average (no official flow): the figure an artist waits for.

Prints a summary and, last, one JSON line (keys: first_run_time_ratio, reseed_time_ratio,
restrength_time_ratio, variations_time_ratio, peak_memory_ratio, same_seed_max_abs_diff, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import measure  # noqa: E402
import pipeline as bench  # noqa: E402

PACK_LINK = "ComfyUI-R2R"
RELEASE_NAME = "region2region"
EXAMPLE = "astronaut"
BASIC_TEMPLATES = ("r2r_harmonize_basic.json", "Harmonize a pasted object.json")
#: the four-node chain by role: node ids (version 2 first; templates before the version-2 nodes use the V1 ids)
CHAIN_ROLES = {"loader": ("R2RCheckpointLoader",), "encode": ("R2RClearVAEEncode",),
               "apply": ("R2RMACAControllerApplyV2", "R2RMACAControllerApply"), "sampler": ("R2RSampler",),
               "decode": ("R2RClearVAEDecodeV2", "R2RClearVAEDecode")}
ROLES = {**CHAIN_ROLES, "example": ("R2RExampleImage",), "save": ("SaveImage",)}


def is_basic_chain(types) -> bool:
    """Every role of the four-node chain is present (in either version)."""
    return all(set(ids) & set(types) for ids in CHAIN_ROLES.values())
GIB = 1024 ** 3


# ----------------------------------------------------------------------------- inputs
def find_basic_template(folder: Path) -> Path:
    """The basic template: by its known names, else the one workflow that is exactly the four-node chain."""
    for name in BASIC_TEMPLATES:
        if (folder / name).is_file():
            return folder / name
    found = []
    for path in sorted(folder.glob("*.json")):
        types = {n.get("type") for n in json.loads(path.read_text()).get("nodes", [])}
        if is_basic_chain(types) and not types & {"R2RHarmonize", "KSampler", "LoadImageMask"}:
            found.append(path)
    if len(found) != 1:
        raise SystemExit(f"graph.py: cannot tell which workflow in {folder} is the basic template "
                         f"(candidates: {[p.name for p in found]}); pass --workflow.")
    return found[0]


def example_inputs():
    """The bundled example exactly as "R2R Example Image" outputs it: composite [1,3,H,W], mask [1,1,H,W]."""
    import numpy as np
    import torch

    from r2r.fileio import read_image, read_mask

    folder = ROOT / "r2r" / "assets" / "examples"
    rgb = read_image(str(folder / f"{EXAMPLE}_composite.png"))
    mask = read_mask(str(folder / f"{EXAMPLE}_mask.png"))
    comp = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    m = torch.from_numpy((mask >= 128).astype(np.float32))[None, None]
    return rgb, mask, comp, m


def save_image_like_comfyui(image_hwc):
    """ComfyUI's SaveImage quantisation: ``clip(255 x, 0, 255).astype(uint8)`` (truncation)."""
    import numpy as np

    return np.clip(255.0 * image_hwc, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- official worker
def official_worker(args) -> int:
    """One official call on the example at --size (subprocess): prints RESULT {...}, saves the image."""
    import numpy as np
    import torch

    from r2r import imaging
    from r2r.imaging.fullres import to_original_size

    torch.set_flush_denormal(True)
    device = torch.device("cpu")
    _, _, comp, m = example_inputs()
    clock = bench.Clock(device)
    c0, t0 = time.process_time(), time.perf_counter()
    prepared = imaging.prepare(comp, m, max_side=args.size)  # the graph's Encode prepares too: counted
    t_prepare = time.perf_counter() - t0
    out, total, load_time = bench.run_official(args, prepared, device, torch.float32, clock)
    t1 = time.perf_counter()
    restored = to_original_size(out, prepared, paste_back=True, feather=None, mode="auto")  # as Decode does
    total += t_prepare + time.perf_counter() - t1
    cpu_total = time.process_time() - c0 - clock.untimed_cpu  # loading not counted
    np.save(args.save_output, restored[0].permute(1, 2, 0).numpy())
    res = {"total_s": total, "total_cpu_s": cpu_total, "load_s": load_time,
           "per_step_cpu_s": (clock.cpu["controller"] + clock.cpu["unet"]) / args.steps,
           "per_step_s": (clock.t["controller"] + clock.t["unet"]) / args.steps,
           "stages_cpu_s": clock.cpu, "peak_rss_bytes": measure.peak_bytes(device),
           "working_size": list(prepared.geometry.working_size), "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def run_official_subprocess(args, out_npy: str) -> dict:
    cmd = [sys.executable, __file__, "--official-worker", "--size", str(args.size), "--steps", str(args.steps),
           "--seed", str(args.seed), "--weights", args.weights, "--save-output", out_npy]
    print(f"[graph] official flow {args.size}px, {args.steps} steps ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"graph.py: the official flow failed (exit {proc.returncode}; -9 = killed, e.g. out of "
                         f"memory):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


# ----------------------------------------------------------------------------- the server
class Server:
    """A real ComfyUI started by the comfy-harness, with the pack and the weights linked in."""

    def __init__(self, args):
        self.harness = Path(args.harness)
        self.work = Path(tempfile.mkdtemp(prefix="r2r-graph-bench-"))
        release = self.work / "models" / "r2r" / RELEASE_NAME
        release.parent.mkdir(parents=True)
        os.symlink(Path(args.weights).resolve(), release)
        env = dict(os.environ, COMFYUI_DIR=str(args.comfyui_dir), VENV=str(args.venv), PORT=str(args.port),
                   PACK_DIR=f"{PACK_LINK}={ROOT}", WORK_DIR=str(self.work), HF_HUB_OFFLINE="1")
        self.env = env
        t0 = time.perf_counter()
        res = subprocess.run(["bash", str(self.harness / "start.sh")], env=env, capture_output=True, text=True,
                             timeout=600)
        info = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        if res.returncode or "URL" not in info:
            self.stop()
            raise SystemExit(f"graph.py: ComfyUI did not start:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        self.start_s = time.perf_counter() - t0
        self.url, self.pid, self.log = info["URL"], int(info["PID"]), info.get("LOG")
        import psutil

        self.proc = psutil.Process(self.pid)

    def stop(self):
        if (self.work / "comfyui.pid").exists():
            subprocess.run(["bash", str(self.harness / "stop.sh"), str(self.work)], env=self.env,
                           capture_output=True, timeout=120)
        for link in (self.work / "models" / "r2r" / RELEASE_NAME, self.work / "custom_nodes" / PACK_LINK):
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(self.work, ignore_errors=True)

    def cpu_s(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def memory(self) -> dict:
        """RSS now and its high-water mark (bytes), from /proc/<pid>/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
        return {"rss": out["VmRSS"], "peak": out["VmHWM"]}

    def reset_peak(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def to_api(self, workflow: Path) -> dict:
        out = self.work / "workflow.api.json"
        res = subprocess.run([sys.executable, str(self.harness / "ui_to_api.py"), str(workflow), "--url", self.url,
                              "-o", str(out)], capture_output=True, text=True, timeout=300)
        if res.returncode:
            raise SystemExit(f"graph.py: could not convert {workflow}: {res.stdout[-1000:]}{res.stderr[-2000:]}")
        api = json.loads(out.read_text())
        return api.get("prompt", api)

    def run(self, prompt: dict, sampler_id: str, steps: int) -> dict:
        """Queue ``prompt``, follow it over the websocket; times, memory and the saved image files."""
        return asyncio.run(self._run(prompt, sampler_id, steps))

    async def _run(self, prompt, sampler_id, steps):
        import aiohttp

        client = uuid.uuid4().hex
        events = []  # (kind, node, value, max, wall, cpu)
        peak_reset = self.reset_peak()
        async with aiohttp.ClientSession() as s:
            ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client}"
            async with s.ws_connect(ws_url, max_msg_size=0) as ws:
                t0, c0 = time.perf_counter(), self.cpu_s()
                async with s.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client}) as r:
                    body = await r.json()
                if "prompt_id" not in body:
                    raise SystemExit(f"graph.py: ComfyUI refused the prompt: {json.dumps(body)[:3000]}")
                pid = body["prompt_id"]
                cached = []
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 3600)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    data = m.get("data", {})
                    now, cpu = time.perf_counter(), self.cpu_s()
                    if m["type"] == "execution_error":
                        raise SystemExit(f"graph.py: the graph failed in node {data.get('node_id')} "
                                         f"({data.get('node_type')}): {data.get('exception_message')}\n"
                                         + "".join(data.get("traceback", []))[-3000:])
                    if m["type"] == "execution_cached" and data.get("prompt_id") == pid:
                        cached = list(data.get("nodes", []))
                    elif m["type"] == "executing" and data.get("prompt_id", pid) == pid:
                        if data.get("node") is None:
                            break
                        events.append(("node", str(data["node"]), 0, 0, now - t0, cpu - c0))
                    elif m["type"] == "progress" and str(data.get("node")) == sampler_id:
                        events.append(("progress", sampler_id, data["value"], data["max"], now - t0, cpu - c0))
                wall, cpu = time.perf_counter() - t0, self.cpu_s() - c0
        mem = self.memory()
        with urllib.request.urlopen(f"{self.url}/history/{pid}", timeout=60) as r:
            history = json.loads(r.read())[pid]
        images = [self.work / "output" / im.get("subfolder", "") / im["filename"]
                  for out in history.get("outputs", {}).values() for im in out.get("images", [])
                  if im.get("type") == "output"]
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": mem["peak"] if peak_reset else None,
                "rss_after_bytes": mem["rss"], "cached_nodes": cached, "images": [str(p) for p in images],
                **_phases(events, wall, cpu, prompt, steps)}


def _phases(events, wall, cpu, prompt, steps) -> dict:
    """Per-node wall/CPU seconds and the sampler's controller / U-Net phases.

    The R2R Sampler's bar counts the controller's steps on their own (1..steps) when the controller runs, then
    the denoising steps (1..steps); the residuals reused: only the denoising steps. (Before the version-2
    nodes one bar counted ``2 x steps``; that form is read too.)"""
    nodes = [e for e in events if e[0] == "node"]
    per_node = {}
    for i, (_, node, _, _, w, c) in enumerate(nodes):
        w1, c1 = (nodes[i + 1][4], nodes[i + 1][5]) if i + 1 < len(nodes) else (wall, cpu)
        per_node[f"{node}:{prompt[node]['class_type']}"] = {"wall_s": round(w1 - w, 3), "cpu_s": round(c1 - c, 3)}
    progress = [e for e in events if e[0] == "progress"]
    out = {"nodes": per_node, "controller_ran": False, "controller_wall_s": 0.0, "controller_cpu_s": 0.0,
           "unet_wall_s": 0.0, "unet_cpu_s": 0.0}
    start = next((e for e in nodes if progress and e[1] == progress[0][1]), None)
    if start is None or progress[-1][2] != progress[-1][3]:
        raise SystemExit(f"graph.py: the sampler's progress events are incomplete ({len(progress)} received); "
                         "cannot split its time into controller and U-Net phases.")
    end = progress[-1]
    restart = next((i for i in range(1, len(progress)) if progress[i][2] < progress[i - 1][2]), None)
    if restart is not None and end[3] == steps:  # the controller's own count, then the denoising steps
        split = progress[restart - 1]
        out.update(controller_ran=True, controller_wall_s=split[4] - start[4], controller_cpu_s=split[5] - start[5],
                   unet_wall_s=end[4] - split[4], unet_cpu_s=end[5] - split[5])
    elif end[3] == 2 * steps:
        split = next(e for e in progress if e[2] >= steps)
        out.update(controller_ran=True, controller_wall_s=split[4] - start[4], controller_cpu_s=split[5] - start[5],
                   unet_wall_s=end[4] - split[4], unet_cpu_s=end[5] - split[5])
    elif end[3] == steps:
        out.update(unet_wall_s=end[4] - start[4], unet_cpu_s=end[5] - start[5])
    else:
        raise SystemExit(f"graph.py: the sampler reported {end[3]} progress units for {steps} steps; expected "
                         f"{steps} or {2 * steps}.")
    return out


# ----------------------------------------------------------------------------- the benchmark
def configure(api: dict, args) -> tuple[dict, dict]:
    """The template's API prompt set to the benchmark's settings; returns (prompt, node id per role: loader,
    encode, apply, sampler, decode, example, save). ``args.as_delivered``: only the weights (the release name,
    no download) and the output prefix are set; everything else stays as the template has it."""
    one, bad = {}, []
    for role, class_ids in ROLES.items():
        found = [k for k, n in api.items() if n["class_type"] in class_ids]
        if len(found) != 1:
            bad.append("/".join(class_ids))
        else:
            one[role] = found[0]
    if bad:
        raise SystemExit(f"graph.py: the workflow must hold exactly one node of each role {sorted(ROLES)}; these "
                         f"are missing or repeated: {bad}. Pass the basic template with --workflow.")
    api[one["loader"]]["inputs"].update(checkpoint=RELEASE_NAME, download_if_missing=False)
    api[one["save"]]["inputs"].update(filename_prefix="r2r_bench/graph")
    if getattr(args, "as_delivered", False):
        return api, one
    api[one["loader"]]["inputs"].update(dtype="fp32")
    api[one["example"]]["inputs"].update(example=EXAMPLE)
    api[one["encode"]]["inputs"].update(max_side=args.size, invert_mask=False, resize_mode="fit")
    api[one["sampler"]]["inputs"].update(steps=args.steps, sampler="euler_ancestral")
    api[one["decode"]]["inputs"].update(paste_back=True, feather=-1, fullres_mode="auto")
    return api, one


def with_settings(api: dict, one: dict, seed: int, strength: float) -> dict:
    prompt = json.loads(json.dumps(api))
    prompt[one["sampler"]]["inputs"]["seed"] = seed
    prompt[one["apply"]]["inputs"]["strength"] = strength
    return prompt


def same_seed_difference(png: str, official_npy: str) -> dict:
    import numpy as np
    from PIL import Image

    ours = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    theirs = save_image_like_comfyui(np.load(official_npy)).astype(np.int16)
    if ours.shape != theirs.shape:
        raise SystemExit(f"graph.py: the graph's image is {ours.shape} but the official one {theirs.shape}.")
    d = np.abs(ours - theirs)
    return {"same_seed_max_abs_diff": float(d.max()) / 255.0, "same_seed_pixels_differing": float((d > 0).mean())}


def estimate(run: dict, steps: int, key: str) -> float:
    """The 10-step figure: measured + (10 - steps) x the per-step cost measured in the same run."""
    per_step = (run[f"controller_{key}"] + run[f"unet_{key}"]) / steps
    return run[key] + (10 - steps) * per_step


def summarise(args, official: dict, runs: dict, base: dict, held: dict, diff: dict, start_s: float) -> dict:
    s = args.steps
    off_cpu = official["total_cpu_s"] + (10 - s) * official["per_step_cpu_s"]
    off_wall = official["total_s"] + (10 - s) * official["per_step_s"]
    est = {name: {"cpu_s": estimate(r, s, "cpu_s"), "wall_s": estimate(r, s, "wall_s")} for name, r in runs.items()}
    var_cpu = est["first"]["cpu_s"] + 3 * est["reseed"]["cpu_s"]
    var_wall = est["first"]["wall_s"] + 3 * est["reseed"]["wall_s"]
    peak = max(r["peak_rss_bytes"] or 0 for r in runs.values())
    return {
        "benchmark": "graph", "size": args.size, "steps_measured": s, "device": "cpu", "dtype": "float32",
        "estimate": "10-step figures = measured + (10 - steps) x per-step cost measured in the same run"
                    if s < 10 else "measured at 10 steps",
        "time_basis": "CPU seconds of the process (server: psutil, all threads; official: process_time)",
        "first_run_time_ratio": round(est["first"]["cpu_s"] / off_cpu, 4),
        "reseed_time_ratio": round(est["reseed"]["cpu_s"] / off_cpu, 4),
        "restrength_time_ratio": round(est["restrength"]["cpu_s"] / off_cpu, 4),
        "variations_time_ratio": round(var_cpu / (4 * off_cpu), 4),
        "variations_method": "graph: first run + 3 new-seed re-runs (queue 4 seeds); official: 4 calls",
        "peak_memory_ratio": round(peak / official["peak_rss_bytes"], 4),
        **diff,
        "wall_ratios": {"first_run": round(est["first"]["wall_s"] / off_wall, 4),
                        "reseed": round(est["reseed"]["wall_s"] / off_wall, 4),
                        "restrength": round(est["restrength"]["wall_s"] / off_wall, 4),
                        "variations": round(var_wall / (4 * off_wall), 4)},
        "official_10_step_s": {"cpu": round(off_cpu, 2), "wall": round(off_wall, 2)},
        "graph_10_step_s": {k: {"cpu": round(v["cpu_s"], 2), "wall": round(v["wall_s"], 2)} for k, v in est.items()},
        "official_measured": {k: official[k] for k in ("total_s", "total_cpu_s", "per_step_cpu_s", "load_s",
                                                         "stages_cpu_s", "working_size", "threads")},
        "graph_measured": {k: {x: v for x, v in r.items() if x not in ("images",)} for k, r in runs.items()},
        "peak_rss_gib": {"graph": round(peak / GIB, 3), "official": round(official["peak_rss_bytes"] / GIB, 3)},
        "server_rss_gib": {"before_first_run": round(base["rss"] / GIB, 3),
                           "held_after_runs": round(held["rss"] / GIB, 3)},
        "server_start_s": round(start_s, 1),
    }


def as_delivered(args, workflow: Path) -> int:
    """The template as an artist runs it: a first run (loading included) and a new-seed run."""
    print(f"[graph] starting ComfyUI ({args.comfyui_dir}) with {workflow.name}, as delivered ...", flush=True)
    server = Server(args)
    try:
        api, one = configure(server.to_api(workflow), args)
        inputs = api[one["sampler"]]["inputs"]
        steps, seed = int(inputs["steps"]), int(inputs["seed"])
        runs = {}
        for name, s in (("first", seed), ("reseed", seed + 1)):
            print(f"[graph] {name}: seed {s} ...", flush=True)
            runs[name] = r = server.run(with_settings(api, one, s, api[one["apply"]]["inputs"]["strength"]),
                                        one["sampler"], steps)
            print(f"  {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} CPU s); controller {r['controller_wall_s']:.1f} s, "
                  f"U-Net {r['unet_wall_s']:.1f} s; peak RSS {(r['peak_rss_bytes'] or 0) / GIB:.2f} GiB", flush=True)
    finally:
        server.stop()
    load = os.getloadavg()
    result = {"benchmark": "graph", "as_delivered": True, "workflow": workflow.name, "steps": steps,
              "max_side": api[one["encode"]]["inputs"].get("max_side"),
              "dtype": api[one["loader"]]["inputs"].get("dtype"), "weights": args.weights,
              "first_run_wall_s": round(runs["first"]["wall_s"], 1), "reseed_wall_s": round(runs["reseed"]["wall_s"], 1),
              "first_run_cpu_s": round(runs["first"]["cpu_s"], 1), "reseed_cpu_s": round(runs["reseed"]["cpu_s"], 1),
              "load_average_after": [round(x, 2) for x in load], "cpus": os.cpu_count(),
              "server_start_s": round(server.start_s, 1),
              "runs": {k: {x: v for x, v in r.items() if x != "images"} for k, r in runs.items()}}
    print(f"[graph] as delivered: first run {result['first_run_wall_s']} s, new seed {result['reseed_wall_s']} s "
          f"(load average {load[0]:.2f} on {os.cpu_count()} CPUs)", flush=True)
    print(json.dumps(result))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="the working resolution (Encode's max_side)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps measured (1-10; the official 10 is estimated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restrength", type=float, default=0.8, help="the strength of the third run (0-2)")
    p.add_argument("--weights", default=None, help="hub-layout release folder (default: full-size random weights)")
    p.add_argument("--weights-cache", default=str(bench.DEFAULT_WEIGHTS_CACHE))
    p.add_argument("--workflow", default=None, help="the basic template (default: found in example_workflows/)")
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(ROOT / ".cache" / "ComfyUI"))
    p.add_argument("--harness", default=os.environ.get("R2R_COMFY_HARNESS")
                   or str(ROOT.parent / "shared" / "tools" / "comfy-harness"))
    p.add_argument("--venv", default=os.environ.get("R2R_COMFY_VENV") or sys.prefix)
    p.add_argument("--port", type=int, default=8251)
    p.add_argument("--as-delivered", action="store_true",
                   help="time the template exactly as delivered (its max_side, steps, dtype; only the weights are "
                        "set): a first run and a new-seed run, wall and CPU seconds; no official flow")
    p.add_argument("--official-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.official_worker:
        return official_worker(args)
    if not 1 <= args.steps <= 10:
        p.error(f"--steps must be 1..10 (the 10-step figure is estimated from fewer); got {args.steps}")
    if not 0 <= args.restrength <= 2 or args.restrength == 1.0:
        p.error(f"--restrength must be in 0..2 and differ from 1 (the first run's); got {args.restrength}")
    if args.size < 64 or args.size % 8:
        p.error(f"--size must be a multiple of 8, at least 64; got {args.size}")
    if not (Path(args.comfyui_dir) / "main.py").is_file():
        p.error(f"no ComfyUI source tree at {args.comfyui_dir} (no main.py); set --comfyui-dir or COMFYUI_DIR")
    if not (Path(args.harness) / "start.sh").is_file():
        p.error(f"the comfy-harness is not at {args.harness}; set --harness or R2R_COMFY_HARNESS")
    try:
        import aiohttp  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        p.error(f"{exc.name} is needed (it comes with ComfyUI's requirements); run with ComfyUI's Python")
    workflow = Path(args.workflow) if args.workflow else find_basic_template(ROOT / "example_workflows")
    if args.weights is None:
        args.weights = str(bench.make_random_weights(Path(args.weights_cache)))
    else:
        bench.ensure_prompt_cache(Path(args.weights))
    if args.as_delivered:
        return as_delivered(args, workflow)
    with tempfile.TemporaryDirectory() as td:
        official_npy = os.path.join(td, "official.npy")
        official = run_official_subprocess(args, official_npy)
        print(f"  official: {official['total_cpu_s']:.1f} CPU s ({official['total_s']:.1f} s wall), per step "
              f"{official['per_step_cpu_s']:.1f} CPU s, peak {official['peak_rss_bytes'] / GIB:.2f} GiB", flush=True)
        print(f"[graph] starting ComfyUI ({args.comfyui_dir}) with {workflow.name} ...", flush=True)
        server = Server(args)
        try:
            base = server.memory()
            api, one = configure(server.to_api(workflow), args)
            runs = {}
            plan = (("first", args.seed, 1.0), ("reseed", args.seed + 1, 1.0),
                    ("restrength", args.seed + 1, args.restrength))
            for name, seed, strength in plan:
                print(f"[graph] {name}: seed {seed}, strength {strength} ...", flush=True)
                runs[name] = r = server.run(with_settings(api, one, seed, strength), one["sampler"], args.steps)
                r.update(steps=args.steps, seed=seed, strength=strength)
                print(f"  {r['cpu_s']:.1f} CPU s ({r['wall_s']:.1f} s wall); controller {r['controller_cpu_s']:.1f}, "
                      f"U-Net {r['unet_cpu_s']:.1f} CPU s; peak RSS {(r['peak_rss_bytes'] or 0) / GIB:.2f} GiB; "
                      f"cached nodes {r['cached_nodes']}", flush=True)
            held = server.memory()
            diff = same_seed_difference(runs["first"]["images"][0], official_npy)
        finally:
            server.stop()
    result = summarise(args, official, runs, base, held, diff, server.start_s)
    print(f"[graph] 10-step ratios (CPU time) vs the official flow: first run {result['first_run_time_ratio']:.3f}x "
          f"(target <= 0.85), new seed {result['reseed_time_ratio']:.3f}x (<= 0.6), new strength "
          f"{result['restrength_time_ratio']:.3f}x, 4-seed variations {result['variations_time_ratio']:.3f}x (<= 0.5); "
          f"peak memory {result['peak_memory_ratio']:.3f}x ({result['peak_rss_gib']['graph']:.2f} vs "
          f"{result['peak_rss_gib']['official']:.2f} GiB); same seed max |diff| {result['same_seed_max_abs_diff']:.4f}",
          flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
