"""``python -m r2r infer-dataset``: harmonize a whole dataset split with R2RPipeline.

Batched, resumable (existing outputs are skipped, never replaced; every file is written atomically,
a full disk stops the run with the images written so far complete) and
multi-GPU with accelerate: ``accelerate launch -m r2r infer-dataset ...`` splits the file list by
process index (item i goes to process i mod N). Outputs are PNGs named after the composite
(``<out>/<composite stem>.png``), the layout ``python -m r2r evaluate`` reads.

Every image gets its own generator seeded with ``--seed``, so results do not depend on the batch
size or the number of processes.
"""

from __future__ import annotations

import os
import re
import sys

from ..devices import DTYPE_CHOICES


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
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="model precision (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (accelerate picks the device per process)")
    p.add_argument("--limit", type=int, default=0, help="only the first N items of the split (0 = all)")


#: the seeds torch.Generator.manual_seed accepts from 0 up
SEED_MAX = 2**64 - 1


def check_args(args) -> None:
    """Numbers, the weights source, the dataset folder and the device, before anything is loaded."""
    from ..dataset.layouts import check_folder
    from ..errors import R2RUserError

    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            raise R2RUserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_side < 64 or args.max_side % 64:
        raise R2RUserError(f"--max-side must be a multiple of 64 and at least 64 (official 1024), got {args.max_side}")
    if args.output_size < 0:
        raise R2RUserError(f"--output-size must be 0 (original size) or a positive size like 256, got {args.output_size}")
    if args.limit < 0:
        raise R2RUserError(f"--limit must be 0 (all items) or a positive count, got {args.limit}")
    if not 0 <= args.seed <= SEED_MAX:
        raise R2RUserError(f"--seed must be in 0..{SEED_MAX}, got {args.seed}")
    weights = str(args.weights)
    if os.path.exists(weights):
        if not os.path.isdir(weights):
            raise R2RUserError(f"--weights {weights} is a file; pass the release folder (with stable-diffusion-"
                               "inpainting/ and clear_vae/) or a hub repo id such as 1243asdad/region2region")
    elif not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", weights) or weights.startswith((".", "/")):
        raise R2RUserError(f"--weights {weights} is neither an existing folder nor a hub repo id (owner/name); "
                           "check the path or run `python -m r2r download` first")
    check_folder(args.data, "--data", "pass the dataset root (the folder that holds test.jsonl)")
    if args.device != "auto":
        from ..devices import resolve_device

        resolve_device(args.device)


def check_outputs(out_dir: str, samples) -> dict:
    """output path -> composite for every sample; refuses two samples with one output file, an output file
    that is one of the inputs and a name longer than the file system takes, and checks that ``out_dir``
    can be written. Existing outputs are never replaced (they are skipped: the run resumes)."""
    from ..errors import R2RUserError
    from ..fileio import check_name_length, check_writable_dir

    inputs = {os.path.realpath(p) for s in samples for p in (s.composite, s.mask, s.real)}
    outputs: dict[str, object] = {}
    for s in samples:
        key = output_path(out_dir, s.composite)
        if key in outputs:
            raise R2RUserError(
                f"two listed composites map to the same output file {key}: {outputs[key]} and {s.composite}; "
                "split the list per subset and use one --out folder for each"
            )
        if os.path.realpath(key) in inputs:
            raise R2RUserError(f"--out {out_dir} would overwrite the input {key}; choose an output folder outside "
                               "the dataset's image folders")
        outputs[key] = s.composite
    check_writable_dir(out_dir, what="output folder (--out)")
    for key in outputs:
        check_name_length(key, "output image")
    return outputs


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
    from ..devices import resolve_dtype
    from ..fileio import OutputWriteError, read_image, read_mask, write_image
    from ..pipeline import R2RPipeline
    from ..pipeline.noise import SharedSeed

    check_args(args)
    # several processes without CUDA (torchrun on CPU): gloo
    state = PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    samples = read_split(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    check_outputs(args.out, samples)
    mine = shard(samples, state.process_index, state.num_processes)
    todo = [s for s in mine if not os.path.exists(output_path(args.out, s.composite))]
    state.wait_for_everyone()
    skipped = len(mine) - len(todo)
    print(f"[infer-dataset] process {state.process_index}/{state.num_processes}: {len(todo)} to harmonize, "
          f"{skipped} already done, split {args.split!r} of {args.data}", file=sys.stderr, flush=True)
    if not todo:
        state.wait_for_everyone()
        return 0
    device = state.device if args.device == "auto" else args.device
    pipe = R2RPipeline.from_pretrained(args.weights, torch_dtype=resolve_dtype(args.dtype, device), device=device)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"infer-dataset[{state.process_index}]", disable=not state.is_main_process)
    done = 0
    i = 0
    while i < len(todo):
        chunk = todo[i : i + args.batch_size]
        i += len(chunk)
        loaded = []
        for s in chunk:
            comp = read_image(s.composite)
            mask = read_mask(s.mask)
            if mask.shape[:2] != comp.shape[:2]:
                import cv2

                mask = cv2.resize(mask, (comp.shape[1], comp.shape[0]), interpolation=cv2.INTER_NEAREST)
            loaded.append((s, comp, mask))
        groups: dict[tuple, list] = {}
        for item in loaded:
            groups.setdefault(item[1].shape, []).append(item)
        for items in groups.values():
            comp = torch.from_numpy(np.stack([c for _, c, _ in items])).permute(0, 3, 1, 2).float() / 255.0
            mask = torch.from_numpy(np.stack([m >= 128 for _, _, m in items]))
            mask = mask.float()[:, None] if mask.ndim == 3 else mask.float()
            # every image its own generator with the same seed: a picture's result does not depend on its batch
            out = pipe(comp, mask, num_inference_steps=args.steps, generator=SharedSeed(args.seed),
                       max_side=args.max_side,
                       resize_mode=args.resize_mode, paste_back=not args.no_paste_back)
            for (s, _, _), img in zip(items, out.images):
                x = img.detach().float().clamp(0, 1)
                if args.output_size:
                    x = torch.nn.functional.interpolate(x[None], size=(args.output_size,) * 2, mode="bilinear",
                                                        antialias=True, align_corners=False)[0].clamp(0, 1)
                arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                try:
                    write_image(output_path(args.out, s.composite), arr)
                except OutputWriteError as exc:  # disk full...: the images written so far stay; rerun resumes
                    raise OutputWriteError(f"infer-dataset stopped: {exc} The {done + skipped} image(s) already in "
                                           f"{args.out} are complete; run the same command again to resume.") from exc
                done += 1
                bar.update(1)
    bar.close()
    print(f"[infer-dataset] process {state.process_index}: wrote {done} image(s) to {args.out}", file=sys.stderr, flush=True)
    state.wait_for_everyone()
    return 0
