"""R2R pipeline benchmark: our flow (R2RPipeline's stages) vs a faithful re-statement of the official flow.

    python benchmarks/pipeline.py --sizes 512 --steps 2                 # CPU, fp32, random weights
    python benchmarks/pipeline.py --sizes 512 1024 --steps 10 --device cuda --dtype float16
    python benchmarks/pipeline.py --weights path/to/hub-layout-folder   # real weights (diffusers folders)

Without ``--weights``, full-size models with random weights are built from the official configs
(r2r/configs/official) once and saved (safetensors) under ``--weights-cache`` so both flows load
them from disk exactly like a release. Each flow runs in its own subprocess (peak memory of one
flow never pollutes the other; flows never run concurrently). Printed: per-stage times (load,
text, encode, controller, unet, decode), the total, the per-step cost, peak memory (RSS on CPU,
max allocated on CUDA), ratios ours/official, and one final JSON line with every figure.

official  all models resident (text encoder included), the empty prompt encoded by CLIP on every
          call, the composite encoded twice (once for the latent, again inside the decode for the
          skips), controller + U-Net at every step, untiled decode -- ref (a.3), same dtype/device,
          diffusers' default attention (SDPA) in both flows. Loading is reported, not counted.
ours      ``R2RPipeline``'s stages (prepare -> plan -> encode -> residuals -> sample -> decode -> restore) over a phase-loaded
          model source (:class:`r2r.pipeline.model_sources.PhaseLoadedModels`, what ``harmonize_low_memory``
          uses): each network is read from disk straight to its device/dtype when its stage starts
          and dropped when it ends (never two resident together), the cached empty-prompt embedding
          (no text encoder), one composite encode whose skips wait where ``--skips`` says, the
          controller residuals for every timestep before denoising (``--residuals``), the banded
          Clear-VAE above the memory budget. Weight loading happens inside the call and IS counted
          (stage ``load``; a load triggered by a stage is not counted in that stage too).

The run also checks that both flows produce the same image for the same seed (max abs diff).
Heavy: minutes per flow on a small CPU; do not run it next to other big jobs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):  # tests/official_flow.py: the oracle of the tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import measure  # noqa: E402

from r2r.params import PLACEMENTS  # noqa: E402
from r2r.pipeline.model_sources import PhaseLoadedModels  # noqa: E402

OFFICIAL_CONFIGS = ROOT / "r2r" / "configs" / "official"
STAGES = ("load", "text", "encode", "controller", "unet", "decode")
FLOWS = ("official", "ours", "resident")
DEFAULT_WEIGHTS_CACHE = Path.home() / ".cache" / "r2r-bench" / "random-fp32"


# ----------------------------------------------------------------------------- weights
def make_random_weights(folder: Path, seed: int = 0) -> Path:
    """Full-size random-weight release in the official hub layout (fp32 safetensors), with the cached
    empty-prompt embedding r2r's loader reads (``r2r_empty_prompt.safetensors``)."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from r2r.models import ClearVAE, HarmonyController

    sd = folder / "stable-diffusion-inpainting"
    done = folder / ".complete"
    if done.exists():
        ensure_prompt_cache(folder)
        return folder
    print(f"[bench] building full-size random weights in {folder} (once) ...", flush=True)
    torch.manual_seed(seed)  # random weights, not sampling noise
    src = OFFICIAL_CONFIGS / "stable-diffusion-inpainting"
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(src / sub, sd / sub, dirs_exist_ok=True)

    def save(model, path):
        model.save_pretrained(path, safe_serialization=True)
        del model
        gc.collect()

    save(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet")), sd / "unet")
    save(HarmonyController.from_config(HarmonyController.load_config(src / "controlnet")), sd / "controlnet")
    vae = ClearVAE.from_config(ClearVAE.load_config(OFFICIAL_CONFIGS / "clear_vae")).to(torch.float32)
    save(vae, folder / "clear_vae")
    save(CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder")), sd / "text_encoder")
    ensure_prompt_cache(folder)
    done.write_text("ok\n")
    return folder


def make_skips_matter(vae, seed: int = 0, std: float = 0.02):
    """Give the Clear-VAE decoder's skip convolutions random non-zero weights (random and freshly
    initialised weights leave them at zero, so the skip path would cost nothing); returns ``vae``."""
    import torch

    g = torch.Generator().manual_seed(seed)  # random weights, not sampling noise
    with torch.no_grad():
        for module in vae.modules():
            if hasattr(module, "skip_connect"):
                torch.nn.init.normal_(module.skip_connect.conv.weight, std=std, generator=g)
    return vae


def ensure_prompt_cache(weights: Path) -> None:
    """Compute and cache the release's empty-prompt CLIP embedding once, where r2r's loader looks for it
    (``<release>/r2r_empty_prompt.safetensors``, or the user cache for a read-only folder), so no flow
    that loads the release pays for the text encoder."""
    from r2r.weights import prompt
    from r2r.weights.layout import release_paths

    paths = release_paths(weights)
    prompt.empty_prompt_embeds(weights, paths["text_encoder"], paths["tokenizer"])


# ----------------------------------------------------------------------------- measuring
class Clock:
    """Wall and process-CPU seconds per stage. Stages nest: an inner stage's time is counted in the
    inner stage only (a weight load a stage triggers goes to ``load``, not to that stage)."""

    def __init__(self, device):
        self.device = device
        self.t = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)  # process CPU seconds (all threads): robust on a shared machine
        self._open: list = []  # [wall, cpu] spent in nested stages, per open stage
        self.end_to_end_s = None  # resident flow: one whole pipe(composite, mask) call, timed apart
        self.untimed_cpu = 0.0  # CPU seconds inside the flow function not part of the call (loading, end-to-end)

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stage(self, name):
        clock = self

        class _S:
            def __enter__(self):
                clock.sync()
                self.t0 = time.perf_counter()
                self.c0 = time.process_time()
                clock._open.append([0.0, 0.0])

            def __exit__(self, *a):
                clock.sync()
                dt, dc = time.perf_counter() - self.t0, time.process_time() - self.c0
                inner_t, inner_c = clock._open.pop()
                clock.t[name] += dt - inner_t
                clock.cpu[name] += dc - inner_c
                if clock._open:
                    clock._open[-1][0] += dt
                    clock._open[-1][1] += dc

        return _S()


class TimedPhaseModels(PhaseLoadedModels):
    """:class:`r2r.pipeline.model_sources.PhaseLoadedModels` whose loads are timed in the clock's ``load`` stage."""

    def __init__(self, clock: Clock, source, **kwargs):
        self.clock = clock
        with clock.stage("load"):
            super().__init__(source, **kwargs)

    def get(self, name: str, memory_required: int = 0):
        with self.clock.stage("load"):
            return super().get(name, memory_required)


def _raw_inputs(size: int):
    """A real photo (scikit-image's astronaut) resized to size x size and an elliptic mask (uint8 arrays)."""
    import cv2
    import numpy as np
    from skimage import data

    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:size, 0:size] / size
    mask = (((xx - 0.55) / 0.25) ** 2 + ((yy - 0.5) / 0.35) ** 2 < 1).astype(np.uint8) * 255
    # make it a composite: shift the foreground's colours
    comp = img.copy()
    fg = mask > 0
    comp[fg] = np.clip(comp[fg].astype(np.float32) * [1.25, 0.9, 0.7], 0, 255).astype(np.uint8)
    return comp, mask


