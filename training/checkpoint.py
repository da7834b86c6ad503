"""Checkpoints (resumable training state, no pickles), metrics log, stage outputs and release assembly.

Layout of ``output.dir``::

    checkpoints/checkpoint-000500/   model.safetensors       the trained network's state dict
                                     optimizer.safetensors   the optimizer's tensors (AdamW moments, steps)
                                     ema.safetensors         the EMA weights (when train.ema.enabled)
                                     trainer_state.json      step/epoch counters, loss history, config,
                                                             optimizer hyper-parameters, LR-scheduler,
                                                             grad-scaler and EMA settings (written last)
    <component>/                     the trained network as a diffusers folder (safetensors):
                                     clear_vae/, stable-diffusion-inpainting/unet/ or .../controlnet/
    r2r_training.json                metadata: stage, config, data, steps, metrics, init
    metrics.jsonl                    one JSON object per logged step / validation / run event (append-only)
    data_check.json                  the data scan's results, keyed by file size and mtime (a cache)
    bad_files.txt                    files left out with --skip-bad-files
    loss_curve.png                   the training loss (drawn with OpenCV)
    samples/step-000500.png          sample sheets (composite | prediction | ground truth)

Nothing in a checkpoint is a pickle: tensors are safetensors, everything else is JSON. The random
states are not stored: the trainer reseeds every random draw from (seed, step, item).
Every file is written through :func:`r2r.fileio.atomic_writer` (checkpoint files with fsync) into a
``.tmp-<pid>`` folder that is renamed when complete, so an interrupted save is never picked up.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time

from r2r.errors import R2RUserError
from r2r.fileio import TEMP_MARKER, append_bytes, atomic_write_bytes, atomic_writer

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
METADATA_FILE = "r2r_training.json"
#: the "format" field of METADATA_FILE (training/release.py reads it)
METADATA_FORMAT = "r2r-training-metadata/1"
METRICS_FILE = "metrics.jsonl"
#: written into every trainer_state.json; checkpoints without it are the old pickle-based format
CHECKPOINT_FORMAT = "r2r-training-checkpoint/2"
MODEL_FILE, OPTIMIZER_FILE, EMA_FILE = "model.safetensors", "optimizer.safetensors", "ema.safetensors"


# ------------------------------------------------------------------------------ files
def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def atomic_write_json(path, obj, *, fsync: bool = False) -> None:
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def append_jsonl(path, obj) -> None:
    """Append one JSON line (never rewrites the file) with :func:`r2r.fileio.append_bytes` (one ``O_APPEND``
    write, cut back when it fails: no half line stays); a line cut by an earlier crash is closed first."""
    line = (json.dumps(obj, default=_json_default) + "\n").encode("utf-8")
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
    append_bytes(path, line, what="metrics file")


def read_metrics(path) -> list[dict]:
    """The effective records of a metrics.jsonl: unreadable lines (cut by a crash) are skipped, and a
    ``{"event": "resume", "step": S}`` line supersedes the records after step S logged before it."""
    records: list[dict] = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            step = rec.get("step", 0)
            if isinstance(step, bool) or not isinstance(step, int):
                continue  # not a line the trainer wrote (edited by hand): ignored like a cut line
            if rec.get("event") == "resume":
                records = [r for r in records if "event" in r or r.get("step", 0) <= step]
            records.append(rec)
    return records


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Move a finished folder into place (the old one, if any, is removed only after the new one exists)."""
    old = None
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if old:
            os.replace(old, final_dir)  # put the old one back
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temp_dir_for(final: str):
    """A fresh ``<final>.tmp-<pid>`` folder; removed with everything in it when the block fails (disk full,
    name too long, interrupted), so a failed save leaves nothing half-written behind."""
    tmp = f"{final}{TEMP_MARKER}{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class TrainingWriteError(R2RUserError):
    """A file of the run could not be written while it trained (exit code 1): what was written before is kept."""


