"""Shared fixtures: a tiny random-weight R2R release in the official hub layout (see tests/tiny.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny` from any test
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    """Tiny models run fastest single-threaded (and the shared 2-core test machine is oversubscribed).

    Override with R2R_TEST_THREADS=N.
    """
    if not os.environ.get("R2R_CACHE_DIR"):  # never write the user's ~/.cache from tests
        import tempfile

        os.environ["R2R_CACHE_DIR"] = tempfile.mkdtemp(prefix="r2r-test-cache-")
    try:
        import torch
    except ImportError:  # the numpy-only parts can be tested without torch
        return
    torch.set_num_threads(int(os.environ.get("R2R_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    """Folder in the exact official layout (stable-diffusion-inpainting/... + clear_vae/), tiny weights."""
    from tiny import make_tiny_release

    return make_tiny_release(tmp_path_factory.mktemp("tiny_release"))


@pytest.fixture(scope="session")
def tiny_components(tiny_release):
    """``R2RComponents`` of the tiny release, float32 on CPU, in eval mode (empty prompt cached)."""
    import torch

    from r2r.weights import load_components

    return load_components(tiny_release, torch_dtype=torch.float32, device="cpu")
