"""r2r.video (issue 20): the temporal modes on synthetic clips whose truth is known (r2r.video.synthetic),
with the weight-free harmonizer (meaningful colours) and the tiny release (mechanics); cuts, smoothing
and keyframes; chunking and streaming; the clip checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from r2r.errors import R2RUserError
from r2r.video import (
    ArrayFrames,
    ArrayMasks,
    Clip,
    FunctionFrames,
    FunctionMasks,
    R2REngine,
    StatisticsEngine,
    harmonize_clip,
    harmonize_frames,
)
from r2r.video import temporal as tm
from r2r.video.cuts import detect_cuts
from r2r.video.synthetic import foreground_error, moving_object_clip, warp_error


def run_metrics(syn, engine, temporal, **kw):
    """(outputs, masked warping error, fg error vs truth, report) of one run over a synthetic clip."""
    job = harmonize_clip(syn.clip(), engine, temporal=temporal, **kw)
    outs, warp, fg = [], [0.0, 0], [0.0, 0]
    for i, out in job:
        outs.append(out)
        s, c = foreground_error(out, syn, i)
        fg[0], fg[1] = fg[0] + s, fg[1] + c
        if i and syn.shot(i) == syn.shot(i - 1):
            s, c = warp_error(outs[i - 1], out, syn, i - 1, i)
            warp[0], warp[1] = warp[0] + s, warp[1] + c
    return outs, warp[0] / warp[1], fg[0] / fg[1], job.report


def sub_clip(syn, start, stop):
    """Frames [start, stop) of a synthetic clip as a clip of their own."""
    return Clip(FunctionFrames(stop - start, lambda i: syn.frame(start + i)),
                FunctionMasks(stop - start, lambda i: syn.mask(start + i)))


def changed_frames(a, b, tol=1e-4):
    return [i for i, (x, y) in enumerate(zip(a, b)) if np.abs(x - y).max() > tol]


# ----------------------------------------------------------------------------- pieces


def test_cut_detection_finds_the_cut_and_nothing_else():
    syn = moving_object_clip(24, (128, 128), cut_at=13)
    frames = [syn.frame(i) for i in range(24)]
    masks = [syn.mask(i) for i in range(24)]
    assert detect_cuts(frames, masks) == [13]
    assert detect_cuts(frames, masks, threshold=1.0) == []
    plain = moving_object_clip(24, (128, 128))
    assert detect_cuts([plain.frame(i) for i in range(24)], [plain.mask(i) for i in range(24)]) == []


def test_smoothing_is_zero_phase_and_stays_in_its_shot():
    n, shots = 40, [(0, 30), (30, 40)]
    impulse = {i: np.array([1.0 if i in (12, 29) else 0.0]) for i in range(n)}
    out = tm.smooth(impulse, shots, sigma=2.0)
    response = np.array([out[i][0] for i in range(n)])
    assert np.allclose(response[7:12], response[13:18][::-1])  # symmetric: no lag
    assert response[30:].max() == 0.0 and response[28] > 0  # nothing crosses the cut
    steps = {i: np.array([0.0 if i < 30 else 5.0]) for i in range(n)}
    smoothed = tm.smooth(steps, shots, sigma=4.0)
    assert all(smoothed[i][0] == pytest.approx(0.0 if i < 30 else 5.0) for i in range(n))
    ramp = {i: np.array([float(i)]) for i in range(5, 15)}  # frames without parameters stay out
    assert np.allclose(tm.smooth(ramp, [(0, 20)], 2.0)[10], 10.0)


def test_keyframes_every_n_and_at_cuts_with_interpolation():
    shots = [(0, 20), (20, 27)]
    usable = [True] * 27
    usable[8] = False
    keys = tm.keyframe_indices(shots, 8, usable)
    assert keys == [0, 9, 16, 19, 20, 26]
    shot = tm.shot_of(shots, 27)
    params = {k: np.array([float(k)]) for k in keys}
    assert tm.interpolate(12, keys, params, shot)[0] == pytest.approx(12.0)
    assert tm.interpolate(16, keys, params, shot)[0] == 16.0
    assert tm.keyframe_indices(shots, 1, [True] * 27) == list(range(27))


# ----------------------------------------------------------------------------- weight-free path


@pytest.fixture(scope="module")
def statistics_runs():
    syn = moving_object_clip(40, (128, 128))
    return syn, {mode: run_metrics(syn, StatisticsEngine(), mode) for mode in tm_modes()}


def tm_modes():
    return ("independent", "shared_noise", "smoothed", "keyframes")


def test_statistics_independent_is_the_per_frame_harmonizer(statistics_runs):
    from r2r.blending import harmonize_statistics

    syn, runs = statistics_runs
    for i in (0, 17, 39):
        assert np.array_equal(runs["independent"][0][i], harmonize_statistics(syn.frame(i), syn.mask(i)))
    assert all(np.array_equal(a, b) for a, b in zip(runs["independent"][0], runs["shared_noise"][0]))


def test_statistics_smoothed_and_keyframes_cut_the_flicker_not_the_colour(statistics_runs):
    syn, runs = statistics_runs
    _, warp_ind, fg_ind, _ = runs["independent"]
    for mode in ("smoothed", "keyframes"):
        _, warp, fg, _ = runs[mode]
        assert warp <= 0.8 * warp_ind, (mode, warp, warp_ind)
        assert fg <= 1.05 * fg_ind, (mode, fg, fg_ind)
    # the object really is recoloured toward the truth (the composite is far from it)
    comp_err = np.mean([foreground_error(syn.frame(i), syn, i)[0] / foreground_error(syn.frame(i), syn, i)[1]
                        for i in range(0, 40, 5)])
    assert runs["smoothed"][2] < 0.5 * comp_err
    # outside the feathered mask every pixel is the input's
    out, m = runs["smoothed"][0][7], syn.mask(7)
    assert np.array_equal(out[m == 0], syn.frame(7)[m == 0])


@pytest.mark.parametrize("mode", ["smoothed", "keyframes"])
def test_nothing_leaks_across_a_cut(mode):
    syn = moving_object_clip(32, (128, 128), cut_at=15)
    full = list(harmonize_frames(syn.clip(), StatisticsEngine(), temporal=mode))
    alone = list(harmonize_frames(sub_clip(syn, 0, 15), StatisticsEngine(), temporal=mode)) + \
        list(harmonize_frames(sub_clip(syn, 15, 32), StatisticsEngine(), temporal=mode))
    assert len(changed_frames(full, alone)) <= 1
    # the check can fail: without cut detection the two shots mix
    blind = list(harmonize_frames(syn.clip(), StatisticsEngine(), temporal=mode, cut_threshold=1.0))
    assert len(changed_frames(blind, alone)) > 1


# ----------------------------------------------------------------------------- R2R (tiny release)


@pytest.fixture(scope="module")
def pipe(tiny_components):
    from r2r.pipeline import R2RPipeline

    return R2RPipeline(tiny_components)


def r2r_engine(pipe, **kw):
    kw.setdefault("chunk_frames", 4)
    return R2REngine(pipe, steps=2, max_side=64, fullres_mode="color_transform", **kw)


def test_shared_noise_gives_identical_frames_identical_outputs(pipe):
    frame = moving_object_clip(1, (96, 96)).frame(0)
    mask = moving_object_clip(1, (96, 96)).mask(0)
    clip = Clip(ArrayFrames(np.stack([frame] * 6)), ArrayMasks(mask))  # one mask for every frame
    job = harmonize_clip(clip, r2r_engine(pipe), temporal="shared_noise")  # chunks of 4 + 2
    shared = [out for _, out in job]
    assert all(np.array_equal(shared[0], shared[i]) for i in range(1, 6))
    assert job.report.model_frames == 1  # identical frames: harmonized once, the result shared
    independent = harmonize_frames(clip, r2r_engine(pipe), temporal="independent")
    assert not np.allclose(independent[0], independent[1], atol=1e-3)
    # the noise itself is shared: frames that differ in one far-away pixel give (nearly) the same object
    nudged = np.stack([frame] * 4)
    for k in range(4):
        nudged[k, 0, 0] = k / 255.0
    near = harmonize_frames(Clip(ArrayFrames(nudged), ArrayMasks(mask)), r2r_engine(pipe), temporal="shared_noise")
    inside = mask >= 0.5
    assert max(np.abs(near[0][inside] - near[k][inside]).max() for k in range(1, 4)) < 1e-4
    assert np.abs(independent[0][inside] - independent[1][inside]).max() > 1e-2
    # independent frame i is the picture that frame alone gives with seed + i, whatever the chunking
    alone = harmonize_frames(Clip(ArrayFrames(np.stack([frame])), ArrayMasks(mask)),
                             r2r_engine(pipe, seed=5), temporal="independent")
    assert np.allclose(independent[5], alone[0], atol=1e-5)


@pytest.fixture(scope="module")
def r2r_runs(pipe):
    torch.manual_seed(0)  # not sampling noise: nothing here draws from the global generator
    syn = moving_object_clip(24, (96, 96))
    runs = {}
    for mode in ("independent", "smoothed", "keyframes"):
        runs[mode] = run_metrics(syn, r2r_engine(pipe), mode)
    return syn, runs


def test_r2r_smoothed_and_keyframes_cut_the_flicker(r2r_runs):
    _, runs = r2r_runs
    warp_ind = runs["independent"][1]
    for mode in ("smoothed", "keyframes"):
        assert runs[mode][1] <= 0.8 * warp_ind, (mode, runs[mode][1], warp_ind)


def test_keyframes_cost_a_quarter_of_the_model_time(r2r_runs):
    _, runs = r2r_runs
    ind, key = runs["independent"][3], runs["keyframes"][3]
    assert key.keyframes == [0, 8, 16, 23] and key.model_frames == 4 and ind.model_frames == 24
    # the process's CPU time: the wall time of this shared machine also counts other jobs
    assert key.model_cpu_seconds <= 0.25 * ind.model_cpu_seconds, (key.model_cpu_seconds, ind.model_cpu_seconds)


def test_frames_go_through_the_model_in_chunks_and_stream_out(pipe):
    syn = moving_object_clip(10, (96, 96))
    engine = r2r_engine(pipe, chunk_frames=3)
    calls, events = [], []
    original = engine.outputs

    def spy(frames, *args):
        calls.append(len(frames))
        events.append("model")
        return original(frames, *args)

    engine.outputs = spy
    job = harmonize_clip(syn.clip(), engine, temporal="shared_noise",
                         progress=lambda done, total, phase: events.append((done, total, phase)))
    for i, _ in job:
        events.append(i)
    assert calls == [3, 3, 3, 1]
    assert events.index(0) < events.index("model", events.index(0))  # frame 0 out before chunk 2 runs
    assert (10, 10, "output") in events and (3, 10, "output") in events


def test_an_interrupt_stops_between_chunks(pipe):
    syn = moving_object_clip(8, (96, 96))
    engine = r2r_engine(pipe, chunk_frames=2)
    seen = []

    def progress(done, total, phase):
        if done >= 2:
            raise InterruptedError("stop")

    with pytest.raises(InterruptedError):
        for i, _ in harmonize_clip(syn.clip(), engine, temporal="smoothed", progress=progress):
            seen.append(i)
    assert seen == [] and engine.model_seconds > 0


# ----------------------------------------------------------------------------- clip checks


class CountingEngine(StatisticsEngine):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def params(self, *args):
        self.calls += 1
        return super().params(*args)


def test_empty_masks_skip_or_stop(caplog):
    syn = moving_object_clip(6, (96, 96))

    def mask(i):
        return np.zeros((96, 96), np.float32) if i in (2, 3) else syn.mask(i)

    clip = Clip(FunctionFrames(6, syn.frame), FunctionMasks(6, mask))
    engine = CountingEngine()
    with pytest.raises(R2RUserError, match=r"frames 2-3.*empty_frames"):
        harmonize_clip(clip, engine, temporal="smoothed", empty_frames="stop")
    assert engine.calls == 0
    with caplog.at_level(logging.WARNING, logger="r2r.video"):
        out = harmonize_frames(clip, engine, temporal="smoothed", empty_frames="skip")
    assert "2 frame(s) passed through unchanged (frames 2-3)" in caplog.text
    assert np.array_equal(out[2], syn.frame(2)) and not np.array_equal(out[1], syn.frame(1))


def test_bad_clips_are_refused_before_any_work():
    syn = moving_object_clip(4, (96, 96))
    frames = np.stack([syn.frame(i) for i in range(4)])
    masks = np.stack([syn.mask(i) for i in range(4)])
    engine = CountingEngine()
    cases = [
        (Clip(ArrayFrames(frames), ArrayMasks(masks[:3])), {}, "4 frames but 3 masks"),
        (Clip(ArrayFrames([frames[0], frames[1][:80]]), ArrayMasks(masks[0])), {}, "same size"),
        (Clip(ArrayFrames(frames[:0]), ArrayMasks(masks[0])), {}, "no frames"),
        (Clip(ArrayFrames(frames), ArrayMasks(masks[:, :80])), {}, "frames' size"),
        (Clip(ArrayFrames(frames), ArrayMasks(masks)), {"keyframe_interval": 0}, "keyframe_interval"),
        (Clip(ArrayFrames(frames), ArrayMasks(masks)), {"temporal": "flow"}, "temporal must be one of"),
        (Clip(ArrayFrames(frames * 2), ArrayMasks(masks)), {}, r"outside \[0, 1\]"),
        (Clip(ArrayFrames(frames), ArrayMasks(np.zeros_like(masks))), {}, "None of the 4 frames"),
        (Clip(ArrayFrames(frames), ArrayMasks(masks), ArrayMasks(np.zeros_like(masks[0]))), {},
         "reference mask of frame 0 is empty"),
    ]
    for clip, kw, message in cases:
        kw = {"temporal": "keyframes", **kw}
        with pytest.raises(R2RUserError, match=message):
            harmonize_clip(clip, engine, **kw)
    assert engine.calls == 0
    def no_weights():
        pytest.fail("the weights must not load for a bad clip")

    clip = Clip(ArrayFrames(frames), ArrayMasks(masks))
    with pytest.raises(R2RUserError, match="paste_back"):
        harmonize_clip(clip, R2REngine(no_weights, max_side=64, paste_back=False), temporal="smoothed")
    tiny = np.zeros((96, 96), np.float32)
    tiny[40:42, 40:42] = 1  # gone at the latent resolution of a 64 px working canvas
    with pytest.raises(R2RUserError, match="too thin"):
        harmonize_clip(Clip(ArrayFrames(frames), ArrayMasks(tiny)), R2REngine(no_weights, max_side=64),
                       empty_frames="stop")
