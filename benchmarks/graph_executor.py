"""The templates in ComfyUI's own executor, in-process (no server, no harness): first run, new seed, new strength.

    python benchmarks/graph_executor.py --tiny --size 512 --steps 2            # CPU, tiny release
    python benchmarks/graph_executor.py --tiny --as-delivered --runs first     # every template as delivered
    python benchmarks/graph_executor.py --device cuda --weights DIR --size 1024 --steps 10
    python benchmarks/graph_executor.py --device cuda --weights DIR --cap-gib 8 --runs first

A sibling of benchmarks/graph.py (which drives a real server through the comfy-harness): this one needs
only ComfyUI's source tree (``--comfyui-dir``, default ``$COMFYUI_DIR`` or ``.cache/ComfyUI``) and its
Python packages, so it also runs on a GPU machine with no network (benchmarks/gpu_check.py uses it).
Each template runs in its own process: ComfyUI's modules are imported the way ``main.py`` imports them
(``--cpu`` on a CPU, ``--lowvram`` with ``--lowvram``, ``--preview-method latent2rgb`` as the test
server), the pack is loaded with ``nodes.load_custom_node`` from a link named ``ComfyUI-R2R``, the
UI-format template is turned into the API prompt the frontend queues (tests/comfy_server.ui_to_api over
an object_info built in the process) and queued with one ``execution.PromptExecutor`` (the server's
classic cache), as an artist re-queues it:

first       a fresh process: loading, every node;
reseed      the sampler's seed + 1 (R2R Sampler / KSampler / R2R Harmonize);
restrength  the strength changed (MACA Controller Apply / R2R Conditioning / R2R Harmonize).

Per run: wall and process-CPU seconds, per-node seconds (the executor's ``executing`` messages), the
sampler's progress, peak memory (``torch.cuda.max_memory_allocated`` on CUDA, else the RSS high-water
mark ``VmHWM`` reset through ``/proc/self/clear_refs``), every ``load_models_gpu`` call with its memory
estimate, and the saved images. ``--cap-gib N`` limits the process to N GiB of the GPU
(``torch.cuda.set_per_process_memory_fraction``; the pack's free-memory figure follows it). Prints one
JSON line: ``{"benchmark": "graph_executor", "templates": {name: {"runs": {...}} | {"error": ...}}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):  # tests/tiny.py imports r2r; measure.py is a sibling
    if _path not in sys.path:
        sys.path.insert(0, _path)

import measure  # noqa: E402

WF_DIR = ROOT / "example_workflows"
PACK_LINK = "ComfyUI-R2R"
RELEASE_NAME = "region2region"
BASIC = "Harmonize a pasted object"
KSAMPLER = "Harmonize with KSampler"
#: node classes (V1 and V2 ids start so) whose input the runs change: (class prefixes, input)
SEED_NODES = (("R2RSampler", "KSampler", "R2RHarmonize"), "seed")
STRENGTH_NODES = (("R2RMACAControllerApply", "R2RConditioning", "R2RHarmonize"), "strength")
SIZE_NODES = (("R2RClearVAEEncode", "R2RHarmonize"), "max_side")
STEP_NODES = (("R2RSampler", "KSampler", "R2RHarmonize"), "steps")
RUNS = ("first", "reseed", "restrength")


# ----------------------------------------------------------------------------- the prompt
def object_info(nodes_module) -> dict:
    """What the server's /object_info says about every registered node (input, input_order)."""
    info = {}
    for name, cls in nodes_module.NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):
            info[name] = cls.GET_NODE_INFO_V1()
        else:
            types = cls.INPUT_TYPES()
            info[name] = {"input": types, "input_order": {k: list(v) for k, v in types.items()}}
    return json.loads(json.dumps(info, default=str))  # as the client receives it (tuples become lists)


