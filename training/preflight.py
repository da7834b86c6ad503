"""Everything the trainer checks before it loads a model, and the only place that changes an output folder's
history (moving an old run aside, superseding newer checkpoints).

Rules (docs/training.md, "Output folders and resume"):

* a used output folder (not empty) needs ``--resume`` (continue) or ``--overwrite`` (start over: the old
  folder is moved to ``<dir>.previous-<time>``, nothing is deleted); otherwise the run stops with exit 2;
* ``--resume`` refuses a checkpoint whose run-defining settings (:data:`RUN_KEYS`, the data items, the
  number of processes) differ from this config unless ``--force-resume``;
* the data sources are scanned (:mod:`training.scan`); bad items stop the run unless ``--skip-bad-files``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from r2r.errors import R2RUserError
from r2r.fileio import free_name

from . import checkpoint as ckpt
from .folderlock import LOCK_FILE, OutputLock
from .scan import bad_files_message, fingerprint, record_key, scan_records, write_cache

#: config keys that change what a run computes; a resume with any of them changed needs --force-resume
RUN_KEYS = (
    "stage", "seed", "init.release", "init.weights", "init.unet", "init.vae",
    "data.train", "data.resolution", "data.flip", "data.crop_enabled", "data.crop",
    "train.batch_size", "train.gradient_accumulation_steps", "train.learning_rate", "train.weight_decay",
    "train.adam_beta1", "train.adam_beta2", "train.adam_epsilon", "train.lr_scheduler", "train.lr_warmup_steps",
    "train.max_grad_norm", "train.mixed_precision", "train.low_timestep_prob", "train.low_timestep_max",
    "train.ema", "loss.cr_weight", "loss.vgg16",
)
#: LR schedules whose value does not depend on train.max_steps (raising max_steps continues the same run)
STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")
BAD_FILES = "bad_files.txt"


@dataclass
class RunOptions:
    resume: str | None = None
    overwrite: bool = False
    force_resume: bool = False
    skip_bad_files: bool = False
    stop_after: int | None = None


@dataclass
class RunPlan:
    """What :func:`plan_run` decided; :func:`commit` carries it out."""

    mode: str  # "fresh" | "resume" | "overwrite"
    resume_dir: str | None = None
    saved: dict | None = None
    differences: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # newer checkpoints moved aside on a forced rollback
    bad: list = field(default_factory=list)  # [(record, problem)]
    scan_cache: dict = field(default_factory=dict)
    train_fingerprint: dict = field(default_factory=dict)
    moved_to: str | None = None
    lock: OutputLock | None = None
    committed: bool = False  # commit() ran: the folder now holds this run
    release_aside: bool = False  # output.release: move the old component aside first (--overwrite, not our folder)

    def release(self) -> None:
        """Let the output folder go; before :func:`commit`, folders the lock created (still empty) are removed."""
        if self.lock is not None:
            self.lock.release(cleanup=not self.committed)
            self.lock = None

    @property
    def bad_keys(self) -> list[str]:
        return sorted({record_key(r) for r, _ in self.bad})


def _get(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _norm(value):
    return json.loads(json.dumps(value, default=list))


# ----------------------------------------------------------------------------- options and paths
def check_options(opts: RunOptions) -> None:
    if opts.resume is not None and opts.overwrite:
        raise R2RUserError("--resume and --overwrite contradict each other: --resume continues the run in the output "
                           "folder, --overwrite starts over (moving the old run aside). Pass one of them")
    if opts.force_resume and opts.resume is None:
        raise R2RUserError("--force-resume only applies with --resume latest|DIR; add --resume or drop --force-resume")
    if opts.resume is not None and not str(opts.resume).strip():
        raise R2RUserError("--resume needs 'latest' or a checkpoint folder (…/checkpoints/checkpoint-NNNNNN)")
    if opts.stop_after is not None and opts.stop_after < 1:
        raise R2RUserError(f"--stop-after must be a step number >= 1, got {opts.stop_after}")


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not value.endswith(
        (".safetensors", ".ckpt", ".pth", ".bin", ".pt"))


def _check_creatable(path: str, key: str) -> None:
    """``path`` is a writable folder, or could be created (without creating it)."""
    p = Path(path).absolute()
    if p.exists():
        if not p.is_dir():
            raise R2RUserError(f"{key} {path} is a file, not a folder; give a folder path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise R2RUserError(f"{key} {path} is not writable; fix its permissions or choose another folder")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise R2RUserError(f"{key} {path} cannot be created: {parent} is a file; choose another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise R2RUserError(f"{key} {path} cannot be created: {parent} is not writable; choose another folder")


#: the longest paths the trainer writes under output.dir / output.release (<pid> and <step> at their widest)
_WRITTEN_UNDER_OUTPUT = (
    "checkpoints/checkpoint-<step>.tmp-<pid>/optimizer.safetensors.tmp-<pid>",
    "checkpoints/superseded-at-YYYYmmdd-HHMMSS-NN/checkpoint-<step>",
    "stable-diffusion-inpainting/controlnet.tmp-<pid>/diffusion_pytorch_model.safetensors",
    "samples/step-<step>.png.tmp-<pid>",
)
_WRITTEN_UNDER_RELEASE = (
    "stable-diffusion-inpainting/controlnet.tmp-<pid>/diffusion_pytorch_model.safetensors",
    "stable-diffusion-inpainting/safety_checker.tmp-<pid>/model.fp16.safetensors.tmp-<pid>",
)


def _limits(path: str) -> tuple[int, int]:
    """(longest name, longest path) in bytes on the file system that holds (or would hold) ``path``."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX")), int(os.pathconf(probe, "PC_PATH_MAX")) - 1
    except (OSError, ValueError, AttributeError):
        return 255, 4095


