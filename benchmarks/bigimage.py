"""Big images: full-resolution transfer modes, banded Clear-VAE seams, 4K / 8K end to end.

    python benchmarks/bigimage.py modes                     # compare upsample vs color_transform (real photos)
    python benchmarks/bigimage.py seams --size 512          # banded vs untiled full-size Clear-VAE
    python benchmarks/bigimage.py e2e --res 4k 8k --steps 1 # full-size random weights, working res 1024
    python benchmarks/bigimage.py all

Every measurement that reports peak memory runs in its own subprocess. Prints a table per part and a
final JSON line with the figures. Heavy parts (seams, e2e) take minutes on a small CPU.

modes  real photos from scikit-image (astronaut, coffee, chelsea, rocket, motorcycle) as full-res
       composites; a known, spatially smooth colour change inside an elliptic mask is the "true"
       harmonization; the working-resolution model output is simulated by downscaling it by
       ``--factor`` and softening it (Gaussian sigma 0.8, the detail a VAE round trip loses). Both modes
       get the same working-resolution image. Reported per mode: foreground PSNR against the truth,
       detail kept (foreground Laplacian energy relative to the truth; 1 = all detail), boundary error
       (mean |out - truth| within 3 px of the mask edge, x255) and colour agreement with the
       working-resolution result (mean |downscale(out) - working| in the foreground after a Gaussian
       low-pass of sigma 2 working px on both, i.e. colour not detail; x255).
seams  full-size random-weight Clear-VAE encode_with_skips + decode_with_skips, untiled vs banded
       (r2r.imaging.tiling) on the same photo: max |difference| (in [0,1] image units), time, peak RSS.
e2e    a 3840x2160 (4K) / 7680x4320 (8K) composite -> prepare (working res 1024 on the long side) ->
       R2RPipeline's stages over phase-loaded networks (benchmarks/pipeline.py's "ours", full-size
       random weights) -> the pipeline's restore stage with the colour transform back to full
       resolution; per-stage time and peak RSS of the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import measure  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")
RES = {"4k": (2160, 3840), "8k": (4320, 7680), "1080p": (1080, 1920)}


def _gib(b) -> float:
    return b / 1024**3


# ----------------------------------------------------------------------------- modes
def _photo(name):
    from skimage import data

    img = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    return img[..., :3] if img.ndim == 3 else None


def _truth(img, mask):
    import numpy as np

    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx /= w
    yy /= h
    mix = np.array([[0.85, 0.08, 0.0], [0.05, 0.8, 0.1], [0.05, 0.02, 0.65]], np.float32)
    t = img @ mix + np.stack([0.08 + 0.1 * xx, 0.04 + 0.05 * yy, 0.12 * (1 - xx)], -1)
    t = np.clip(t, 0, 1)
    return img + mask[..., None] * (t - img)


def _lap_energy(x, m):
    import cv2
    import numpy as np

    g = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    inner = cv2.erode(m.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    return float((lap[inner] ** 2).mean())


def part_modes(args) -> dict:
    import cv2
    import numpy as np

    from r2r.imaging.fullres import transfer_harmonization

    rows = []
    for name in PHOTOS:
        img8 = _photo(name)
        if img8 is None:
            continue
        img = img8.astype(np.float32) / 255.0
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((((xx - 0.5 * w) / (0.28 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2) < 1).astype(np.float32)
        truth = _truth(img, mask)
        lw, lh = max(64, w // args.factor), max(64, h // args.factor)
        low = cv2.resize(truth, (lw, lh), interpolation=cv2.INTER_AREA)
        low = cv2.GaussianBlur(low, (0, 0), 0.8)
        fg = mask > 0
        ring = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) - cv2.erode(mask, np.ones((7, 7), np.uint8))) > 0
        m_low = cv2.resize(mask, (lw, lh), interpolation=cv2.INTER_AREA) > 0.99
        e_truth = _lap_energy(truth, mask)
        for mode in ("upsample", "color_transform"):
            t0 = time.perf_counter()
            out = transfer_harmonization(img, low, mask, mode=mode)
            dt = time.perf_counter() - t0
            mse = float(((out - truth)[fg] ** 2).mean())
            rows.append({
                "photo": name, "size": f"{w}x{h}", "mode": mode,
                "fg_psnr_db": round(10 * np.log10(1.0 / max(mse, 1e-12)), 2),
                "detail_kept": round(_lap_energy(out, mask) / e_truth, 3),
                "boundary_err_255": round(float(np.abs(out - truth)[ring].mean()) * 255, 3),
                "colour_vs_working_255": round(float(np.abs(
                    cv2.GaussianBlur(cv2.resize(out, (lw, lh), interpolation=cv2.INTER_AREA), (0, 0), 2.0)
                    - cv2.GaussianBlur(low, (0, 0), 2.0))[m_low].mean()) * 255, 3),
                "time_s": round(dt, 3),
            })
    print(f"\nfull-resolution modes (working res = full / {args.factor}):")
    print(f"{'photo':16s} {'mode':16s} {'fgPSNR':>7s} {'detail':>7s} {'bndErr':>7s} {'colour':>7s}")
    for r in rows:
        print(f"{r['photo']:16s} {r['mode']:16s} {r['fg_psnr_db']:7.2f} {r['detail_kept']:7.3f} "
              f"{r['boundary_err_255']:7.2f} {r['colour_vs_working_255']:7.2f}")
    summary = {}
    for mode in ("upsample", "color_transform"):
        rs = [r for r in rows if r["mode"] == mode]
        summary[mode] = {k: round(float(np.mean([r[k] for r in rs])), 3)
                         for k in ("fg_psnr_db", "detail_kept", "boundary_err_255", "colour_vs_working_255")}
    print("mean:", json.dumps(summary))
    return {"factor": args.factor, "rows": rows, "mean": summary}


# ----------------------------------------------------------------------------- seams
def _seams_worker(args) -> dict:
    import cv2
    import numpy as np
    import torch
    from skimage import data

    from r2r.imaging import tiling
    from r2r.models import ClearVAE

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = Path(args.weights) / "clear_vae"
    vae = ClearVAE.from_pretrained(weights, torch_dtype=torch.float32, low_cpu_mem_usage=True).eval()
    if args.nonzero_skips:  # random weights leave the zero-initialised skip convs at 0; make the skip path matter
        from pipeline import make_skips_matter

        make_skips_matter(vae)
    img = cv2.resize(data.astronaut(), (args.size, args.size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    base = measure.peak_bytes("cpu")
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.seams_worker == "untiled":
            post, skips = vae.encode_with_skips(x)
            out = vae.decode_with_skips(post.mode(), skips)
        else:
            post, skips = tiling.tiled_encode_with_skips(vae, x)
            out = tiling.tiled_decode_with_skips(vae, post.mode(), skips, consume_skips=True)
    dt = time.perf_counter() - t0
    np.save(args.save_output, ((out[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1)).numpy())
    return {"path": args.seams_worker, "size": args.size, "time_s": round(dt, 2), "peak_rss_bytes": measure.peak_bytes("cpu"),
            "rss_before_bytes": base}


def part_seams(args) -> dict:
    import tempfile

    import numpy as np

    res = {}
    with tempfile.TemporaryDirectory() as td:
        for path in ("untiled", "tiled"):
            out = os.path.join(td, f"{path}.npy")
            cmd = [sys.executable, __file__, "seams", "--seams-worker", path, "--size", str(args.size),
                   "--weights", args.weights, "--save-output", out, "--threads", str(args.threads)]
            if args.nonzero_skips:
                cmd.append("--nonzero-skips")
            print(f"[bigimage] Clear-VAE {path} {args.size}x{args.size} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                res[path] = {"failed": True, "exit": proc.returncode}
                continue
            res[path] = json.loads(lines[-1][7:])
            r = res[path]
            print(f"  {path:8s} {r['time_s']:7.2f}s  peak RSS {_gib(r['peak_rss_bytes']):.2f} GiB "
                  f"(before {_gib(r['rss_before_bytes']):.2f})", flush=True)
        if all(not res.get(p, {}).get("failed") for p in ("untiled", "tiled")):
            a, b = np.load(os.path.join(td, "untiled.npy")), np.load(os.path.join(td, "tiled.npy"))
            d = float(np.abs(a - b).max())
            res["max_abs_diff"] = d
            res["max_abs_diff_255"] = d * 255
            print(f"  banded vs untiled: max |diff| = {d:.2e} ({d * 255:.4f}/255; target <= 2/255)")
    return res


# ----------------------------------------------------------------------------- e2e
def _e2e_worker(args) -> dict:
    import cv2
    import numpy as np
    import pipeline as bench
    import torch
    from skimage import data

    from r2r import imaging

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    hh, ww = RES[args.e2e_worker]
    stages = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    # a big composite: a real photo upscaled + fine texture (so there is full-res detail to keep)
    src = data.coffee()
    comp = cv2.resize(src, (ww, hh), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    for r0 in range(0, hh, 512):  # in bands: no full-size float noise buffer
        band = comp[r0:r0 + 512].astype(np.int16) + rng.integers(-6, 7, comp[r0:r0 + 512].shape, dtype=np.int16)
        comp[r0:r0 + 512] = np.clip(band, 0, 255).astype(np.uint8)
    mask = np.zeros((hh, ww), np.uint8)
    cv2.ellipse(mask, (ww // 2, hh // 2), (ww // 5, hh // 3), 0, 0, 360, 255, -1)
    stages["make_input"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepared = imaging.prepare(comp, mask, max_side=args.working)
    stages["prepare"] = time.perf_counter() - t0
    clock = bench.Clock(torch.device("cpu"))
    bargs = argparse.Namespace(weights=args.weights, steps=args.steps, seed=0, skips="auto", residuals="auto",
                               timestep_batch=0)
    pipes: list = []
    out, total, _ = bench.run_ours(bargs, prepared, torch.device("cpu"), torch.float32, clock, pipe_out=pipes)
    stages.update({f"model_{k}": v for k, v in clock.t.items()})
    geom = prepared.geometry
    t0 = time.perf_counter()
    # the pipeline's own restore stage: colour transform fitted at the working resolution, applied in bands
    result = pipes[0].restore(out, prepared, fullres_mode="color_transform")
    del out
    stages["fullres_transfer"] = time.perf_counter() - t0
    assert tuple(result.shape[-2:]) == comp.shape[:2], result.shape
    return {"res": args.e2e_worker, "size": f"{ww}x{hh}", "working": f"{geom.working_size[1]}x{geom.working_size[0]}",
            "steps": args.steps, "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "total_s": round(time.perf_counter() - t_all, 2), "peak_rss_bytes": measure.peak_bytes("cpu")}


def part_e2e(args) -> dict:
    res = {}
    for r in args.res:
        cmd = [sys.executable, __file__, "e2e", "--e2e-worker", r, "--weights", args.weights, "--steps", str(args.steps),
               "--working", str(args.working), "--threads", str(args.threads), "--weights-cache", args.weights_cache]
        print(f"[bigimage] end to end {r} (working {args.working}, steps {args.steps}) ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-3000:])
            res[r] = {"failed": True, "exit": proc.returncode}
            continue
        res[r] = json.loads(lines[-1][7:])
        x = res[r]
        print(f"  {r}: {x['size']} total {x['total_s']:.1f}s, peak RSS {_gib(x['peak_rss_bytes']):.2f} GiB; "
              + ", ".join(f"{k} {v:.1f}" for k, v in x["stages_s"].items()), flush=True)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["modes", "seams", "e2e", "all"])
    p.add_argument("--factor", type=int, default=4, help="modes: full / working resolution ratio")
    p.add_argument("--size", type=int, default=512, help="seams: image size (both paths must fit)")
    p.add_argument("--nonzero-skips", action="store_true", help="seams: random non-zero decoder skip convs")
    p.add_argument("--res", nargs="+", default=["4k", "8k"], choices=sorted(RES))
    p.add_argument("--working", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", default=None, help="hub-layout folder (default: the random weights of pipeline.py)")
    p.add_argument("--weights-cache", default=str(Path.home() / ".cache" / "r2r-bench" / "random-fp32"))
    p.add_argument("--seams-worker", help=argparse.SUPPRESS)
    p.add_argument("--e2e-worker", help=argparse.SUPPRESS)
    p.add_argument("--save-output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seams_worker:
        print("RESULT " + json.dumps(_seams_worker(args)))
        return 0
    if args.e2e_worker:
        print("RESULT " + json.dumps(_e2e_worker(args)))
        return 0
    out = {"benchmark": "bigimage"}
    if args.part in ("modes", "all"):
        out["modes"] = part_modes(args)
    if args.part in ("seams", "e2e", "all") and args.weights is None:
        import pipeline as bench

        args.weights = str(bench.make_random_weights(Path(args.weights_cache)))
    if args.part in ("seams", "all"):
        out["seams"] = part_seams(args)
    if args.part in ("e2e", "all"):
        out["e2e"] = part_e2e(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