def _inputs(size: int, device):
    """:func:`_raw_inputs`, prepared (working resolution = size)."""
    from r2r import imaging

    comp, mask = _raw_inputs(size)
    return imaging.prepare(comp, mask, max_side=size).to(device=device)


# ----------------------------------------------------------------------------- official flow
def run_official(args, prepared, device, dtype, clock):
    """The official StableDiffusionHarmonyPipeline call (tests/official_flow.py, the same oracle the tests
    check the stages against), every network resident; loading reported, not counted."""
    import torch
    from official_flow import load_official
    from official_flow import run_official as official_call

    with clock.stage("load"):
        nets = load_official(args.weights, device=device, dtype=dtype)
    load_time = clock.t["load"]
    clock.untimed_cpu += clock.cpu["load"]  # official: loading happens once per process, not per call
    clock.t["load"] = clock.cpu["load"] = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        out, _ = official_call(nets, prepared.composite_pm1, prepared.hint, prepared.mask, args.seed, args.steps,
                               generator_device=device, clock=clock)
    return out, time.perf_counter() - t0, load_time


# ----------------------------------------------------------------------------- our flow
def _run_stages(pipe, prepared, args, device, clock):
    """The pipeline's stages (plan -> encode -> residuals -> sample -> decode), each timed by ``clock``.
    The seed draws on the compute device, as the official code's does (``noise_device="device"``)."""
    import torch

    with torch.inference_mode():
        plan = pipe.plan(args.steps)
        with clock.stage("encode"):
            encoded = pipe.encode(prepared, skips=args.skips)
        with clock.stage("controller"):
            residuals = pipe.residuals(prepared, plan, 1.0, placement=args.residuals,
                                       timestep_batch=args.timestep_batch or None)
        with clock.stage("unet"):
            latents = pipe.sample(prepared, encoded, residuals, plan, args.seed, noise_device="device",
                                  free_residuals=True)
        del residuals
        with clock.stage("decode"):
            return pipe.decode(latents, encoded, prepared)


