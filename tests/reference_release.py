"""The tiny release (tests/tiny.py) with its MACA modules amplified, for the tests of where MACA's colour
statistics come from (reference photos, reference regions, objects=each).

In the plain tiny release a reference changes the picture by ~1e-5 only (random MACA layers of std 0.05
barely react to the background statistic), too close to the 1e-6 of the identity checks to tell a
reference that is used from one that is ignored. Scaling each MACA's MLP weights by :data:`GAIN` makes
the colour source move the picture by ~1e-3 while everything else stays as in the tiny release.

    release = reference_release(tmp_path_factory)     # one folder per test session
"""

from __future__ import annotations

from pathlib import Path

GAIN = 10.0
_MADE: dict = {}


def amplify_maca(release: Path, gain: float = GAIN) -> Path:
    """Scale every ``PCCAs.k.mlp`` weight and the last layer's bias of the release's controller in place."""
    from safetensors.torch import load_file, save_file

    path = Path(release) / "stable-diffusion-inpainting" / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    for key in state:
        if key.startswith("PCCAs.") and (".mlp.0.weight" in key or ".mlp.2." in key):
            state[key] = state[key] * gain
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(release)


def reference_release(tmp_path_factory) -> Path:
    """The amplified tiny release, made once per test session."""
    from tiny import make_tiny_release

    key = str(tmp_path_factory.getbasetemp())
    if key not in _MADE:
        _MADE[key] = amplify_maca(make_tiny_release(tmp_path_factory.mktemp("reference_release")))
    return _MADE[key]
