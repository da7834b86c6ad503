"""One-command GPU check (issues 12, 17, 21, 23): everything the GPU figures need, in one run, one JSON line.

    bash benchmarks/gpu_check.sh --wheels .whl          # on the GPU machine (benchmarks/README.md); < 8 minutes
    bash benchmarks/gpu_check.sh --dry-run              # the same parts on a CPU: tiny release, tiny sizes, 1 step

Full-size random weights in the official layout (benchmarks/pipeline.py builds them once; timings do not
depend on weight values), 1024², 10 steps, fp16 on CUDA. The parts, each in its own process(es), in this
order, each given what is left of the time budget (``--budget-s``; a part that would not fit is skipped and
says so):

pipeline    benchmarks/pipeline.py: official / ours (one network at a time) / resident, each run once untimed
            first -> resident_vs_official, peak memory, stage times and TFLOP/s (r2r.pipeline.speed's FLOP
            counts over the measured stage times, against the card's measured matrix-product rate);
seed0       issue 21: the official call and the resident stages at 512², 10 steps, float32, seed 0, the
            stages drawing on the device (noise_device="device") -> official_seed0_max_abs_diff;
graph       benchmarks/graph_executor.py: the basic and the KSampler templates in ComfyUI 0.3.64's executor on
            the GPU: first run, new seed, new strength, peak memory -> graph_reseed_vs_official,
            graph_peak_vram_vs_official, ksampler_reseed_vs_basic (issue 23);
capped      the basic template's first run with the process limited to 8 GiB of the card
            (torch.cuda.set_per_process_memory_fraction) -> capped_8gib_ok (no error, the same image);
variations  ``pipe.variations`` with 4 seeds vs 4 calls, weights resident -> variations4_vs_4calls;
train       benchmarks/train_throughput.py: images/s per training stage -> train_img_per_s;
lowvram     the basic template at 6 GiB in ComfyUI's low-VRAM mode -> capped_6gib_lowvram_ok;
options     the resident flow with channels-last networks -> channels_last_vs_resident (off by default in the
            pipeline until this figure says it pays).

``--dry-run`` runs every part on the CPU with the tiny release (64², 1 step): what tests/test_gpu_check.py
does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (ROOT, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PARTS = ("pipeline", "seed0", "graph", "capped", "variations", "train", "lowvram", "options")
#: seconds a part needs at least (on the GPU) to be started
MIN_SECONDS = {"pipeline": 60, "seed0": 30, "graph": 45, "capped": 25, "variations": 25, "train": 40,
               "lowvram": 25, "options": 25}
BASIC, KSAMPLER = "Harmonize a pasted object", "Harmonize with KSampler"


# ----------------------------------------------------------------------------- helpers
def run_json(cmd, timeout: float, marker: str, label: str) -> dict:
    """Run ``cmd``, echo its output, return its last JSON line that starts with ``marker``."""
    print(f"[gpu_check] {label}: {' '.join(str(c) for c in cmd[1:])}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "R2R_HOST"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=max(1.0, timeout), env=env)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-1500:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-1500:]
        return {"error": f"stopped after {timeout:.0f} s (time budget)", "tail": str(tail)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    for ln in proc.stdout.splitlines()[-12:]:
        if not ln.startswith("{"):
            print(f"    {ln}", flush=True)
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout[-1500:] + proc.stderr[-2500:]).strip()}
    out = json.loads(lines[-1] if marker.startswith("{") else lines[-1][len(marker):])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def matmul_tflops(device: str, dtype: str) -> float:
    """The card's matrix-product rate measured here (the ceiling the stages are compared with)."""
    import torch

    n, reps = (8192, 10) if device.startswith("cuda") else (1024, 3)
    dt = getattr(torch, dtype)
    a = torch.rand(n, n, device=device, dtype=dt)  # values in [0, 1): sums of 8192 products fit in fp16
    b = torch.rand(n, n, device=device, dtype=dt)
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def image_diff(a: str, b: str) -> float:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB")).astype(np.int16)
    y = np.asarray(Image.open(b).convert("RGB")).astype(np.int16)
    return float(np.abs(x - y).max()) / 255.0 if x.shape == y.shape else float("inf")


