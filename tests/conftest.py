"""Shared fixtures: a tiny random-weight R2R release in the official hub layout (see tests/tiny.py); where the
real ComfyUI the `comfyui` tests run against is (and, under CI=true, that they really run)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny` from any test
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# node tests run the pack's host layer in plain mode even after a test module imported ComfyUI's model
# management in-process (test_ksampler_path turns the ComfyUI host on for its own tests only)
os.environ.setdefault("R2R_HOST", "plain")

# ----------------------------------------------------------------------------------------------------------
# The real ComfyUI host (tests marked `comfyui`). `make test` puts ComfyUI 0.3.64 in .cache/ComfyUI and sets
# COMFYUI_DIR; a plain `pytest` finds that tree too. Under CI=true the host is mandatory: a missing tree stops
# the run, and a skipped `comfyui` test counts as a failure.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMFYUI_DIR = REPO_ROOT / ".cache" / "ComfyUI"
_COMFYUI_TREE = pytest.StashKey()  # config.stash: the located tree (or None)
_comfyui_results = {"passed": 0, "failed": 0, "skipped": 0}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _comfyui_version(tree: Path) -> str | None:
    try:
        text = (tree / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r'__version__\s*=\s*["\']([^"\']+)["\']', text)
    return found.group(1) if found else None


def _locate_comfyui() -> Path | None:
    """The ComfyUI tree the `comfyui` tests use ($COMFYUI_DIR, else .cache/ComfyUI); exported as COMFYUI_DIR and
    put first on sys.path.

    A COMFYUI_DIR that names no ComfyUI tree is a usage error (it was asked for explicitly)."""
    given = os.environ.get("COMFYUI_DIR")
    if given:
        tree = Path(given).expanduser().resolve()
        if not (tree / "main.py").is_file():
            raise pytest.UsageError(
                f"COMFYUI_DIR={given} is not a ComfyUI source tree (no main.py there). Point it at an extracted "
                f"ComfyUI folder, or unset it to use {DEFAULT_COMFYUI_DIR} (`make comfyui` fetches ComfyUI 0.3.64)."
            )
    elif (DEFAULT_COMFYUI_DIR / "main.py").is_file():
        tree = DEFAULT_COMFYUI_DIR
    else:
        return None
    os.environ["COMFYUI_DIR"] = str(tree)
    # First on sys.path, so that `import nodes` (in ComfyUI's own code and in tests) is ComfyUI's nodes.py and
    # not this repository's nodes/ package (reached through tests/comfy_pack.py under the pack's own name).
    while str(tree) in sys.path:
        sys.path.remove(str(tree))
    sys.path.insert(0, str(tree))
    if sys.prefix != sys.base_prefix:  # this virtualenv is ComfyUI's environment (as `make test` builds it)
        os.environ.setdefault("R2R_COMFY_VENV", sys.prefix)
    return tree


def _comfyui_header(tree: Path | None) -> str:
    if tree is None:
        return (f"ComfyUI: none (COMFYUI_DIR unset, no {DEFAULT_COMFYUI_DIR}): the `comfyui` tests skip; "
                "`make test` fetches ComfyUI 0.3.64")
    return f"ComfyUI {_comfyui_version(tree) or '(version unknown)'} at {tree}"


def pytest_configure(config):
    """Locates ComfyUI (see above); tiny models run fastest single-threaded (and the shared 2-core test
    machine is oversubscribed): override with R2R_TEST_THREADS=N.
    """
    tree = _locate_comfyui()
    if tree is None and _in_ci():
        raise pytest.UsageError(
            f"CI=true needs the real ComfyUI for the `comfyui` tests, but COMFYUI_DIR is unset and {DEFAULT_COMFYUI_DIR} "
            "does not exist. Run the tests with `make test` (it fetches ComfyUI 0.3.64) or set COMFYUI_DIR."
        )
    config.stash[_COMFYUI_TREE] = tree
    if not os.environ.get("R2R_CACHE_DIR"):  # never write the user's ~/.cache from tests
        import tempfile

        os.environ["R2R_CACHE_DIR"] = tempfile.mkdtemp(prefix="r2r-test-cache-")
    try:
        import torch
    except ImportError:  # the numpy-only parts can be tested without torch
        return
    torch.set_num_threads(int(os.environ.get("R2R_TEST_THREADS", "1")))


def pytest_report_header(config):
    return _comfyui_header(config.stash.get(_COMFYUI_TREE, None))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped `comfyui` test is a failure: the host must run every time."""
    report = (yield).get_result()
    if not (report.skipped and item.get_closest_marker("comfyui") and _in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"CI=true: a real-ComfyUI test may not skip, but this one did: {reason}"


def pytest_runtest_logreport(report):
    if "comfyui" not in report.keywords:
        return
    if report.failed:
        _comfyui_results["failed"] += 1
    elif report.when == "call" and report.passed:
        _comfyui_results["passed"] += 1
    elif report.skipped:
        _comfyui_results["skipped"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not any(_comfyui_results.values()):
        return
    counts = ", ".join(f"{n} {what}" for what, n in _comfyui_results.items())
    terminalreporter.write_line(f"{_comfyui_header(config.stash.get(_COMFYUI_TREE, None))}: `comfyui` tests {counts}")


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a whole-suite run that ran no `comfyui` test at all (e.g. all deselected) fails."""
    option = session.config.option
    if (_in_ci() and not option.file_or_dir and not option.collectonly and exitstatus == 0
            and _comfyui_results["passed"] == 0):
        session.config.get_terminal_writer().line(
            "CI=true: no real-ComfyUI (`comfyui`) test ran in this whole-suite run; that is a failure", red=True)
        session.exitstatus = 1


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


@pytest.fixture(scope="session")
def maca_release(tmp_path_factory) -> Path:
    """The tiny release with its MACA modules amplified (tests/reference_release.py): where MACA's colour
    statistics come from shows in the picture."""
    from reference_release import reference_release

    return reference_release(tmp_path_factory)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny models are dominated by per-op overhead, and two threads on a
    shared 2-core machine only add contention. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def loaded(models_dir):
    """(R2R_MODEL, R2R_CLEAR_VAE, R2R_CONTROLLER) of the tiny release through the R2R Checkpoint Loader node,
    fp32 (a module that needs another release defines its own ``loaded``)."""
    from comfy_pack import run_node

    return run_node("R2RCheckpointLoader", "region2region", "fp32", False)


@pytest.fixture(scope="module")
def comfy_host_mode():
    """The pack sees ComfyUI's modules (nodes/_host.py: in_comfyui) for the module: for the modules that run
    ComfyUI's sampling in-process. Test modules that run after it expect the plain host, so R2R_HOST=plain is
    left behind (unless it was set before)."""
    from comfy_pack import pack_module

    old = os.environ.pop("R2R_HOST", None)
    if not pack_module("nodes._host").in_comfyui():
        raise RuntimeError("comfy_host_mode: ComfyUI's modules are not importable here (comfy_sampling_in_process)")
    yield
    os.environ["R2R_HOST"] = old if old is not None else "plain"


@pytest.fixture(scope="module")
def models_dir(tiny_release, tmp_path_factory):
    """A models/r2r folder holding the tiny release as 'region2region', made the nodes' models folder
    (R2R_MODELS_DIR) for the module."""
    from comfy_pack import models_folder

    with models_folder(tiny_release, tmp_path_factory.mktemp("models_r2r")) as root:
        yield root