def check_name_lengths(path: str, key: str, written=None, *, max_steps: int = 0, aside: bool = False) -> None:
    """Refuse an output folder whose name, or a path the run would write under it (``written``, default: what
    goes under output.dir), is longer than the file system allows -- before anything is written (the write
    would fail hours later otherwise)."""
    written = _WRITTEN_UNDER_OUTPUT if written is None else written
    name_max, path_max = _limits(path)
    full = os.path.abspath(path)
    wide = {"<pid>": "9" * 7, "<step>": "9" * max(6, len(str(max_steps)))}
    names = [part for part in full.split(os.sep) if part]
    if aside:  # --overwrite moves the folder to <dir>.previous-<time>
        names.append(os.path.basename(os.path.normpath(full)) + ".previous-YYYYmmdd-HHMMSS-NN")
    for name in names:
        if len(name.encode("utf-8", "surrogateescape")) > name_max:
            what = "with --overwrite the moved-aside name " if name.endswith("-NN") else "the name "
            raise R2RUserError(
                f"{key} {path}: {what}{name[:50]!r}... is {len(name.encode('utf-8', 'surrogateescape'))} bytes, longer "
                f"than the {name_max} the file system allows; choose a shorter {key}. Nothing was written.")
    for rel in written:
        for token, value in wide.items():
            rel = rel.replace(token, value)
        longest = os.path.join(full, rel)
        if len(longest.encode("utf-8", "surrogateescape")) > path_max:
            raise R2RUserError(
                f"{key} {path}: the run writes paths such as {rel} under it, {len(longest)} characters in all, longer "
                f"than the {path_max} the file system allows; choose a shorter path for {key}. Nothing was written.")


def input_paths(cfg) -> list[tuple[str, str]]:
    """``(config key, local path)`` of every input the config reads."""
    out = []
    for section in ("train", "val"):
        for i, src in enumerate(getattr(cfg.data, section)):
            out.append((f"data.{section}[{i}].root", src.root))
            if src.type == "folder":
                out.append((f"data.{section}[{i}].masks", src.masks or os.path.join(src.root, "masks")))
    for key in ("release", "weights", "unet", "vae"):
        value = getattr(cfg.init, key)
        if value and os.path.exists(value):
            out.append((f"init.{key}", value))
    if cfg.loss.vgg16 and os.path.exists(cfg.loss.vgg16):
        out.append(("loss.vgg16", cfg.loss.vgg16))
    return out


