"""benchmarks/train_throughput.py in its CPU dry-run configuration (tiny networks, one step per stage): the
same script the GPU check runs with --full-size, so its stage building, rules and JSON line stay working."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_module import load_benchmark
from test_training import single_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("train_throughput")


def _json_line(text: str) -> dict:
    (line,) = [x for x in text.splitlines() if x.startswith('{"benchmark": "train_throughput"')]
    return json.loads(line)


def test_dry_run_reports_every_stage(bench, capsys, monkeypatch):
    monkeypatch.delenv("R2R_ALLOW_RANDOM_VGG", raising=False)
    assert bench.main(["--device", "cpu", "--size", "64", "--batch", "1", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    result = _json_line(out)
    assert result["device"].startswith("CPU") and result["weights"] == "tiny random"
    assert set(result["train_img_per_s"]) == {"clear_vae", "unet", "controller"}
    assert all(v > 0 for v in result["train_img_per_s"].values())
    for stage, rules in result["rules"].items():
        assert rules["precision"] == "no" and rules["fused_adamw"] is False and rules["tf32"] is False
        assert rules["gradient_checkpointing"] is False  # the tiny networks fit the RAM
        assert result["peak_memory_bytes"][stage] > 0 and result["estimate_bytes"][stage] > 0
    assert result["baseline_img_per_s"] == {} and result["settings"]["vae_size"] == 64
    assert "img/s" in out and "R2R_ALLOW_RANDOM_VGG" not in bench.os.environ  # the variable is restored


def test_baseline_and_forced_checkpointing(bench, capsys):
    assert bench.main(["--device", "cpu", "--size", "64", "--batch", "1", "--steps", "1", "--warmup", "0",
                       "--stages", "controller", "--baseline", "--gradient-checkpointing", "on"]) == 0
    out = capsys.readouterr().out
    result = _json_line(out)
    assert set(result["train_img_per_s"]) == set(result["baseline_img_per_s"]) == {"controller"}
    assert result["rules"]["controller"]["gradient_checkpointing"] is True
    assert result["speedup_vs_baseline"]["controller"] > 0 and "rules vs baseline" in out


@pytest.mark.parametrize("argv,message", [
    (["--size", "96"], "multiple of 64"),
    (["--vae-size", "32"], "--vae-size"),
    (["--steps", "0"], ">= 1"),
    (["--stages", "vae"], "invalid choice"),
])
def test_bad_arguments(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        bench.main(["--device", "cpu", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_refused(bench, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cpu" in capsys.readouterr().err


def test_the_script_runs_as_a_program():
    """The GPU check calls it as a program: its --help works without the test suite's sys.path."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--help"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "--full-size" in proc.stdout and "--baseline" in proc.stdout
