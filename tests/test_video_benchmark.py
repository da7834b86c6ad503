"""benchmarks/video.py in its dry-run configuration (tiny clips, the tiny release, seconds per section): the
same script the full benchmark runs, so its sections and its final JSON line keep working; and the peak-memory
measure it uses sees a run that keeps every frame (so 'the same peak for 200 frames as for 20' can fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("video")


def test_dry_run_reports_every_figure(bench, capsys, tmp_path, tiny_release):
    assert bench.main(["--dry-run", "--weights-cache", str(tmp_path / "unused"), "--weights", str(tiny_release),
                       "--figures", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("warp_ratio_smoothed", "warp_ratio_keyframes", "fg_error_ratio_smoothed", "cut_bleed_frames",
                "keyframes8_time_ratio", "memory_ratio_200_vs_20"):
        assert isinstance(result[key], (int, float)), key
    assert result["warp_ratio_smoothed"] < 1 and result["cut_bleed_frames"] <= 1
    assert set(result["r2r"]) == {"independent", "shared_noise", "smoothed", "keyframes"}
    assert "| smoothed |" in out and "bleed across the cut" in out
    assert (tmp_path / "fig" / "video_modes.jpg").is_file() and (tmp_path / "fig" / "Harmonize a video clip.jpg").is_file()


def test_the_peak_memory_measure_sees_frames_kept_in_memory(tmp_path):
    """The child measure of the benchmark: a streamed clip's peak does not grow with its length, a run that
    holds every output frame does."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import video as b\n"
        "from r2r.video import StatisticsEngine, harmonize_clip\n"
        "from r2r.video.synthetic import moving_object_clip\n"
        "n, keep = int(sys.argv[1]), sys.argv[2] == 'keep'\n"
        "syn = moving_object_clip(n, (256, 256))\n"
        "b.measure.reset_peak('cpu')\n"
        "kept = [out for _, out in harmonize_clip(syn.clip(), StatisticsEngine(), temporal='smoothed')] if keep "
        "else [None for _ in harmonize_clip(syn.clip(), StatisticsEngine(), temporal='smoothed')]\n"
        "print(json.dumps(b.measure.peak_bytes('cpu') / 2**20))\n")

    def peak(n, how):
        res = subprocess.run([sys.executable, str(script), str(n), how], capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    streamed = peak(8, "drop"), peak(64, "drop")
    kept = peak(8, "keep"), peak(64, "keep")
    assert streamed[1] <= 1.10 * streamed[0], streamed
    assert kept[1] > 1.10 * kept[0], kept  # 56 more frames of 256x256 float32 held: the measure sees them


@pytest.mark.slow
def test_r2r_peak_memory_does_not_grow_with_the_clip(tiny_release, tmp_path):
    """The benchmark's memory measure on the R2R path (tiny release, shared_noise: every frame through the
    model): 18 frames peak where 6 do (each length in its own process, chunks of 3 frames). The full figure
    (20 vs 200 frames of 512x512, smoothed) is the benchmark's."""

    def peak(n):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "video.py"), "--memory-child", str(n), "--memory-engine",
               "r2r", "--memory-size", "96", "--memory-mode", "shared_noise", "--steps", "1", "--r2r-max-side", "64",
               "--weights", str(tiny_release), "--weights-cache", str(tmp_path), "--chunk-frames", "3"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**__import__("os").environ,
                                                                                  "PYTHONPATH": str(ROOT)})
        return json.loads(res.stdout.strip().splitlines()[-1])

    small, large = peak(6), peak(18)
    assert small["frames"] == 6 and large["frames"] == 18
    assert large["peak_rss_mib"] <= 1.10 * small["peak_rss_mib"], (small, large)
