"""Registry packaging: what the Comfy registry (comfy-cli) and ComfyUI-Manager read from this repository.

* pyproject's static ``[project] dependencies`` equal requirements.txt (comfy-cli reads only the former,
  ComfyUI-Manager installs the latter), lower bounds only, nothing the host owns;
* the metadata the registry reads: node id rules, semver version, ``Repository`` and ``Issues`` URLs,
  ``[tool.comfy]`` PublisherId and an ``Icon`` URL naming a PNG this repository ships;
* ``.comfyignore`` (matched the way ``comfy node pack`` matches it) leaves out tests, benchmarks, training,
  docs images, CI and tools, and keeps everything the pack needs at run time;
* the publish workflow uses the registry's action, runs on version changes on main and does nothing else.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from PIL import Image

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pathspec = pytest.importorskip("pathspec")  # requirements-dev.txt; comfy-cli matches .comfyignore with it

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]
HOST_OWNED = {"torch", "torchvision", "torchaudio", "numpy"}
REPO_URL = PROJECT["urls"]["Repository"].rstrip("/")
# Paths that must never reach the registry archive, and paths the pack cannot run without.
MUST_NOT_SHIP = ["tests/conftest.py", "tests/test_packaging.py", "benchmarks/pipeline.py", "training/trainer.py",
                 "docs/images/workflow_basic.jpg", ".github/workflows/publish.yml", ".ci/run",
                 "tools/fetch_comfyui.sh", "Makefile", "requirements-dev.txt"]
MUST_SHIP = ["__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "web/icon.png"]
RUNTIME_DIRS = ["nodes", "r2r", "example_workflows"]


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _repo_files() -> list[str]:
    """The files a publish would consider: git-tracked plus new not-ignored ones (a commit away from tracked)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to list the files a publish would pack")
    return sorted({line for line in out.splitlines() if line and (ROOT / line).is_file()})


def _shipped_files() -> list[str]:
    spec = pathspec.PathSpec.from_lines("gitwildmatch", _requirement_lines(ROOT / ".comfyignore"))
    return [f for f in _repo_files() if not spec.match_file(f)]


def test_dependencies_are_static_and_equal_requirements_txt():
    assert "dependencies" not in PROJECT.get("dynamic", []), "comfy-cli reads only a static [project] dependencies"
    pyproject_deps = PROJECT["dependencies"]
    requirements = _requirement_lines(ROOT / "requirements.txt")
    assert pyproject_deps == requirements, (
        "pyproject.toml [project] dependencies and requirements.txt differ:\n"
        f"  only in pyproject.toml:   {sorted(set(pyproject_deps) - set(requirements))}\n"
        f"  only in requirements.txt: {sorted(set(requirements) - set(pyproject_deps))}\n"
        "(or the same entries in another order); keep them identical"
    )


def test_requirements_are_lower_bounds_without_host_packages():
    for line in _requirement_lines(ROOT / "requirements.txt"):
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name not in HOST_OWNED, f"{line}: ComfyUI's environment owns {name}; a requirement can replace its build"
        operators = {spec.operator for spec in req.specifier}
        assert operators == {">="}, f"{line}: give a lower bound only (>=), no pin or upper bound"


def test_dev_requirements_build_on_the_pack_requirements():
    lines = _requirement_lines(ROOT / "requirements-dev.txt")
    assert "-r requirements.txt" in lines
    assert {"pytest", "pathspec"} <= {Requirement(line).name for line in lines if not line.startswith("-")}


# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image"}
# ComfyUI's own top-level modules (the pack imports them inside ComfyUI only)
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "nodes", "server",
                   "latent_preview", "node_helpers", "execution", "comfyui_version"}
# shipped files that import a development-only package on purpose (documented there)
DEV_ONLY_IMPORTS = {"r2r/assets/make_examples.py": {"skimage"}}  # regenerates the bundled examples