def run_ours(args, prepared, device, dtype, clock, pipe_out: list | None = None):
    """R2RPipeline's stages over phase-loaded networks -> (image [B,3,h,w] in [0,1], seconds, None).

    ``pipe_out``: when given, the pipeline is appended to it (for callers that run ``restore``)."""

    from r2r.pipeline import R2RPipeline

    t0 = time.perf_counter()
    models = TimedPhaseModels(clock, args.weights, torch_dtype=dtype, device=device)
    pipe = R2RPipeline(models=models, scheduler="euler_ancestral")
    out = _run_stages(pipe, prepared, args, device, clock)
    if pipe_out is not None:
        pipe_out.append(pipe)
    return out, time.perf_counter() - t0, None


def run_resident(args, prepared, device, dtype, clock):
    """R2RPipeline with every network resident (``from_pretrained``; loading reported, not counted, as for
    the official flow): the same stages, timed. Also times one whole ``pipe(composite, mask)`` call
    (prepare -> restore) as ``end_to_end_s``. ``--compile``: the U-Net through ``torch.compile``
    (``--compile-mode``); ``--channels-last``: every network channels-last (r2r.pipeline.speed)."""
    from r2r.pipeline import R2RPipeline
    from r2r.pipeline.speed import speed_options

    with clock.stage("load"):
        pipe = R2RPipeline.from_pretrained(args.weights, torch_dtype=dtype, device=device)
        if args.compile or args.channels_last:
            speed_options(pipe.models, channels_last=args.channels_last, compile=args.compile,
                          compile_mode=args.compile_mode)
    load_time = clock.t["load"]
    clock.untimed_cpu += clock.cpu["load"]  # resident: loaded once, not per call
    clock.t["load"] = clock.cpu["load"] = 0.0
    t0 = time.perf_counter()
    out = _run_stages(pipe, prepared, args, device, clock)
    total = time.perf_counter() - t0
    comp, mask = _raw_inputs(args.size)
    clock.sync()
    t1, c1 = time.perf_counter(), time.process_time()
    pipe(comp, mask, num_inference_steps=args.steps, generator=args.seed, noise_device="device", max_side=args.size,
         skips=args.skips, residuals=args.residuals, timestep_batch=args.timestep_batch or None)
    clock.sync()
    clock.end_to_end_s = time.perf_counter() - t1
    clock.untimed_cpu += time.process_time() - c1
    return out, total, load_time