def write_failure(exc: OSError, output_dir: str) -> TrainingWriteError:
    """An OSError met while the run writes into ``output_dir`` as a user error: the folder, the cause, what
    is kept and what to do."""
    code = getattr(exc, "errno", None)
    where = getattr(exc, "filename", None) or output_dir
    kept = [os.path.basename(d) for d in checkpoint_dirs(output_dir)] if os.path.isdir(output_dir) else []
    keep = (f"The checkpoints written before are intact ({', '.join(kept[-3:])}); nothing was half-written. "
            if kept else "No checkpoint had been written yet; nothing was half-written. ")
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "no space left on the disk" if code == errno.ENOSPC else "the disk quota is used up"
        fix = ("Free some space on that disk (old checkpoints: lower log.checkpoints_total_limit), then continue "
               "with --resume latest" if kept else "Free some space on that disk, then run the command again")
        return TrainingWriteError(f"cannot write {where}: {why} for the output folder {output_dir}. {keep}{fix}.")
    if code == errno.ENAMETOOLONG:
        return TrainingWriteError(
            f"cannot write {where}: the path is longer than the file system allows under the output folder "
            f"{output_dir}. {keep}Choose a shorter --output-dir"
            + (" and continue from the newest checkpoint with --resume <output>/checkpoints/checkpoint-NNNNNN "
               "(into an empty --output-dir)." if kept else "."))
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return TrainingWriteError(
            f"cannot write {where}: permission denied or read-only file system in the output folder {output_dir}. "
            f"{keep}Fix the permissions" + (", then continue with --resume latest." if kept else ", then run again."))
    return TrainingWriteError(
        f"cannot write {where} in the output folder {output_dir} ({getattr(exc, 'strerror', None) or exc}). {keep}"
        "Check the disk, then " + ("continue with --resume latest." if kept else "run again."))


