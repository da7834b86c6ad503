"""Temporal-stability benchmark of r2r.video (issue 20) on synthetic clips whose truth is known.

    python benchmarks/video.py                       # CPU: weight-free harmonizer + the tiny release
    python benchmarks/video.py --weights models/r2r/region2region --device cuda   # a real release
    python benchmarks/video.py --dry-run             # seconds: every section on tiny clips (the test runs it)

The clips (r2r.video.synthetic): a static background photo with a pasted object (a textured ellipse)
moving along a known integer path, shown with a known Lab colour change; camera noise and background
spots that change every frame (what makes per-frame harmonization flicker); one clip with a hard cut
to another photo. Per temporal mode and harmonizer:

* masked warping error: the object of frame t moved by the known displacement onto frame t+1 and
  compared on the object's (eroded) pixels, mean squared error on the 0..255 scale, for the output
  and for the input; ``warp_ratio_<mode>`` = the mode's error / independent's (weight-free path);
* foreground colour error vs the truth (the object in its true colours), weight-free path;
  ``fg_error_ratio_<mode>`` = the mode's / independent's;
* seconds per frame (wall) and model seconds (time inside the harmonizer: networks for R2R);
  ``keyframes8_time_ratio`` = model time of keyframes (N=8) / independent's (R2R path): the process's
  CPU time on a CPU (the wall time of a shared machine counts the other jobs too; also reported as
  ``keyframes8_wall_ratio``), wall time on an accelerator;
* bleed across the cut: frames whose output differs (> 0.5/255) from running each shot on its own;
  ``cut_bleed_frames`` = the largest count over modes and harmonizers;
* peak memory: each clip length in its own process (``--memory-frames 20 200`` at
  ``--memory-size 512``, ``--memory-mode smoothed``: every frame through the model, two passes), frames
  made on demand and outputs dropped as they come (a writer's pattern); CPU: the peak RSS of the run
  alone (Linux: the kernel's VmHWM mark reset after the model loaded), CUDA: max allocated;
  ``memory_ratio_200_vs_20`` (R2R path; ``..._weight_free`` for the weight-free one).

The R2R path runs ``independent`` with ``fullres_mode color_transform`` so that every mode carries
the model's change to the frame the same way and only the temporal handling differs. With the tiny
random-weight release the R2R figures are mechanics (flicker of random outputs), not quality.
Last line: one JSON object.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import measure  # noqa: E402

MODES = ("independent", "shared_noise", "smoothed", "keyframes")
BLEED_TOL = 0.5 / 255


def evaluate(syn, engine, mode, **kw) -> dict:
    """One run over a synthetic clip, streamed: warping / foreground errors, times."""
    from r2r.video import harmonize_clip
    from r2r.video.synthetic import foreground_error, warp_error

    start = time.perf_counter()
    job = harmonize_clip(syn.clip(), engine, temporal=mode, **kw)
    sums = {"warp": [0.0, 0], "warp_in": [0.0, 0], "fg": [0.0, 0]}
    prev = prev_in = None
    for i, out in job:
        frame = syn.frame(i)
        for key, (s, c) in (("fg", foreground_error(out, syn, i)),):
            sums[key][0] += s
            sums[key][1] += c
        if prev is not None and syn.shot(i) == syn.shot(i - 1):
            for key, (a, b) in (("warp", (prev, out)), ("warp_in", (prev_in, frame))):
                s, c = warp_error(a, b, syn, i - 1, i)
                sums[key][0] += s
                sums[key][1] += c
        prev, prev_in = out, frame
    seconds = time.perf_counter() - start
    report = job.report
    return {"warp": sums["warp"][0] / sums["warp"][1], "warp_input": sums["warp_in"][0] / sums["warp_in"][1],
            "fg_error": sums["fg"][0] / sums["fg"][1], "s_per_frame": seconds / report.frames,
            "model_s": report.model_seconds, "model_cpu_s": report.model_cpu_seconds,
            "model_frames": report.model_frames, "shots": len(report.shots)}


def bleed(make_engine, syn, cut: int, mode: str) -> int:
    """Frames of the full clip whose output differs from running each shot on its own."""
    from r2r.video import Clip, FunctionFrames, FunctionMasks, harmonize_frames

    def part(a, b):
        return Clip(FunctionFrames(b - a, lambda i: syn.frame(a + i)), FunctionMasks(b - a, lambda i: syn.mask(a + i)))

    full = harmonize_frames(syn.clip(), make_engine(), temporal=mode)
    alone = np.concatenate([harmonize_frames(part(0, cut), make_engine(), temporal=mode),
                            harmonize_frames(part(cut, syn.count), make_engine(), temporal=mode)])
    return int(sum(np.abs(a - b).max() > BLEED_TOL for a, b in zip(full, alone)))


def tiny_release(cache: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_release

    if not (cache / "clear_vae").is_dir():
        make_tiny_release(cache)
    return cache


def load_pipe(args):
    from r2r.pipeline import R2RPipeline

    weights = args.weights or str(tiny_release(Path(args.weights_cache)))
    return R2RPipeline.from_pretrained(weights, torch_dtype=args.dtype, device=args.device), \
        "tiny random" if not args.weights else weights


def r2r_engine(pipe, args, chunk=None):
    from r2r.video import R2REngine

    return R2REngine(pipe, steps=args.steps, max_side=args.r2r_max_side, fullres_mode="color_transform",
                     chunk_frames=chunk)


def memory_child(args) -> int:
    """One clip length in this process: peak memory while the clip streams through."""
    from r2r.video import StatisticsEngine, harmonize_clip
    from r2r.video.synthetic import moving_object_clip

    n, size = args.memory_child, (args.memory_size, args.memory_size)
    syn = moving_object_clip(n, size)
    if args.memory_engine == "statistics":
        engine = StatisticsEngine()
    else:
        pipe, _ = load_pipe(args)
        engine = r2r_engine(pipe, args, args.chunk_frames)
    cuda = args.device.startswith("cuda")
    if cuda:
        measure.reset_peak(args.device)
    reset = measure.reset_peak("cpu")
    before = measure.current_bytes("cpu") / 2**20
    start = time.perf_counter()
    count = 0
    for _, out in harmonize_clip(syn.clip(), engine, temporal=args.memory_mode):
        count += int(out.shape[0] > 0)  # written and dropped
    result = {"frames": count, "peak_rss_mib": measure.peak_bytes("cpu") / 2**20, "rss_before_mib": before,
              "peak_of_the_run_alone": reset, "seconds": time.perf_counter() - start}
    if cuda:
        result["cuda_max_allocated_mib"] = measure.peak_bytes(args.device) / 2**20
    print(json.dumps(result))
    return 0


def memory_section(args, engine: str) -> dict:
    out = {}
    for n in args.memory_frames:
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--memory-engine", engine,
               "--memory-size", str(args.memory_size), "--memory-mode", args.memory_mode, "--device", args.device,
               "--dtype", args.dtype, "--steps", str(args.steps), "--r2r-max-side", str(args.r2r_max_side),
               "--weights-cache", args.weights_cache]
        if args.weights:
            cmd += ["--weights", args.weights]
        if args.chunk_frames:
            cmd += ["--chunk-frames", str(args.chunk_frames)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise SystemExit(f"memory run for {n} frames failed:\n{res.stderr[-3000:]}")
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def figures(args, syn, runs_dir: Path) -> None:
    """docs/images/video_modes.jpg (README strip) and the video template's thumbnail, from real runs."""
    import cv2

    from r2r.video import ArrayFrames, ArrayMasks, Clip, StatisticsEngine, harmonize_frames
    from r2r.video.synthetic import read_example_clip

    picks = [6, 7, 8, 9]
    rows = [("input", [syn.frame(i) for i in picks])]
    for mode in ("independent", "smoothed", "keyframes"):
        out = harmonize_frames(syn.clip(), StatisticsEngine(), temporal=mode)
        rows.append((mode, [out[i] for i in picks]))
    rows.append(("truth", [syn.truth(i) for i in picks]))
    tile = 112
    label_w = 110
    sheet = np.full((len(rows) * tile, label_w + len(picks) * tile, 3), 255, np.uint8)
    for r, (name, frames) in enumerate(rows):
        cv2.putText(sheet, name, (6, r * tile + tile // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for c, f in enumerate(frames):
            small = cv2.resize((np.clip(f, 0, 1) * 255).astype(np.uint8), (tile, tile), interpolation=cv2.INTER_AREA)
            sheet[r * tile:(r + 1) * tile, label_w + c * tile:label_w + (c + 1) * tile] = small
    runs_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(runs_dir / "video_modes.jpg"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 82])
    frames, masks, _ = read_example_clip("drifting_astronaut")
    out = harmonize_frames(Clip(ArrayFrames(frames), ArrayMasks(masks)), StatisticsEngine(), temporal="keyframes")
    template_thumbnail([frames[i] for i in (0, 8, 16, 23)],
                       [(out[i] * 255 + 0.5).astype(np.uint8) for i in (0, 8, 16, 23)]
                       ).save(runs_dir / "Harmonize a video clip.jpg", quality=88)
    print(f"figures written to {runs_dir}")


def template_thumbnail(before, after):
    """The Templates-browser card of 'Harmonize a video clip' (512x512, the look of tools/make_thumbnails.py):
    four frames of the bundled clip before and after; the "after" is the template's temporal mode run with
    the weight-free colour match, labelled as a stand-in (R2R's own result needs its weights)."""
    from PIL import Image, ImageDraw, ImageFont

    size, bg, fg, muted, accent = 512, (32, 32, 36), (235, 235, 235), (170, 170, 178), (255, 196, 64)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    draw.text((size // 2, 12), "a video clip without flicker", fill=accent, font=ImageFont.load_default(size=19),
              anchor="ma")
    tile, gap = 120, 8
    x0 = (size - 4 * tile - 3 * gap) // 2
    for row, (label, frames) in enumerate((("before: frames 0, 8, 16, 23", before), ("after*", after))):
        y = 44 + row * (tile + 44)
        draw.text((size // 2, y), label, fill=fg, font=ImageFont.load_default(size=17), anchor="ma")
        for k, f in enumerate(frames):
            pic = Image.fromarray(f).resize((tile, tile), Image.LANCZOS)
            img.paste(pic, (x0 + k * (tile + gap), y + 24))
    draw.multiline_text((size // 2, size - 10), "* keyframes (every 8th frame, interpolated) with the\nweight-free "
                        "colour match: a stand-in, R2R's result\nneeds its weights", fill=muted,
                        font=ImageFont.load_default(size=18), anchor="md", align="center", spacing=4)
    return img


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=48, help="frames of the weight-free clips")
    p.add_argument("--size", type=int, default=256, help="frame side of the weight-free clips")
    p.add_argument("--r2r-frames", type=int, default=96, help="frames of the R2R clips")
    p.add_argument("--r2r-size", type=int, default=128, help="frame side of the R2R clips")
    p.add_argument("--r2r-max-side", type=int, default=128, help="R2R working resolution")
    p.add_argument("--steps", type=int, default=2, help="denoising steps (official 10; CPU runs use fewer)")
    p.add_argument("--weights", default=None, help="a release folder (default: the tiny random-weight release)")
    p.add_argument("--weights-cache", default=os.path.join(tempfile.gettempdir(), "r2r_tiny_release"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--memory-frames", type=int, nargs=2, default=[20, 200])
    p.add_argument("--memory-size", type=int, default=512)
    p.add_argument("--memory-mode", default="smoothed", choices=MODES)
    p.add_argument("--chunk-frames", type=int, default=None, help="R2R frames per chunk (default: by free memory)")
    p.add_argument("--memory-engines", nargs="+", default=["statistics", "r2r"], choices=("statistics", "r2r"),
                   help="harmonizers whose peak memory is measured (the dry run: statistics only)")
    p.add_argument("--memory-engine", default="r2r", choices=("r2r", "statistics"), help=argparse.SUPPRESS)
    p.add_argument("--figures", default=None, metavar="DIR", help="also write the README strip and the video "
                                                                  "template's thumbnail there")
    p.add_argument("--dry-run", action="store_true", help="every section on tiny clips (seconds)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child is not None:
        return memory_child(args)
    if args.dry_run:
        args.frames, args.size, args.r2r_frames, args.r2r_size, args.r2r_max_side = 12, 96, 6, 96, 64
        args.memory_frames, args.memory_size, args.steps, args.memory_engines = [2, 6], 96, 1, ["statistics"]
    from r2r.video import StatisticsEngine
    from r2r.video.synthetic import moving_object_clip

    result: dict = {"benchmark": "video", "device": args.device}
    # ---------------------------------------------------------------- weight-free path
    syn = moving_object_clip(args.frames, (args.size, args.size))
    free = {mode: evaluate(syn, StatisticsEngine(), mode) for mode in MODES}
    print(f"weight-free harmonizer, {args.frames} frames {args.size}x{args.size} "
          f"(input warping error {free['independent']['warp_input']:.1f}):")
    print("| mode | warping error | ratio | fg error vs truth | ratio | s/frame |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, r in free.items():
        print(f"| {mode} | {r['warp']:.1f} | {r['warp'] / free['independent']['warp']:.2f} | {r['fg_error']:.1f} | "
              f"{r['fg_error'] / free['independent']['fg_error']:.2f} | {r['s_per_frame']:.4f} |")
    for mode in MODES[1:]:
        result[f"warp_ratio_{mode}"] = free[mode]["warp"] / free["independent"]["warp"]
        result[f"fg_error_ratio_{mode}"] = free[mode]["fg_error"] / free["independent"]["fg_error"]
    result["weight_free"] = free
    cut_clip = moving_object_clip(args.frames, (args.size, args.size), cut_at=args.frames // 2 - 1)
    bleeds = {f"statistics_{m}": bleed(StatisticsEngine, cut_clip, cut_clip.shot_starts[1], m)
              for m in ("smoothed", "keyframes")}
    # ---------------------------------------------------------------- R2R path
    pipe, source = load_pipe(args)
    rsyn = moving_object_clip(args.r2r_frames, (args.r2r_size, args.r2r_size))
    r2r = {mode: evaluate(rsyn, r2r_engine(pipe, args), mode) for mode in MODES}
    print(f"\nR2R ({source}), {args.r2r_frames} frames {args.r2r_size}x{args.r2r_size}, max_side "
          f"{args.r2r_max_side}, {args.steps} steps:")
    print("| mode | warping error | ratio | frames through the model | model s (wall) | model s (CPU) | s/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, r in r2r.items():
        print(f"| {mode} | {r['warp']:.1f} | {r['warp'] / r2r['independent']['warp']:.2f} | {r['model_frames']} | "
              f"{r['model_s']:.2f} | {r['model_cpu_s']:.2f} | {r['s_per_frame']:.3f} |")
    for mode in MODES[1:]:
        result[f"r2r_warp_ratio_{mode}"] = r2r[mode]["warp"] / r2r["independent"]["warp"]
    # on a CPU the process's CPU time (wall time there also counts whatever else the machine runs)
    timer = "model_cpu_s" if args.device == "cpu" else "model_s"
    result["keyframes8_time_ratio"] = r2r["keyframes"][timer] / r2r["independent"][timer]
    result["keyframes8_wall_ratio"] = r2r["keyframes"]["model_s"] / r2r["independent"]["model_s"]
    result["keyframes8_time_measure"] = timer
    result["r2r"] = r2r
    rcut = moving_object_clip(args.r2r_frames, (args.r2r_size, args.r2r_size), cut_at=args.r2r_frames // 2 - 1)
    for m in ("smoothed", "keyframes"):
        bleeds[f"r2r_{m}"] = bleed(lambda: r2r_engine(pipe, args), rcut, rcut.shot_starts[1], m)
    result["cut_bleed"] = bleeds
    result["cut_bleed_frames"] = max(bleeds.values())
    print(f"\nbleed across the cut (frames that differ from each shot run alone): {bleeds}")
    # ---------------------------------------------------------------- memory
    mem = {}
    for engine in args.memory_engines:
        runs = memory_section(args, engine)
        a, b = (runs[n] for n in args.memory_frames)
        key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in a else "peak_rss_mib"
        mem[engine] = {"runs": runs, "ratio": b[key] / a[key], "measure": key,
                       "growth_mib": (b[key] - b["rss_before_mib"]) - (a[key] - a["rss_before_mib"])
                       if key == "peak_rss_mib" else b[key] - a[key]}
        print(f"peak memory ({engine}, {args.memory_mode}, {args.memory_size}x{args.memory_size}): "
              f"{args.memory_frames[0]} frames {a[key]:.0f} MiB, {args.memory_frames[1]} frames {b[key]:.0f} MiB "
              f"({key}); ratio {mem[engine]['ratio']:.3f}")
    result["memory"] = mem
    result["memory_ratio_200_vs_20"] = mem["r2r" if "r2r" in mem else "statistics"]["ratio"]
    if "statistics" in mem:
        result["memory_ratio_200_vs_20_weight_free"] = mem["statistics"]["ratio"]
    if args.figures:
        figures(args, syn, Path(args.figures))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
