"""The node-graph benchmark's bookkeeping (benchmarks/graph.py), without a server or weights: how a run's
websocket events become controller / U-Net phases, the 10-step estimate, which template it runs and how it
sets it up, and the same-seed image comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph():
    return load_benchmark("graph")


PROMPT = {"1": {"class_type": "R2RClearVAEEncode"}, "5": {"class_type": "R2RSampler"},
          "6": {"class_type": "R2RClearVAEDecode"}}


def _events(controller: bool, steps: int = 2, one_bar: bool = False):
    """Encode at 0 s, sampler at 10 s, (controller 2 s/step), U-Net 5 s/step, decode after; cpu = 2 x wall.
    The controller's steps count on their own (1..steps, then the denoising 1..steps); ``one_bar``: the form
    before the version-2 nodes, one bar of 2 x steps."""
    ev = [("node", "1", 0, 0, 0.0, 0.0), ("node", "5", 0, 0, 10.0, 20.0)]
    t, total = 10.0, 2 * steps if controller and one_bar else steps
    value = 0
    if controller:
        for _ in range(steps):
            t, value = t + 2.0, value + 1
            ev.append(("progress", "5", value, total, t, 2 * t))
        if not one_bar:
            value = 0
    for _ in range(steps):
        t, value = t + 5.0, value + 1
        ev.append(("progress", "5", value, total, t, 2 * t))
        ev.append(("progress", "5", value, total, t, 2 * t))  # the same value again: a preview sent with it
    ev.append(("node", "6", 0, 0, t + 0.5, 2 * (t + 0.5)))
    return ev, t + 10.0


@pytest.mark.parametrize("one_bar", [False, True])
def test_phases_split_controller_and_unet(graph, one_bar):
    ev, wall = _events(controller=True, one_bar=one_bar)
    out = graph._phases(ev, wall, 2 * wall, PROMPT, 2)
    assert out["controller_ran"] and out["controller_wall_s"] == pytest.approx(4.0)
    assert out["unet_wall_s"] == pytest.approx(10.0) and out["unet_cpu_s"] == pytest.approx(20.0)
    assert out["nodes"]["5:R2RSampler"]["wall_s"] == pytest.approx(14.5)
    assert out["nodes"]["6:R2RClearVAEDecode"]["wall_s"] == pytest.approx(9.5)


def test_phases_with_reused_residuals(graph):
    ev, wall = _events(controller=False)
    out = graph._phases(ev, wall, 2 * wall, PROMPT, 2)
    assert not out["controller_ran"] and out["controller_wall_s"] == 0.0
    assert out["unet_wall_s"] == pytest.approx(10.0)


def test_phases_refuses_incomplete_progress(graph):
    ev, wall = _events(controller=True)
    with pytest.raises(SystemExit, match="incomplete"):
        graph._phases(ev[:-3], wall, wall, PROMPT, 2)  # the last step (and its preview) missing
    with pytest.raises(SystemExit, match="progress units"):
        graph._phases(ev, wall, wall, PROMPT, 3)
    with pytest.raises(SystemExit, match="progress units"):
        graph._phases(_events(controller=True, one_bar=True)[0], wall, wall, PROMPT, 3)


def test_ten_step_estimate_adds_the_measured_per_step_cost(graph):
    run = {"cpu_s": 100.0, "controller_cpu_s": 6.0, "unet_cpu_s": 14.0}
    assert graph.estimate(run, 2, "cpu_s") == pytest.approx(100.0 + 8 * 10.0)
    assert graph.estimate(run, 10, "cpu_s") == pytest.approx(100.0)


def test_finds_and_configures_the_basic_template(graph, tmp_path):
    path = graph.find_basic_template(ROOT / "example_workflows")
    assert path.name == "Harmonize a pasted object.json"
    types = {n["type"] for n in json.loads(path.read_text())["nodes"]}
    assert graph.is_basic_chain(types) and "R2RExampleImage" in types
    # the templates before the version-2 nodes are found and configured the same way
    assert graph.find_basic_template(ROOT / "tests" / "data" / "pre_v2_templates").name == path.name

    def api_of(p):
        return {str(n["id"]): {"class_type": n["type"], "inputs": {"seed": 3, "steps": 10, "strength": 1.0,
                                                                   "max_side": 0}}
                for n in json.loads(p.read_text())["nodes"] if n["type"] not in ("Note", "MarkdownNote")}

    args = argparse.Namespace(size=320, steps=3)
    for p in (path, ROOT / "tests" / "data" / "pre_v2_templates" / path.name):
        api = api_of(p)
        prompt, one = graph.configure(api, args)
        assert prompt[one["encode"]]["inputs"]["max_side"] == 320
        assert prompt[one["sampler"]]["inputs"]["steps"] == 3
        assert prompt[one["loader"]]["inputs"]["checkpoint"] == graph.RELEASE_NAME
        reseeded = graph.with_settings(prompt, one, 7, 0.5)
        assert reseeded[one["sampler"]]["inputs"]["seed"] == 7 and prompt[one["sampler"]]["inputs"]["seed"] == 3
        assert reseeded[one["apply"]]["inputs"]["strength"] == 0.5
    # as delivered: only the weights and the output prefix change
    prompt, one = graph.configure(api_of(path), argparse.Namespace(size=320, steps=3, as_delivered=True))
    assert prompt[one["encode"]]["inputs"]["max_side"] == 0 and prompt[one["sampler"]]["inputs"]["steps"] == 10
    assert prompt[one["loader"]]["inputs"]["checkpoint"] == graph.RELEASE_NAME
    del api[one["sampler"]]
    with pytest.raises(SystemExit, match="R2RSampler"):
        graph.configure(api, args)


def test_same_seed_difference_uses_saveimage_quantisation(graph, tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    Image.fromarray(graph.save_image_like_comfyui(img)).save(tmp_path / "a.png")
    np.save(tmp_path / "same.npy", img + 1e-7)
    out = graph.same_seed_difference(str(tmp_path / "a.png"), str(tmp_path / "same.npy"))
    assert out["same_seed_max_abs_diff"] <= 1 / 255
    np.save(tmp_path / "off.npy", np.clip(img + 0.1, 0, 1))
    assert graph.same_seed_difference(str(tmp_path / "a.png"), str(tmp_path / "off.npy"))[
        "same_seed_max_abs_diff"] > 0.05


# ----------------------------------------------------------------------------- benchmarks/graph_executor.py
@pytest.fixture(scope="module")
def executor_bench():
    return load_benchmark("graph_executor")


def _prompt(sampler="R2RSampler", apply="R2RMACAControllerApplyV2"):
    return {"1": {"class_type": "R2RCheckpointLoader", "inputs": {"checkpoint": "x", "dtype": "auto",
                                                                  "download_if_missing": True}},
            "3": {"class_type": "R2RClearVAEEncode", "inputs": {"max_side": 1024}},
            "4": {"class_type": apply, "inputs": {"strength": 1.0}},
            "5": {"class_type": sampler, "inputs": {"seed": 7, "steps": 10}}}


def test_executor_configures_runs_for_v1_v2_and_ksampler_templates(executor_bench):
    args = argparse.Namespace(size=256, steps=2, seed=3, restrength=0.5, as_delivered=False)
    for sampler, apply in (("R2RSampler", "R2RMACAControllerApply"), ("R2RSampler", "R2RMACAControllerApplyV2"),
                           ("KSampler", "R2RConditioning")):
        prompt = _prompt(sampler, apply)
        handles = executor_bench.configure(prompt, args, "fp16")
        assert handles == {"seed": ("5", "seed"), "strength": ("4", "strength")}
        assert prompt["1"]["inputs"] == {"checkpoint": executor_bench.RELEASE_NAME, "dtype": "fp16",
                                         "download_if_missing": False}
        assert prompt["3"]["inputs"]["max_side"] == 256 and prompt["5"]["inputs"] == {"seed": 3, "steps": 2}
        reseed = executor_bench.variant(prompt, handles, "reseed", args)
        restrength = executor_bench.variant(prompt, handles, "restrength", args)
        assert reseed["5"]["inputs"]["seed"] == 4 and reseed["4"]["inputs"]["strength"] == 1.0
        assert restrength["5"]["inputs"]["seed"] == 4 and restrength["4"]["inputs"]["strength"] == 0.5
        assert prompt["5"]["inputs"]["seed"] == 3  # the first run's prompt is untouched
    delivered = _prompt()
    executor_bench.configure(delivered, argparse.Namespace(size=256, steps=2, seed=3, as_delivered=True), None)
    assert delivered["3"]["inputs"]["max_side"] == 1024 and delivered["5"]["inputs"]["seed"] == 7
    assert executor_bench.variant({"1": {"class_type": "X", "inputs": {}}}, {}, "reseed", args) is None


def test_executor_summary_compares_ksampler_with_basic(executor_bench):
    runs = {executor_bench.BASIC: {"runs": {"first": {"cpu_s": 10.0, "wall_s": 5.0}, "reseed": {"cpu_s": 4.0,
                                                                                                 "wall_s": 2.0}}},
            executor_bench.KSAMPLER: {"runs": {"first": {"cpu_s": 9.0, "wall_s": 6.0}, "reseed": {"cpu_s": 4.2,
                                                                                                  "wall_s": 2.2}}}}
    out = executor_bench.summary(runs)
    assert out == {"ksampler_vs_basic_first_cpu": 0.9, "ksampler_vs_basic_first_wall": 1.2,
                   "ksampler_vs_basic_reseed_cpu": 1.05, "ksampler_vs_basic_reseed_wall": 1.1}
    assert executor_bench.summary({executor_bench.BASIC: {"error": "x"}}) == {}
