"""The Hugging Face hub: offline detection and fetching only the files R2R needs.

Works with every ``huggingface_hub`` from 0.23 to the newest (2.x): it imports
``huggingface_hub.constants`` explicitly (newer versions no longer expose submodules as lazy
attributes) and takes the error types from ``huggingface_hub.utils``, where all versions export them.
Every failure becomes an :class:`~r2r.errors.R2RUserError`: offline without the files names the files
and the folder to put them in; an unknown repo, a bad repo id or no network says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import R2RUserError, R2RWeightsNotFound
from .layout import (
    COMPONENT_DIRS,
    OFFICIAL_REPO,
    RELEASE_COMPONENTS,
    SD_FOLDER,
    TOKENIZER_FILES,
    WEIGHT_FILES,
    expected_hub_files,
    missing_release_files,
)

_TRUE = ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (now, or when huggingface_hub was
    imported: it reads them once and then refuses every request)."""
    if any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of diffusers
        return False
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(source) -> bool:
    """``"owner/name"`` that is not an existing path (a hub repo id rather than a folder)."""
    return isinstance(source, str) and not os.path.exists(source) and _REPO_ID.fullmatch(source) is not None


def check_repo_id(repo_id) -> str:
    """``repo_id`` if it has the form ``owner/name``; else an R2RUserError saying what a repo id looks like."""
    if not isinstance(repo_id, str) or _REPO_ID.fullmatch(repo_id) is None:
        raise R2RUserError(f"{repo_id!r} is not a Hugging Face repo id; expected 'owner/name' "
                           f"(letters, digits, '-', '_', '.'), e.g. {OFFICIAL_REPO}.")
    return repo_id


def check_revision(revision) -> None:
    """``revision`` is None (main) or a non-empty branch / tag / commit string."""
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise R2RUserError(f"revision must be a branch, tag or commit name, got {revision!r}; leave it out for main.")


def default_cache_dir() -> str:
    """The Hugging Face cache folder (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``)."""
    import huggingface_hub.constants as hf_constants

    return str(hf_constants.HF_HUB_CACHE)


def _select_repo_files(files: list[str], kinds) -> tuple[list[str], list[str]]:
    """(patterns to download, kinds without weights in the repo) from a repo listing."""
    wanted, absent = [], []
    fileset = set(files)
    for kind in kinds:
        d = COMPONENT_DIRS[kind]
        if kind == "tokenizer":
            got = [f"{d}/{n}" for n in TOKENIZER_FILES if f"{d}/{n}" in fileset]
            wanted += got
            if not got:
                absent.append(kind)
            continue
        if kind == "scheduler":
            if f"{d}/scheduler_config.json" in fileset:
                wanted.append(f"{d}/scheduler_config.json")
            continue
        if f"{d}/config.json" in fileset:
            wanted.append(f"{d}/config.json")
        for name in WEIGHT_FILES:
            if f"{d}/{name}" in fileset:
                wanted.append(f"{d}/{name}")
                if name.endswith(".index.json"):
                    wanted.append(f"{d}/*.safetensors")
                break
        else:
            absent.append(kind)
    return wanted, absent


def _not_available_offline(repo_id: str, kinds, where, missing=None, *, into=None) -> R2RWeightsNotFound:
    """Offline and the files are not there: name them and the folder to put them in."""
    files = missing or expected_hub_files(kinds)
    maybe_path = (f" ({repo_id} is also not a folder here; if you meant a folder, check the path.)"
                  if into is None else "")
    put = (f"Either copy these files into {into} (same layout)" if into is not None else
           f"Either copy these files into a folder DIR with this layout ({SD_FOLDER}/... and clear_vae/; "
           "ComfyUI: models/r2r/region2region/) and pass DIR as the source")
    return R2RWeightsNotFound(
        f"The R2R weights of {repo_id} are not available offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / "
        f"local_files_only is set and {where} has no complete copy).{maybe_path} Missing: {', '.join(files)}. "
        f"{put}, or go online once (unset HF_HUB_OFFLINE) and run `python -m r2r download --to "
        f"{into if into is not None else 'DIR'}`."
    )


