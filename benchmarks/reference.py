"""What a reference photo and per-object crops cost (the reference/objects features, docs/reference.md).

    python benchmarks/reference.py                                   # tiny random release, CPU
    python benchmarks/reference.py --device cuda --dtype fp16 --full-size   # full-size random weights
    python benchmarks/reference.py --weights models/r2r/region2region --device cuda --dtype fp16

reference   the Harmony Controller's residuals for ``--steps`` timesteps (one timestep per forward) on the
            bundled astronaut composite, without a reference and with a reference photo (the bundled cat
            photo, another size): seconds per controller step (median of ``--repeat``) and their ratio
            ``reference_step_time_ratio``; and one whole ``pipe(...)`` call each (controller, U-Net and
            Clear-VAE), ``reference_call_time_ratio``.
identity    the composite as its own reference photo with its background as the region vs no reference:
            ``identity_max_abs_diff`` of the two pictures (the invariant: <= 1e-6).
per_object  a ``--big`` picture (default 4000x3000: the bundled rocket photo enlarged, three copies of the
            bundled cup cut-out pasted at ~300 px, each recoloured) harmonized with ``objects="each",
            crop="per_object"`` vs one whole-picture run at the same ``max_side``, each in its own process
            (what one flow leaves in the allocator never counts for the other): wall time and peak memory
            (CPU: the process's resident high-water mark, reset through /proc/self/clear_refs after loading
            and a warm-up call; CUDA: max allocated), ``per_object_time_ratio`` and
            ``per_object_peak_memory_ratio`` (of the peaks, networks included) and
            ``per_object_peak_above_networks_ratio`` (of what each run adds to the loaded process).

The networks stay loaded (``R2RPipeline.from_pretrained``); loading is not counted; a small warm-up call
runs first. Prints a summary and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import measure  # noqa: E402
from pipeline import DEFAULT_WEIGHTS_CACHE  # noqa: E402

EXAMPLES = ROOT / "r2r" / "assets" / "examples"


# ----------------------------------------------------------------------------- inputs
def _read(name: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(EXAMPLES / name).convert("RGB" if "mask" not in name else "L"))


def small_inputs():
    """(composite, mask, reference photo) as float tensors: the bundled astronaut and cat photo."""
    from r2r.imaging import to_image_tensor, to_mask_tensor

    return (to_image_tensor(_read("astronaut_composite.png")), to_mask_tensor(_read("astronaut_mask.png")),
            to_image_tensor(_read("cat_reference_image.png")))


def big_inputs(width: int, height: int):
    """A ``width`` x ``height`` picture with three pasted cups (~300 px at 4000x3000, scaled with the picture)
    and their mask (three separate parts): uint8 HxWx3 and HxW."""
    import cv2
    import numpy as np

    picture = cv2.resize(_read("rocket_background_image.png"), (width, height), interpolation=cv2.INTER_LINEAR)
    cup, cup_mask = _read("cup_cutout_image.png"), _read("cup_cutout_mask.png") >= 128
    side = max(64, round(300 * width / 4000))
    size = (side, round(cup.shape[0] * side / cup.shape[1]))
    cup = cv2.resize(cup, size, interpolation=cv2.INTER_AREA)
    cup_mask = cv2.resize(cup_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    mask = np.zeros((height, width), np.uint8)
    for (fx, fy), gain in zip(((0.2, 0.7), (0.5, 0.8), (0.8, 0.6)), ((1.3, 0.8, 0.6), (0.6, 0.9, 1.4), (0.8, 1.2, 0.7))):
        x, y = round(fx * width - size[0] / 2), round(fy * height - size[1] / 2)
        region = picture[y:y + size[1], x:x + size[0]]
        shifted = np.clip(cup.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        region[cup_mask] = shifted[cup_mask]
        mask[y:y + size[1], x:x + size[0]][cup_mask] = 255
    return picture, mask


# ----------------------------------------------------------------------------- measuring
def timed(fn, device):
    """(seconds, peak bytes, result) of ``fn()``."""
    measure.sync(device)
    measure.reset_peak(device)
    t0 = time.perf_counter()
    result = fn()
    measure.sync(device)
    return time.perf_counter() - t0, measure.peak_bytes(device), result


def controller_step_seconds(pipe, prepared, plan, reference, repeat: int) -> float:
    """Median seconds per controller step (every timestep of ``plan``, one per forward, nothing cached)."""
    times = []
    for _ in range(repeat):
        seconds, _, _ = timed(lambda: pipe.residuals(prepared, plan, 1.0, reference, placement="device",
                                                     timestep_batch=1), pipe.device)
        times.append(seconds / len(plan.timesteps))
    return statistics.median(times)


# ----------------------------------------------------------------------------- the benchmark
def load_pipeline(args, folder: Path):
    from r2r import R2RPipeline

    if args.weights:
        source = args.weights
    elif args.full_size:
        import pipeline as bench

        source = str(bench.make_random_weights(Path(args.weights_cache)))
    else:
        from tiny import make_tiny_release

        source = str(make_tiny_release(folder / "tiny_release"))
    return R2RPipeline.from_pretrained(source, torch_dtype=args.dtype, device=args.device), source


def run(args) -> dict:
    import torch

    from r2r.devices import resolve_max_side
    from r2r.pipeline import Reference

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, source = load_pipeline(args, Path(tmp))
    device = pipe.device
    max_side = resolve_max_side(args.max_side, device)
    comp, mask, photo = small_inputs()
    call = dict(num_inference_steps=args.steps, generator=args.seed, max_side=max_side)
    pipe(comp, mask, num_inference_steps=1, generator=0, max_side=64)  # warm-up (allocator, kernels)

    prepared = pipe.prepare(comp, mask, max_side=max_side)
    plan = pipe.plan(args.steps)
    reference = pipe.prepare_reference(Reference(image=photo), prepared)
    plain_step = controller_step_seconds(pipe, prepared, plan, None, args.repeat)
    ref_step = controller_step_seconds(pipe, prepared, plan, reference, args.repeat)
    plain_call, _, plain = timed(lambda: pipe(comp, mask, **call), device)
    ref_call, _, _ = timed(lambda: pipe(comp, mask, reference=Reference(image=photo), **call), device)
    same = pipe(comp, mask, reference=Reference(image=comp, image_mask=1 - mask), **call)
    identity = float((plain.images - same.images).abs().max())

    width, height = args.big
    whole = isolated("whole", args)
    crops = isolated("per_object", args)
    whole_s, whole_peak, crops_s, crops_peak = whole["s"], whole["peak"], crops["s"], crops["peak"]
    return {
        "benchmark": "reference", "device": str(device), "dtype": str(pipe.dtype).replace("torch.", ""),
        "weights": source if args.weights else ("full-size random" if args.full_size else "tiny random"),
        "steps": args.steps, "max_side": max_side,
        "controller_step_s": plain_step, "controller_step_with_reference_s": ref_step,
        "reference_step_time_ratio": ref_step / plain_step,
        "call_s": plain_call, "call_with_reference_s": ref_call, "reference_call_time_ratio": ref_call / plain_call,
        "identity_max_abs_diff": identity,
        "big_picture": f"{width}x{height}", "objects": len(crops["crops"]), "crops": crops["crops"],
        "whole_picture_s": whole_s, "per_object_s": crops_s, "per_object_time_ratio": crops_s / whole_s,
        "whole_picture_peak_bytes": whole_peak, "per_object_peak_bytes": crops_peak,
        "per_object_peak_memory_ratio": crops_peak / whole_peak,
        "per_object_peak_above_networks_ratio": (crops_peak - crops["base"]) / max(1, whole_peak - whole["base"]),
        "whole_picture_peak_above_networks_bytes": whole_peak - whole["base"],
        "per_object_peak_above_networks_bytes": crops_peak - crops["base"],
        "peak_memory": "max allocated" if device.type == "cuda" else "resident high-water mark (VmHWM, reset per run)",
    }


def isolated(kind: str, args) -> dict:
    """One big-picture run (``whole`` | ``per_object``) in a fresh process -> its seconds, peak bytes and crops."""
    import subprocess

    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--device", args.device, "--dtype",
            args.dtype, "--steps", str(args.steps), "--max-side", str(args.max_side), "--big",
            f"{args.big[0]}x{args.big[1]}", "--seed", str(args.seed), "--threads", str(args.threads),
            "--weights-cache", args.weights_cache] + (["--weights", args.weights] if args.weights else []) + \
        (["--full-size"] if args.full_size else [])
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise SystemExit(f"benchmarks/reference.py: the {kind} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worker(args) -> int:
    """The body of :func:`isolated`: load, warm up, reset the peak, one timed run, one JSON line."""
    import torch

    from r2r.devices import resolve_max_side

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, _ = load_pipeline(args, Path(tmp))
    comp, mask, _ = small_inputs()
    pipe(comp, mask, num_inference_steps=1, generator=0, max_side=64)  # warm-up (allocator, kernels)
    call = dict(num_inference_steps=args.steps, generator=args.seed, max_side=resolve_max_side(args.max_side,
                                                                                                pipe.device))
    big, big_mask = big_inputs(*args.big)
    extra = {"objects": "each", "crop": "per_object"} if args.worker == "per_object" else {}
    base = measure.current_bytes(pipe.device)
    seconds, peak, out = timed(lambda: pipe(big, big_mask, **call, **extra), pipe.device)
    crops = [f"{r.box.width}x{r.box.height}" for r in getattr(out, "runs", [])]
    print(json.dumps({"s": seconds, "peak": peak, "base": base, "crops": crops}))
    return 0


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 4000x3000; got {text!r}") from None
    if min(w, h) < 256:
        raise argparse.ArgumentTypeError(f"the big picture must be at least 256 px a side; got {text!r}")
    return w, h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="a release folder (default: the tiny random release of the tests)")
    p.add_argument("--full-size", action="store_true", help="full-size random weights (benchmarks/pipeline.py's, "
                   "built once under --weights-cache)")
    p.add_argument("--weights-cache", default=str(DEFAULT_WEIGHTS_CACHE))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-side", type=int, default=0, help="working resolution (0 = 1024 on a GPU, 512 on a CPU)")
    p.add_argument("--big", type=_size, default=(4000, 3000), help="the per-object picture, WIDTHxHEIGHT")
    p.add_argument("--repeat", type=int, default=3, help="controller timings: the median of this many runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--worker", choices=("whole", "per_object"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeat < 1:
        p.error("--steps and --repeat must be >= 1")
    if args.worker:
        return worker(args)
    result = run(args)
    gib = 1024 ** 3
    print(f"[reference] {result['weights']} on {result['device']} ({result['dtype']}), {args.steps} steps, "
          f"max_side {result['max_side']}")
    print(f"  controller step: {result['controller_step_s'] * 1e3:.1f} ms, with a reference photo "
          f"{result['controller_step_with_reference_s'] * 1e3:.1f} ms: x{result['reference_step_time_ratio']:.2f}; "
          f"whole call x{result['reference_call_time_ratio']:.2f}")
    print(f"  composite as its own reference: max |diff| {result['identity_max_abs_diff']:.2e}")
    print(f"  {result['big_picture']}, {result['objects']} objects (crops {', '.join(result['crops'])}): "
          f"whole picture {result['whole_picture_s']:.1f} s / {result['whole_picture_peak_bytes'] / gib:.2f} GiB, "
          f"per_object {result['per_object_s']:.1f} s / {result['per_object_peak_bytes'] / gib:.2f} GiB: "
          f"time x{result['per_object_time_ratio']:.2f}, peak memory x{result['per_object_peak_memory_ratio']:.2f} "
          f"(above the loaded networks: {result['whole_picture_peak_above_networks_bytes'] / gib:.2f} vs "
          f"{result['per_object_peak_above_networks_bytes'] / gib:.2f} GiB, "
          f"x{result['per_object_peak_above_networks_ratio']:.2f})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