# ----------------------------------------------------------------------------- worker / driver
def worker(args) -> int:
    import torch

    from r2r.devices import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype)
    prepared = _inputs(args.size, device)
    gc.collect()
    base_rss = measure.current_bytes("cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn = {"official": run_official, "ours": run_ours, "resident": run_resident}[args.worker]
    if args.warmup:  # one untimed call first (CUDA context, kernels, autotuning, torch.compile)
        fn(args, prepared, device, dtype, Clock(device))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    clock = Clock(device)
    c0 = time.process_time()
    out, total, load_time = fn(args, prepared, device, dtype, clock)
    cpu_total = time.process_time() - c0 - clock.untimed_cpu
    peak = measure.peak_bytes(device)  # on a CPU: since the worker process started
    np_out = out[0].permute(1, 2, 0).cpu().numpy()
    if args.save_output:
        import numpy as np

        np.save(args.save_output, np_out)
    res = {
        "flow": args.worker, "size": args.size, "steps": args.steps, "dtype": args.dtype, "device": args.device,
        "stages_s": {k: round(v, 3) for k, v in clock.t.items()}, "total_s": round(total, 3),
        "stages_cpu_s": {k: round(v, 3) for k, v in clock.cpu.items()}, "total_cpu_s": round(cpu_total, 3),
        "per_step_cpu_s": round((clock.cpu["controller"] + clock.cpu["unet"]) / args.steps, 3),
        "per_step_s": round((clock.t["controller"] + clock.t["unet"]) / args.steps, 3),
        "fixed_s": round(total - clock.t["controller"] - clock.t["unet"], 3),
        "peak_bytes": peak, "baseline_rss_bytes": base_rss if device.type == "cpu" else 0,
        "load_outside_call_s": None if load_time is None else round(load_time, 3),
        "threads": torch.get_num_threads(), "warmup": bool(args.warmup),
        "end_to_end_s": None if clock.end_to_end_s is None else round(clock.end_to_end_s, 3),
    }
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def _gib(b):
    return b / 1024**3


def _ratios(o: dict, u: dict, steps: int) -> dict:
    """Flow ``u`` over the official flow ``o``: measured, per step, and the official 10-step call
    extrapolated from the fixed and per-step costs measured here (wall and CPU seconds)."""
    ratio = {
        "total": u["total_s"] / o["total_s"],
        "peak_memory": u["peak_bytes"] / o["peak_bytes"],
        "per_step": u["per_step_s"] / o["per_step_s"],
        "total_10_steps_est": (u["fixed_s"] + 10 * u["per_step_s"]) / (o["fixed_s"] + 10 * o["per_step_s"]),
        "total_cpu": u["total_cpu_s"] / o["total_cpu_s"],
        "per_step_cpu": u["per_step_cpu_s"] / o["per_step_cpu_s"],
        "total_10_steps_est_cpu": (u["total_cpu_s"] + (10 - steps) * u["per_step_cpu_s"])
        / (o["total_cpu_s"] + (10 - steps) * o["per_step_cpu_s"]),
    }
    return {k: round(v, 4) for k, v in ratio.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512])
    p.add_argument("--steps", type=int, default=2, help="denoising steps (official 10; CPU runs use fewer)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--flows", nargs="+", default=["official", "ours"], choices=list(FLOWS),
                   help="official; ours (stages, networks loaded per phase, loading counted); resident (stages, "
                        "networks resident, loading not counted)")
    p.add_argument("--weights", default=None, help="hub-layout folder with diffusers weights (default: random)")
    p.add_argument("--weights-cache", default=str(DEFAULT_WEIGHTS_CACHE))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skips", choices=PLACEMENTS, default="auto",
                   help="ours: where the encoder skips wait during denoising (r2r.pipeline.memory placement rule)")
    p.add_argument("--residuals", choices=PLACEMENTS, default="auto",
                   help="ours: where the controller residuals wait (recompute: the controller runs inside the loop)")
    p.add_argument("--timestep-batch", type=int, default=0,
                   help="ours: controller timesteps per forward (0 = the pipeline's rule: 1 on CPU, what fits on a GPU)")
    p.add_argument("--warmup", action="store_true", help="run each flow once untimed first (use on GPUs)")
    p.add_argument("--compile", action="store_true", help="resident: torch.compile the U-Net (with --warmup)")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="resident: torch.compile mode (reduce-overhead = CUDA graphs)")
    p.add_argument("--channels-last", action="store_true", help="resident: channels-last networks")
    p.add_argument("--worker", choices=list(FLOWS), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save-output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.worker:
        return worker(args)

    if args.timestep_batch < 0:
        p.error("--timestep-batch must be >= 0")
    if args.weights is None:
        args.weights = str(make_random_weights(Path(args.weights_cache)))
    else:
        ensure_prompt_cache(Path(args.weights))
    results = []
    with tempfile.TemporaryDirectory() as td:
        for size in args.sizes:
            row = {}
            for flow in args.flows:
                out_path = os.path.join(td, f"{flow}-{size}.npy")
                cmd = [sys.executable, __file__, "--worker", flow, "--size", str(size), "--steps", str(args.steps),
                       "--dtype", args.dtype, "--device", args.device, "--weights", args.weights,
                       "--seed", str(args.seed), "--threads", str(args.threads), "--skips", args.skips,
                       "--residuals", args.residuals, "--timestep-batch", str(args.timestep_batch),
                       "--save-output", out_path, "--compile-mode", args.compile_mode] + ["--warmup"] * args.warmup \
                    + ["--compile"] * args.compile + ["--channels-last"] * args.channels_last
                print(f"[bench] {flow} {size}x{size} {args.dtype} {args.device} steps={args.steps} ...", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                    rc = proc.returncode
                    print(f"[bench] {flow} {size} failed (exit {rc}; -9 = killed, e.g. out of memory)")
                    row[flow] = {"flow": flow, "size": size, "failed": True, "exit": rc}
                    continue
                r = json.loads(lines[-1][7:])
                row[flow] = r
                st = r["stages_s"]
                print(f"  {flow:8s} total {r['total_s']:8.2f}s  (" + "  ".join(f"{k} {st[k]:.2f}" for k in STAGES)
                      + f")  per step {r['per_step_s']:.2f}s  peak {_gib(r['peak_bytes']):.2f} GiB", flush=True)
                cs = r["stages_cpu_s"]
                print(f"  {'':8s} cpu   {r['total_cpu_s']:8.2f}s  (" + "  ".join(f"{k} {cs[k]:.2f}" for k in STAGES)
                      + f")  per step {r['per_step_cpu_s']:.2f}s", flush=True)
            for flow in args.flows:
                if flow == "official" or not all(f in row and not row[f].get("failed") for f in ("official", flow)):
                    continue
                import numpy as np

                diff = float(np.abs(np.load(os.path.join(td, f"official-{size}.npy"))
                                    - np.load(os.path.join(td, f"{flow}-{size}.npy"))).max())
                ratio = _ratios(row["official"], row[flow], args.steps)
                row[f"{flow}_vs_official"] = {**ratio, "max_abs_diff_images": diff}
                print(f"  {flow}/official at {size}: total {ratio['total']:.3f}x, peak memory "
                      f"{ratio['peak_memory']:.3f}x, per step {ratio['per_step']:.3f}x, "
                      f"10-step estimate {ratio['total_10_steps_est']:.3f}x; same seed -> max |diff| "
                      f"{diff:.2e} (steps={args.steps})", flush=True)
                print(f"  CPU-time ratios (robust to other load): total {ratio['total_cpu']:.3f}x, per step "
                      f"{ratio['per_step_cpu']:.3f}x, 10-step estimate {ratio['total_10_steps_est_cpu']:.3f}x", flush=True)
            results.append({"size": size, **row})
    print(json.dumps({"benchmark": "pipeline", "dtype": args.dtype, "device": args.device, "steps": args.steps,
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
