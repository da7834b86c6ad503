"""The release folder a stage writes into (``output.release``): assembling it, and the rule for replacing.

A release folder is the trainer's own when it holds the ``r2r_training.json`` the trainer writes there
(checked like a config by :func:`read_metadata`). In its own release the trainer replaces the component
it trains (every component there is a copy: the trained ones also live in their runs' output folders, the
others in the base release). In any other folder -- a downloaded release, a folder of the user's -- an
existing component is replaced only with ``--overwrite``, and then moved to ``<component>.previous-<time>``
beside it first. Either way this is checked before any model loads (:func:`check_release`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

from r2r.errors import R2RUserError
from r2r.fileio import free_name

from .checkpoint import METADATA_FILE, METADATA_FORMAT, replace_dir, temp_dir_for
from .config import STAGE_COMPONENT_DIR, STAGES

log = logging.getLogger("r2r.training")


def read_metadata(path: str) -> dict:
    """An ``r2r_training.json``, checked: readable JSON, the trainer's format, its fields of the right kind."""
    fix = ("restore it from a copy, or delete it (the folder then counts as not the trainer's: replacing a "
           "component in it needs --overwrite)")
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise R2RUserError(f"{path} cannot be read as the trainer's metadata ({exc}); {fix}") from exc

    def bad(field, expected, value):
        raise R2RUserError(f"{path}: field {field!r} should be {expected}, but it holds {value!r}; the file was edited "
                           f"or damaged: {fix}")

    if not isinstance(meta, dict):
        bad("(top level)", "a mapping of fields", type(meta).__name__)
    if meta.get("format") != METADATA_FORMAT:
        bad("format", repr(METADATA_FORMAT), meta.get("format"))
    if meta.get("stage") not in STAGES:
        bad("stage", f"one of {', '.join(STAGES)}", meta.get("stage"))
    if meta.get("component") not in STAGE_COMPONENT_DIR.values():
        bad("component", f"one of {', '.join(STAGE_COMPONENT_DIR.values())}", meta.get("component"))
    steps = meta.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        bad("steps", "an integer >= 0", steps)
    for field in ("config", "data", "metrics", "init"):
        if not isinstance(meta.get(field), dict):
            bad(field, "a mapping", meta.get(field))
    return meta


def check_release(release_dir: str | None, rel_dir: str, overwrite: bool) -> bool:
    """Before the run: may the trained component replace ``release_dir/rel_dir``? Returns ``move_aside``
    (the old one is moved aside, not replaced in place); refuses without ``--overwrite`` when the folder
    is not the trainer's own."""
    if not release_dir or not os.path.exists(os.path.join(release_dir, rel_dir)):
        return False
    meta_path = os.path.join(release_dir, METADATA_FILE)
    if os.path.isfile(meta_path):
        read_metadata(meta_path)  # the trainer's own release (a damaged marker stops the run)
        return False
    if not overwrite:
        raise R2RUserError(
            f"output.release {release_dir} already holds {rel_dir}, and the trainer did not assemble that folder (no "
            f"{METADATA_FILE} in it), so it is not replaced without --overwrite. Choose another --output-release (the "
            f"other components are copied from init.release), or pass --overwrite to move the old {rel_dir} to "
            f"{rel_dir}.previous-<time> beside it first")
    return True


def _aside(path: str) -> str:
    return free_name(f"{os.path.normpath(path)}.previous-{time.strftime('%Y%m%d-%H%M%S')}")


def _link_or_copy_tree(src: str, dst: str) -> None:
    def copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def _copy_into_place(src: str, dst: str) -> None:
    """Copy (hard-link) a file or folder to ``dst`` unless it exists, via a temp name and a rename."""
    if os.path.exists(dst):
        return
    with temp_dir_for(dst) as tmp:
        if os.path.isdir(src):
            _link_or_copy_tree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)


def assemble_release(release_dir: str, base_release: str | None, component_src: str, rel_dir: str, *,
                     move_aside: bool = False) -> str:
    """Write/update a full release folder (hub layout) with the trained component.

    Components the release folder lacks are copied (hard-linked when possible) from ``base_release``;
    then ``rel_dir`` (e.g. ``stable-diffusion-inpainting/unet``) is replaced by the trained one -- with
    ``move_aside`` (``--overwrite`` on a folder the trainer did not assemble, :func:`check_release`), the
    old one is first moved to ``<rel_dir>.previous-<time>`` beside it, never deleted.
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
                    _copy_into_place(os.path.join(src, sub), os.path.join(dst, sub))
            else:
                _copy_into_place(src, dst)
    final = os.path.join(release_dir, rel_dir)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with temp_dir_for(final) as tmp:
        shutil.copytree(component_src, tmp)
        if move_aside and os.path.exists(final):
            aside = _aside(final)
            os.rename(final, aside)
            log.info("--overwrite: the release's previous %s was moved to %s", rel_dir, aside)
        replace_dir(tmp, final)
    return final