def check_paths(cfg) -> None:
    """Inputs exist, outputs can be written -- before anything is loaded."""
    from .losses import RANDOM_VGG

    for section in ("train", "val"):
        for i, src in enumerate(getattr(cfg.data, section)):
            key = f"data.{section}[{i}]"
            if not os.path.isdir(src.root):
                what = "the dataset root (with train.jsonl / test.jsonl)" if src.type == "layout" else "the image folder"
                raise R2RUserError(f"{key}.root {src.root} is not a folder; it should be {what}")
    local_only = {"vae"} | ({"weights"} if cfg.stage == "clear_vae" else set())
    for key in ("release", "weights", "unet", "vae"):
        value = getattr(cfg.init, key)
        if not value or os.path.exists(value) or (key == "weights" and value == "from_unet"):
            continue
        if key in local_only or not _looks_like_hub_id(value):
            raise R2RUserError(f"init.{key} {value} does not exist; give an existing file or folder "
                               "(see docs/training.md, 'Config reference')")
    if cfg.stage == "clear_vae" and cfg.loss.cr_weight > 0 and cfg.loss.vgg16 and cfg.loss.vgg16 != RANDOM_VGG \
            and not os.path.isfile(cfg.loss.vgg16):
        raise R2RUserError(f"loss.vgg16 {cfg.loss.vgg16} is not a file; download vgg16-397923af.pth (docs/training.md, "
                           "'VGG16 weights') or set loss.cr_weight: 0")
    _check_creatable(cfg.output.dir, "output.dir")
    if cfg.output.release:
        _check_creatable(cfg.output.release, "output.release")


def _inside(child: str, parent: str) -> bool:
    c, p = os.path.realpath(child), os.path.realpath(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


# ----------------------------------------------------------------------------- output folder and resume
#: bookkeeping files that do not make a folder "used" (they are rewritten at every start)
NOT_A_RUN = ("data_check.json", BAD_FILES, LOCK_FILE)


def _own_bookkeeping(path: str, name: str) -> bool:
    """``data_check.json`` / ``bad_files.txt`` / the lock file as the trainer writes them (a file of the same
    name that is something else counts as the user's: the folder is then in use and is not overwritten)."""
    from .scan import CACHE_FORMAT

    try:
        if not os.path.isfile(path) or os.path.getsize(path) > (1 << 30):
            return False
        if name == "data_check.json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            return isinstance(data, dict) and data.get("format") == CACHE_FORMAT
        if name == BAD_FILES:
            with open(path, encoding="utf-8") as fh:
                return all("\t" in line for line in fh if line.strip())
    except (OSError, ValueError):
        return False
    return name == LOCK_FILE


def _used(out: str) -> list[str]:
    """The entries of the output folder that belong to a run (empty: a new run may start here)."""
    try:
        names = os.listdir(out)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not (n in NOT_A_RUN and _own_bookkeeping(os.path.join(out, n), n)))


def _describe(entries: list[str]) -> str:
    return ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")


def config_differences(saved: dict, cfg, num_processes: int, train_fp: dict) -> list[str]:
    """Run-defining settings of the checkpoint that differ from this run, as ``key: was X, now Y`` lines."""
    old, new = saved.get("config") or {}, _norm(cfg.to_dict())
    if _get(new, "train.mixed_precision") == "auto" and isinstance(old.get("train"), dict):
        new["train"]["mixed_precision"] = old["train"].get("mixed_precision")  # auto keeps the run's precision
    keys = list(RUN_KEYS)
    if cfg.train.lr_scheduler not in STEP_FREE_SCHEDULES:
        keys.append("train.max_steps")  # the schedule's shape depends on it
    diffs = [f"{k}: was {_get(old, k)!r}, now {_get(new, k)!r}" for k in keys if _norm(_get(old, k)) != _get(new, k)]
    if int(saved.get("num_processes", num_processes)) != num_processes:
        diffs.append(f"processes: was {saved.get('num_processes')}, now {num_processes}")
    fp = saved.get("data_fingerprint")
    if fp and fp != train_fp:
        diffs.append(f"data.train items: was {fp.get('items')} (hash {fp.get('sha256')}), now {train_fp['items']} "
                     f"(hash {train_fp['sha256']}) -- files were added, removed or renamed")
    return diffs