# ----------------------------------------------------------------------------- the variations worker
def variations_worker(args) -> int:
    """4 seeds through ``pipe.variations`` vs 4 calls, weights resident, one untimed call first."""
    import torch
    from pipeline import _raw_inputs

    from r2r.pipeline import R2RPipeline

    device = torch.device(args.device)
    pipe = R2RPipeline.from_pretrained(args.weights, torch_dtype=args.dtype, device=device)
    comp, mask = _raw_inputs(args.size)
    seeds = [args.seed + i for i in range(4)]
    kw = {"num_inference_steps": args.steps, "max_side": args.size}

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    pipe(comp, mask, generator=seeds[0], **kw)  # warm-up (kernels, allocator)
    calls, t_calls = timed(lambda: [pipe(comp, mask, generator=s, **kw).images for s in seeds])
    var, t_var = timed(lambda: [o.images for o in pipe.variations(comp, mask, seeds, **kw)])
    diff = max(float((a - b).abs().max()) for a, b in zip(calls, var))
    print("RESULT " + json.dumps({"calls4_s": round(t_calls, 3), "variations4_s": round(t_var, 3),
                                  "variations4_vs_4calls": round(t_var / t_calls, 4), "max_abs_diff": diff}),
          flush=True)
    return 0


# ----------------------------------------------------------------------------- the parts
def part_pipeline(args, timeout, flows=("official", "ours", "resident"), extra=()):
    """benchmarks/pipeline.py's flows, each run once untimed first on a GPU (kernels, autotuning)."""
    cmd = [sys.executable, HERE / "pipeline.py", "--flows", *flows, "--sizes", args.size, "--steps", args.steps,
           "--device", args.device, "--dtype", args.dtype, "--weights", args.weights, *extra]
    cmd += ["--warmup"] if args.device.startswith("cuda") else []
    return run_json(cmd, timeout, '{"benchmark": "pipeline"', "pipeline flows")


def stage_rates(row: dict, size: int, steps: int, peak_tflops: float) -> dict:
    """TFLOP/s per stage of the resident and official flows (FLOPs counted on the meta device) and the share of
    the measured matrix-product rate."""
    from r2r.pipeline.speed import pipeline_flops

    flops = pipeline_flops((size, size), steps)
    out = {"flops": {k: flops[k] for k in ("encode", "controller", "unet", "decode", "total")}}
    for flow in ("resident", "official"):
        st = row.get(flow, {}).get("stages_s")
        if not st:
            continue
        enc = flops["encode"] * (2 if flow == "official" else 1)  # the official decode encodes again
        rates = {}
        for stage, f in (("encode", flops["encode"]), ("controller", flops["controller"]), ("unet", flops["unet"]),
                         ("decode", flops["decode"] + enc - flops["encode"])):
            if st.get(stage):
                rates[stage] = round(f / st[stage] / 1e12, 2)
        out[f"{flow}_tflops"] = rates
        out[f"{flow}_share_of_peak"] = {k: round(v / peak_tflops, 4) for k, v in rates.items()}
    return out


def part_graph(args, timeout, keep: Path, templates, runs, cap=0.0, lowvram=False):
    cmd = [sys.executable, HERE / "graph_executor.py", "--device", args.device, "--weights", args.weights,
           "--size", args.size, "--steps", args.steps, "--templates", *templates, "--runs", *runs,
           "--keep", keep, "--timeout", max(1, int((timeout - 5) / len(templates))), "--comfyui-dir", args.comfyui_dir]
    cmd += ["--cap-gib", cap] if cap else []
    cmd += ["--lowvram"] if lowvram else []
    return run_json(cmd, timeout, '{"benchmark": "graph_executor"', f"graph ({', '.join(templates)})"
                    + (f", capped at {cap} GiB" if cap else "") + (", lowvram" if lowvram else ""))


def part_train(args, timeout):
    cmd = [sys.executable, HERE / "train_throughput.py", "--device", args.device, "--weights", args.weights,
           "--size", args.train_size, "--batch", args.train_batch, "--steps", args.train_steps,
           "--warmup", args.train_warmup]
    return run_json(cmd, timeout, '{"benchmark": "train_throughput"', "training throughput")