def configure(prompt: dict, args, dtype: str | None) -> dict:
    """The template's prompt with the benchmark's settings (the release name always; the rest unless
    ``--as-delivered``). Returns {"seed": (node, input), "strength": (node, input)} for the re-runs."""
    handles = {}

    def has(t, inputs, spec):
        return t.startswith(spec[0]) and spec[1] in inputs

    for node_id, node in prompt.items():
        t, inputs = node["class_type"], node["inputs"]
        if t in ("R2RCheckpointLoader", "R2RUNetLoader", "R2RClearVAELoader", "R2RControllerLoader"):
            if "checkpoint" in inputs:
                inputs["checkpoint"] = RELEASE_NAME
            inputs["download_if_missing"] = False
            if dtype and "dtype" in inputs:
                inputs["dtype"] = dtype
        if has(t, inputs, SEED_NODES):
            handles.setdefault("seed", (node_id, SEED_NODES[1]))
        if has(t, inputs, STRENGTH_NODES):
            handles.setdefault("strength", (node_id, STRENGTH_NODES[1]))
        if args.as_delivered:
            continue
        if has(t, inputs, SIZE_NODES) and args.size:
            inputs[SIZE_NODES[1]] = args.size
        if has(t, inputs, STEP_NODES) and args.steps:
            inputs[STEP_NODES[1]] = args.steps
        if has(t, inputs, SEED_NODES):
            inputs[SEED_NODES[1]] = args.seed
    return handles


def variant(prompt: dict, handles: dict, run: str, args) -> dict | None:
    """The prompt of run ``run`` (None when the template has nothing to change for it)."""
    p = json.loads(json.dumps(prompt))
    if run in ("reseed", "restrength"):
        if "seed" not in handles:
            return None
        node, key = handles["seed"]
        p[node]["inputs"][key] = int(p[node]["inputs"].get(key, 0)) + 1
    if run == "restrength":
        if "strength" not in handles:
            return None
        node, key = handles["strength"]
        p[node]["inputs"][key] = args.restrength
    return p


# ----------------------------------------------------------------------------- the worker (one template)
def _per_node(events, t_end, c_end, prompt) -> dict:
    nodes = [(d["node"], w, c) for e, d, w, c in events if e == "executing" and d.get("node") is not None]
    out = {}
    for i, (node, w, c) in enumerate(nodes):
        w1, c1 = (nodes[i + 1][1], nodes[i + 1][2]) if i + 1 < len(nodes) else (t_end, c_end)
        out[f"{node}:{prompt[str(node)]['class_type']}"] = {"wall_s": round(w1 - w, 3), "cpu_s": round(c1 - c, 3)}
    return out


