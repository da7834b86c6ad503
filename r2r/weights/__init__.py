"""The public face of R2R weight handling: one import for everything, implemented in small modules.

* :mod:`r2r.weights.layout` — the release layout of ``1243asdad/region2region``, file names, official configs;
* :mod:`r2r.weights.statedict` — reading weight files, SD <-> diffusers keys, strict shape checks;
* :mod:`r2r.weights.hub` — the Hugging Face hub (offline detection, only the needed files);
* :mod:`r2r.weights.prompt` — the cached empty-prompt CLIP embedding;
* :mod:`r2r.weights.loading` — :func:`load_components` and the single loaders;
* :mod:`r2r.weights.release` — downloading and checking a whole release folder.

Import from here (``from r2r.weights import load_components``); the names below stay stable.
"""

from __future__ import annotations

from .hub import hub_snapshot, is_offline, looks_like_repo_id
from .layout import (
    COMPONENT_DIRS,
    MODEL_COMPONENTS,
    OFFICIAL_CONFIGS,
    OFFICIAL_REPO,
    RELEASE_COMPONENTS,
    SD_FOLDER,
    WEIGHT_FILES,
    expected_hub_files,
    find_weights_file,
    official_config,
    release_paths,
)
from .loading import (
    R2RComponents,
    load_clear_vae,
    load_component,
    load_components,
    load_controller,
    load_unet,
)
from .release import check_component, check_release, download_release
from .statedict import read_state_dict, to_diffusers_state_dict

__all__ = [
    "COMPONENT_DIRS", "MODEL_COMPONENTS", "OFFICIAL_CONFIGS", "OFFICIAL_REPO", "RELEASE_COMPONENTS", "SD_FOLDER",
    "WEIGHT_FILES", "R2RComponents", "check_component", "check_release", "download_release",
    "expected_hub_files", "find_weights_file", "hub_snapshot", "is_offline", "load_clear_vae", "load_component",
    "load_components", "load_controller", "load_unet", "looks_like_repo_id", "official_config", "read_state_dict",
    "release_paths", "to_diffusers_state_dict",
]
