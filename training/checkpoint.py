"""Checkpoints (resumable training state), EMA, stage outputs, release assembly, logs and pictures.

Layout of ``output.dir``::

    checkpoints/checkpoint-000500/   accelerate state (model, optimizer, scheduler, scaler, EMA) + trainer_state.json
    <component>/                     the trained network as a diffusers folder (safetensors):
                                     clear_vae/, stable-diffusion-inpainting/unet/ or .../controlnet/
    r2r_training.json                metadata: stage, config, data, steps, metrics, init
    metrics.jsonl                    one JSON object per logged step / validation
    loss_curve.png                   the training loss (drawn with OpenCV)
    samples/step-000500.png          sample sheets (composite | prediction | ground truth)
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from r2r.errors import R2RUserError

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
METADATA_FILE = "r2r_training.json"


# ------------------------------------------------------------------------------ atomic files
def atomic_write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8"))


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def append_jsonl(path: str, obj) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=_json_default) + "\n")


def write_png(path: str, rgb_uint8: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb_uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Move a finished folder into place (the old one, if any, is removed only after the new one exists)."""
    old = None
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_dirs(output_dir: str) -> list[str]:
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit()]
    names = [n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE))]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: int(n[len(CHECKPOINT_PREFIX):]))]


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """``latest`` -> newest complete checkpoint in output_dir (None when there is none); a path -> checked."""
    if not resume:
        return None
    if resume == "latest":
        dirs = checkpoint_dirs(output_dir)
        return dirs[-1] if dirs else None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise R2RUserError(
            f"--resume {resume!r} is not a training checkpoint (no {STATE_FILE} in it); pass a "
            f"{output_dir}/checkpoints/{CHECKPOINT_PREFIX}NNNNNN folder or 'latest'"
        )
    return resume


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: int) -> str:
    """accelerate state + trainer_state.json, written to a temp folder and renamed (a crash never leaves a
    half checkpoint that resume would pick up)."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"{CHECKPOINT_PREFIX}{step:06d}")
    tmp = f"{final}.tmp"
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(os.path.join(tmp, STATE_FILE), state)
        replace_dir(tmp, final)
        if total_limit > 0:
            for old in checkpoint_dirs(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as fh:
        return json.load(fh)


# ------------------------------------------------------------------------------ outputs
def save_component(model, output_dir: str, rel_dir: str) -> str:
    """``model.save_pretrained`` (safetensors) into ``output_dir/rel_dir`` atomically."""
    final = os.path.join(output_dir, rel_dir)
    tmp = f"{final}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, final)
    return final


def _link_or_copy_tree(src: str, dst: str) -> None:
    def copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def assemble_release(release_dir: str, base_release: str | None, component_src: str, rel_dir: str) -> str:
    """Write/update a full release folder (hub layout) with the trained component.

    Components the release folder lacks are copied (hard-linked when possible) from ``base_release``;
    then ``rel_dir`` (e.g. ``stable-diffusion-inpainting/unet``) is replaced by the trained one.
    """
    os.makedirs(release_dir, exist_ok=True)
    if base_release and os.path.abspath(base_release) != os.path.abspath(release_dir):
        if not os.path.isdir(base_release):
            raise R2RUserError(
                f"output.release needs a local base release to copy the other components from, but "
                f"{base_release!r} is not a folder; download it first (python -m r2r download) and set init.release"
            )
        for top in sorted(os.listdir(base_release)):
            src = os.path.join(base_release, top)
            dst = os.path.join(release_dir, top)
            if top.startswith(".") or top == METADATA_FILE:
                continue
            if os.path.isdir(src) and top == "stable-diffusion-inpainting":
                os.makedirs(dst, exist_ok=True)
                for sub in sorted(os.listdir(src)):
                    s2, d2 = os.path.join(src, sub), os.path.join(dst, sub)
                    if not os.path.exists(d2):
                        (_link_or_copy_tree(s2, d2) if os.path.isdir(s2) else shutil.copy2(s2, d2))
            elif not os.path.exists(dst):
                (_link_or_copy_tree(src, dst) if os.path.isdir(src) else shutil.copy2(src, dst))
    final = os.path.join(release_dir, rel_dir)
    tmp = f"{final}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    shutil.copytree(component_src, tmp)
    replace_dir(tmp, final)
    return final


def write_metadata(path: str, *, stage: str, config: dict, data: dict, steps: int, metrics: dict, info: dict,
                   component: str) -> None:
    from r2r import __version__

    atomic_write_json(path, {
        "format": "r2r-training-metadata/1",
        "r2r_version": __version__,
        "stage": stage,
        "component": component,
        "steps": steps,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "init": info,
        "data": data,
        "metrics": metrics,
        "config": config,
    })


# ------------------------------------------------------------------------------ pictures
def draw_loss_curve(path: str, steps: list[int], losses: list[float], title: str = "training loss",
                    width: int = 800, height: int = 400) -> None:
    """Loss curve PNG drawn with OpenCV (no matplotlib): raw loss in light blue, moving average in dark blue."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 40
    pw, ph = width - left - right, height - top - bottom
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    vals = np.asarray(losses, np.float64)
    ok = np.isfinite(vals)
    if ok.sum() >= 1:
        xs, ys = np.asarray(steps, np.float64)[ok], vals[ok]
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
        y0, y1 = ys.min(), ys.max()
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5 * abs(y0 or 1), y1 + 0.5 * abs(y1 or 1)

        def pts(x, y):
            px = left + (x - x0) / (x1 - x0) * pw
            py = top + ph - (y - y0) / (y1 - y0) * ph
            return np.stack([px, py], 1).round().astype(np.int32)

        cv2.polylines(img, [pts(xs, ys)], False, (235, 190, 140), 1, cv2.LINE_AA)
        k = max(1, len(ys) // 20)
        if k > 1:
            avg = np.convolve(ys, np.ones(k) / k, mode="valid")
            cv2.polylines(img, [pts(xs[k - 1:], avg)], False, (150, 60, 20), 2, cv2.LINE_AA)
        for frac in (0.0, 0.5, 1.0):
            y = y0 + frac * (y1 - y0)
            py = int(round(top + ph - frac * ph))
            cv2.putText(img, f"{y:.4g}", (4, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
            cv2.line(img, (left - 4, py), (left, py), (0, 0, 0), 1)
        for frac in (0.0, 0.5, 1.0):
            x = x0 + frac * (x1 - x0)
            px = int(round(left + frac * pw))
            cv2.putText(img, f"{int(round(x))}", (px - 10, top + ph + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(img, "step", (left + pw // 2 - 15, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    write_png(path, img[..., ::-1])  # drawn in BGR


def sample_sheet(rows: list[list[np.ndarray]], labels: list[str], tile: int = 256) -> np.ndarray:
    """Grid of ``HxWx3 uint8`` tiles (one row per example) with column labels on top."""
    import cv2

    cols = max(len(r) for r in rows)
    head = 24
    sheet = np.full((head + tile * len(rows), tile * cols, 3), 255, np.uint8)
    for j, lab in enumerate(labels[:cols]):
        cv2.putText(sheet, lab, (j * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            im = np.asarray(im)
            if im.ndim == 2:
                im = np.repeat(im[..., None], 3, 2)
            if im.shape[:2] != (tile, tile):
                interp = cv2.INTER_AREA if im.shape[0] > tile else cv2.INTER_NEAREST
                im = cv2.resize(im, (tile, tile), interpolation=interp)
            sheet[head + i * tile: head + (i + 1) * tile, j * tile:(j + 1) * tile] = im
    return sheet