def capped_result(graph: dict, capped: dict, cap: float) -> dict:
    run = capped.get("templates", {}).get(BASIC, {})
    ref = graph.get("templates", {}).get(BASIC, {}).get("runs", {}).get("first", {})
    first = run.get("runs", {}).get("first")
    if not first:
        return {"ok": False, "error": run.get("error") or capped.get("error")}
    diff = image_diff(first["images"][0], ref["images"][0]) if ref.get("images") else None
    ok = (diff is None or diff <= 1 / 255) and (not str(graph.get("device", "")).startswith("cuda")
                                                 or first["peak_bytes"] <= cap * 2**30)
    return {"ok": bool(ok), "max_abs_diff_vs_uncapped": diff, "peak_bytes": first["peak_bytes"],
            "wall_s": first["wall_s"]}


def summarise(args, parts: dict, name: str, peak: float, started: float) -> dict:
    pipe = (parts.get("pipeline") or {}).get("results", [{}])[0] if "results" in parts.get("pipeline", {}) else {}
    official = pipe.get("official", {})
    seed0 = (parts.get("seed0") or {}).get("results", [{}])[0] if "results" in parts.get("seed0", {}) else {}
    graph = parts.get("graph", {})
    basic = graph.get("templates", {}).get(BASIC, {}).get("runs", {})
    ks = graph.get("templates", {}).get(KSAMPLER, {}).get("runs", {})
    train = parts.get("train", {})
    options = (parts.get("options") or {}).get("results", [{}])[0] if "results" in parts.get("options", {}) else {}

    def ratio(a, b):
        return round(a / b, 4) if a is not None and b else None

    out = {
        "benchmark": "gpu_check", "device": name, "size": args.size, "steps": args.steps, "dtype": args.dtype,
        "resident_vs_official": pipe.get("resident_vs_official", {}).get("total"),
        "ours_vs_official": pipe.get("ours_vs_official", {}).get("total"),
        "resident_peak_vs_official": pipe.get("resident_vs_official", {}).get("peak_memory"),
        "graph_reseed_vs_official": ratio(basic.get("reseed", {}).get("wall_s"), official.get("total_s")),
        "graph_first_vs_official": ratio(basic.get("first", {}).get("wall_s"), official.get("total_s")),
        "graph_restrength_vs_official": ratio(basic.get("restrength", {}).get("wall_s"), official.get("total_s")),
        "graph_peak_vram_vs_official": ratio(max((r.get("peak_bytes", 0) for r in basic.values()), default=None),
                                             official.get("peak_bytes")),
        "ksampler_reseed_vs_basic": ratio(ks.get("reseed", {}).get("wall_s"), basic.get("reseed", {}).get("wall_s")),
        "ksampler_first_vs_basic": ratio(ks.get("first", {}).get("wall_s"), basic.get("first", {}).get("wall_s")),
        "capped_8gib_ok": parts.get("capped_result", {}).get("ok"),
        "capped_6gib_lowvram_ok": parts.get("lowvram_result", {}).get("ok"),
        "variations4_vs_4calls": parts.get("variations", {}).get("variations4_vs_4calls"),
        "train_img_per_s": train.get("train_img_per_s"),
        "official_seed0_max_abs_diff": seed0.get("resident_vs_official", {}).get("max_abs_diff_images"),
        "channels_last_vs_resident": ratio(options.get("resident", {}).get("total_s"),
                                           pipe.get("resident", {}).get("total_s")),
        "matmul_tflops_measured": round(peak, 1),
        "stage_rates": stage_rates(pipe, args.size, args.steps, peak) if pipe else None,
        "seconds": round(time.perf_counter() - started, 1),
        "part_seconds": {k: v.get("seconds") for k, v in parts.items() if isinstance(v, dict) and "seconds" in v},
        "parts": {k: (v.get("error") or v.get("skipped") or "ok") if isinstance(v, dict) else v
                  for k, v in parts.items() if not k.endswith("_result")},
        "details": {"pipeline": pipe, "graph": {t: r.get("runs", r) for t, r in graph.get("templates", {}).items()},
                    "capped": parts.get("capped_result"), "lowvram": parts.get("lowvram_result"),
                    "variations": parts.get("variations"), "train": train, "seed0": seed0},
    }
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed0-size", type=int, default=512, help="issue 21's check: working size (float32)")
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--train-warmup", type=int, default=2)
    p.add_argument("--weights", default=None, help="a release folder (default: full-size random weights)")
    p.add_argument("--weights-cache", default=None, help="where the full-size random weights are built once")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 465)),
                   help="seconds for the whole check (parts that would not fit are skipped)")
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(ROOT / ".cache" / "ComfyUI"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny release, 64², 1 step, every part")
    p.add_argument("--out", default=None, help="also write the JSON line to this file")
    p.add_argument("--variations-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variations_worker:
        return variations_worker(args)
    started = time.perf_counter()
    deadline = started + args.budget_s
    if args.dry_run:
        args.device, args.dtype, args.size, args.steps, args.seed0_size = "cpu", "float32", 64, 1, 64
        args.train_size, args.train_batch, args.train_steps, args.train_warmup = 64, 1, 1, 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device is visible to torch; for a CPU run use --dry-run")
    name = device_name(args.device)
    peak = matmul_tflops(args.device, args.dtype)
    print(f"[gpu_check] {name}; {args.size}², {args.steps} steps, {args.dtype}; matrix products {peak:.1f} TFLOP/s",
          flush=True)
    parts: dict = {}
    with tempfile.TemporaryDirectory(prefix="r2r-gpu-check-") as td:
        if args.weights is None:
            if args.dry_run:
                sys.path.insert(0, str(ROOT / "tests"))
                from tiny import make_tiny_release

                args.weights = str(make_tiny_release(Path(td) / "tiny"))
            else:
                import pipeline as bench

                cache = Path(args.weights_cache) if args.weights_cache else bench.DEFAULT_WEIGHTS_CACHE
                t0 = time.perf_counter()
                args.weights = str(bench.make_random_weights(cache))
                print(f"[gpu_check] weights ready in {time.perf_counter() - t0:.0f} s", flush=True)
        for part in args.parts:
            left = deadline - time.perf_counter() - 5
            if left < (MIN_SECONDS[part] if not args.dry_run else 5):
                parts[part] = {"skipped": f"time budget ({left:.0f} s left)"}
                print(f"[gpu_check] {part}: skipped, {left:.0f} s left", flush=True)
                continue
            parts[part] = run_part(part, args, left, Path(td), parts)
    result = summarise(args, parts, name, peak, started)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    return 0 if all(v == "ok" for v in result["parts"].values()) else 1


def run_part(part: str, args, left: float, td: Path, parts: dict) -> dict:
    if part == "pipeline":
        return part_pipeline(args, left)
    if part == "options":
        return part_pipeline(args, left, ("resident",), ("--channels-last",))
    if part == "seed0":
        steps = 10 if not args.dry_run else 1
        done = parts.get("pipeline", {})
        if (args.seed0_size, steps, args.dtype, args.seed) == (args.size, args.steps, "float32", 0) and "results" in done:
            return done  # the pipeline part ran these very settings (its resident flow draws on the device)
        cmd = [sys.executable, HERE / "pipeline.py", "--flows", "official", "resident", "--sizes", args.seed0_size,
               "--steps", steps, "--device", args.device, "--dtype", "float32",
               "--weights", args.weights, "--seed", 0]
        return run_json(cmd, left, '{"benchmark": "pipeline"', "official seed 0, float32, noise on the device")
    if part == "graph":
        return part_graph(args, left, td / "graph", [BASIC, KSAMPLER], ["first", "reseed", "restrength"])
    if part in ("capped", "lowvram"):
        cap, lowvram = (8.0, False) if part == "capped" else (6.0, True)
        out = part_graph(args, left, td / part, [BASIC], ["first"], cap=cap, lowvram=lowvram)
        parts[f"{part}_result"] = capped_result(parts.get("graph", {}), out, cap)
        return out
    if part == "variations":
        cmd = [sys.executable, __file__, "--variations-worker", "--device", args.device, "--dtype", args.dtype,
               "--size", args.size, "--steps", args.steps, "--weights", args.weights, "--seed", args.seed]
        return run_json(cmd, left, "RESULT ", "variations: 4 seeds vs 4 calls")
    return part_train(args, left)


if __name__ == "__main__":
    raise SystemExit(main())