def _resume_target(cfg, opts: RunOptions, entries: list[str]) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from (None: nothing to resume, start at step 0) and newer checkpoints of
    the same folder that a rollback would supersede."""
    out = cfg.output.dir
    dirs = ckpt.checkpoint_dirs(out)
    if opts.resume == "latest":
        if dirs:
            return dirs[-1], []
        if entries:
            raise R2RUserError(
                f"--resume latest: the output folder {out} holds no complete checkpoint (it holds {_describe(entries)}), "
                "so there is nothing to continue. Start over with --overwrite (the old folder is moved aside) or "
                "choose another --output-dir")
        return None, []
    target = opts.resume
    if not os.path.isfile(os.path.join(target, ckpt.STATE_FILE)):
        raise R2RUserError(
            f"--resume {target} is not a training checkpoint (no {ckpt.STATE_FILE} in it); pass 'latest' or a "
            f"{out}/checkpoints/{ckpt.CHECKPOINT_PREFIX}NNNNNN folder")
    if not _inside(target, os.path.join(out, "checkpoints")):
        if entries:
            raise R2RUserError(
                f"--resume {target} is a checkpoint of another folder, but the output folder {out} already holds a run "
                f"({_describe(entries)}); continue that checkpoint into an empty --output-dir")
        return target, []
    def step_of(path: str) -> int:
        name = os.path.basename(os.path.normpath(path))
        return int(name[len(ckpt.CHECKPOINT_PREFIX):]) if name[len(ckpt.CHECKPOINT_PREFIX):].isdigit() else -1

    newer = [d for d in dirs if step_of(d) > step_of(target)]
    return target, newer


def plan_run(cfg, opts: RunOptions, num_processes: int, log) -> RunPlan:
    """The output folder's lock first (the folder is created for it when missing), then all checks: paths,
    output folder state, resume compatibility, data scan. No other writes. The lock is held from here on
    (:class:`OutputLock`); on failure, or by ``plan.release()`` before :func:`commit`, it is let go and a
    folder it created is removed again (still empty: nothing was written)."""
    check_options(opts)
    check_name_lengths(cfg.output.dir, "output.dir", max_steps=cfg.train.max_steps)
    if cfg.output.release:
        check_name_lengths(cfg.output.release, "output.release", _WRITTEN_UNDER_RELEASE)
    _check_creatable(cfg.output.dir, "output.dir")
    plan = RunPlan(mode="fresh", lock=OutputLock(cfg.output.dir, create=True))
    try:
        check_paths(cfg)
        _plan(plan, cfg, opts, num_processes, log)
    except BaseException:
        plan.release()
        raise
    return plan


def _plan(plan: RunPlan, cfg, opts: RunOptions, num_processes: int, log) -> None:
    from .data import list_sources

    out = cfg.output.dir
    entries = _used(out)
    if opts.resume is not None:
        plan.resume_dir, plan.superseded = _resume_target(cfg, opts, entries)
        if plan.resume_dir is not None:
            plan.mode = "resume"
            plan.saved = ckpt.read_trainer_state(plan.resume_dir)
            if plan.saved.get("stage") != cfg.stage:
                raise R2RUserError(f"checkpoint {plan.resume_dir} is from stage {plan.saved.get('stage')!r}, not "
                                   f"{cfg.stage!r}; resume with the command and config of that stage")
            step = int(plan.saved.get("global_step", 0))
            if cfg.train.max_steps < step:
                raise R2RUserError(f"train.max_steps {cfg.train.max_steps} is below the checkpoint's step {step}; "
                                   f"to continue training raise it (e.g. --max-steps {2 * step})")
            if opts.stop_after is not None and opts.stop_after <= step:
                raise R2RUserError(f"--stop-after {opts.stop_after} is not after the checkpoint's step {step}; "
                                   "give a later step")
        else:
            log(f"--resume latest: {out} holds no run yet, starting at step 0")
    elif entries:
        if not opts.overwrite:
            raise R2RUserError(
                f"the output folder {out} already holds a run ({_describe(entries)}). Pass --resume latest to continue "
                f"it, or --overwrite to start over (the old folder is moved to {out}.previous-<time>, nothing is "
                "deleted), or choose another --output-dir")
        for key, path in input_paths(cfg):
            if _inside(path, out):
                raise R2RUserError(f"--overwrite would move the output folder {out} aside, but it holds an input of "
                                   f"this run ({key} {path}); choose another --output-dir")
        if _inside(os.getcwd(), out):
            raise R2RUserError(f"--overwrite would move the output folder {out} aside, but it holds the current "
                               "directory; choose another --output-dir")
        check_name_lengths(out, "output.dir", (), aside=True)
        plan.mode = "overwrite"
    from .config import STAGE_COMPONENT_DIR
    from .release import check_release

    plan.release_aside = check_release(cfg.output.release, STAGE_COMPONENT_DIR[cfg.stage], opts.overwrite)
    # the data: listed and scanned before any model loads
    train_records, _ = list_sources(cfg.data.train)
    val_records, _ = list_sources(cfg.data.val) if cfg.data.val else ([], [])
    plan.bad, plan.scan_cache = scan_records(train_records + val_records, output_dir=out,
                                             workers=max(1, min(8, os.cpu_count() or 1)), log=log)
    if plan.bad and not opts.skip_bad_files:
        raise R2RUserError(
            f"{len(plan.bad)} training/validation item(s) cannot be used:\n{bad_files_message(plan.bad)}\n"
            "Fix or remove these files, or pass --skip-bad-files to train without them (the run then lists them in "
            f"{os.path.join(out, BAD_FILES)})")
    bad = set(plan.bad_keys)
    good_train = [r for r in train_records if record_key(r) not in bad]
    if not good_train:
        raise R2RUserError("no usable training item is left after leaving out the bad files; fix the data")
    plan.train_fingerprint = fingerprint(good_train)
    if plan.saved is not None:
        plan.differences = config_differences(plan.saved, cfg, num_processes, plan.train_fingerprint)
        if plan.superseded:
            plan.differences.append(
                f"checkpoint: {plan.resume_dir} is not the newest; resuming from it supersedes "
                f"{', '.join(os.path.basename(d) for d in plan.superseded)} (moved to checkpoints/superseded-<time>/)")
        if plan.differences and not opts.force_resume:
            raise R2RUserError(
                f"--resume {opts.resume}: this config differs from the checkpoint {plan.resume_dir} in what changes the "
                "run:\n  " + "\n  ".join(plan.differences) + "\nResume with the original settings, pass --force-resume "
                "to continue anyway (the changes are logged in metrics.jsonl), or start over with --overwrite")


def _aside_name(prefix: str) -> str:
    """``<prefix>-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2`` ... appended while taken)."""
    return free_name(f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def commit(plan: RunPlan, cfg, opts: RunOptions, log) -> None:
    """Carry out the plan (main process): move an old run aside, create the folder, record the data check."""
    out = cfg.output.dir
    plan.committed = True  # from here on the folder is this run's: a failure keeps what was written
    try:
        if plan.mode == "overwrite":
            plan.moved_to = _aside_name(f"{os.path.normpath(out)}.previous")
            if not plan.lock.moves_with_folder:
                plan.release()  # a lock file must be let go before its folder can move (Windows)
            os.rename(out, plan.moved_to)
            log(f"--overwrite: the previous run in {out} was moved to {plan.moved_to}")
            plan.release()  # the flock went with the old folder
            plan.lock = OutputLock(out, create=True)  # the new folder, locked before anything is written
        os.makedirs(out, exist_ok=True)
        if plan.superseded:
            dest = _aside_name(os.path.join(out, "checkpoints", "superseded-at"))
            os.makedirs(dest)
            for d in plan.superseded:
                os.rename(d, os.path.join(dest, os.path.basename(d)))
            log(f"newer checkpoints moved to {dest}")
        write_cache(out, plan.scan_cache)
        if plan.bad:
            text = "".join(f"{r.real}\t{problem}\n" for r, problem in plan.bad)
            from r2r.fileio import atomic_write_text

            atomic_write_text(os.path.join(out, BAD_FILES), text)
            log(f"--skip-bad-files: leaving out {len(plan.bad)} item(s) (listed in {os.path.join(out, BAD_FILES)}):\n"
                + bad_files_message(plan.bad))
    except OSError as exc:
        moved = f" The previous run was moved to {plan.moved_to} (intact)." if plan.moved_to else ""
        raise R2RUserError(f"cannot prepare the output folder {out}: {exc.strerror or exc}; check its permissions and "
                           f"free space, then run again.{moved}") from exc
    if plan.differences:
        log("warning: --force-resume with changed settings:\n  " + "\n  ".join(plan.differences))