def _absolute_imports(path: Path, *, optional_too: bool = True) -> set[str]:
    """Top-level names of the absolute imports in a file; without optional_too, leaves out imports inside a
    ``try`` that handles ImportError (optional ones with a fallback)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = set()
    if not optional_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                optional.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_the_shipped_code_imports_is_a_requirement_or_the_hosts():
    """What a registry install gets (requirements.txt on top of ComfyUI's environment) covers every import
    that has no ImportError fallback."""
    import sys

    listed = {Requirement(line).name.lower() for line in _requirement_lines(ROOT / "requirements.txt")}
    own = {"r2r", "nodes"}
    missing = {}
    for rel in (f for f in _shipped_files() if f.endswith(".py")):
        required = _absolute_imports(ROOT / rel, optional_too=False)
        for name in required - own - COMFYUI_MODULES - DEV_ONLY_IMPORTS.get(rel, set()):
            if name in sys.stdlib_module_names or name == "__future__":
                continue
            dist = DISTRIBUTION_OF.get(name, name).lower().replace("_", "-")
            if dist not in HOST_OWNED and dist not in {d.replace("_", "-") for d in listed}:
                missing.setdefault(dist, []).append(rel)
    assert not missing, f"imported by shipped code but not in requirements.txt: {missing}"
    imported = set().union(*(_absolute_imports(ROOT / f) for f in _shipped_files() if f.endswith(".py")))
    assert "filelock" in imported and "filelock" in listed  # the dataset writer's cross-process lock
    assert "torchvision" not in imported and "torchvision" not in listed  # the pack never imports it


def test_registry_metadata():
    name = PROJECT["name"]
    # the registry's node-id rules: letters, digits, - _ . ; no consecutive specials; starts with a letter; < 100
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", name) and len(name) < 100, name
    assert "comfyui" not in name.lower(), "the registry asks not to put ComfyUI in the node id"
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), "the registry needs a semver X.Y.Z version"
    urls = PROJECT["urls"]
    assert urls["Repository"].startswith("https://github.com/")
    assert urls["Issues"] == f"{REPO_URL}/issues", "comfy-cli reads the bug link only under the key `Issues`"
    assert "Bug Tracker" not in urls
    assert PROJECT["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert COMFY["PublisherId"] and COMFY["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", COMFY["requires-comfyui"])


def test_icon_url_names_a_small_png_the_repository_ships():
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    icon_url = COMFY["Icon"]
    assert icon_url.startswith(prefix), f"Icon should be a raw URL into {REPO_URL} (main), got {icon_url!r}"
    icon = icon_url.removeprefix(prefix)
    with Image.open(ROOT / icon) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 64 <= width <= 800 and 64 <= height <= 400, f"the registry takes icons up to 800x400, got {image.size}"
    assert icon in _repo_files(), f"{icon} is not committed (or is git-ignored)"
    assert icon in _shipped_files()


def test_comfyignore_leaves_out_development_files():
    shipped = set(_shipped_files())
    files = set(_repo_files())
    for path in MUST_NOT_SHIP:
        assert path in files, f"{path} is listed here as a development file but does not exist; update the list"
        assert path not in shipped, f".comfyignore lets {path} into the registry archive"
    for folder in ("tests/", "benchmarks/", "training/", "docs/images/", ".github/", ".ci/", "tools/"):
        leaked = sorted(f for f in shipped if f.startswith(folder))
        assert not leaked, f".comfyignore lets {folder} files into the registry archive: {leaked[:5]}"


def test_comfyignore_keeps_everything_the_pack_runs_with():
    shipped = set(_shipped_files())
    files = set(_repo_files())
    for path in MUST_SHIP:
        assert path in shipped, f".comfyignore leaves {path} out of the registry archive"
    for folder in RUNTIME_DIRS:
        inside = sorted(f for f in files if f.startswith(folder + "/") and "__pycache__" not in f)
        assert inside, f"no files under {folder}/"
        missing = [f for f in inside if f not in shipped]
        assert not missing, f".comfyignore leaves runtime files out: {missing[:5]}"
    # the shipped code imports nothing that stays behind
    left_behind = {"training", "tests", "benchmarks", "tools"}
    for path in sorted(f for f in shipped if f.endswith(".py")):
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                       else [])
            for module in modules:
                assert module.split(".")[0] not in left_behind, f"{path} imports {module}, which does not ship"


def _pinned_comfy_cli() -> str:
    lines = _requirement_lines(ROOT / "tools" / "comfy-cli.txt")
    assert len(lines) == 1 and re.fullmatch(r"comfy-cli==\d+\.\d+\.\d+", lines[0]), lines
    return lines[0]


def test_publish_workflow_publishes_with_the_pinned_comfy_cli_on_version_changes_only():
    path = ROOT / ".github" / "workflows" / "publish.yml"
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the bare key `on` as True
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["push"]["paths"] == ["pyproject.toml"]
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    # only official actions, at a version tag; the registry's own tool at the pinned version does the publishing
    assert {s["uses"] for s in steps if "uses" in s} <= {"actions/checkout@v4", "actions/setup-python@v5"}
    runs = [s for s in steps if "run" in s]
    publish = [s for s in runs if "node publish" in s["run"]]
    assert len(publish) == 1 and "version" in publish[0].get("if", ""), "publish only when [project] version changed"
    assert "REGISTRY_ACCESS_TOKEN" in publish[0]["env"]["REGISTRY_ACCESS_TOKEN"]
    install = "\n".join(s["run"] for s in runs)
    assert "tools/comfy-cli.txt" in install and "node validate" in install
    assert not re.search(r"\b(pytest|make)\b", install), "the publish job runs nothing else"


def test_registry_archive():
    """The archive `comfy node pack` makes (tools/check_registry_pack.sh, run by .ci/run) holds exactly the
    files .comfyignore ships."""
    import zipfile

    archive = os.environ.get("R2R_REGISTRY_ZIP")
    if not archive:
        pytest.skip("run through tools/check_registry_pack.sh (it packs with comfy-cli first)")
    with zipfile.ZipFile(archive) as z:
        packed = sorted(n for n in z.namelist() if not n.endswith("/"))
    expected = _shipped_files()
    assert packed == expected, (f"only in the archive: {sorted(set(packed) - set(expected))}\n"
                                f"missing from the archive: {sorted(set(expected) - set(packed))}")
    assert not any(n.startswith(("training/", "tests/", "benchmarks/")) for n in packed)


def test_description_matches_what_ships():
    """The registry package has no trainer: the description must not promise one in the package."""
    description = PROJECT["description"].lower()
    shipped = _shipped_files()
    if not any(f.startswith("training/") for f in shipped):
        assert "trainer" not in description or "git repository" in description
    classifiers = PROJECT["classifiers"]
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers and "Operating System :: OS Independent" in classifiers
    assert "cpu" in description  # runs without a GPU too (there is no trove classifier for that)


@pytest.mark.skipif(os.name == "nt", reason="shell scripts")
def test_ci_entry_point_runs_the_readme_test_command():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in run
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    stamp_rule = next(line for line in makefile.splitlines() if line.startswith("$(STAMP):"))
    for needed in ("requirements.txt", "requirements-dev.txt", "tools/host-requirements.txt",
                   "$(COMFYUI_DIR)/requirements.txt"):
        assert needed in stamp_rule.split(), f"the venv stamp must be rebuilt when {needed} changes"