def worker(args) -> int:
    base = Path(args.work)
    comfy_dir = str(Path(args.comfyui_dir).resolve())
    sys.path.insert(0, comfy_dir)
    sys.path.insert(1, str(ROOT / "tests"))
    os.chdir(comfy_dir)
    import torch

    if args.device == "cuda" and args.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 1024**3 / total))
    import comfy.cli_args
    import comfy.options

    comfy.options.enable_args_parsing(False)
    cli = comfy.cli_args.args
    cli.cpu = args.device == "cpu"
    cli.lowvram = bool(args.lowvram)
    cli.preview_method = comfy.cli_args.LatentPreviewMethod.Latent2RGB
    if args.attention != "auto":  # ComfyUI's --use-{quad,split,pytorch}-cross-attention
        setattr(cli, f"use_{args.attention}_cross_attention", True)
    import comfy.model_management as mm
    import comfy.utils
    import execution
    import folder_paths
    from comfy_inprocess import RecordingServer
    from comfy_server import ui_to_api

    import nodes

    out_dir = base / "output"
    folder_paths.set_output_directory(str(out_dir))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.set_input_directory(str(base / "input"))
    os.makedirs(base / "input", exist_ok=True)
    models = base / "models_r2r"
    models.mkdir(exist_ok=True)
    if (models / RELEASE_NAME).is_symlink():  # a work folder used before: this run's weights
        (models / RELEASE_NAME).unlink()
    os.symlink(Path(args.weights).resolve(), models / RELEASE_NAME)
    folder_paths.folder_names_and_paths["r2r"] = ([str(models)], set())
    link = base / PACK_LINK
    if not link.exists():
        os.symlink(ROOT, link)
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise SystemExit("graph_executor: the pack did not load")
    device = mm.get_torch_device()
    loads = []
    real_load = mm.load_models_gpu

    def load_models_gpu(models_, memory_required=0, *a, **k):
        for m in models_:
            inner = getattr(m.model, "model", m.model)
            loads.append({"model": type(inner).__name__, "memory_required": int(memory_required)})
        return real_load(models_, memory_required, *a, **k)

    mm.load_models_gpu = load_models_gpu  # instrumentation of this benchmark process only
    progress = []
    server = RecordingServer()
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, prompt_id=None, node_id=None: progress.append(
            (str(node_id or server.last_node_id), int(value), int(total), preview is not None, time.perf_counter(), time.process_time())))
    wf = json.loads((WF_DIR / f"{args.template}.json").read_text(encoding="utf-8"))
    if any(n["type"] not in nodes.NODE_CLASS_MAPPINGS and n["type"] not in ("Note", "MarkdownNote")
           for n in wf["nodes"]):  # core nodes of comfy_extras (SolidMask, PrimitiveInt, ...): main.py loads them
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    prompt = ui_to_api(wf, object_info(nodes))
    handles = configure(prompt, args, args.dtype)
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)
    runs = {}
    for name in args.runs:
        p = variant(prompt, handles, name, args)
        if p is None:
            continue
        valid = asyncio.run(execution.validate_prompt(name, p, None))
        if not valid[0]:
            raise SystemExit(f"graph_executor: {args.template} does not validate: {json.dumps(valid[1])[:2000]}")
        del server.events[:], progress[:], loads[:]
        measure.reset_peak(device)
        profiler = _profiler(device) if name in (args.profile or ()) else None
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.__enter__()
        pyprof = _python_profiler() if name in (args.cprofile or ()) else None
        executor.execute(p, name, {"client_id": RecordingServer.client_id}, valid[2])
        if pyprof is not None:
            pyprof.disable()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1, c1 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.__exit__(None, None, None)
        error = next((m[1] for m in executor.status_messages if m[0] == "execution_error"), None)
        if not executor.success or error:
            err = error or {}
            raise SystemExit(f"graph_executor: {args.template} ({name}) failed in {err.get('node_type')}: "
                             f"{err.get('exception_message')}\n" + "".join(err.get("traceback") or [])[-3000:])
        images = [str(out_dir / im.get("subfolder", "") / im["filename"])
                  for o in executor.history_result.get("outputs", {}).values() for im in o.get("images", [])
                  if im.get("type") == "output"]
        cached = next((d.get("nodes", []) for e, d, _, _ in server.events if e == "execution_cached"), [])
        sampler = [x for x in progress if x[0] == str(handles.get("seed", ("?",))[0])]
        runs[name] = {"wall_s": round(t1 - t0, 3), "cpu_s": round(c1 - c0, 3), "peak_bytes": measure.peak_bytes(device),
                      "nodes": _per_node(server.events, t1, c1, p), "cached_nodes": cached, "images": images,
                      "sampler_progress_units": sampler[-1][2] if sampler else 0,
                      "previews": sum(1 for x in progress if x[3]), "loads": list(loads)}
        if profiler is not None:
            runs[name]["profile"] = _top_ops(profiler, device)
        if pyprof is not None:
            runs[name]["cprofile"] = _top_functions(pyprof)
        print(f"[graph_executor] {args.template} {name}: {t1 - t0:.2f} s wall, {c1 - c0:.1f} CPU s, peak "
              f"{runs[name]['peak_bytes'] / 1024**3:.2f} GiB", file=sys.stderr, flush=True)
    result = {"template": args.template, "device": str(device), "runs": runs,
              "attention": _attention_name(), "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _profiler(device):
    """torch.profiler over one run (``--profile RUN``): where the time goes, op by op."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=acts, record_shapes=False)


def _top_ops(prof, device, n: int = 25) -> list:
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
    return [{"op": e.key, "calls": e.count, "self_s": round(getattr(e, key, 0) / 1e6, 3),
             "share": round(getattr(e, key, 0) / total, 4)} for e in rows]


def _python_profiler():
    """cProfile over one run (``--cprofile RUN``): Python-level overhead, function by function."""
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _top_functions(prof, n: int = 30) -> list:
    import pstats

    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)[:n]  # cumulative time
    return [{"function": f"{Path(f).name}:{line}:{fn}", "calls": nc, "tottime_s": round(tt, 4),
             "cumtime_s": round(ct, 4)} for (f, line, fn), (cc, nc, tt, ct, _) in rows]


def _attention_name() -> str:
    import comfy.ldm.modules.attention as attn

    return getattr(attn.optimized_attention, "__name__", "?")


# ----------------------------------------------------------------------------- the driver
def run_template(args, template: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--template", template, "--work", str(work),
           "--weights", args.weights, "--comfyui-dir", args.comfyui_dir, "--device", args.device,
           "--size", str(args.size), "--steps", str(args.steps), "--seed", str(args.seed),
           "--restrength", str(args.restrength), "--cap-gib", str(args.cap_gib), "--runs", *args.runs]
    cmd += ["--as-delivered"] * args.as_delivered + ["--lowvram"] * args.lowvram + ["--attention", args.attention]
    cmd += ["--dtype", args.dtype] if args.dtype else []
    cmd += ["--profile", *args.profile] if args.profile else []
    cmd += ["--cprofile", *args.cprofile] if args.cprofile else []
    env = {k: v for k, v in os.environ.items() if k != "R2R_HOST"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout} s", "seconds": round(time.perf_counter() - t0, 1)}
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
        return {"error": f"exit {proc.returncode}: {tail}", "seconds": round(time.perf_counter() - t0, 1)}
    out = json.loads(lines[-1][7:])
    out["process_s"] = round(time.perf_counter() - t0, 1)
    return out


def summary(results: dict) -> dict:
    """Ratios between the KSampler template and the basic one (same settings), when both ran."""
    out = {}
    b, k = results.get(BASIC, {}).get("runs", {}), results.get(KSAMPLER, {}).get("runs", {})
    for run in RUNS:
        if run in b and run in k:
            out[f"ksampler_vs_basic_{run}_cpu"] = round(k[run]["cpu_s"] / max(b[run]["cpu_s"], 1e-9), 3)
            out[f"ksampler_vs_basic_{run}_wall"] = round(k[run]["wall_s"] / max(b[run]["wall_s"], 1e-9), 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--templates", nargs="+", default=[BASIC, KSAMPLER], help="file stems in example_workflows/ "
                   "('all' = every template)")
    p.add_argument("--weights", default=None, help="release folder (hub layout)")
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny random release (tests/tiny.py)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default=None, help="the loaders' dtype (default: as in the template, 'auto')")
    p.add_argument("--size", type=int, default=512, help="working size (Encode / Harmonize max_side; 0 = as saved)")
    p.add_argument("--steps", type=int, default=2, help="sampler steps (0 = as saved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restrength", type=float, default=0.8)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--as-delivered", action="store_true", help="change nothing but the release name")
    p.add_argument("--cap-gib", type=float, default=0.0, help="CUDA: limit the process to this many GiB")
    p.add_argument("--lowvram", action="store_true", help="ComfyUI's --lowvram")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per template")
    p.add_argument("--attention", default="auto", choices=("auto", "quad", "split", "pytorch"),
                   help="ComfyUI's attention option (auto: its own choice for the device)")
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(ROOT / ".cache" / "ComfyUI"))
    p.add_argument("--profile", nargs="*", default=[], choices=RUNS, help="torch.profiler over these runs")
    p.add_argument("--cprofile", nargs="*", default=[], choices=RUNS, help="cProfile over these runs")
    p.add_argument("--keep", default=None, help="keep the outputs in this folder")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--template", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if not (Path(args.comfyui_dir) / "execution.py").is_file():
        p.error(f"no ComfyUI source tree at {args.comfyui_dir}; pass --comfyui-dir or set COMFYUI_DIR")
    if args.templates == ["all"]:
        args.templates = sorted(f.stem for f in WF_DIR.glob("*.json"))
    missing = [t for t in args.templates if not (WF_DIR / f"{t}.json").is_file()]
    if missing:
        p.error(f"no such template(s) in example_workflows/: {missing}")
    with tempfile.TemporaryDirectory(prefix="r2r-graph-exec-") as td:
        if args.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny import make_tiny_release

            args.weights = str(make_tiny_release(Path(td) / "tiny"))
        elif args.weights is None:
            p.error("pass --weights DIR (a release folder) or --tiny")
        results = {}
        for i, template in enumerate(args.templates):
            work = Path(args.keep or td) / f"t{i}"
            work.mkdir(parents=True, exist_ok=True)
            print(f"[graph_executor] {template} ({args.device}) ...", file=sys.stderr, flush=True)
            results[template] = run_template(args, template, work)
    print(json.dumps({"benchmark": "graph_executor", "device": args.device, "size": args.size, "steps": args.steps,
                      "as_delivered": args.as_delivered, "templates": results, **summary(results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