def _offline_snapshot(repo_id, kinds, *, cache_dir, local_dir, revision) -> Path:
    import huggingface_hub
    if local_dir is not None:
        missing = missing_release_files(local_dir, kinds) if Path(local_dir).is_dir() else None
        if missing == []:
            return Path(local_dir)
        raise _not_available_offline(repo_id, kinds, local_dir, missing, into=local_dir)
    where = cache_dir or default_cache_dir()
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
            allow_patterns=[f"{COMPONENT_DIRS[k]}/*" for k in kinds],
        )
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, newer versions' IncompleteSnapshotError
        raise _not_available_offline(repo_id, kinds, where) from exc
    missing = missing_release_files(path, kinds)
    if missing:
        raise _not_available_offline(repo_id, kinds, where, missing)
    return Path(path)


def hub_snapshot(repo_id: str = OFFICIAL_REPO, kinds=RELEASE_COMPONENTS, *, cache_dir=None, local_dir=None,
                 local_files_only=None, revision=None) -> Path:
    """Download (or find in the cache) only the files of ``kinds``; returns the snapshot / local folder.

    Offline (:func:`is_offline` or ``local_files_only=True``) nothing touches the network: ``local_dir``
    must already hold the files, or the Hugging Face cache (``cache_dir``) a complete snapshot.
    """
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    check_repo_id(repo_id)
    check_revision(revision)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in COMPONENT_DIRS]
    if unknown:
        raise R2RUserError(f"Unknown release component(s) {unknown}; choose from {list(RELEASE_COMPONENTS)}.")
    if bool(local_files_only) or is_offline():
        return _offline_snapshot(repo_id, kinds, cache_dir=cache_dir, local_dir=local_dir, revision=revision)
    target = local_dir or cache_dir or default_cache_dir()
    try:
        files = huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision)
    except HFValidationError as exc:
        raise R2RUserError(f"{repo_id!r} is not a valid Hugging Face repo id ({exc}); expected 'owner/name', "
                           f"e.g. {OFFICIAL_REPO}, or an existing folder.") from exc
    except RevisionNotFoundError as exc:  # before RepositoryNotFoundError: older versions derive one from the other
        raise R2RUserError(f"Hugging Face repo {repo_id!r} has no revision {revision!r}; give an existing branch, "
                           "tag or commit (or leave the revision out for main).") from exc
    except RepositoryNotFoundError as exc:
        raise R2RUserError(
            f"Hugging Face repo {repo_id!r} was not found (or needs a login). The official R2R weights are "
            f"{OFFICIAL_REPO}; if you meant a local folder, it does not exist: check the path."
        ) from exc
    except Exception as exc:  # no network: the HTTP library's own connection errors
        raise R2RWeightsNotFound(
            f"Could not reach the Hugging Face hub to list {repo_id} ({type(exc).__name__}: {exc}). Check the "
            f"connection, or download {', '.join(expected_hub_files(kinds))} by hand into a folder with that layout "
            "and pass that folder (set HF_HUB_OFFLINE=1 to stay offline)."
        ) from exc
    wanted, absent = _select_repo_files(files, kinds)
    if absent:
        raise R2RWeightsNotFound(
            f"{repo_id} has no weights for {', '.join(absent)} (looked for {', '.join(WEIGHT_FILES[:3])} under "
            f"{', '.join(COMPONENT_DIRS[k] for k in absent)}). Is this the R2R release ({OFFICIAL_REPO})?"
        )
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir, allow_patterns=wanted
        )
    except Exception as exc:
        raise R2RWeightsNotFound(
            f"Downloading {', '.join(wanted)} from {repo_id} into {target} failed ({type(exc).__name__}: {exc}). "
            "Retry (finished files are kept), or download the files by hand into that layout."
        ) from exc
    return Path(path)
