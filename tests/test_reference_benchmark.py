"""benchmarks/reference.py in a quick dry-run configuration (tiny random release, one step, small pictures):
the same script a GPU check runs at full size, so its inputs, measurements and JSON line stay working."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("reference_step_time_ratio", "reference_call_time_ratio", "per_object_time_ratio",
        "per_object_peak_memory_ratio", "per_object_peak_above_networks_ratio", "identity_max_abs_diff")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("reference")


@pytest.fixture()
def one_thread():
    import torch

    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_dry_run_prints_every_ratio(bench, capsys, one_thread):
    argv = ["--steps", "1", "--max-side", "64", "--big", "512x384", "--repeat", "1", "--threads", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["benchmark"] == "reference" and result["weights"] == "tiny random"
    for key in KEYS[:5]:
        assert result[key] > 0, key
    assert result["identity_max_abs_diff"] <= 1e-6  # the composite as its own reference photo: no change
    assert result["objects"] == 3 and len(result["crops"]) == 3
    assert result["whole_picture_peak_bytes"] > 0 and result["per_object_peak_bytes"] > 0
    assert "controller step" in out and "per_object" in out


def test_big_picture_has_three_separate_objects_of_about_300_px(bench):
    import cv2

    picture, mask = bench.big_inputs(4000, 3000)
    assert picture.shape == (3000, 4000, 3) and mask.shape == (3000, 4000)
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
    assert n - 1 == 3
    assert all(280 <= w <= 320 for w in stats[1:, cv2.CC_STAT_WIDTH])


@pytest.mark.parametrize("argv", [["--big", "100x80"], ["--big", "large"], ["--steps", "0"]])
def test_bad_arguments_are_refused(bench, argv, capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err
