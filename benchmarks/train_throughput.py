"""Training throughput per stage: images per second and peak memory of the trainer's own optimizer step.

    python benchmarks/train_throughput.py                               # CPU dry run: tiny networks, seconds
    python benchmarks/train_throughput.py --device cuda --full-size --size 512 --batch 4 --steps 10 --baseline
    python benchmarks/train_throughput.py --stages controller --gradient-checkpointing on --dtype float16

Each stage (clear_vae, unet, controller) is built exactly as ``python -m training`` builds it
(:func:`training.stages.build_stage` from a release folder), the device rules of training/speed.py are
decided and applied as in a run (precision, gradient checkpointing from the memory estimate, fused AdamW,
TF32 / cudnn.benchmark, optional torch.compile), then ``--warmup`` untimed and ``--steps`` timed optimizer
steps run on random batches already on the device (forward under autocast, backward, gradient clipping,
AdamW). Data loading is not timed: with workers it overlaps the steps.

Networks: ``--full-size`` uses full-size random weights in the official layout (the ones benchmarks/
pipeline.py builds once under ~/.cache/r2r-bench; ~5.5 GB); the default is the test suite's tiny
release (tests/tiny.py, built in a temporary folder); ``--weights DIR`` a real release. The Clear-VAE
stage's contrastive loss uses random VGG16 weights (the cost is the same). ``--size`` is the unet /
controller resolution; the Clear-VAE stage trains at ``--vae-size`` (default half of it, as the
reference: 256 for 512).

``--baseline`` runs every stage a second time with the trainer's settings before these rules (the shipped
configs: fp16 on CUDA / fp32 on a CPU, gradient checkpointing as the config had it -- on for unet and
controller -- torch's default AdamW, no TF32 or cudnn.benchmark) and prints the ratio.

Printed: a table per stage and variant (images/s, s/step, peak memory -- ``torch.cuda.max_memory_allocated``
on CUDA, the process's RSS high-water mark reset at each stage on a CPU -- and the rules chosen),
then one JSON line: ``{"benchmark": "train_throughput", "device", "train_img_per_s": {stage: ...},
"peak_memory_bytes", "estimate_bytes", "rules": {stage: {...}}, "baseline_img_per_s", "speedup_vs_baseline",
"settings"}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import measure  # noqa: E402

STAGES = ("clear_vae", "unet", "controller")
DTYPES = {"auto": "auto", "float32": "no", "float16": "fp16", "bfloat16": "bf16"}
#: what the shipped configs set before the rules (training/configs/*.yaml): the baseline variant
BASELINE_CHECKPOINTING = {"clear_vae": False, "unet": True, "controller": True}


def _release(args, tmp: Path) -> Path:
    if args.weights:
        return Path(args.weights)
    if args.full_size:
        from pipeline import DEFAULT_WEIGHTS_CACHE, make_random_weights

        return make_random_weights(Path(args.weights_cache or DEFAULT_WEIGHTS_CACHE))
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_release

    return make_tiny_release(tmp / "tiny_release")


def _config(stage: str, release: Path, args, precision: str, checkpointing):
    from training.config import load_config

    size = args.vae_size if stage == "clear_vae" else args.size
    overrides = [f"init.release={release}", f"data.train=[{{type: layout, root: {release}}}]",
                 f"data.resolution={size}", f"train.batch_size={args.batch}", f"train.mixed_precision={precision}",
                 f"train.gradient_checkpointing={checkpointing}", f"train.compile={str(args.compile).lower()}",
                 "loss.vgg16=random-weights-for-tests", "loss.cr_weight=0.3"]
    return load_config(None, stage=stage, overrides=overrides)


def _batch(stage: str, batch: int, size: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)  # a synthetic training batch, not sampling noise
    real = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    gain = 0.6 + 0.8 * torch.rand(batch, 3, 1, 1, generator=g)  # a colour cast inside the mask: a disharmony
    out = {"real": real, "composite": torch.where(mask > 0, (real + 1) * gain - 1, real).clamp(-1, 1), "mask": mask}
    if stage == "controller":
        out["hint"] = torch.rand(batch, 7, size, size, generator=g)
    return {k: v.to(device) for k, v in out.items()}


def run_stage(stage: str, release: Path, args, device, variant: str) -> dict:
    """Build the stage, apply the rules (or the baseline settings), time the optimizer steps."""
    import torch

    from training import speed
    from training.stages import build_stage, enable_gradient_checkpointing
    from training.trainer import item_generators

    facts0 = speed.probe_device(device)
    if variant == "baseline":
        precision = "fp16" if device.type == "cuda" else "no"
        why, setting = "baseline: the shipped configs' fp16 (fp32 on a CPU)", BASELINE_CHECKPOINTING[stage]
    else:
        precision, why = speed.choose_precision(DTYPES[args.dtype], device.type, facts0.bf16)
        setting = {"auto": "auto", "on": True, "off": False}[args.gradient_checkpointing]
    cfg = _config(stage, release, args, precision, str(setting).lower())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    measure.reset_peak(device)  # this stage's peak alone (on a CPU too)
    torch.manual_seed(0)  # the networks' random initialisation, not sampling noise
    module, _ = build_stage(cfg, device, speed.frozen_weight_dtype(precision, device.type))
    params = [p for p in module.net.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    weights_bytes = sum(t.numel() * t.element_size() for m in [module] + [v for v in module.aux.values()
                        if isinstance(v, torch.nn.Module)] for t in m.parameters())
    plan = speed.plan_speed(cfg.train, stage=stage, resolution=cfg.data.resolution, num_workers=0,
                            facts=speed.probe_device(device), precision=precision, precision_reason=why,
                            trainable_params=n_params)
    if variant == "baseline":
        plan.fused_adamw = plan.tf32 = plan.compile = False
    if plan.gradient_checkpointing and setting == "auto":
        enable_gradient_checkpointing(module)
    if plan.compile:
        speed.compile_network(module.net)
    optimizer = speed.make_adamw(params, cfg.train, fused=plan.fused_adamw)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    size = cfg.data.resolution
    batch = _batch(stage, args.batch, size, device)
    module.train()
    times = []
    with speed.tf32_enabled(plan.tf32):
        for i in range(args.warmup + args.steps):
            gens = item_generators(0, i, range(args.batch))  # the trainer's per-item generators
            measure.sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss, _ = module(batch, gens)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if cfg.train.max_grad_norm > 0:  # as the trainer: 0 = no clipping
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            measure.sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise SystemExit(f"[train_throughput] {stage}: the loss became {loss.item()}")
    step_s = statistics.median(times)
    out = {"stage": stage, "variant": variant, "resolution": size, "batch": args.batch,
           "img_per_s": args.batch / step_s, "step_s": step_s, "step_s_all": [round(t, 4) for t in times],
           "peak_memory_bytes": measure.peak_bytes(device), "weights_bytes": int(weights_bytes),
           "estimate_bytes": int(plan.need_bytes + weights_bytes), "trainable_params": int(n_params),
           "rules": plan.summary()}
    del module, optimizer, params, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _gib(n) -> str:
    return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=sorted(DTYPES),
                   help="mixed precision: auto (the trainer's rule: bf16 where the GPU has it), float32, float16, bfloat16")
    p.add_argument("--size", type=int, default=64, help="unet / controller training resolution (multiple of 64)")
    p.add_argument("--vae-size", type=int, default=None, help="Clear-VAE stage resolution (default: half of --size)")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (kernels, autotuning, compilation)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--full-size", action="store_true", help="full-size random weights (official configs)")
    p.add_argument("--weights", default=None, help="a release folder (hub layout) instead of random weights")
    p.add_argument("--weights-cache", default=None, help="where --full-size keeps its random weights")
    p.add_argument("--gradient-checkpointing", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile the trained network")
    p.add_argument("--baseline", action="store_true",
                   help="also run the settings before the rules (fp16, checkpointing as configured, plain AdamW)")
    args = p.parse_args(argv)
    if args.size < 64 or args.size % 64:
        p.error(f"--size must be a multiple of 64, at least 64 (got {args.size})")
    args.vae_size = args.vae_size or max(64, args.size // 2 // 64 * 64)
    if args.vae_size < 64 or args.vae_size % 64:
        p.error(f"--vae-size must be a multiple of 64, at least 64 (got {args.vae_size})")
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device is visible to torch; for a dry run use --device cpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        device_name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    else:
        device_name = f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"
    weights = "release " + args.weights if args.weights else ("full-size random" if args.full_size else "tiny random")
    print(f"[train_throughput] {device_name}; {weights} weights; unet/controller {args.size}², clear_vae "
          f"{args.vae_size}²; batch {args.batch}; {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    env_before = os.environ.get("R2R_ALLOW_RANDOM_VGG")
    os.environ["R2R_ALLOW_RANDOM_VGG"] = "1"  # the contrastive loss's VGG16 with random weights: same cost
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="r2r-train-bench-") as tmp:
            release = _release(args, Path(tmp))
            for stage in args.stages:
                for variant in ("rules", "baseline") if args.baseline else ("rules",):
                    rows.append(run_stage(stage, release, args, device, variant))
                    r = rows[-1]
                    print(f"[train_throughput] {stage:10s} {variant:8s} {r['img_per_s']:8.2f} img/s "
                          f"{r['step_s']:7.3f} s/step  peak {_gib(r['peak_memory_bytes'])} GiB", flush=True)
    finally:
        if env_before is None:
            os.environ.pop("R2R_ALLOW_RANDOM_VGG", None)
        else:
            os.environ["R2R_ALLOW_RANDOM_VGG"] = env_before

    memory = "peak VRAM" if device.type == "cuda" else "peak RSS*"
    print(f"\n{'stage':10s} {'variant':8s} {'img/s':>8s} {'s/step':>7s} {memory + ' GiB':>14s} {'estimate GiB':>12s} "
          f"{'precision':>9s} {'grad ckpt':>9s} {'fused':>5s} {'tf32':>5s}")
    for r in rows:
        ru = r["rules"]
        print(f"{r['stage']:10s} {r['variant']:8s} {r['img_per_s']:8.2f} {r['step_s']:7.3f} "
              f"{_gib(r['peak_memory_bytes']):>14s} {_gib(r['estimate_bytes']):>12s} {ru['precision']:>9s} "
              f"{str(ru['gradient_checkpointing']):>9s} {str(ru['fused_adamw']):>5s} {str(ru['tf32']):>5s}")
    if device.type != "cuda":
        print("* the process's RSS high-water mark: it includes the stages measured before")
    rules = {r["stage"]: r for r in rows if r["variant"] == "rules"}
    base = {r["stage"]: r for r in rows if r["variant"] == "baseline"}
    speedup = {s: base[s]["step_s"] / rules[s]["step_s"] for s in base}
    if speedup:
        print("rules vs baseline (images/s): " + ", ".join(f"{s} {x:.2f}x" for s, x in speedup.items()))
    result = {
        "benchmark": "train_throughput", "device": device_name, "weights": weights,
        "train_img_per_s": {s: round(r["img_per_s"], 3) for s, r in rules.items()},
        "step_s": {s: round(r["step_s"], 4) for s, r in rules.items()},
        "peak_memory_bytes": {s: r["peak_memory_bytes"] for s, r in rules.items()},
        "estimate_bytes": {s: r["estimate_bytes"] for s, r in rules.items()},
        "rules": {s: r["rules"] for s, r in rules.items()},
        "baseline_img_per_s": {s: round(r["img_per_s"], 3) for s, r in base.items()},
        "speedup_vs_baseline": {s: round(x, 3) for s, x in speedup.items()},
        "settings": {"size": args.size, "vae_size": args.vae_size, "batch": args.batch, "steps": args.steps,
                     "warmup": args.warmup, "dtype": args.dtype, "gradient_checkpointing": args.gradient_checkpointing,
                     "compile": args.compile, "full_size": args.full_size},
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
