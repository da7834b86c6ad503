"""A release folder as a whole: download it from the hub, check every component against its config.

:func:`download_release` backs ``python -m r2r download --to DIR``; :func:`check_release` backs
``--check DIR`` (file headers only: tensor names, shapes and dtypes, no weights loaded).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import R2RUserError
from ..fileio import check_writable_dir
from . import prompt
from .hub import check_repo_id, check_revision, hub_snapshot, is_offline
from .layout import (
    COMPONENT_LABELS,
    MODEL_COMPONENTS,
    OFFICIAL_REPO,
    RELEASE_COMPONENTS,
    find_weights_file,
    read_scheduler_config,
    release_paths,
    require_component_folder,
)
from .loading import empty_model, resolve_config
from .statedict import compare_state, mismatch_error, tensor_shapes, to_diffusers_state_dict


def _check_download_folder(to: Path) -> None:
    """``to`` is a folder we can write into, or can be created (nothing is created here)."""
    if to.exists():
        check_writable_dir(to, what="download folder", create=False)
        return
    parent = to.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise R2RUserError(f"Cannot create the download folder {to}: {parent} is a file, not a folder. "
                           "Choose another --to folder.")
    check_writable_dir(parent, what=f"folder that would hold {to}", create=False)


def download_release(to, repo_id: str = OFFICIAL_REPO, *, kinds=None, revision=None, local_files_only=None,
                     cache_prompt: bool = True) -> Path:
    """Download the release into ``to`` (hub layout) and cache the empty-prompt embedding there.

    Offline (``HF_HUB_OFFLINE`` or ``local_files_only``) ``to`` must already hold the files; nothing is
    created. Online the folder is created; files already there are kept (the download resumes).
    """
    check_repo_id(repo_id)
    kinds = list(RELEASE_COMPONENTS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in RELEASE_COMPONENTS]
    if unknown:
        raise R2RUserError(f"Unknown release component(s) {unknown}; choose from {list(RELEASE_COMPONENTS)}.")
    check_revision(revision)
    to = Path(to)
    _check_download_folder(to)
    offline = bool(local_files_only) or is_offline()
    created = not to.exists() and not offline
    if created:
        to.mkdir(parents=True)
    try:
        root = hub_snapshot(repo_id, kinds, local_dir=to, local_files_only=local_files_only, revision=revision)
    except BaseException:
        if created:  # leave nothing behind for a download that never started
            with contextlib.suppress(OSError):
                to.rmdir()
        raise
    if cache_prompt and {"text_encoder", "tokenizer"} <= set(kinds):
        paths = release_paths(root)
        prompt.empty_prompt_embeds(root, paths["text_encoder"], paths["tokenizer"])
    return root


def check_component(kind: str, path, config=None) -> dict:
    """Verify one component's files against its config without loading weights; returns a report row."""
    path = Path(path)
    row = {"component": kind, "path": str(path), "ok": False, "file": None, "format": None,
           "tensors": 0, "expected": 0, "dtypes": [], "problem": ""}
    try:
        if path.is_dir():
            require_component_folder(kind, path, path.parent)
        cfg, _ = resolve_config(kind, path, config)
        file = find_weights_file(path, COMPONENT_LABELS[kind]) if path.is_dir() else path
        row["file"] = str(file)
        shapes = tensor_shapes(file)
        state, unmatched, fmt = to_diffusers_state_dict(kind, shapes, cfg)
        row["format"] = fmt
        expected = empty_model(kind, cfg, file).state_dict()
        row["tensors"], row["expected"] = len(state), len(expected)
        row["dtypes"] = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
        missing, unexpected, bad = compare_state(expected, state, unmatched)
        if missing or unexpected or bad:
            row["problem"] = str(mismatch_error(kind, file, list(state) + unmatched, missing, unexpected, bad))
        else:
            row["ok"] = True
    except R2RUserError as exc:
        row["problem"] = str(exc)
    return row


def check_release(root) -> list[dict]:
    """Rows for unet/controller/clear_vae (+ scheduler, empty prompt) of a release folder."""
    paths = release_paths(root)
    rows = [check_component(kind, paths[kind]) for kind in MODEL_COMPONENTS]
    sched = paths["scheduler"] / "scheduler_config.json"
    row = {"component": "scheduler", "path": str(sched), "ok": True,
           "problem": "" if sched.is_file() else "absent: the official scheduler config bundled with r2r is used"}
    try:
        read_scheduler_config(paths["scheduler"])
    except R2RUserError as exc:
        row.update(ok=False, problem=str(exc))
    rows.append(row)
    cached = prompt.find_cached_prompt(root, None, paths["text_encoder"])
    te_ok = (paths["text_encoder"] / "config.json").is_file() and (paths["tokenizer"] / "vocab.json").is_file()
    rows.append({
        "component": "empty prompt", "path": str(Path(root) / prompt.CACHE_NAME), "ok": cached is not None or te_ok,
        "problem": "" if cached is not None else (
            "not cached yet: computed from text_encoder/ on first load" if te_ok else
            "neither the cached embedding nor text_encoder/ + tokenizer/ are present"),
    })
    return rows
