"""Throughput of ``make-dataset`` (Random Poisson Blending composites per second).

    python benchmarks/bench_make_dataset.py [--size 512] [--images 12] [--per-image 2] [--workers 1 2]

Writes synthetic 512x512 sources to a temp folder, runs the generator with each worker
count (repeat a count, e.g. ``--workers 1 2 1 2``, to take the best of several runs on a
busy machine) into a fresh output folder, prints composites/s per run (worker start-up
included), the speed-up of the largest worker count over the smallest, and a final JSON line.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sources(root: Path, n: int, size: int):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    im, mk = root / "images", root / "masks"
    im.mkdir(parents=True)
    mk.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        # smooth colour field + noise (a plausible photo), elliptical foreground of ~10-25%
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, ((xx + yy) // 2) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(im / f"img{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        r = size * (0.18 + 0.1 * (i % 3) / 2)
        m = (((xx - size * 0.5) / r) ** 2 + ((yy - size * 0.55) / (r * 1.3)) ** 2 <= 1).astype(np.uint8) * 255
        cv2.imwrite(str(mk / f"img{i:04d}.png"), m)
    return im, mk


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--per-image", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from r2r.dataset.make import MakeConfig, make_dataset

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        im, mk = _sources(tmp / "src", args.images, args.size)
        for run, w in enumerate(args.workers):
            t0 = time.perf_counter()
            rep = make_dataset(MakeConfig(out=tmp / f"out{run}", images=im, masks=mk, per_image=args.per_image,
                                          workers=w, progress=False, seed=0))
            dt = time.perf_counter() - t0
            if rep.failed:
                raise SystemExit(f"benchmark run failed: {rep.errors[:3]}")
            results[w] = max(results.get(w, 0.0), rep.composites / dt)  # best of repeated runs
            print(f"workers={w}: {rep.composites} composites in {dt:.2f} s = {results[w]:.2f} composites/s "
                  f"({args.size}x{args.size})")
    ws = sorted(results)
    ratio = results[ws[-1]] / results[ws[0]]
    print(f"speed-up {ws[-1]} vs {ws[0]} worker(s): {ratio:.2f}x")
    print(json.dumps({"benchmark": "make_dataset", "size": args.size, "composites_per_s": results,
                      "speedup": round(ratio, 3)}))


if __name__ == "__main__":
    main()
