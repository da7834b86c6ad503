"""Peak memory of one Clear-VAE decode: every skip released as soon as the decoder has used it (issue 17).

    python benchmarks/decode_memory.py --size 512            # CPU, fp32, the full-size Clear-VAE (random weights)
    python benchmarks/decode_memory.py --size 1024 --device cuda --dtype float16

The full-size Clear-VAE (official config, random weights, non-zero skip convs) encodes a random image, then
decodes its latent with those skips, once per variant, each in its own process:

held      the decoder's former way: all 12 filtered skips made first and held through the decode, the raw
          skips held by the caller;
lazy      each skip filtered right before its resnet, the raw skips held by the caller (what a caller that
          reuses the skips gets: the node graph's re-runs, ``variations``);
consume   each skip filtered right before its resnet and released, raw and filtered, once used (a one-shot
          call, skips recomputed or brought from host RAM);
banded    the banded decode (r2r.imaging.tiling) consuming its skips.

Peak: the RSS high-water mark of the decode alone (``VmHWM`` reset through ``/proc/self/clear_refs`` right
before it) minus the RSS before it, on a CPU; ``torch.cuda.max_memory_allocated`` above the allocation before
it on CUDA. Also checks that every variant gives the same image. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
VARIANTS = ("held", "lazy", "consume", "banded")


def worker(args) -> int:
    import measure
    import numpy as np
    import torch
    from pipeline import make_skips_matter

    from r2r.imaging import tiling
    from r2r.models import ClearVAE

    torch.manual_seed(0)  # random weights and inputs, not sampling noise
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    vae = ClearVAE.from_config(ClearVAE.load_config(ROOT / "r2r" / "configs" / "official" / "clear_vae"))
    make_skips_matter(vae)  # non-zero skip convs: the skip path matters
    vae = vae.to(device, dtype).eval()
    x = torch.rand(1, 3, args.size, args.size, device=device, dtype=dtype) * 2 - 1
    with torch.inference_mode():
        posterior, skips = vae.encode_with_skips(x)
        z = posterior.mean  # the image's own latent (decode's cost does not depend on its values)
        del x
        measure.reset_peak(device)
        before = measure.current_bytes(device)
        if args.variant == "held":
            held = vae.filter_skips(skips)  # noqa: F841  (kept alive through the decode, as before)
            out = vae.decode_with_skips(z, skips)
        elif args.variant == "lazy":
            out = vae.decode_with_skips(z, skips)
        elif args.variant == "consume":
            out = vae.decode_with_skips(z, skips, consume=True)
        else:
            out = tiling.tiled_decode_with_skips(vae, z, skips, consume_skips=True)
        peak = measure.peak_bytes(device) - before
    np.save(args.save, out.float().cpu().numpy())
    print("RESULT " + json.dumps({"variant": args.variant, "peak_bytes": int(peak)}), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        return worker(args)
    if args.size % 64:
        p.error(f"--size must be a multiple of 64; got {args.size}")
    import tempfile

    import numpy as np

    results, images = {}, {}
    with tempfile.TemporaryDirectory() as td:
        for v in args.variants:
            save = f"{td}/{v}.npy"
            cmd = [sys.executable, __file__, "--variant", v, "--size", str(args.size), "--device", args.device,
                   "--dtype", args.dtype, "--save", save]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"decode_memory: {v} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[v] = json.loads(lines[-1][7:])["peak_bytes"]
            images[v] = np.load(save)
            print(f"  {v:8s} decode peak {results[v] / 2**30:.3f} GiB", flush=True)
    ref = images[args.variants[0]]
    diff = {v: float(np.abs(images[v] - ref).max()) for v in args.variants}
    print(json.dumps({"benchmark": "decode_memory", "size": args.size, "device": args.device, "dtype": args.dtype,
                      "peak_bytes": results, "max_abs_diff_vs_first": diff}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
