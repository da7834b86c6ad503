"""``python -m r2r infer-dataset``: harmonize a whole dataset split with R2RPipeline.

Batched, resumable (existing outputs are skipped, every file is written atomically) and
multi-GPU with accelerate: ``accelerate launch -m r2r infer-dataset ...`` splits the file list by
process index (item i goes to process i mod N). Outputs are PNGs named after the composite
(``<out>/<composite stem>.png``), the layout ``python -m r2r evaluate`` reads.

Every image gets its own generator seeded with ``--seed``, so results do not depend on the batch
size or the number of processes.
"""

from __future__ import annotations

import os
import sys


def add_arguments(p) -> None:
    p.add_argument("--weights", required=True,
                   help="R2R release: hub-layout folder (stable-diffusion-inpainting/ + clear_vae/) or hub repo id")
    p.add_argument("--data", required=True, help="dataset root (iHarmony4 / RPHarmony layout with <split>.jsonl or .txt)")
    p.add_argument("--split", default="test", help="split name (test, train, test_a ...) or a path to a .jsonl/.txt list")
    p.add_argument("--out", required=True, help="folder for the harmonized PNGs (<composite stem>.png)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images are batched)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (official: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of every image's generator (official: 0)")
    p.add_argument("--max-side", type=int, default=1024, help="working resolution (official: 1024)")
    p.add_argument("--resize-mode", choices=("fit", "pad", "square"), default="square",
                   help="working-resolution mode (official: square = squash to max-side x max-side)")
    p.add_argument("--output-size", type=int, default=0,
                   help="save as N x N (official evaluation: 256); 0 keeps the composite's size")
    p.add_argument("--no-paste-back", action="store_true", help="keep the model's background instead of the original")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="model precision (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (accelerate picks the device per process)")
    p.add_argument("--limit", type=int, default=0, help="only the first N items of the split (0 = all)")


def _check_args(args):
    from ..errors import R2RUserError

    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            raise R2RUserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_side < 64 or args.max_side % 64:
        raise R2RUserError(f"--max-side must be a multiple of 64 and at least 64 (official 1024), got {args.max_side}")
    if args.output_size < 0:
        raise R2RUserError(f"--output-size must be 0 (original size) or a positive size like 256, got {args.output_size}")


def output_path(out_dir: str, composite_path) -> str:
    return os.path.join(out_dir, os.path.splitext(os.path.basename(str(composite_path)))[0] + ".png")


def shard(items: list, process_index: int, num_processes: int) -> list:
    """The items of one process: every ``num_processes``-th item starting at ``process_index``."""
    return items[process_index::num_processes]


def run(args) -> int:
    import numpy as np
    import torch
    from accelerate import PartialState

    from ..dataset.layouts import read_split
    from ..dataset.writer import atomic_write_bytes, encode_image, read_image_rgb, read_mask_array
    from ..errors import R2RUserError
    from ..pipeline import R2RPipeline

    _check_args(args)
    # several processes without CUDA (torchrun on CPU): gloo
    state = PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    samples = read_split(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    stems = {}
    for s in samples:
        key = output_path(args.out, s.composite)
        if key in stems:
            raise R2RUserError(
                f"two listed composites map to the same output file {key}: {stems[key]} and {s.composite}; "
                "split the list per subset and use one --out folder for each"
            )
        stems[key] = s.composite
    mine = shard(samples, state.process_index, state.num_processes)
    todo = [s for s in mine if not os.path.exists(output_path(args.out, s.composite))]
    if state.is_main_process:
        os.makedirs(args.out, exist_ok=True)
    state.wait_for_everyone()
    skipped = len(mine) - len(todo)
    print(f"[infer-dataset] process {state.process_index}/{state.num_processes}: {len(todo)} to harmonize, "
          f"{skipped} already done, split {args.split!r} of {args.data}", file=sys.stderr, flush=True)
    if not todo:
        state.wait_for_everyone()
        return 0
    device = state.device if args.device == "auto" else args.device
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp16" if torch.device(device).type == "cuda" else "fp32"
    pipe = R2RPipeline.from_pretrained(args.weights, torch_dtype=dtype, device=device)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"infer-dataset[{state.process_index}]", disable=not state.is_main_process)
    done = 0
    i = 0
    while i < len(todo):
        chunk = todo[i : i + args.batch_size]
        i += len(chunk)
        loaded = []
        for s in chunk:
            comp = read_image_rgb(s.composite)
            mask = read_mask_array(s.mask)
            if mask.shape[:2] != comp.shape[:2]:
                import cv2

                mask = cv2.resize(mask.astype(np.uint8), (comp.shape[1], comp.shape[0]), interpolation=cv2.INTER_NEAREST)
            loaded.append((s, comp, mask))
        groups: dict[tuple, list] = {}
        for item in loaded:
            groups.setdefault(item[1].shape, []).append(item)
        for items in groups.values():
            comp = torch.from_numpy(np.stack([c for _, c, _ in items])).permute(0, 3, 1, 2).float() / 255.0
            mask = torch.from_numpy(np.stack([(m > (127 if m.dtype == np.uint8 else 0.5)) for _, _, m in items]))
            mask = mask.float()[:, None] if mask.ndim == 3 else mask.float()
            gens = [torch.Generator().manual_seed(args.seed) for _ in items]
            out = pipe(comp, mask, num_inference_steps=args.steps, generator=gens, max_side=args.max_side,
                       resize_mode=args.resize_mode, paste_back=not args.no_paste_back)
            for (s, _, _), img in zip(items, out.images):
                x = img.detach().float().clamp(0, 1)
                if args.output_size:
                    x = torch.nn.functional.interpolate(x[None], size=(args.output_size,) * 2, mode="bilinear",
                                                        antialias=True, align_corners=False)[0].clamp(0, 1)
                arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                atomic_write_bytes(output_path(args.out, s.composite), encode_image(arr, ".png"))
                done += 1
                bar.update(1)
    bar.close()
    print(f"[infer-dataset] process {state.process_index}: wrote {done} image(s) to {args.out}", file=sys.stderr, flush=True)
    state.wait_for_everyone()
    return 0
