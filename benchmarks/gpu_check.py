"""One-command GPU check (issue 12): ours vs the official flow at 1024², 10 steps, fp16 on CUDA.

    bash benchmarks/gpu_check.sh                      # the check (needs one CUDA GPU; < 8 minutes)
    bash benchmarks/gpu_check.sh --compile            # also torch.compile the resident U-Net
    bash benchmarks/gpu_check.sh --device cpu --dtype float32 --size 128 --steps 1   # dry run on a CPU

Full-size random weights in the official layout (benchmarks/pipeline.py builds them once; timings
do not depend on weight values). Three flows of benchmarks/pipeline.py, each in its own process,
each run once untimed first (CUDA context, kernels, autotuning, compilation), then timed:

official  the re-statement of the official call, every network resident (loading not counted);
ours      R2RPipeline's stages with each network loaded per phase (loading counted: the low-memory
          flow; its peak VRAM is the "never two networks at once" figure);
resident  R2RPipeline's stages with every network resident (loading not counted, like official):
          the time an artist gets once the weights are loaded, plus one whole call
          (prepare -> restore) as the absolute end-to-end time.

Prints time, peak VRAM (``torch.cuda.max_memory_allocated``; RSS on a CPU), the ratios to the
official flow and the same-seed image difference, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile the resident flow's U-Net")
    p.add_argument("--weights", default=None, help="a real release folder instead of random weights")
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error("no CUDA device is visible to torch; for a dry run use --device cpu --dtype float32")
        props = torch.cuda.get_device_properties(torch.device(args.device))
        device_name = f"{props.name}, {props.total_memory / 1024**3:.0f} GiB, torch {torch.__version__}"
    else:
        device_name = f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"
    print(f"[gpu_check] {device_name}; {args.size}x{args.size}, {args.steps} steps, {args.dtype}", flush=True)
    cmd = [sys.executable, str(HERE / "pipeline.py"), "--flows", "official", "ours", "resident",
           "--sizes", str(args.size), "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
           "--warmup"] + ["--compile"] * args.compile + (["--weights", args.weights] if args.weights else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = []
    for line in proc.stdout:  # shown as it comes: the flows take minutes
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith('{"benchmark": "pipeline"'):
            lines.append(line)
    if proc.wait() or not lines:
        print(f"[gpu_check] benchmarks/pipeline.py failed (exit {proc.returncode})", flush=True)
        return 1
    row = json.loads(lines[-1])["results"][0]
    failed = [f for f in ("official", "ours", "resident") if row.get(f, {}).get("failed")]
    if failed:
        print(f"[gpu_check] these flows failed: {failed}", flush=True)
        return 1
    o, u, r = row["official"], row["ours"], row["resident"]
    memory = "peak VRAM" if args.device.startswith("cuda") else "peak RSS"
    print(f"\n{'flow':10s} {'time (s)':>9s} {memory + ' (GiB)':>16s} {'x official time':>16s} {'x official mem':>15s}")
    for name, x in (("official", o), ("ours", u), ("resident", r)):
        rat = row.get(f"{name}_vs_official", {"total": 1.0, "peak_memory": 1.0})
        print(f"{name:10s} {x['total_s']:9.2f} {x['peak_bytes'] / 1024**3:16.2f} {rat['total']:16.3f} "
              f"{rat['peak_memory']:15.3f}")
    print(f"same seed, max |image difference| (0..1): ours {row['ours_vs_official']['max_abs_diff_images']:.2e}, "
          f"resident {row['resident_vs_official']['max_abs_diff_images']:.2e}")
    print(f"absolute end-to-end time, weights resident (prepare -> restore): {r['end_to_end_s']:.2f} s"
          + (" (U-Net compiled)" if args.compile else ""))
    print(f"targets (issue 12): resident time <= 0.7x -> {row['resident_vs_official']['total']:.3f}x; "
          f"peak memory <= 0.5x -> ours {row['ours_vs_official']['peak_memory']:.3f}x, "
          f"resident {row['resident_vs_official']['peak_memory']:.3f}x", flush=True)
    print(json.dumps({"benchmark": "gpu_check", "device": device_name, "size": args.size, "steps": args.steps,
                      "dtype": args.dtype, "compile": args.compile,
                      "time_s": {"official": o["total_s"], "ours": u["total_s"], "resident": r["total_s"]},
                      "peak_bytes": {"official": o["peak_bytes"], "ours": u["peak_bytes"],
                                     "resident": r["peak_bytes"]},
                      "end_to_end_resident_s": r["end_to_end_s"],
                      "ours_vs_official": row["ours_vs_official"],
                      "resident_vs_official": row["resident_vs_official"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