def _save_tensors(path: str, tensors: dict) -> None:
    """safetensors file, atomically and fsynced; tensors sharing memory are cloned (safetensors refuses them)."""
    from safetensors.torch import save_file

    seen, out = set(), {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen and v.numel() else v
        seen.add(key)
    with atomic_writer(path, fsync=True) as tmp:
        save_file(out, str(tmp))


def _load_tensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise R2RUserError(
            f"checkpoint file {path} cannot be read ({exc}); resume from an earlier checkpoint "
            "(--resume <output>/checkpoints/checkpoint-NNNNNN) or start over with --overwrite"
        ) from exc


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_dirs(output_dir: str) -> list[str]:
    """Complete checkpoints (their trainer_state.json exists) of ``output_dir``, oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit()]
    names = [n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE))]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: int(n[len(CHECKPOINT_PREFIX):]))]


def read_trainer_state(ckpt_dir: str) -> dict:
    """trainer_state.json of a checkpoint, checked: readable JSON, this format, all files present."""
    path = os.path.join(ckpt_dir, STATE_FILE)
    hint = "resume from another checkpoint (--resume <output>/checkpoints/checkpoint-NNNNNN) or start over with --overwrite"
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        raise R2RUserError(f"checkpoint {ckpt_dir} is damaged: {STATE_FILE} cannot be read ({exc}); {hint}") from exc
    from .statecheck import validate_trainer_state

    if not isinstance(state, dict):
        validate_trainer_state(state, path)  # names the file and says what the top level should be
    if state.get("format") not in (None, CHECKPOINT_FORMAT):
        raise R2RUserError(f"checkpoint {ckpt_dir} has the format {state['format']!r}, which this trainer does not "
                           f"know (it reads {CHECKPOINT_FORMAT!r}); resume it with the r2r version that wrote it")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise R2RUserError(
            f"checkpoint {ckpt_dir} was written by an older trainer in accelerate's pickle-based format, which this "
            "trainer does not load (a pickle can run code). Start over with --overwrite (the old run is moved "
            "aside) or train into another --output-dir"
        )
    validate_trainer_state(state, path)
    need = [MODEL_FILE, OPTIMIZER_FILE] + ([EMA_FILE] if state.get("ema") else [])
    missing = [n for n in need if not os.path.isfile(os.path.join(ckpt_dir, n))]
    if missing:
        raise R2RUserError(f"checkpoint {ckpt_dir} is incomplete (missing {', '.join(missing)}); {hint}")
    return state


def _optimizer_split(sd: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if hasattr(v, "shape"):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def _optimizer_join(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    for idx, values in meta.get("state", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, *, net, optimizer, lr_scheduler,
                    ema=None, total_limit: int = 0) -> str:
    """Write ``checkpoints/checkpoint-<step>`` (main process) via a temp folder that is renamed when complete."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"{CHECKPOINT_PREFIX}{step:06d}")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with temp_dir_for(final) as tmp:  # removed when any write fails: no half checkpoint stays
            os.makedirs(tmp)
            _save_tensors(os.path.join(tmp, MODEL_FILE), net.state_dict())
            opt_tensors, opt_meta = _optimizer_split(optimizer.state_dict())
            _save_tensors(os.path.join(tmp, OPTIMIZER_FILE), opt_tensors)
            ema_meta = None
            if ema is not None:
                ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
                _save_tensors(os.path.join(tmp, EMA_FILE), {str(i): p for i, p in enumerate(ema.shadow_params)})
            scaler = getattr(accelerator, "scaler", None)
            full = {"format": CHECKPOINT_FORMAT, **state, "optimizer": opt_meta,
                    "lr_scheduler": lr_scheduler.state_dict(),
                    "grad_scaler": scaler.state_dict() if scaler is not None else None, "ema": ema_meta}
            atomic_write_json(os.path.join(tmp, STATE_FILE), full, fsync=True)  # last: marks the folder complete
            replace_dir(tmp, final)
        if total_limit > 0:
            for old in checkpoint_dirs(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt_dir: str, state: dict, *, net, optimizer, lr_scheduler, ema=None) -> None:
    """Restore the network, optimizer, LR scheduler, grad scaler and EMA from a checkpoint (every process)."""
    model_state = _load_tensors(os.path.join(ckpt_dir, MODEL_FILE))
    try:
        net.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise R2RUserError(
            f"checkpoint {ckpt_dir} does not fit the network this config builds ({str(exc)[:300]}); resume with the "
            "config the checkpoint was written with"
        ) from exc
    part = OPTIMIZER_FILE
    try:
        optimizer.load_state_dict(_optimizer_join(_load_tensors(os.path.join(ckpt_dir, OPTIMIZER_FILE)),
                                                  state["optimizer"]))
        for group in optimizer.param_groups:  # torch does not compare the moments' shapes with the parameters'
            for p in group["params"]:
                for name, v in optimizer.state.get(p, {}).items():
                    if hasattr(v, "shape") and v.dim() > 0 and v.shape != p.shape:
                        raise ValueError(f"optimizer value {name!r} has the shape {tuple(v.shape)}, its parameter "
                                         f"{tuple(p.shape)}")
        part = f"{STATE_FILE} (lr_scheduler)"
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and state.get("grad_scaler"):
            part = f"{STATE_FILE} (grad_scaler)"
            scaler.load_state_dict(state["grad_scaler"])
        if ema is not None and state.get("ema"):
            part = EMA_FILE
            shadow = _load_tensors(os.path.join(ckpt_dir, EMA_FILE))
            ema.load_state_dict({**state["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
            ema.to(accelerator.device)
    except R2RUserError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise R2RUserError(
            f"checkpoint {ckpt_dir}: {part} does not fit this run ({type(exc).__name__}: {str(exc)[:300]}); it was "
            "edited, damaged or written for another network. Resume from an earlier checkpoint "
            "(--resume <output>/checkpoints/checkpoint-NNNNNN) or start over with --overwrite"
        ) from exc


# ------------------------------------------------------------------------------ outputs
def save_component(model, output_dir: str, rel_dir: str) -> str:
    """``model.save_pretrained`` (safetensors) into ``output_dir/rel_dir`` via a temp folder."""
    final = os.path.join(output_dir, rel_dir)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with temp_dir_for(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        replace_dir(tmp, final)
    return final


def write_metadata(path: str, *, stage: str, config: dict, data: dict, steps: int, metrics: dict, info: dict,
                   component: str) -> None:
    from r2r import __version__

    atomic_write_json(path, {
        "format": METADATA_FORMAT,
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
