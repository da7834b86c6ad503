"""The one-command GPU check (benchmarks/gpu_check.sh / gpu_check.py) dry-runs on the CPU: every part runs
(pipeline flows, official seed 0, both templates in ComfyUI's executor, the 8 GiB and 6 GiB low-VRAM runs,
variations, training throughput, channels-last) with the tiny release, and the JSON line carries every figure
the GPU run must report. The run imports what the GPU machine has: PyAV replaced by the script's stand-in,
ComfyUI's server-only packages refused. The wheel list (tools/fetch_gpu_wheels.sh) covers what the pack and
ComfyUI's executor need beyond the GPU machine's packages, dependencies included."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the GPU machine's Python packages (its image as the device tool listed it on 2026-11-17), normalised
DEVICE_PACKAGES = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
#: ComfyUI requirements the in-process executor never imports (server, frontend, database) or that get a stand-in
NOT_CARRIED = {"comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs", "alembic",
               "sqlalchemy", "av"}
#: their import names, refused in the dry run (the GPU machine does not have them)
REFUSED_MODULES = ("comfyui_frontend_package", "comfyui_workflow_templates", "comfyui_embedded_docs", "alembic",
                   "sqlalchemy")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheels() -> dict[str, str]:
    text = (ROOT / "tools" / "fetch_gpu_wheels.sh").read_text(encoding="utf-8")
    body = text[text.index("WHEELS=("):text.index("\n)\n", text.index("WHEELS=("))]
    pins = re.findall(r"^\s+([A-Za-z0-9_.-]+)==([0-9][^\s#]*)", body, flags=re.M)
    return {_norm(n): v for n, v in pins}


def _requirement_names(lines) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(_norm(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return out


def test_wheels_cover_what_the_gpu_machine_lacks():
    wheels = _wheels()
    assert len(wheels) == len(set(wheels)), "one version of each"
    have = DEVICE_PACKAGES | set(wheels)
    pack = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    comfy_dir = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".cache" / "ComfyUI")
    comfy = _requirement_names((comfy_dir / "requirements.txt").read_text().splitlines()) if \
        (comfy_dir / "requirements.txt").is_file() else set()
    assert not (pack - have), f"pack requirements neither on the GPU machine nor carried: {pack - have}"
    assert not (comfy - have - NOT_CARRIED), f"ComfyUI requirements missing there: {comfy - have - NOT_CARRIED}"
    # every wheel's own (non-extra) dependencies are there too, as this environment's versions declare them
    for name, version in wheels.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is carried to the GPU machine but not installed here to check it")
        assert dist.version == version, f"{name}: carried {version}, this environment runs {dist.version}"
        for req in dist.requires or []:
            if "extra ==" in req or "python_version < \"3" in req:
                continue
            dep = _norm(re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0])
            assert dep in have, f"{name} needs {dep}, which the GPU machine lacks and the wheels do not bring"


def test_capped_run_needs_the_same_image_and_the_cap(tmp_path):
    import gpu_check
    import numpy as np
    from PIL import Image

    img = (np.arange(48).reshape(4, 4, 3) * 5).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.png")
    Image.fromarray(img + 2).save(tmp_path / "c.png")
    graph = {"device": "cuda", "templates": {gpu_check.BASIC: {"runs": {"first": {"images": [str(tmp_path / "a.png")]}}}}}

    def capped(path, peak):
        return {"templates": {gpu_check.BASIC: {"runs": {"first": {"images": [str(path)], "peak_bytes": peak,
                                                                   "wall_s": 1.0}}}}}

    assert gpu_check.capped_result(graph, capped(tmp_path / "b.png", 7 * 2**30), 8)["ok"]
    assert not gpu_check.capped_result(graph, capped(tmp_path / "c.png", 7 * 2**30), 8)["ok"]  # another image
    assert not gpu_check.capped_result(graph, capped(tmp_path / "b.png", 9 * 2**30), 8)["ok"]  # over the cap
    failed = gpu_check.capped_result(graph, {"templates": {gpu_check.BASIC: {"error": "CUDA out of memory"}}}, 8)
    assert failed == {"ok": False, "error": "CUDA out of memory"}


@pytest.mark.comfyui
@pytest.mark.slow
def test_dry_run_runs_every_part_and_reports_every_figure(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        f"REFUSED = {REFUSED_MODULES!r}\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in REFUSED:\n"
        "            raise ModuleNotFoundError(f'{name} is not on the GPU machine (gpu_check dry run)', name=name)\n"
        "sys.meta_path.insert(0, Refuse())\n")
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k not in ("R2R_HOST", "GPU_CHECK_BUDGET")}
    env.update(GPU_CHECK_TIMEOUT="1500", GPU_CHECK_SITE=str(tmp_path / "site"), PYTHONPATH=str(blocker),
               PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--av-stand-in", "--dry-run", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=1600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "av" / "__init__.py").is_file()
    line = json.loads(out.read_text())
    assert line == json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(line["parts"]) == {"pipeline", "seed0", "graph", "capped", "variations", "train", "lowvram", "options"}
    assert all(v == "ok" for v in line["parts"].values()), line["parts"]
    assert line["device"].startswith("CPU")
    for key in ("resident_vs_official", "graph_reseed_vs_official", "variations4_vs_4calls",
                "graph_peak_vram_vs_official", "ksampler_reseed_vs_basic", "channels_last_vs_resident"):
        assert isinstance(line[key], float) and line[key] > 0, key
    assert line["capped_8gib_ok"] is True and line["capped_6gib_lowvram_ok"] is True
    assert set(line["train_img_per_s"]) == {"clear_vae", "unet", "controller"}
    assert line["official_seed0_max_abs_diff"] == 0.0  # float32 on the CPU: the official image, bit for bit
    assert line["details"]["variations"]["max_abs_diff"] < 1e-4
    graph = line["details"]["graph"]
    for template in ("Harmonize a pasted object", "Harmonize with KSampler"):
        assert set(graph[template]) == {"first", "reseed", "restrength"}, template
        assert all(c["memory_required"] > 0 for r in graph[template].values() for c in r["loads"]), template
    assert graph["Harmonize a pasted object"]["reseed"]["sampler_progress_units"] == 1  # no controller pass
    rates = line["stage_rates"]
    assert set(rates["flops"]) == {"encode", "controller", "unet", "decode", "total"} and rates["resident_tflops"]
