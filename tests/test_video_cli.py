"""python -m r2r harmonize-video (issue 20): a clip round-trips (frame count, size, frame rate, audio stream), with
the weight-free harmonizer and the tiny release; bad input is refused before any work with nothing written;
an interrupt leaves nothing behind."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from r2r.cli import main  # noqa: E402
from r2r.video.files import VideoFrames, probe  # noqa: E402
from r2r.video.synthetic import moving_object_clip  # noqa: E402


def make_video(path, frames, fps=12, audio="aac", gray=False, codec="libx264"):
    """A test clip written with PyAV: the frames (``HxWx3`` float / ``HxW`` masks) and optionally a 440 Hz tone
    lasting as long as the video."""
    container = av.open(str(path), "w")
    h, w = frames[0].shape[:2]
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv444p" if (h % 2 or w % 2 or gray) else "yuv420p"
    if gray:
        stream.options = {"qp": "0"}  # lossless masks
    a_stream = container.add_stream(audio, rate=16000) if audio else None
    for f in frames:
        img = np.repeat(f[..., None], 3, axis=2) if f.ndim == 2 else f
        frame = av.VideoFrame.from_ndarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), format="rgb24")
        for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    if a_stream is not None:
        t = np.arange(int(16000 * len(frames) / fps)) / 16000
        tone = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                          format="fltp", layout="mono")
        tone.sample_rate = 16000
        if audio == "pcm_s16le":
            tone = av.AudioResampler(format="s16", layout="mono", rate=16000).resample(tone)[0]
        for packet in a_stream.encode(tone):
            container.mux(packet)
        for packet in a_stream.encode(None):
            container.mux(packet)
    container.close()
    return path


def audio_seconds(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        total = sum(p.duration or 0 for p in c.demux(s))
        return float(total * s.time_base)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_cli")
    syn = moving_object_clip(16, (96, 128))
    frames = [syn.frame(i) for i in range(16)]
    masks = [syn.mask(i) for i in range(16)]
    make_video(root / "clip.mp4", frames)
    make_video(root / "masks.mkv", masks, audio=None, gray=True)
    from PIL import Image

    Image.fromarray((masks[0] * 255).astype(np.uint8)).save(root / "mask0.png")
    return root, syn


def test_round_trip_keeps_frames_size_rate_and_audio(clip_files, capsys):
    root, syn = clip_files
    out = root / "out.mp4"
    assert main(["harmonize-video", "--video", str(root / "clip.mp4"), "--mask", str(root / "masks.mkv"),
                 "--out", str(out), "--method", "statistics", "--temporal", "smoothed"]) == 0
    assert "16 frames, 128x96, 12 fps, audio copied (aac)" in capsys.readouterr().out
    info = probe(out)
    assert info.fps == Fraction(12) and info.size == (96, 128) and info.audio_codec == "aac"
    got = [f for _, f in VideoFrames(out).read()]
    assert len(got) == 16
    assert audio_seconds(out) == pytest.approx(audio_seconds(root / "clip.mp4"), abs=1e-3)
    # the object was recoloured, the background kept (up to the codec)
    m = syn.mask(5) >= 0.5
    src = [f for _, f in VideoFrames(root / "clip.mp4").read([5])][0].astype(float)
    assert np.abs(got[5][m] - src[m]).mean() > 8 and np.abs(got[5][~m] - src[~m]).mean() < 3
    assert not [p for p in os.listdir(root) if ".tmp-" in p]


def test_round_trip_with_the_tiny_release(clip_files, tiny_release, capsys):
    root, _ = clip_files
    out = root / "tiny.mkv"
    assert main(["harmonize-video", "--video", str(root / "clip.mp4"), "--mask", str(root / "mask0.png"),
                 "--out", str(out), "--weights", str(tiny_release), "--temporal", "keyframes",
                 "--keyframe-interval", "8", "--max-side", "64", "--steps", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "16 frames" in text and "3 frame(s) through the harmonizer" in text  # keyframes 0, 8, 15
    info = probe(out)
    assert info.size == (96, 128) and info.fps == Fraction(12) and info.audio_codec == "aac"


def test_audio_the_container_cannot_hold_is_reencoded_and_no_audio_stays_none(tmp_path, capsys):
    syn = moving_object_clip(6, (65, 97))  # odd sizes: 4:4:4 output
    frames = [syn.frame(i) for i in range(6)]
    make_video(tmp_path / "pcm.mov", frames, audio="pcm_s16le")
    make_video(tmp_path / "silent.mp4", frames, audio=None)
    from PIL import Image

    Image.fromarray((syn.mask(0) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert main(["harmonize-video", "--video", str(tmp_path / "pcm.mov"), "--mask", str(tmp_path / "m.png"),
                 "--out", str(tmp_path / "a.mp4"), "--method", "statistics"]) == 0
    assert "re-encoded pcm_s16le -> aac" in capsys.readouterr().out
    assert probe(tmp_path / "a.mp4").audio_codec == "aac" and probe(tmp_path / "a.mp4").size == (65, 97)
    assert main(["harmonize-video", "--video", str(tmp_path / "silent.mp4"), "--mask", str(tmp_path / "m.png"),
                 "--out", str(tmp_path / "b.webm"), "--method", "statistics", "--temporal", "keyframes"]) == 0
    assert "audio none" in capsys.readouterr().out and probe(tmp_path / "b.webm").audio_codec is None


def test_bad_input_is_refused_before_any_work(clip_files, tmp_path, capsys, monkeypatch):
    root, syn = clip_files
    import r2r.video.engines as engines

    def no_work(*args, **kwargs):
        raise AssertionError("the harmonizer ran for a bad input")

    monkeypatch.setattr(engines.StatisticsEngine, "params", no_work)
    monkeypatch.setattr(engines.StatisticsEngine, "outputs", no_work)
    (tmp_path / "exists.mp4").write_bytes(b"keep me")
    (tmp_path / "text.mp4").write_text("not a video")
    make_video(tmp_path / "short_masks.mkv", [syn.mask(i) for i in range(5)], audio=None, gray=True)
    make_video(tmp_path / "empty_masks.mkv", [syn.mask(i) * (i != 3) for i in range(16)], audio=None, gray=True)
    with av.open(str(tmp_path / "audio_only.m4a"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        tone.sample_rate = 16000
        for p in [*s.encode(tone), *s.encode(None)]:
            c.mux(p)
    from PIL import Image

    Image.fromarray(np.full((50, 60), 255, np.uint8)).save(tmp_path / "small_mask.png")
    make_video(tmp_path / "whole.mkv", [syn.frame(i) for i in range(16)])
    whole = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut_short.mkv").write_bytes(whole[: len(whole) // 2])  # a download that stopped half-way
    (tmp_path / "whole.mkv").unlink()
    video, masks = str(root / "clip.mp4"), str(root / "masks.mkv")
    cases = [
        (["--video", video, "--mask", masks, "--out", str(tmp_path / "exists.mp4")], "already exists"),
        (["--video", str(tmp_path / "text.mp4"), "--mask", masks, "--out", str(tmp_path / "o1.mp4")],
         "cannot be read as a video"),
        (["--video", str(tmp_path / "audio_only.m4a"), "--mask", masks, "--out", str(tmp_path / "o2.mp4")],
         "no video stream"),
        (["--video", video, "--mask", str(tmp_path / "short_masks.mkv"), "--out", str(tmp_path / "o3.mp4")],
         "16 frames but 5 masks"),
        (["--video", video, "--mask", masks, "--out", str(tmp_path / "o4.mp4"), "--keyframe-interval", "0"],
         "--keyframe-interval must be an integer from 1"),
        (["--video", video, "--mask", str(tmp_path / "small_mask.png"), "--out", str(tmp_path / "o5.mp4")],
         "frames' size"),
        (["--video", video, "--mask", str(tmp_path / "empty_masks.mkv"), "--out", str(tmp_path / "o6.mp4"),
          "--empty-frames", "stop"], "frames 3"),
        (["--video", str(tmp_path / "cut_short.mkv"), "--mask", masks, "--out", str(tmp_path / "o8.mp4")],
         "but 16 masks"),
        (["--video", video, "--mask", masks, "--out", str(tmp_path / "o7.gif")], "extension"),
        (["--video", video, "--mask", masks, "--out", video, "--overwrite"], "also an input"),
    ]
    for argv, message in cases:
        assert main(["harmonize-video", "--method", "statistics", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    assert (tmp_path / "exists.mp4").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == sorted(["exists.mp4", "text.mp4", "short_masks.mkv", "empty_masks.mkv",
                                                   "audio_only.m4a", "small_mask.png", "cut_short.mkv"])


def test_overwrite_and_interrupt(clip_files, tmp_path, monkeypatch, capsys):
    root, _ = clip_files
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    argv = ["harmonize-video", "--video", str(root / "clip.mp4"), "--mask", str(root / "mask0.png"),
            "--out", str(out), "--method", "statistics", "--overwrite"]
    assert main(argv) == 0 and len(list(VideoFrames(out).read())) == 16
    out.unlink()
    import r2r.video.engines as engines

    calls = []
    original = engines.StatisticsEngine.apply

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(engines.StatisticsEngine, "apply", interrupted)
    assert main(argv + ["--temporal", "smoothed"]) == 130
    assert os.listdir(tmp_path) == []  # nothing half-written, no temporary file


def test_a_reference_photo_too_small_is_refused_before_the_weights_load(clip_files, tmp_path, capsys):
    """--method r2r: the reference photo's checks run before the pipeline is built (here --weights names no
    release, so reaching the loader would give a weights message instead)."""
    from PIL import Image

    root, _ = clip_files
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "tiny_photo.png")
    argv = ["harmonize-video", "--method", "r2r", "--video", str(root / "clip.mp4"), "--mask", str(root / "masks.mkv"),
            "--out", str(tmp_path / "out.mp4"), "--reference", str(tmp_path / "tiny_photo.png"),
            "--weights", str(tmp_path / "no_release_here")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "reference" in err and "64" in err, err
    assert sorted(os.listdir(tmp_path)) == ["tiny_photo.png"]
